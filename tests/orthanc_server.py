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
import io
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

import pydicom
import pytest
import requests

from tests.dicom_studies import MARK, UID_ROOT, make_dicom_studies

USER, PASSWORD = "lab-tester", "S3cret-test-pw"
PLUGIN_GLOBS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so*",
    "/usr/lib/orthanc/libOrthancDicomWeb.so*",
)


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


@dataclass
class Loaded:
    """A loaded PACS: every identifier written, each study's class, patient and per-class slice counts."""

    server: Orthanc
    identifiers: list[str]
    study_labels: dict[str, str]
    patients: int
    slices: dict[str, int]


def running_pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    """A started and loaded Orthanc, stopped when the generator ends: the body of a module fixture.

    Skips (with the reason) where Orthanc or its DICOMweb plugin is not installed.
    """
    if missing_reason() is not None:
        pytest.skip(missing_reason() or "")
    root = tmp_path_factory.mktemp("pacs")
    server = start_orthanc(root / "orthanc")
    try:
        yield load_studies(server, root)
    finally:
        server.stop()


def load_studies(server: Orthanc, root: Path) -> Loaded:
    """Load the PACS: the studies of ``tests/dicom_studies.py`` described "Chest CT - <class>" (2024),
    a CT follow-up whose description names no class, and an MR study of 2022."""
    studies = make_dicom_studies(root / "export", size=32)
    labels: dict[str, str] = {}
    slices = {"benign": 0, "malignant": 0, "normal": 0}
    for item in studies.slices:
        label = item.path.relative_to(studies.root).parts[0]
        ds = pydicom.dcmread(item.path)
        ds.StudyDescription, ds.StudyDate, ds.Modality = f"Chest CT - {label}", "20240315", "CT"
        labels[str(ds.StudyInstanceUID)] = label
        slices[label] += 1
        server.upload(_bytes(ds))
    # a CT study whose description names no class, and an MR study of another year
    extra = make_dicom_studies(root / "extra", patients_per_class=1, size=32, seed=5)
    renamed: dict[str, str] = {}  # the fixture numbers its UIDs from 1 again: give these their own
    for item in extra.slices:
        ds = pydicom.dcmread(item.path)
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            old = str(getattr(ds, keyword))
            new = renamed.setdefault(old, f"{UID_ROOT}.9.{len(renamed) + 1}")
            setattr(ds, keyword, new)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID = f"{ds.get('PatientID', MARK)}-extra"
        label = item.path.relative_to(extra.root).parts[0]
        if label == "benign":
            ds.StudyDescription, ds.StudyDate = "Chest CT follow-up", "20240601"
        elif label == "malignant":
            ds.StudyDescription, ds.StudyDate, ds.Modality = "MR thorax malignant", "20220101", "MR"
        else:
            continue
        server.upload(_bytes(ds))
    return Loaded(
        server,
        [*studies.identifiers, *extra.identifiers, *renamed.values()],
        labels,
        len(studies.patients()),
        slices,
    )


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def start_orthanc(folder: Path) -> Orthanc:
    """Start Orthanc with a generated config in ``folder``; RuntimeError (with its log) if it fails."""
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
