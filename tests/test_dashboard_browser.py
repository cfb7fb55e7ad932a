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
import re
import shutil
import urllib.parse
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
from pipeline.demo import Demo, DemoRecipe, prepare_demo
from pipeline.demo.background import demo_job_dir
from pipeline.evaluation.data import run_data
from pipeline.jobs import JobContext
from pipeline.store import load_model
from pipeline.scan_report import analyse_scan
from pipeline.training import TrainConfig, train
from tests.dashboard_helpers import TINY as TINY_RUN
from tests.dashboard_helpers import finished_evaluation
from tests.dashboard_server import full_length_screenshot, serve

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


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("browser")
    runs = home / "runs"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LUNGLAB_CACHE_DIR", str(home / "cache"))
        torch.manual_seed(0)
        second = train(TrainConfig.from_dict({**TINY, "seed": 1}), runs)
        run_dir = train(TrainConfig.from_dict(TINY), runs)  # the newest: the model the sidebar selects
        finished_evaluation([run_dir, second])
    with serve(home, runs) as url:
        yield Server(url, runs, run_dir)


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Server]:
    """A server started just now on an empty runs folder: what a newcomer starts."""
    runs = tmp_path / "runs"
    runs.mkdir()
    with serve(tmp_path, runs) as url:
        yield Server(url, runs, runs / "none yet")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


#: Every request each open page made to a host other than this machine (there must be none).
OUTSIDE: dict[object, list[str]] = {}
#: The app's navigation labels; the page files' names must never show in their place.
NAVIGATION = ["Data", "Train", "Attack a scan", "Evaluate", "Threats", "Models"]
#: On a fresh server, the page drawn while the libraries load.
LOADING = "freshly started server"


def new_page(browser):
    """A page in a fresh context that records every request leaving the machine."""
    context = browser.new_context(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
    page = context.new_page()
    # a loaded machine can take longer than Playwright's 30 s to serve a page: no test asserts on time
    page.set_default_navigation_timeout(RESULT_MS)
    OUTSIDE[page] = []
    page.on(
        "request",
        lambda request: OUTSIDE[page].append(request.url)
        if urllib.parse.urlparse(request.url).hostname not in (None, "127.0.0.1", "localhost")
        else None,
    )
    return page


def open_page(browser, server: Server, path: str = ""):
    page = new_page(browser)
    page.goto(f"{server.url}/{path}")
    page.wait_for_selector('[data-testid="stSidebarNav"]', timeout=RESULT_MS)
    page.wait_for_function(
        f"() => !document.querySelector('[data-testid=\"stMain\"]').innerText.includes('{LOADING}')",
        timeout=RESULT_MS,
    )
    wait_idle(page)
    return page


def navigation(page) -> list[str]:
    """The sidebar's navigation labels (a link's text is its icon's ligature name, then its label)."""
    links = page.locator('[data-testid="stSidebarNav"] a').all_inner_texts()
    return [text.strip().splitlines()[-1].strip() for text in links]


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
    path = ARTIFACTS / f"{name}.png"
    full_length_screenshot(page, path, timeout_ms=RESULT_MS)
    if publish:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SCREENSHOTS / f"{name}.png")


def go(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=title).click()
    page.get_by_role("heading", name=title if title != "Models" else "Models").first.wait_for(
        timeout=RESULT_MS
    )
    wait_idle(page)


#: How many plot legends overlap an x-axis title among the charts on screen (must be 0).
LEGEND_OVER_AXIS = """() => [...document.querySelectorAll('.js-plotly-plot')]
    .filter(plot => plot.offsetParent !== null)
    .flatMap(plot => {
        const legend = plot.querySelector('.legend');
        if (!legend) return [];
        const a = legend.getBoundingClientRect();
        return [...plot.querySelectorAll('.xtitle')].map(title => {
            const b = title.getBoundingClientRect();
            return a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
        });
    }).filter(Boolean).length"""
#: How many visible charts give less than half their width to the plot itself (a legend or margins
#: squeezing it, as a right-hand legend does in a half-width column; must be 0).
SQUEEZED_PLOTS = """() => [...document.querySelectorAll('.js-plotly-plot')]
    .filter(plot => plot.offsetParent !== null && plot._fullLayout && plot._fullLayout._size)
    .filter(plot => plot._fullLayout._size.w < 0.5 * plot._fullLayout.width).length"""
