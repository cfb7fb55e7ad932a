"""``streamlit run dashboard/app.py`` as a real server on a free port, and a whole-page screenshot of
it, for the browser suite, ``bench/first_start.py`` and ``scripts/demo_screenshot.py`` alike."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"streamlit did not become healthy in {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def serve(home: Path, runs: Path, *, startup_s: float = 120.0, demo: bool = False) -> Iterator[str]:
    """The dashboard over the run store ``runs`` (its cache and log under ``home``); yields its URL
    once it answers its health check, and stops it afterwards. A traceback in its log fails. With
    ``demo``, an empty run store gets the shipped demo on first start, as a fresh clone's does."""
    env = {
        **os.environ,
        "LUNGLAB_RUNS_DIR": str(runs),
        "LUNGLAB_CACHE_DIR": str(home / "cache"),
        "LUNGLAB_DATA": "synthetic",
        "LUNGLAB_DEMO": "on" if demo else "off",
    }
    port = free_port()
    log = home / "streamlit.log"
    command = [
        sys.executable, "-m", "streamlit", "run", "dashboard/app.py",
        "--server.headless", "true", "--server.port", str(port),
    ]  # fmt: skip
    with open(log, "wb") as output:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, log, startup_s)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def full_length_screenshot(page, path: Path, *, timeout_ms: float, max_height: int = 4000) -> None:
    """Save the whole page to ``path``. The app scrolls inside its main pane, so the window is made
    as tall as the page (900 to ``max_height`` px) and the widgets resized into view replace their
    placeholders first, so no picture shows grey bars; the window is set back afterwards."""
    size = page.viewport_size
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": size["width"], "height": min(max(int(height), 900), max_height)})
    page.wait_for_timeout(600)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stSkeleton\"]')", timeout=timeout_ms)
    page.wait_for_timeout(300)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(size)
