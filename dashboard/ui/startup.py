"""The first start of a server: paint the page at once and load the heavy libraries behind it.

The first script run of a fresh server process imports PyTorch, torchvision, grad-cam and the
pipeline: seconds on an idle machine, tens of seconds on a busy one. Done in the script, that
leaves the page blank all the while. So the entry point imports only Streamlit and this module,
draws the navigation and the page's title, and waits here while one background thread per
server process imports what the entry point and the page scripts import, saying which module it
is on. Every later script run finds them imported and passes straight through.

This module must stay light: it imports nothing beyond Streamlit and the standard library.
"""

from __future__ import annotations

import ast
import importlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import streamlit as st

DASHBOARD = Path(__file__).resolve().parents[1]
#: Imported first: by far the slowest, and what everything else needs.
FIRST = ("torch", "torchvision")
POLL_S = 0.5


def script_imports(scripts: list[Path]) -> list[tuple[str, tuple[str, ...]]]:
    """What ``scripts`` import: ``(module, names)`` per module, ``names`` from ``from module import ...``.

    Read from the scripts' source, so the list cannot fall behind what the pages really import.
    """
    found: dict[str, tuple[str, ...]] = {name: () for name in FIRST}
    for script in scripts:
        for node in ast.walk(ast.parse(script.read_text(), filename=str(script))):
            if isinstance(node, ast.Import):
                found.update({alias.name: found.get(alias.name, ()) for alias in node.names})
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = tuple(alias.name for alias in node.names)
                found[node.module] = tuple(dict.fromkeys(found.get(node.module, ()) + names))
    return list(found.items())


def import_names(module: str, names: tuple[str, ...]) -> None:
    """``from module import *names`` without binding anything: a name that is a submodule is imported."""
    loaded = importlib.import_module(module)
    for name in names:
        if not hasattr(loaded, name):
            importlib.import_module(f"{module}.{name}")


@dataclass
class Loader:
    """Imports ``modules`` in a background thread once started; ``done`` counts them, ``current``
    names the one being imported. A failure is kept in ``error`` and stops the loader."""

    modules: list[tuple[str, tuple[str, ...]]]
    done: int = 0
    current: str = ""
    error: Optional[BaseException] = None
    started: Optional[float] = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _finished: threading.Event = field(default_factory=threading.Event, repr=False)

    def start(self) -> None:
        """Start importing, unless another session already did."""
        with self._lock:
            if self.started is None:
                self.started = time.monotonic()
                threading.Thread(target=self._main, name="lunglab-startup", daemon=True).start()

    def _main(self) -> None:
        try:
            for module, names in self.modules:
                self.current = module
                import_names(module, names)
                self.done += 1
        except BaseException as error:  # shown on the page; a thread has no one else to tell
            self.error = error
        finally:
            self._finished.set()

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True once every module is imported (or one failed)."""
        return self._finished.wait(timeout)

    @property
    def fraction(self) -> float:
        return self.done / len(self.modules) if self.modules else 1.0

    def describe(self) -> str:
        elapsed = time.monotonic() - (self.started or time.monotonic())
        if not self.current:
            return "Starting to load the analysis libraries"
        return f"Loading {self.current} · module {self.done + 1} of {len(self.modules)} · {elapsed:.0f} s so far"


@st.cache_resource(show_spinner=False)
def _loader() -> Loader:
    """One loader per server process, started by the first script run."""
    scripts = [DASHBOARD / "app.py", *sorted((DASHBOARD / "views").glob("*.py"))]
    return Loader(script_imports(scripts))


def wait_until_loaded(title: str) -> None:
    """Return once the libraries are imported; meanwhile show ``title`` and what is loading.

    Once the libraries are loaded this returns at once and draws nothing. Before, it draws the page's
    title and a progress bar that names the module being imported, then reruns the script. A
    failed import (a missing dependency) ends the run with a message saying how to install it.
    """
    loader = _loader()
    if not loader.finished:
        # Drawn before the import starts: importing torch leaves little CPU for anything else. One
        # container, so that the page's own first element replaces all of it: nothing stale is left.
        with st.container():
            st.title(title)
            bar = st.progress(loader.fraction, text=loader.describe())
            st.caption(
                "A freshly started server loads PyTorch and the analysis libraries once, before the first "
                "page can be drawn; every page after this one opens at once."
            )
        loader.start()
        while not loader.wait(POLL_S):
            bar.progress(loader.fraction, text=loader.describe())
        st.rerun()
    if loader.error is not None:
        st.error(
            f"The lab could not load {loader.current} ({loader.error}). Install its dependencies with "
            "`bash scripts/setup.sh` and start the server again.",
            icon=":material/error:",
        )
        st.stop()
