"""The progress callback every long operation accepts.

The same callback drives a tqdm bar in the CLI and a progress widget in the dashboard, so the
long-running code never knows which front end is watching.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Optional, Sequence

#: ``progress(done, total, message)``; ``total`` may be 0 when unknown.
ProgressCallback = Callable[[int, int, str], None]


def report(progress: Optional[ProgressCallback], done: int, total: int, message: str = "") -> None:
    """Call ``progress`` if one was given; keeps call sites free of ``if progress`` noise."""
    if progress is not None:
        progress(done, total, message)


def tqdm_progress(description: str) -> ProgressCallback:
    """A callback that draws a tqdm bar on stderr, for the command line.

    The bar is created at the first report, so an error raised while arguments are still being
    checked is printed on a clean line rather than glued to an empty bar.
    """
    from tqdm import tqdm

    bar: Optional[tqdm] = None

    def update(done: int, total: int, message: str) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(desc=description, unit="step", dynamic_ncols=True)
        if total and bar.total != total:
            bar.total = total
        bar.n = done
        if message:
            bar.set_postfix_str(message, refresh=False)
        bar.refresh()
        if total and done >= total:
            bar.close()

    return update


#: Without progress for this long, a bar says so instead of "estimating".
QUIET_S = 10.0
#: Resolution of one stage in :func:`staged`; a caller reporting between stages uses multiples of it.
STAGE_STEPS = 1000


def staged(
    progress: Optional[ProgressCallback],
    index: int,
    stages: int | Sequence[float],
    name: str,
    *,
    separator: str = ": ",
) -> Optional[ProgressCallback]:
    """A callback that maps stage ``index``'s own ``done/total`` into its share of all the stages.

    Long operations are built from steps that each report their own progress (an attack, a
    sweep, a certification); this lets one bar cover them all without any step knowing it is
    one of several. ``stages`` is their number, each an equal share (stage ``index`` fills
    ``[index, index + 1) * STAGE_STEPS`` of ``stages * STAGE_STEPS``), or each stage's weight,
    e.g. its measured share of the time. A stage that overshoots its total is clamped so the bar
    never runs backwards, and each message is prefixed with ``name``. Returns ``None`` when
    ``progress`` is ``None``, so nothing is called at all.
    """
    if progress is None:
        return None
    if isinstance(stages, int):
        whole, start, width = STAGE_STEPS * max(stages, 1), float(STAGE_STEPS * index), float(STAGE_STEPS)
    else:
        whole = STAGE_STEPS * len(stages)
        scale = whole / sum(stages)
        start, width = scale * sum(stages[:index]), scale * stages[index]

    def inner(done: int, total: int, message: str) -> None:
        share = min(done / total, 1.0) if total else 0.0
        progress(int(start + width * share), whole, f"{name}{separator}{message}" if message else name)

    return inner


class TimeLeft:
    """Seconds left, from the rate measured over the last ``window_s`` seconds of progress.

    Feed :meth:`update` every report (``fraction`` of the work done at time ``now``, any clock).
    The rate is recent, not the run's average, so a slow stage after fast ones soon shows its own
    pace; and :meth:`seconds` keeps counting down between reports, going negative when a report
    is overdue, so a silent job can never show a frozen "about 17 min left". No estimate (None)
    until ``min_span_s`` seconds of progress have been measured. Time is passed in, so the same
    reports always give the same answer.
    """

    def __init__(self, window_s: float = 30.0, min_span_s: float = 1.0) -> None:
        self.window_s, self.min_span_s = window_s, min_span_s
        self._points: deque[tuple[float, float]] = deque()
        self.moved: Optional[float] = None  #: when the fraction last grew, on the caller's clock

    def update(self, fraction: float, now: float) -> None:
        if self._points and fraction < self._points[-1][1]:
            self._points.clear()  # the work started over: the old rate says nothing
        if not self._points or fraction > self._points[-1][1]:
            self.moved = now
        self._points.append((now, fraction))
        while len(self._points) > 2 and now - self._points[1][0] >= self.window_s:
            self._points.popleft()

    def seconds(self, now: float) -> Optional[float]:
        """Seconds left at ``now`` (negative: the next report is that late); None without a rate yet."""
        if len(self._points) < 2:
            return None
        (start, first), (last, latest) = self._points[0], self._points[-1]
        if last - start < self.min_span_s or latest <= first:
            return None
        return (1.0 - latest) * (last - start) / (latest - first) - (now - last)


def time_left_words(seconds: float | None, quiet: float) -> str:
    """What a progress bar says about the time left: ``seconds`` from :meth:`TimeLeft.seconds`
    (None: no rate yet; negative: overdue) and ``quiet``, the seconds since the work last moved.

    ``about 12 s left`` / ``about 3 min left``; ``estimating time left``; and when the work is later
    than its measured rate promised, how long it has been quiet, never a frozen or negative count.
    """
    if seconds is None:
        return "estimating time left" if quiet < QUIET_S else f"no progress for {quiet:.0f} s"
    if seconds < 0:
        return f"slower than measured so far: no progress for {quiet:.0f} s"
    return f"about {seconds:.0f} s left" if seconds < 90 else f"about {seconds / 60:.0f} min left"
