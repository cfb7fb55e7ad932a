"""The progress callback every long operation accepts.

The same callback drives a tqdm bar in the CLI and a progress widget in the dashboard, so the
long-running code never knows which front end is watching.
"""

from __future__ import annotations

from typing import Callable, Optional

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


#: Resolution of one stage in :func:`staged`; a caller reporting between stages uses multiples of it.
STAGE_STEPS = 1000


def staged(
    progress: Optional[ProgressCallback],
    index: int,
    stages: int,
    name: str,
    *,
    separator: str = ": ",
) -> Optional[ProgressCallback]:
    """A callback that maps stage ``index``'s own ``done/total`` into its share of ``stages`` stages.

    Long operations are built from steps that each report their own progress (an attack, a
    sweep, a certification); this lets one bar cover them all without any step knowing it is
    one of several. Stage ``index`` fills ``[index, index + 1) * STAGE_STEPS`` of
    ``stages * STAGE_STEPS``; a stage that overshoots its total is clamped so the bar never runs
    backwards, and each message is prefixed with ``name``. Returns ``None`` when ``progress``
    is ``None``, so nothing is called at all.
    """
    if progress is None:
        return None
    whole = STAGE_STEPS * max(stages, 1)

    def inner(done: int, total: int, message: str) -> None:
        share = min(done / total, 1.0) if total else 0.0
        progress(int(STAGE_STEPS * (index + share)), whole, f"{name}{separator}{message}" if message else name)

    return inner