#: Each visible chart's x-axis title, number of points in its first series and number of shapes.
CHARTS = """() => [...document.querySelectorAll('.js-plotly-plot')].map(plot => ({
    x: (((plot.layout || {}).xaxis || {}).title || {}).text || '',
    points: plot.data && plot.data[0] && plot.data[0].x ? plot.data[0].x.length : 0,
    shapes: ((plot.layout || {}).shapes || []).length,
}))"""
#: What the time left on a progress bar may say (pipeline.progress.time_left_words).
TIME_LEFT = re.compile(
    r"· (estimating time left|about \d+ (s|min) left|no progress for \d+ s"
    r"|slower than measured so far: no progress for \d+ s)$"
)


#: Each visible chart's title that plotly's mode bar (shown on hover, at the top right) would cover.
TITLE_UNDER_MODEBAR = """() => [...document.querySelectorAll('.js-plotly-plot')]
    .filter(plot => plot.offsetParent !== null)
    .flatMap(plot => {
        const bar = plot.querySelector('.modebar');
        const title = plot.querySelector('.gtitle');
        if (!bar || !title || !title.textContent) return [];
        const a = bar.getBoundingClientRect(), b = title.getBoundingClientRect();
        return a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom ? [title.textContent] : [];
    })"""
#: The visible text the page cuts off (a widget label, a button, a tab with an ellipsis; a select's value,
#: which is an input's, clipped at its edge): what a person cannot read in full. HTML only: an SVG text
#: (a chart's) has no client width to compare with.
ELLIPSIZED = """() => [...document.querySelectorAll('[data-testid="stMain"] *, [data-testid="stSidebar"] *')]
    .filter(el => !(el instanceof SVGElement) && el.offsetParent !== null && el.scrollWidth > el.clientWidth + 1
        && (el.matches('input[role="combobox"]') ? el.value.trim()
            : el.children.length === 0 && el.textContent.trim() && getComputedStyle(el).textOverflow === 'ellipsis'))
    .map(el => el.matches('input') ? el.value.trim() : el.textContent.trim())"""


#: Each visible chart's title that runs past its chart's edge (plotly clips it there, mid-word).
TITLE_PAST_EDGE = """() => [...document.querySelectorAll('.js-plotly-plot')]
    .filter(plot => plot.offsetParent !== null)
    .flatMap(plot => {
        const title = plot.querySelector('.gtitle');
        if (!title || !title.textContent) return [];
        const a = plot.getBoundingClientRect(), b = title.getBoundingClientRect();
        return b.right > a.right + 1 || b.left < a.left - 1 ? [title.textContent] : [];
    })"""


def assert_readable(page) -> None:
    """No visible chart title under the mode bar or past its chart's edge, no visible text cut off."""
    page.wait_for_timeout(500)  # plotly lays titles out after the first paint
    assert page.evaluate(TITLE_UNDER_MODEBAR) == []
    assert page.evaluate(TITLE_PAST_EDGE) == []
    assert page.evaluate(ELLIPSIZED) == []


def assert_charts_laid_out(page) -> None:
    """No visible chart has a legend over an axis title or a plot squeezed to under half its width;
    and the page is readable (:func:`assert_readable`)."""
    assert_readable(page)
    assert page.evaluate(LEGEND_OVER_AXIS) == 0
    assert page.evaluate(SQUEEZED_PLOTS) == 0


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
    """The position in the test split of the first scan the model reads correctly and whose loss has a
    gradient, each read alone as the page reads it. This briefly trained model is so sure of itself
    that on many scans the softmax saturates in float32: the cross-entropy's gradient is then exactly
    zero and FGSM honestly changes nothing ("The attack left the scan unchanged"), which is not what
    this test looks at. 0 if there is none."""
    model, record = load_model(server.run_dir)
    dataset, split = run_data(record)
    x, y = dataset.tensors()
    for position, index in enumerate(split.test):
        scan = x[index : index + 1].clone().requires_grad_(True)
        logits = model(scan)
        (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, y[index : index + 1]), scan)
        if int(logits.argmax()) == int(y[index]) and bool(grad.abs().amax() > 0):
            return position
    return 0


