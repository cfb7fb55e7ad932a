"""The README's picture of the demo's story, taken from a real prepared demo in headless Chromium.

    .venv/bin/python -m pipeline demo --runs-dir /tmp/demo-runs        # installs the shipped demo: seconds
    .venv/bin/python scripts/demo_screenshot.py --runs /tmp/demo-runs  # writes docs/screenshots/demo.png

Serves the dashboard over ``--runs`` (which must hold ``demo.json``), lets the Attack page open on
the demo's story (the standard model, the robust one beside it, the story scan, PGD at 2/255),
presses **Run the attack** and saves the whole page. Debian's Chromium (``/usr/bin/chromium``) is
used, never a downloaded browser. Look at the picture before committing it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.demo import read_demo  # noqa: E402
from tests.dashboard_server import full_length_screenshot, serve  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 600_000
#: The attack's results are drawn and no script run is pending.
RESULTS_DRAWN = """() => {
    const text = document.querySelector('[data-testid="stMain"]')?.innerText || "";
    return text.includes("Largest change") && !text.includes("Running ")
        && !document.querySelector('[data-testid="stStatusWidget"]');
}"""
IDLE = "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="a runs folder with a prepared demo")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots" / "demo.png")
    args = parser.parse_args()
    if read_demo(args.runs) is None:
        parser.error(f"{args.runs} holds no demo; prepare one with python -m pipeline demo --runs-dir {args.runs}")

    from playwright.sync_api import expect, sync_playwright

    with tempfile.TemporaryDirectory() as home, serve(Path(home), args.runs.resolve()) as url:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1440, "height": 1100})
            page.goto(url)
            run = page.get_by_role("button", name="Run the attack")
            expect(run).to_be_enabled(timeout=TIMEOUT_MS)  # once the test scans are loaded (rendered if not cached)
            page.wait_for_function(IDLE, timeout=TIMEOUT_MS)
            run.click()
            page.wait_for_timeout(1000)
            page.wait_for_function(RESULTS_DRAWN, timeout=TIMEOUT_MS)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            full_length_screenshot(page, args.out, timeout_ms=TIMEOUT_MS, max_height=5000)
            browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
