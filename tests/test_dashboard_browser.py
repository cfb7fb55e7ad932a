"""End to end in a real headless Chromium against ``streamlit run dashboard/app.py``.

A fixture starts the real server (its own port, runs store and cache) with a tiny trained model
and a finished evaluation; the tests drive it as a person would: open every page, attack scans,
upload a PNG and a DICOM, download the results, and several people at once. Screenshots go to
``test-artifacts/``; one per page is copied to ``docs/screenshots/`` for the README.

Debian's Chromium is used (``/usr/bin/chromium``), never a downloaded browser.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from pipeline.constants import GREY_LEVEL
from pipeline.evaluation.data import run_data
from pipeline.store import load_model
from pipeline.scan_report import analyse_scan
from pipeline.training import TrainConfig, train
from tests.dashboard_helpers import TINY as TINY_RUN
from tests.dashboard_helpers import finished_evaluation

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
SCREENSHOTS = ROOT / "docs" / "screenshots"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: The models read 48 px scans: big enough for Grad-CAM to show something.
TINY = {**TINY_RUN, "image_size": 48}
STARTUP_S = 120
RESULT_MS = 120_000
ERROR_SELECTOR = '[data-testid="stException"], [data-testid="stAlertContentError"]'

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian Chromium is not installed at /usr/bin/chromium "
        "(apt-get install chromium); .ci/run installs it",
    ),
]


@dataclass
class Server:
    url: str
    runs: Path
    run_dir: Path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"streamlit did not become healthy in {STARTUP_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("browser")
    runs, cache = home / "runs", home / "cache"
    env = {
        **os.environ,
        "LUNGLAB_RUNS_DIR": str(runs),
        "LUNGLAB_CACHE_DIR": str(cache),
        "LUNGLAB_DATA": "synthetic",
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LUNGLAB_CACHE_DIR", str(cache))
        torch.manual_seed(0)
        second = train(TrainConfig.from_dict({**TINY, "seed": 1}), runs)
        run_dir = train(TrainConfig.from_dict(TINY), runs)  # the newest: the model the sidebar selects
        finished_evaluation([run_dir, second])
    port = _free_port()
    log = home / "streamlit.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                "dashboard/app.py",
                "--server.headless",
                "true",
                "--server.port",
                str(port),
            ],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, log)
        yield Server(url, runs, run_dir)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


def open_page(browser, server: Server, path: str = ""):
    context = browser.new_context(viewport={"width": 1440, "height": 1100}, accept_downloads=True)
    page = context.new_page()
    page.goto(f"{server.url}/{path}")
    page.wait_for_selector('[data-testid="stSidebarNav"]', timeout=RESULT_MS)
    wait_idle(page)
    return page


def wait_idle(page) -> None:
    """Until the script run and its spinners are over (the status widget disappears)."""
    page.wait_for_timeout(500)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=RESULT_MS
    )
    page.wait_for_timeout(300)


def assert_no_error(page) -> None:
    errors = page.locator(ERROR_SELECTOR)
    assert errors.count() == 0, errors.all_inner_texts()


def screenshot(page, name: str, *, publish: bool = False) -> None:
    """Full-length screenshot into test-artifacts/ (and docs/screenshots/ for the README)."""
    ARTIFACTS.mkdir(exist_ok=True)
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": 1440, "height": min(max(int(height), 900), 4000)})
    page.wait_for_timeout(600)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size({"width": 1440, "height": 1100})
    if publish:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SCREENSHOTS / f"{name}.png")


def go(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=title).click()
    page.get_by_role("heading", name=title if title != "Models" else "Models").first.wait_for(
        timeout=RESULT_MS
    )
    wait_idle(page)


#: Results on screen are those of the current choices: no attack running, no "previous choices" note.
FRESH_RESULTS = """() => {
    const text = document.querySelector('[data-testid="stMain"]').innerText;
    return text.includes("Largest change") && !text.includes("for the previous choices")
        && !text.includes("Running ") && !document.querySelector('[data-testid="stStatusWidget"]');
}"""


def run_attack(page) -> None:
    page.get_by_role("button", name="Run the attack").click()
    page.wait_for_timeout(500)
    page.wait_for_function(FRESH_RESULTS, timeout=RESULT_MS)
    wait_idle(page)


def upload(page, name: str, content: bytes, mime: str) -> None:
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(
        {"name": name, "mimeType": mime, "buffer": content}
    )


def choose_upload_source(page) -> None:
    page.locator('[data-testid="stButtonGroup"]').get_by_text("Upload", exact=True).click()
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.wait_for(
        state="attached", timeout=RESULT_MS
    )
    wait_idle(page)


def download(page, label: str) -> bytes:
    with page.expect_download(timeout=RESULT_MS) as caught:
        page.get_by_role("button", name=label).first.click()
    return Path(caught.value.path()).read_bytes()


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def metric(page, label: str) -> str:
    box = page.locator('[data-testid="stMetric"]').filter(has_text=label).first
    return box.locator('[data-testid="stMetricValue"]').inner_text().strip()


# ------------------------------------------------------------------------------------- tests
def choose_test_scan(page, position: int) -> None:
    """Move the "Test scan" slider ``position`` steps to the right of the first scan."""
    slider = page.locator('[data-testid="stSlider"]').filter(has_text="Test scan").get_by_role("slider")
    slider.focus()
    for _ in range(position):
        slider.press("ArrowRight")
    wait_idle(page)


def first_correct(server: Server) -> int:
    """The position in the test split of the first scan the model reads correctly (0 if none)."""
    model, record = load_model(server.run_dir)
    dataset, split = run_data(record)
    x, y = dataset.tensors()
    with torch.no_grad():
        right = (model(x[split.test]).argmax(1) == y[split.test]).nonzero().flatten()
    return int(right[0]) if len(right) else 0


def test_fgsm_attack_on_a_test_scan_shows_everything(browser, server: Server) -> None:
    page = open_page(browser, server)
    assert page.get_by_role("heading", name="Attack a scan").count() == 1
    assert page.get_by_text("synthetic — not medical data").count() >= 1
    choose_test_scan(page, first_correct(server))  # a scan the model gets right: the attack has work to do
    run_attack(page)
    assert_no_error(page)
    assert metric(page, "Largest change") == "4/255"
    assert page.get_by_text("Grad-CAM", exact=False).count() >= 1
    assert page.locator('[data-testid="stImage"]').count() >= 5  # preview, original, attacked, two Grad-CAMs
    assert page.locator(".js-plotly-plot").count() >= 3
    record = json.loads(download(page, "What was done (JSON)"))
    assert record["result"]["attack"] == "fgsm" and record["scan"]["source"] == "test split"
    attacked = np.asarray(Image.open(io.BytesIO(download(page, "Attacked scan (PNG)"))))
    assert attacked.shape == (48, 48) and attacked.dtype == np.uint8
    screenshot(page, "attack", publish=True)
    page.context.close()


def test_every_page_opens_without_errors(browser, server: Server) -> None:
    page = open_page(browser, server)
    go(page, "Data")
    form = page.locator('[data-testid="stForm"]')
    form.get_by_role("spinbutton", name="Phantom scans").fill("36")
    form.get_by_role("button", name="Use this dataset").click()
    page.get_by_text("Scans per class").wait_for(timeout=RESULT_MS)
    wait_idle(page)
    assert_no_error(page)
    assert metric(page, "Scans") == "36"
    screenshot(page, "data", publish=True)

    go(page, "Train")
    assert page.get_by_role("button", name="Start training").count() == 1
    assert_no_error(page)
    screenshot(page, "train", publish=True)

    go(page, "Evaluate")
    page.get_by_role("tab", name="Confusion matrices").click()
    page.wait_for_timeout(800)
    assert (
        page.locator('[data-testid="stTabPanel"]:visible .js-plotly-plot').count() >= 4
    )  # clean + 3 attacks
    assert_no_error(page)
    screenshot(page, "evaluate", publish=True)

    go(page, "Models")
    assert page.get_by_text(server.run_dir.name).count() >= 1
    assert_no_error(page)
    screenshot(page, "models", publish=True)
    page.context.close()


def test_upload_a_png_and_a_dicom(browser, server: Server) -> None:
    page = open_page(browser, server)
    page.get_by_text("Also find the smallest budget").click()  # off: one search is tested above
    choose_upload_source(page)
    scan = (np.indices((96, 80)).sum(axis=0) % 256).astype(np.uint8)
    upload(page, "slice.png", png(scan), "image/png")
    page.get_by_text("PNG scan, 80×96 px").wait_for(timeout=RESULT_MS)
    wait_idle(page)
    run_attack(page)
    assert_no_error(page)
    assert page.get_by_role("button", name="Attacked scan (DICOM)").count() == 0

    source = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    upload(page, "CT_small.dcm", source, "application/dicom")
    page.get_by_text("DICOM scan, 128×128 px").wait_for(timeout=RESULT_MS)
    wait_idle(page)
    run_attack(page)
    assert_no_error(page)
    patient = str(pydicom.dcmread(io.BytesIO(source)).PatientName)
    assert patient not in page.locator('[data-testid="stMain"]').inner_text()
    attacked = pydicom.dcmread(io.BytesIO(download(page, "Attacked scan (DICOM)")))
    assert str(attacked.PatientName) == "" and "ADVERSARIALLY PERTURBED" in attacked.SeriesDescription
    assert attacked.pixel_array.shape == (48, 48)
    screenshot(page, "attack-dicom")
    page.context.close()


def test_upload_limits_and_bad_files_end_in_messages(browser, server: Server, tmp_path: Path) -> None:
    page = open_page(browser, server)
    choose_upload_source(page)
    huge = tmp_path / "huge.png"  # Playwright passes buffers over 50 MB only as files
    huge.write_bytes(b"\0" * (51 * 1024 * 1024))
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(str(huge))
    page.get_by_text("File must be 50.0MB or smaller.").wait_for(timeout=RESULT_MS)
    upload(page, "scan.jpg", b"this is a text file named like a scan", "image/jpeg")
    page.get_by_text("Could not read the scan").wait_for(timeout=RESULT_MS)
    assert page.locator('[data-testid="stException"]').count() == 0
    page.context.close()


def test_uploads_without_the_xsrf_token_are_refused(server: Server) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request(
        "PUT",
        "/_stcore/upload_file/some-session/some-file",
        body=b"x",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert connection.getresponse().status == 403


def test_several_people_attack_different_scans_at_once(browser, server: Server) -> None:
    """Four sessions on one cached model, started together: each result equals a serial run."""
    pages = []
    for offset in range(4):
        page = open_page(browser, server)
        choose_test_scan(page, offset)
        pages.append(page)
    for page in pages:
        page.get_by_role("button", name="Run the attack").click()
    model, record = load_model(server.run_dir)
    dataset, split = run_data(record)
    for offset, page in enumerate(pages):
        page.wait_for_function(FRESH_RESULTS, timeout=RESULT_MS)
        wait_idle(page)
        assert_no_error(page)
        shown = json.loads(download(page, "What was done (JSON)"))
        index = int(split.test[offset])
        assert shown["scan"]["index"] == index
        image, label = dataset[index]
        serial = analyse_scan(
            model,
            image,
            "fgsm",
            {"eps": 4 * GREY_LEVEL},
            label=label,
            classes=tuple(record.config["classes"]),
            find_minimal_eps=True,
        )
        expected = json.loads(json.dumps(serial.to_dict()))
        for key in (
            "probabilities_clean",
            "probabilities_attacked",
            "linf",
            "l2",
            "psnr_db",
            "ssim",
            "minimal_eps",
            "minimal_eps_found",
            "explanation_shift",
        ):
            assert shown["result"][key] == pytest.approx(expected[key], abs=1e-5), key
    screenshot(pages[-1], "attack-concurrent")
    for page in pages:
        page.context.close()