def test_fgsm_attack_on_a_test_scan_shows_everything(browser, server: Server) -> None:
    page = open_page(browser, server)
    assert page.get_by_role("heading", name="Attack a scan").count() == 1
    assert page.get_by_text("synthetic — not medical data").count() >= 1
    choose_test_scan(page, first_correct(server))  # a scan the model gets right: the attack has work to do
    page.get_by_text("Find the smallest budget", exact=True).click()  # off by default, its cost stated
    run_attack(page)
    assert_no_error(page)
    assert metric(page, "Largest change") == "4/255"
    assert page.get_by_text("Grad-CAM", exact=False).count() >= 1
    assert page.locator('[data-testid="stImage"]').count() >= 5  # preview, original, attacked, two Grad-CAMs
    assert page.locator(".js-plotly-plot").count() >= 3
    record = json.loads(download(page, "What was done (JSON)"))
    assert record["result"]["attack"] == "fgsm" and record["scan"]["source"] == "test split"
    assert record["result"]["minimal_eps_attack"] == "fgsm"  # searched with the attack that was run
    attacked = np.asarray(Image.open(io.BytesIO(download(page, "Attacked scan (PNG)"))))
    assert attacked.shape == (48, 48) and attacked.dtype == np.uint8
    assert_charts_laid_out(page)
    screenshot(page, "attack", publish=True)
    assert OUTSIDE.pop(page) == []
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
    assert_charts_laid_out(page)
    screenshot(page, "data", publish=True)

    go(page, "Train")
    assert page.get_by_role("button", name="Start training").count() == 1
    assert_no_error(page)
    assert_charts_laid_out(page)
    screenshot(page, "train", publish=True)

    go(page, "Evaluate")
    page.get_by_role("tab", name="Confusion matrices").click()
    page.wait_for_timeout(800)
    assert (
        page.locator('[data-testid="stTabPanel"]:visible .js-plotly-plot').count() >= 4
    )  # clean + 3 attacks
    assert_no_error(page)
    assert_readable(page)  # four matrices side by side: small plots, but every title and label whole
    screenshot(page, "evaluate", publish=True)
    page.get_by_role("tab", name="Robustness curves").click()
    assert_charts_laid_out(page)
    for tab in ("Comparison", "Calibration"):  # the forest plot; the reliability diagram
        page.get_by_role("tab", name=tab).click()
        page.wait_for_timeout(800)
        assert page.locator('[data-testid="stTabPanel"]:visible .js-plotly-plot').count() >= 1, tab
        assert_no_error(page)
        assert_readable(page)

    go(page, "Models")
    assert page.get_by_text(server.run_dir.name).count() >= 1
    assert_no_error(page)
    assert_charts_laid_out(page)
    screenshot(page, "models", publish=True)
    assert OUTSIDE.pop(page) == []  # every asset of every page is served by this machine
    page.context.close()


def test_upload_a_png_and_a_dicom(browser, server: Server) -> None:
    page = open_page(browser, server)
    choose_upload_source(page)
    scan = (np.indices((96, 80)).sum(axis=0) % 256).astype(np.uint8)
    upload(page, "slice.png", png(scan), "image/png")
    page.get_by_text("PNG image, 80×96 px").wait_for(timeout=RESULT_MS)
    wait_idle(page)
    run_attack(page)
    assert_no_error(page)
    assert page.get_by_role("button", name="Attacked scan (DICOM)").count() == 0

    source = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    upload(page, "CT_small.dcm", source, "application/dicom")
    page.get_by_text("DICOM CT slice, 128×128 px").wait_for(timeout=RESULT_MS)
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
            find_minimal_eps=False,  # off unless asked for: its cost is stated beside the switch
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


# ------------------------------------------------------------------------ the newcomer's path
#: The demo's CPU recipe shrunk to seconds: the same code path as ``python -m pipeline demo``
#: (tests/test_demo.py checks what the full recipes learn; bench/demo.py times the real one).
TINY_DEMO = DemoRecipe(
    name="tiny",
    preset="quick",
    standard={"image_size": 48, "count": 150, "val_fraction": 0.2, "test_fraction": 0.2, "epochs": 1,
              "batch_size": 16, "augment": False, "val_steps": 1, "eval_size": 8},
    robust={"strategy": "pgd", "eps": 2 / 255, "steps": 1, "alpha": 2.5 / 255, "epochs": 1, "val_steps": 1},
    minutes=1.0,
    machine="one CPU core",
    shares=(0.4, 0.4, 0.2),
    eval_steps=2,
)


def prepare_the_demo(page, fresh: Server) -> Demo:
    """THE DEMO STEP. The first-start card offers to prepare the demo, minutes on a CPU; the walk
    prepares a shrunk one through the same code instead, this test's process standing in for the
    demo job (as a job started from a terminal does). The page waits for the job and, when it ends,
    moves on by itself, without a reload, to the demo: the standard model in use, the robust one
    beside it, PGD at the budget of the story."""
    card = page.get_by_role("button", name=re.compile(r"^Retrain the demo yourself \(about \d+ minutes on .+\)$"))
    assert card.count() == 1 and page.get_by_role("button", name="Open the demo (ready in seconds)").count() == 1
    with JobContext(demo_job_dir(fresh.runs), kind="demo") as job:
        job.status(phase="running", message="training the standard model", progress=0.1)
        page.reload()  # the page now waits for the job...
        page.get_by_text("The demo's two models are being trained").wait_for(timeout=RESULT_MS)
        demo = prepare_demo(fresh.runs, TINY_DEMO)
        job.finish(message="the demo is ready", runs=[model.run_dir.name for model in demo.models])
    # ...and follows it when it ends, by itself: the story's two models side by side
    page.get_by_role("button", name="Run the attack").wait_for(timeout=RESULT_MS)
    wait_idle(page)
    assert page.get_by_role("combobox", name="Attack", exact=True).input_value() == "PGD (L∞) · white-box"
    beside = page.get_by_role("combobox", name="Compare with a second model").input_value()
    assert beside == "ResNet-18 · PGD-AT ft · 48 px", beside  # short; in full under it:
    assert page.get_by_text(f"fine-tuned, 48 px · {demo.robust.run_dir.name}").count() == 1
    budget = page.locator('[data-testid="stSlider"]').filter(has_text="Budget").inner_text()
    assert "2.00/255" in budget, budget
    assert page.get_by_role("spinbutton", name="Steps").input_value() == str(demo.eval_steps)  # as measured
    return demo


