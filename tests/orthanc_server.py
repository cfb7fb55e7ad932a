"""A real Orthanc PACS with its DICOMweb plugin, run on a free loopback port for the tests.

Debian's ``orthanc`` and ``orthanc-dicomweb`` packages provide it (``.ci/run`` installs them).
:func:`start_orthanc` writes a config (HTTP on a free loopback port, no DICOM port, basic
authentication with one test user, storage in a temporary folder), starts the server and waits
until it answers; :meth:`Orthanc.stop` ends it. Also here: two tiny real HTTP servers on loopback,
one that answers everything with a web page (not DICOMweb) and one that accepts connections and
never answers (a hung server).
"""

from __future__ import annotations

import glob
import json
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, Optional

import requests

USER, PASSWORD = "lab-tester", "S3cret-test-pw"
PLUGIN_GLOBS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so*", "/usr/lib/orthanc/libOrthancDicomWeb.so*")


def orthanc_binary() -> Optional[str]:
    return shutil.which("Orthanc") or shutil.which("orthanc")


def dicomweb_plugin() -> Optional[str]:
    for pattern in PLUGIN_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def missing_reason() -> Optional[str]:
    """Why Orthanc cannot be run here, or None."""
    if orthanc_binary() is None:
        return "the Orthanc binary is not installed (apt-get install orthanc orthanc-dicomweb; .ci/run does)"
    if dicomweb_plugin() is None:
        return "Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb; .ci/run does)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Orthanc:
    port: int
    process: subprocess.Popen
    folder: Path

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.root}/dicom-web"

    def upload(self, data: bytes) -> None:
        """Store one DICOM file through Orthanc's own REST API (how the tests load the PACS)."""
        answer = requests.post(f"{self.root}/instances", data=data, auth=(USER, PASSWORD), timeout=30)
        answer.raise_for_status()

    def rest(self, path: str) -> object:
        answer = requests.get(f"{self.root}{path}", auth=(USER, PASSWORD), timeout=30)
        answer.raise_for_status()
        return answer.json()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log(self) -> str:
        path = self.folder / "orthanc.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def start_orthanc(folder: Path) -> Orthanc:
    """Start Orthanc with a generated config in ``folder``; raises RuntimeError (with its log) if it does not come up."""
    binary, plugin = orthanc_binary(), dicomweb_plugin()
    assert binary is not None and plugin is not None, missing_reason()
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "Name": "lunglab-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpServerEnabled": True,
        "HttpPort": port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "DicomServerEnabled": False,
        "DicomPort": free_port(),
        "Plugins": [plugin],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "HttpCompressionEnabled": False,
        "ConcurrentJobs": 1,
        "SaveJobs": False,
    }
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=1))
    log = open(folder / "orthanc.log", "wb")
    process = subprocess.Popen([binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    server = Orthanc(port, process, folder)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited at start (code {process.returncode}):\n{server.log()}")
        try:
            if requests.get(f"{server.root}/system", auth=(USER, PASSWORD), timeout=2).ok:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"Orthanc did not answer within 60 s:\n{server.log()}")


class _WebPage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = b"<html><body><h1>Welcome to the hospital intranet</h1></body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def web_page_server() -> Iterator[str]:
    """A real HTTP server on loopback that answers every GET with an HTML page (no DICOMweb)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _WebPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    finally:
        server.shutdown()
        server.server_close()


def silent_server() -> Iterator[str]:
    """A socket on loopback that accepts connections and never answers (a hung server)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/dicom-web"
    finally:
        sock.close()
