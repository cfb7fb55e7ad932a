"""The import graph DESIGN.md draws: layers in one direction, no cycle, every module placed.

The contracts live in pyproject.toml (``[tool.importlinter]``) and are checked by import-linter,
which builds the graph with grimp from the source, without importing anything.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from importlinter import configuration
from importlinter.application.use_cases import lint_imports

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = REPO / "pyproject.toml"


def _contracts() -> dict[str, dict]:
    settings = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]
    return {contract["id"]: contract for contract in settings["contracts"]}


def test_imports_follow_the_layers_without_cycles(capsys) -> None:
    configuration.configure()  # what the lint-imports command does first
    passed = lint_imports(config_filename=str(PYPROJECT), cache_dir=None, no_logo=True)
    report = capsys.readouterr().out
    assert passed, report
    assert "2 kept, 0 broken" in report, report


def test_every_pipeline_module_has_a_layer() -> None:
    """A new top-level module must say where it sits, or the layer contract would not see it."""
    layers = _contracts()["layers"]["layers"]
    placed = {name.strip() for layer in layers for name in layer.split("|")}
    modules = {
        f"pipeline.{path.stem}"
        for path in (REPO / "pipeline").iterdir()
        if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").is_file()
    }
    assert modules - placed == set(), f"add these to a layer in pyproject.toml: {sorted(modules - placed)}"