def test_a_newcomer_walks_from_the_first_start_to_the_models(browser, fresh_server: Server) -> None:
    """First start, the demo, an attack, an evaluation and the Models page, as a person meets them."""
    page = new_page(browser)
    page.goto(fresh_server.url)
    # First start: the app's own navigation and the page title come before the libraries load, and
    # the navigation never lists the page files.
    labels_seen: list[list[str]] = []
    while not page.locator('[data-testid="stMain"] h1').count() or not navigation(page):
        labels_seen.append(navigation(page))
        page.wait_for_timeout(100)
    labels_seen.append(navigation(page))
    assert all(labels in ([], NAVIGATION) for labels in labels_seen), labels_seen
    assert page.locator('[data-testid="stMain"] h1').first.inner_text() == "Attack a scan"
    page.get_by_role("heading", name="No trained model yet").wait_for(timeout=RESULT_MS)
    wait_idle(page)
    assert_no_error(page)
    assert LOADING not in page.locator('[data-testid="stMain"]').inner_text()  # nothing stale is left
    screenshot(page, "first-start", publish=True)

    demo = prepare_the_demo(page, fresh_server)

    # Attack: PGD with the demo's steps; the costly budget search is off and says what it would cost.
    page.locator('[data-testid="stSelectbox"]').filter(has_text="Attack").first.click()
    page.get_by_role("option", name="PGD (L∞) · white-box").click()
    page.get_by_text("Costs up to 8 more runs of PGD (L∞)").wait_for(timeout=RESULT_MS)
    wait_idle(page)
    search = page.locator("label").filter(has_text="Find the smallest budget").locator("input")
    assert not search.is_checked()
    run_attack(page)
    assert_no_error(page)
    assert metric(page, "Largest change").endswith("/255")
    assert metric(page, "Total change (L2)").endswith("/255")  # one unit, grey levels, for both sizes
    trace = next(chart for chart in page.evaluate(CHARTS) if chart["x"].startswith("attack step"))
    # the original scan and one point per step, and no threshold line
    assert trace == {"x": "attack step (0 = the original scan)", "points": demo.eval_steps + 1, "shapes": 0}
    assert_charts_laid_out(page)

    # Evaluate: a small evaluation in the background, its bar saying honestly how long is left.
    go(page, "Evaluate")
    form = page.locator('[data-testid="stForm"]')
    form.get_by_role("spinbutton", name="At most this many scans (0 = all)").fill("3")
    form.get_by_text("Strength checks").click()
    form.get_by_role("button", name="Start the evaluation").click()
    bars: list[str] = []
    header = page.get_by_text(re.compile(r"^3 test scans"))
    while not header.count():
        bars += page.locator('[data-testid="stProgress"]').all_inner_texts()
        page.wait_for_timeout(250)
        assert len(bars) < 100_000
    wait_idle(page)
    assert_no_error(page)
    assert all(TIME_LEFT.search(" ".join(bar.split())) for bar in bars if bar.strip()), bars
    main = page.locator('[data-testid="stMain"]').inner_text()
    assert not re.search(r"Evaluation \d{8}-\d{6}", main)  # no box left behind by the finished job
    ours = page.locator('[data-testid="stTable"]').first.inner_text()
    assert re.search(r"\d+%", ours) and not re.search(r"\d+\.\d+%", ours)  # 3 scans: whole percent

    # Models: the run as the store has it, every column readable.
    go(page, "Models")
    assert page.get_by_text(demo.standard.run_dir.name).count() >= 1
    assert page.locator('[data-testid="stTable"]').count() >= 1  # the settings, nothing cut off
    assert_charts_laid_out(page)
    assert_no_error(page)
    assert OUTSIDE.pop(page) == []
    page.context.close()
