"""Work that outlives one script run: a thread with progress, a result and a cancel switch.

A slow attack (CW on a CPU) or a minimal-epsilon search must not freeze the page. The page starts
a :class:`Task`, keeps it in ``st.session_state`` and polls it from a fragment; the thread never
touches Streamlit, it only updates this object. Cancelling makes the next progress report raise
:class:`Cancelled`, so the pipeline code unwinds through its own ``finally`` blocks.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from pipeline.errors import UserInputError
from pipeline.progress import Progress, ProgressCallback, Step, TimeLeft, time_left_words


class Cancelled(UserInputError):
    """Raised inside the worker when the user pressed Cancel."""


@dataclass
class Task:
    """One background computation: ``work(progress) -> result``."""

    label: str
    work: Callable[[ProgressCallback], Any]
    inputs: dict[str, Any] = field(default_factory=dict)
    done: int = 0
    total: int = 0
    message: str = ""
    result: Any = None
    error: Optional[BaseException] = None
    started: float = field(default_factory=time.monotonic)
    finished: Optional[float] = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _timer: TimeLeft = field(default_factory=TimeLeft, repr=False)
    _thread: Optional[threading.Thread] = field(default=None, repr=False)

    def start(self) -> "Task":
        self._thread = threading.Thread(target=self._main, name=f"lunglab-{self.label}", daemon=True)
        self._thread.start()
        return self

    def _main(self) -> None:
        try:
            self.result = self.work(Progress(self._progress))
        except BaseException as error:  # the page shows it; a worker thread has no one else to tell
            self.error = error
        finally:
            self.finished = time.monotonic()

    def _progress(self, done: int, total: int, message: str, step: Optional[Step]) -> None:
        if self._cancel.is_set():
            raise Cancelled("it was cancelled; start it again when you are ready")
        self.done, self.total, self.message = done, total, message
        self._timer.update(self.fraction, time.monotonic(), step)

    def time_left(self) -> str:
        """The time left in words, from each phase's measured cost (:class:`pipeline.progress.TimeLeft`)."""
        now = time.monotonic()
        return time_left_words(self._timer.seconds(now), now - (self._timer.moved or self.started))

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def running(self) -> bool:
        return self.finished is None

    @property
    def cancelled(self) -> bool:
        return isinstance(self.error, Cancelled)

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True when the work has finished."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running
