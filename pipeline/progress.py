"""The progress callback every long operation accepts, and the one estimate of the time left.

The same callback drives a tqdm bar in the CLI and a progress widget in the dashboard, so the
long-running code never knows which front end is watching.

A callback may also take *structured* reports (:class:`Step`): which phase of its plan the work is
in (a training epoch's train part, its validation, the demo's held-out check, an evaluation
section), how far into it, and which phases come after it. :class:`TimeLeft` learns each kind of
phase's cost from its own measured durations and prices the phases still to come with it, so the
time left holds from one phase to the next instead of following the last 30 seconds' rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

#: ``progress(done, total, message)``; ``total`` may be 0 when unknown.
ProgressCallback = Callable[[int, int, str], None]

#: The unit of the phases :func:`staged` makes without a plan: each stage's weight.
STAGE = "stage"
#: The unit of :attr:`Phase.work` for model work: one forward and backward pass of one image
#: (a forward pass alone counts a third).
PASS = "pass"


@dataclass(frozen=True)
class Phase:
    """One phase of a long operation as the time-left estimate sees it.

    ``kind`` names its cost class: phases of one kind cost the same per unit of work (every
    epoch's train part of one run; every model's attack section of an evaluation). ``work`` is its
    size in ``unit`` (>= 0): in :data:`PASS` for model work, so that a kind that has not run yet is
    priced from the kinds that have (per pass), never from nothing; phases in other units (scans
    loaded) are priced from their own unit first.
    """

    kind: str
    work: float = 1.0
    unit: str = PASS


@dataclass(frozen=True)
class Step:
    """A structured progress report: the work is ``fraction`` (in [0, 1]) into ``phase``.

    ``key`` tells this phase apart from every other phase of the same operation (epoch 3's
    validation from epoch 4's); ``ahead`` lists the phases still to come after it, in order.
    """

    key: tuple[Any, ...]
    phase: Phase
    fraction: float
    ahead: tuple[Phase, ...] = ()


class Progress:
    """A progress callback that also takes structured steps: ``callback(done, total, message)`` for
    anyone, :meth:`update` with a :class:`Step` through :func:`report`. Wraps ``function(done, total,
    message, step)``, where ``step`` is None for a plain report."""

    def __init__(self, function: Callable[[int, int, str, Optional[Step]], None]) -> None:
        self.function = function

    def __call__(self, done: int, total: int, message: str) -> None:
        self.function(done, total, message, None)

    def update(self, done: int, total: int, message: str, step: Optional[Step]) -> None:
        self.function(done, total, message, step)


def report(
    progress: Optional[ProgressCallback],
    done: int,
    total: int,
    message: str = "",
    *,
    step: Optional[Step] = None,
) -> None:
    """Call ``progress`` if one was given, with ``step`` where it takes structured steps
    (a :class:`Progress`); keeps call sites free of ``if progress`` noise."""
    if progress is None:
        return
    if isinstance(progress, Progress):
        progress.update(done, total, message, step)
    else:
        progress(done, total, message)


def tqdm_progress(description: str) -> Progress:
    """A callback that draws a tqdm bar on stderr, for the command line, with :class:`TimeLeft`'s
    estimate (the dashboard's) in place of tqdm's own rate.

    The bar is created at the first report, so an error raised while arguments are still being
    checked is printed on a clean line rather than glued to an empty bar.
    """
    import time

    from tqdm import tqdm

    bar: Optional[tqdm] = None
    timer = TimeLeft()
    started = time.monotonic()

    def update(done: int, total: int, message: str, step: Optional[Step]) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(desc=description, unit="step", dynamic_ncols=True,
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
        now = time.monotonic()
        if total:
            timer.update(min(done / total, 1.0), now, step)
        if total and bar.total != total:
            bar.total = total
        bar.n = done
        left = "" if total and done >= total else time_left_words(timer.seconds(now), now - (timer.moved or started))
        bar.set_postfix_str(" · ".join(text for text in (message, left) if text), refresh=False)
        bar.refresh()
        if total and done >= total:
            bar.close()

    return Progress(update)


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
    plans: Optional[Sequence[Sequence[Phase]]] = None,
) -> Optional[Progress]:
    """A callback that maps stage ``index``'s own ``done/total`` into its share of all the stages.

    Long operations are built from steps that each report their own progress (an attack, a
    sweep, a certification); this lets one bar cover them all without any step knowing it is
    one of several. ``stages`` is their number, each an equal share (stage ``index`` fills
    ``[index, index + 1) * STAGE_STEPS`` of ``stages * STAGE_STEPS``), or each stage's weight,
    e.g. its measured share of the time. A stage that overshoots its total is clamped so the bar
    never runs backwards, and each message is prefixed with ``name``. Returns ``None`` when
    ``progress`` is ``None``, so nothing is called at all.

    Structured steps (:class:`Step`) are passed on with the stage in their key and the later
    stages' phases ``ahead``: ``plans[j]`` lists the phases stage ``j`` will run (a training's
    epochs, an evaluation section), so the time left prices them from what has run. Without
    ``plans`` each stage is one phase of kind ``"stage"`` (unit :data:`STAGE`) whose work is its
    weight; a stage whose work reports no steps, or only such stages of its own, is one phase, of its
    plan's first kind and its plan's total work.
    """
    if progress is None:
        return None
    count = stages if isinstance(stages, int) else len(stages)
    weights = [1.0] * max(count, 1) if isinstance(stages, int) else [float(w) for w in stages]
    whole = STAGE_STEPS * len(weights)
    scale = whole / sum(weights)
    start, width = scale * sum(weights[:index]), scale * weights[index]
    phases = (
        [tuple(plan) for plan in plans]
        if plans is not None
        else [(Phase("stage", weight, STAGE),) for weight in weights]
    )
    later = tuple(phase for plan in phases[index + 1:] for phase in plan)
    own = phases[index]
    alone = Phase(own[0].kind, sum(phase.work for phase in own), own[0].unit) if own else Phase("stage", 0.0, STAGE)

    def inner(done: int, total: int, message: str, step: Optional[Step]) -> None:
        share = min(done / total, 1.0) if total else 0.0
        if step is None or step.phase.unit == STAGE:  # a plain report, or finer stages than the plan's
            outer = Step((index,), alone, share, later)
        else:
            outer = Step((index, *step.key), step.phase, step.fraction, step.ahead + later)
        text = f"{name}{separator}{message}" if message else name
        report(progress, int(start + width * share), whole, text, step=outer)

    return Progress(inner)


#: The key of the one phase plain reports make.
WHOLE: tuple[Any, ...] = ("whole",)


class TimeLeft:
    """Seconds left, from each kind of phase's measured cost: the one estimate of the time left.

    Feed :meth:`update` every report: ``fraction`` of the whole work done at time ``now`` (any
    clock) and, where the work reports them, a structured :class:`Step`. Each finished phase's
    duration (from its first report to the next phase's) per unit of work is remembered for its
    kind, recent phases weighing more (each older one counts ``memory`` times the next), so a
    machine that got busier shows in the estimate within a phase or two. The time left is the
    rest of the current phase plus every phase ahead, each priced by its own kind's cost per unit;
    a kind that has not run yet by the cost per unit of all the phases that have (never from
    nothing). The current phase's own progress counts as a partial measurement of its kind.

    Plain reports (no step) are one phase: the rate since the first report; among structured ones
    they only say that the work moved. :meth:`seconds` keeps
    counting down between reports, going negative when a report is overdue, so a silent job can
    never show a frozen "about 17 min left". No estimate (None) until ``min_span_s`` seconds of
    progress have been measured. Time is passed in, so the same reports always give the same answer.
    """

    def __init__(self, memory: float = 0.5, min_span_s: float = 1.0) -> None:
        self.memory, self.min_span_s = memory, min_span_s
        self.moved: Optional[float] = None  #: when the work last moved, on the caller's clock
        self._reset()

    def _reset(self) -> None:
        #: per kind of phase: [seconds, work, unit] of its finished phases, older ones discounted
        self._kinds: dict[str, list[Any]] = {}
        self._step: Optional[Step] = None
        self._began = 0.0  # when the current phase began
        self._fraction = -1.0  # of the whole work, at the last report
        self._at: Optional[float] = None  # when the last estimate was true
        self._left: Optional[float] = None

    def update(self, fraction: float, now: float, step: Optional[Step] = None) -> None:
        if step is None and self._step is not None and self._step.key != WHOLE:
            # a plain report among structured ones (an operation's own between its stages' steps):
            # the work moved, its phase did not change
            if fraction > self._fraction:
                self._fraction, self.moved = fraction, now
            if fraction >= 1.0:
                self._at, self._left = now, 0.0  # all done
            return
        if step is None:
            if fraction < self._fraction:
                self._reset()  # the work started over: the old rate says nothing
            step = Step(WHOLE, Phase("work", 1.0, "whole"), fraction)
        if self._step is None or step.key != self._step.key:
            if self._step is not None:
                self._learn(self._step.phase, now - self._began)
            self._began = now
            self.moved = now
        elif fraction > self._fraction or step.fraction > self._step.fraction:
            self.moved = now
        self._fraction = max(self._fraction, fraction)
        self._step = Step(step.key, step.phase, min(max(step.fraction, 0.0), 1.0), step.ahead)
        self._at, self._left = now, self._estimate(now)

    def seconds(self, now: float) -> Optional[float]:
        """Seconds left at ``now`` (negative: the next report is that late); None without a rate yet."""
        if self._left is None or self._at is None:
            return None
        return self._left - (now - self._at)

    def _learn(self, phase: Phase, seconds: float) -> None:
        spent, work, _ = self._kinds.get(phase.kind, (0.0, 0.0, phase.unit))
        self._kinds[phase.kind] = [self.memory * spent + seconds, self.memory * work + phase.work, phase.unit]

    def _estimate(self, now: float) -> Optional[float]:
        step = self._step
        assert step is not None
        current = step.phase
        elapsed, covered = now - self._began, step.fraction * current.work
        measured = bool(self._kinds)
        if not measured and (elapsed < self.min_span_s or covered <= 0):
            return None

        # the current phase's progress so far is a partial measurement of its kind
        kinds = {kind: (spent, work, unit) for kind, (spent, work, unit) in self._kinds.items()}
        if covered > 0:
            spent, work, _ = kinds.get(current.kind, (0.0, 0.0, current.unit))
            kinds[current.kind] = (spent + elapsed, work + covered, current.unit)

        def cost(phase: Phase) -> Optional[float]:
            """Seconds per unit of work of ``phase``: its kind's, else that of every kind measured in
            its unit, else that of every kind measured."""
            for chosen in (
                [kinds[phase.kind]] if phase.kind in kinds else [],
                [value for value in kinds.values() if value[2] == phase.unit],
                list(kinds.values()),
            ):
                spent, work = sum(value[0] for value in chosen), sum(value[1] for value in chosen)
                if work > 0 and spent > 0:
                    return spent / work
            return None

        rate = cost(current)
        if rate is None:
            return None
        # The current phase: the rest of its work at its kind's rate (its own progress included); as
        # it nears its end, more and more of what its kind's past phases took beyond that: a phase's
        # time runs to the next phase's start, so it holds what follows its last report (a checkpoint).
        left = rate * current.work * (1.0 - step.fraction)
        spent, work, _ = self._kinds.get(current.kind, (0.0, 0.0, current.unit))
        if work > 0:
            left += step.fraction * max(0.0, spent / work * current.work - elapsed - left)
        for phase in step.ahead:
            if phase.work <= 0:
                continue
            rate = cost(phase)
            if rate is None:
                return None
            left += rate * phase.work
        return left


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
