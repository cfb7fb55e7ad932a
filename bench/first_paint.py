"""Time from ``streamlit run dashboard/app.py`` to the first painted page, in headless Chromium.

    python bench/first_paint.py               # three cold starts on an empty runs folder
    python bench/first_paint.py --repeats 5

Each repeat starts a fresh server process (a cold start: nothing imported, nothing cached in it)
on its own port with an empty runs folder, as a newcomer's first start is, and opens the default
page in Debian's Chromium (``/usr/bin/chromium``, never a downloaded browser). The clock starts
when the server process is launched. Columns:

- ``server up``: the server answers its health check;
- ``first paint``: the page's title and the app's own navigation (not the page files) are drawn;
- ``page ready``: the page's own content is there (the first-start card or the attack form);
- ``outside requests``: requests the page made to any host but this machine (must be 0).

Prints a Markdown table. On a shared machine the absolute times vary with the load; the figure
the product promises (first paint under 5 s) is for an idle machine.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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
PAGE_READY = """() => {
    const text = document.querySelector('[data-testid="stMain"]')?.innerText || "";
    return text.includes("No trained model yet") || text.includes("Run the attack");
}"""
TIMEOUT_S = 300


@dataclass
class Start:
    server_up: float
    first_paint: float
    page_ready: float
    outside: list[str]
    file_names_in_nav: bool


def outside(url: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme in ("http", "https", "ws", "wss") and parsed.hostname not in LOCAL_HOSTS


def one_start(browser, home: Path) -> Start:
    runs = home / "runs"
    runs.mkdir()
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    names_seen: set[str] = set()
    started = time.monotonic()
    try:
        with serve(home, runs, startup_s=TIMEOUT_S) as url:
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
            page.wait_for_function(PAGE_READY, timeout=TIMEOUT_S * 1000, polling=50)
            page_ready = time.monotonic() - started
            page.wait_for_timeout(1000)  # late requests (favicon, fonts) after the content arrived
    finally:
        context.close()
    # a link's text is its icon's ligature name, then its label
    labels = {name.strip().splitlines()[-1].strip() for name in names_seen if name.strip()}
    return Start(
        server_up,
        first_paint,
        page_ready,
        sorted({request for request in requests if outside(request)}),
        bool(labels - set(NAVIGATION)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    starts = []
    with sync_playwright() as playwright, tempfile.TemporaryDirectory(prefix="first-paint-") as temp:
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
        f"load average {load:.1f} at the end (shared machine), cold server start, empty runs folder\n"
    )
    print(
        "| start | server up (s) | first paint (s) | page ready (s) | outside requests | page files in nav |"
    )
    print("|---|---|---|---|---|---|")
    for number, start in enumerate(starts, 1):
        print(
            f"| {number} | {start.server_up:.1f} | {start.first_paint:.1f} | {start.page_ready:.1f} "
            f"| {len(start.outside)} | {'yes' if start.file_names_in_nav else 'no'} |"
        )
    print(
        f"| median | {statistics.median(s.server_up for s in starts):.1f} "
        f"| {statistics.median(s.first_paint for s in starts):.1f} "
        f"| {statistics.median(s.page_ready for s in starts):.1f} | | |"
    )
    for request in sorted({request for start in starts for request in start.outside}):
        print(f"outside request: {request}")


if __name__ == "__main__":
    main()
