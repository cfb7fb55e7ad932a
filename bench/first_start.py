"""A newcomer's first minute, in headless Chromium: from ``streamlit run dashboard/app.py`` on a fresh
clone (empty runs folder, empty cache) to the demo's story attacked, and a first upload attacked.

    python bench/first_start.py               # three cold starts
    python bench/first_start.py --repeats 5

Each repeat starts a fresh server process (a cold start: nothing imported, nothing cached in it) on
its own port with an empty runs folder and an empty cache, as a fresh clone's first start is, and
opens the default page in Debian's Chromium (``/usr/bin/chromium``, never a downloaded browser).
The clock starts when the server process is launched. Columns (seconds):

- ``server up``: the server answers its health check;
- ``first paint``: the page's title and the app's own navigation (not the page files) are drawn;
- ``story ready``: the Attack page shows the shipped demo's story: the standard model in use, the
  robust one beside it, the story scan and "Run the attack" (nothing is trained);
- ``story attack 1`` / ``story attack 2``: from the click on "Run the attack" (PGD at 2/255 on both
  models, Grad-CAM included) to both results on screen, the first time and again;
- ``upload attack``: a phantom slice uploaded as PNG, from the click to its result (the model's
  out-of-distribution statistics are shipped, so nothing is fitted on the click path);
- ``outside requests``: requests the page made to any host but this machine (must be 0).

Targets (issue 22, for an idle 2-core machine): first paint <= 3 s, story ready <= 10 s, each attack
<= 5 s. Prints a Markdown table; on a shared machine the absolute times vary with the load.
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.data.phantom import render_slice  # noqa: E402
from tests.dashboard_server import serve  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
#: The app's navigation labels; the page files' names (``app``, ``attack``…) must never show instead.
NAVIGATION = ("Data", "Train", "Attack a scan", "Evaluate", "Models")
FIRST_PAINT = r"""() => {
    const title = document.querySelector('[data-testid="stMain"] h1');
    const links = [...document.querySelectorAll('[data-testid="stSidebarNav"] a')];
    const nav = links.map(a => a.innerText.trim().split("\n").pop().trim());
    return title && title.innerText.trim().length > 0 && nav.includes("Attack a scan");
}"""
STORY_READY = """() => {
    const main = document.querySelector('[data-testid="stMain"]');
    const text = main?.innerText || "";
    const run = [...main.querySelectorAll('button')].find(b => b.innerText.includes("Run the attack"));
    return text.includes("The demo: a standard and a robust model") && text.includes("Test scan")
        && run && !run.disabled && !document.querySelector('[data-testid="stStatusWidget"]');
}"""
#: Both models' results for the current choices are on screen.
RESULTS = """(models) => {
    const text = document.querySelector('[data-testid="stMain"]').innerText;
    const shown = (text.match(/The answer changed|The answer held|Wrong before the attack/g) || []).length;
    return shown >= models && text.includes("Largest change") && !text.includes("for the previous choices")
        && !text.includes("Running ")
        && !document.querySelector('[data-testid="stStatusWidget"]');
}"""
#: The attack's task has started: its progress is shown, or the results of the earlier click are gone.
RUNNING = """() => {
    const text = document.querySelector('[data-testid="stMain"]').innerText;
    return text.includes("Running ") || !text.includes("Largest change");
}"""
TIMEOUT_S = 300


@dataclass
class Start:
    server_up: float
    first_paint: float
    story_ready: float
    story_attacks: tuple[float, float]
    upload_attack: float
    outside: list[str]
    file_names_in_nav: bool


def outside(url: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme in ("http", "https", "ws", "wss") and parsed.hostname not in LOCAL_HOSTS


def attack(page, models: int) -> float:
    """Seconds from a click on "Run the attack" to ``models`` results on screen."""
    started = time.monotonic()
    page.get_by_role("button", name="Run the attack").click()
    # the results of an earlier click stay on screen until the new task shows its progress
    page.wait_for_function(RUNNING, timeout=TIMEOUT_S * 1000, polling=20)
    page.wait_for_function(RESULTS, arg=models, timeout=TIMEOUT_S * 1000, polling=50)
    return time.monotonic() - started


def phantom_png() -> bytes:
    """A malignant phantom slice of another seed than the demo's, as an 8-bit PNG upload."""
    image = render_slice(1, np.random.default_rng([7, 0]), 256)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def one_start(browser, home: Path) -> Start:
    runs = home / "runs"
    runs.mkdir()
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    names_seen: set[str] = set()
    started = time.monotonic()
    try:
        with serve(home, runs, startup_s=TIMEOUT_S, demo=True) as url:
            server_up = time.monotonic() - started
            page.goto(url)
            # Poll often and remember every label the navigation ever showed, not only the last ones.
            while not page.evaluate(FIRST_PAINT):
                names_seen.update(page.locator('[data-testid="stSidebarNav"] a').all_inner_texts())
                if time.monotonic() - started > TIMEOUT_S:
                    raise RuntimeError("the page never painted")
                page.wait_for_timeout(50)
            first_paint = time.monotonic() - started
            names_seen.update(page.locator('[data-testid="stSidebarNav"] a').all_inner_texts())
            page.wait_for_function(STORY_READY, timeout=TIMEOUT_S * 1000, polling=50)
            story_ready = time.monotonic() - started
            story = (attack(page, 2), attack(page, 2))
            page.locator('[data-testid="stButtonGroup"]').get_by_text("Upload", exact=True).click()
            page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(
                {"name": "phantom.png", "mimeType": "image/png", "buffer": phantom_png()}
            )
            page.get_by_text("PNG image").first.wait_for(timeout=TIMEOUT_S * 1000)
            page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
                                   timeout=TIMEOUT_S * 1000)
            upload = attack(page, 2)
            page.wait_for_timeout(1000)  # late requests (favicon, fonts) after the content arrived
    finally:
        context.close()
    # a link's text is its icon's ligature name, then its label
    labels = {name.strip().splitlines()[-1].strip() for name in names_seen if name.strip()}
    return Start(server_up, first_paint, story_ready, story, upload,
                 sorted({request for request in requests if outside(request)}), bool(labels - set(NAVIGATION)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    starts = []
    with sync_playwright() as playwright, tempfile.TemporaryDirectory(prefix="first-start-") as temp:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        for number in range(args.repeats):
            home = Path(temp) / str(number)
            home.mkdir()
            starts.append(one_start(browser, home))
        browser.close()
    load = os.getloadavg()[0]
    print(
        f"\n{datetime.date.today()}, {platform.machine()} CPU, {os.cpu_count()} cores, "
        f"load average {load:.1f} at the end, cold server start, empty runs folder and cache\n"
    )
    columns = ("server up", "first paint", "story ready", "story attack 1", "story attack 2", "upload attack")
    print("| start | " + " | ".join(f"{c} (s)" for c in columns) + " | outside requests | page files in nav |")
    print("|---" * (len(columns) + 3) + "|")
    rows = [(s.server_up, s.first_paint, s.story_ready, *s.story_attacks, s.upload_attack) for s in starts]
    for number, (start, row) in enumerate(zip(starts, rows), 1):
        print(f"| {number} | " + " | ".join(f"{value:.1f}" for value in row)
              + f" | {len(start.outside)} | {'yes' if start.file_names_in_nav else 'no'} |")
    print("| median | " + " | ".join(f"{statistics.median(column):.1f}" for column in zip(*rows)) + " | | |")
    for request in sorted({request for start in starts for request in start.outside}):
        print(f"outside request: {request}")


if __name__ == "__main__":
    main()
