"""What a newcomer meets before any page works: the first start of a server, and the wording that
must not contradict the figures beside it. Browser-level checks of the same path (first paint,
no request leaving the machine) are in ``test_dashboard_browser.py``.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dashboard.ui.captions import leak_verdict
from dashboard.ui.startup import Loader, script_imports

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "dashboard"
HEAVY = ("torch", "torchvision", "pytorch_grad_cam", "scipy", "pipeline")


def imports_before_the_loading_screen() -> list[str]:
    """The import statements of app.py that run before it hands over to the loading screen."""
    tree = ast.parse((DASHBOARD / "app.py").read_text())
    lines: list[str] = []
    for node in tree.body:
        if "wait_until_loaded" in ast.unparse(node):
            return lines
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            lines.append(ast.unparse(node))
    raise AssertionError("app.py never calls startup.wait_until_loaded")


def test_the_entry_point_draws_before_it_imports_anything_heavy() -> None:
    """Everything app.py imports before its loading screen is light: no torch, no pipeline."""
    code = "\n".join(
        [*imports_before_the_loading_screen(), "import json, sys", "print(json.dumps(sorted(sys.modules)))"]
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    loaded = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert not {name for name in loaded if name.split(".")[0] in HEAVY}


def test_no_pages_folder_beside_the_entry_point() -> None:
    """Streamlit lists a ``pages/`` folder's file names in the sidebar on a fresh server's first run."""
    assert not (DASHBOARD / "pages").exists()
    pages = set(re.findall(r'st\.Page\("(views/\w+\.py)"', (DASHBOARD / "app.py").read_text()))
    assert {f"views/{path.name}" for path in (DASHBOARD / "views").glob("*.py")} == pages  # each view a page
    assert len(pages) == 6


def test_the_loader_imports_what_the_pages_import() -> None:
    modules = dict(script_imports([DASHBOARD / "app.py", *sorted((DASHBOARD / "views").glob("*.py"))]))
    assert list(modules)[:2] == ["torch", "torchvision"]  # the slowest first
    assert "scan_views" in modules["dashboard.ui"] and "analyse_scan" in modules["pipeline.scan_report"]
    assert "status" in modules["dashboard.ui"]  # app.py's own late import is loaded too


def test_the_loader_names_a_missing_dependency() -> None:
    loader = Loader([("json", ()), ("no_such_module_for_the_lab", ()), ("csv", ())])
    loader.start()
    assert loader.wait(30)
    assert isinstance(loader.error, ModuleNotFoundError)
    assert loader.current == "no_such_module_for_the_lab" and loader.done == 1


@pytest.mark.parametrize(
    ("random_split", "share", "adjacent", "level", "words"),
    [
        (True, 0.0, 0, "info", "happens to put no near-twin"),
        (True, 0.25, 0, "warning", "25% of the test scans have a near-twin"),
        (True, 0.0, 12, "warning", "12 pairs of neighbouring slices"),
        (False, 0.0, 0, "success", "No test scan"),
        (False, 0.1, 0, "info", "10% of the test scans resemble"),
    ],
)
def test_the_split_message_agrees_with_the_measured_leaks(
    random_split: bool, share: float, adjacent: int, level: str, words: str
) -> None:
    leaks = {"test_with_similar_in_train_fraction": share, "adjacent_slices_across": adjacent}
    shown_level, text = leak_verdict(random_split, leaks)
    assert shown_level == level and words in text
    if share == 0 and adjacent == 0:
        assert "leaks:" not in text  # nothing measured leaks, so the message must not say it does
