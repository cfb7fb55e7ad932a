"""How far the stated time left is from the real one, replayed from recorded progress logs.

    python bench/eta.py                        # replay every log under tests/data/eta/, print the table
    python bench/eta.py record NAME [--condition TEXT] [-- TRAIN FLAGS]   # record one more log

A log holds every progress report of one real run, as it reached the job's status: the time (seconds
from the first report), done, total, the message, and the structured step (the phase, how far into it,
the phases ahead). Replaying feeds the reports, with their own times as the clock, to

- **new**: :class:`pipeline.progress.TimeLeft`, the one estimate every job, bar and page shows;
- **old window**: the 30 s window rate on the whole fraction that jobs and pages showed before;
- **old epochs** (trainings only): the loop's own mean-epoch-time estimate it used to pass in;

and measures each from the end of the first epoch on, while at least :data:`TAIL_S` seconds and
:data:`TAIL_SHARE` of the run are left (a relative error of the last seconds says nothing):
the median and worst relative error against the real time left, and the largest ratio between an
estimate and the one before it counted down to the same moment (what a user sees jump).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.progress import Phase, Progress, Step, TimeLeft  # noqa: E402

LOGS = Path(__file__).resolve().parent.parent / "tests" / "data" / "eta"
#: Estimates are judged only while this many seconds of the run are left ...
TAIL_S = 10.0
#: ... and this share of the run's whole time.
TAIL_SHARE = 0.05


# ------------------------------------------------------------------------------- the logs
@dataclass(frozen=True)
class Event:
    """One progress report of a recorded run."""

    time: float
    done: int
    total: int
    message: str
    step: Optional[Step]


@dataclass(frozen=True)
class Log:
    name: str
    condition: str
    events: list[Event]
    end: float  #: when the run finished, on the events' clock
    first_epoch_end: float  #: when the first epoch (train part and validation) ended


def load_log(path: Path) -> Log:
    """A log written by :func:`record` (JSON: phases once, events referring to them by index)."""
    data = json.loads(path.read_text())
    phases = [Phase(kind, work, unit) for kind, work, unit in data["phases"]]
    events = []
    for t, done, total, message, step in data["events"]:
        if step is None:
            events.append(Event(t, done, total, message, None))
            continue
        key, phase, fraction, ahead = step
        events.append(Event(t, done, total, message,
                            Step(tuple(key), phases[phase], fraction, tuple(phases[i] for i in ahead))))
    return Log(path.stem, data["condition"], events, data["end"], data["first_epoch_end"])


def _first_epoch_end(events: list[Event]) -> float:
    """The time of the first report past epoch 1 (its train part and its validation)."""
    for event in events:
        key = event.step.key if event.step else ()
        if "epoch" in key and key[key.index("epoch") + 1] >= 2:
            return event.time
    raise ValueError("the log never reaches a second epoch")


def phase_spans(log: Log) -> list[tuple[tuple[Any, ...], str, float, float]]:
    """(key, kind, start, end) of each phase of the log, in order (a phase ends where the next begins)."""
    spans: list[list[Any]] = []
    for event in log.events:
        if event.step is not None and (not spans or spans[-1][0] != event.step.key):
            spans.append([event.step.key, event.step.phase.kind, event.time, None])
    for this, after in zip(spans, spans[1:]):
        this[3] = after[2]
    if spans:
        spans[-1][3] = log.end
    return [tuple(span) for span in spans]  # type: ignore[misc]


def unsteadiness(log: Log) -> float:
    """How much the machine's speed changed within the run: the largest ratio between two finished
    phases of the same kind (1.0: every epoch took as long as every other)."""
    durations: dict[str, list[float]] = {}
    for key, kind, start, end in phase_spans(log)[:-1]:
        durations.setdefault(kind, []).append(end - start)
    ratios = [max(values) / min(values) for values in durations.values() if len(values) > 1 and min(values) > 0]
    return max(ratios, default=1.0)


def steadied(log: Log) -> Log:
    """The same run on a machine whose load held: every phase stretched or squeezed (reports and all)
    to its kind's median duration in this log. The reports, their spacing within each phase and the
    costs of the kinds stay those measured; only the load's changes from phase to phase are gone."""
    spans = phase_spans(log)
    medians = {kind: statistics.median(end - start for _, k, start, end in spans if k == kind)
               for _, kind, _, _ in spans}
    shift, clock, events = 0.0, 0.0, []
    bounds = {key: (start, end, medians[kind]) for key, kind, start, end in spans}
    origins: dict[tuple[Any, ...], float] = {}
    for event in log.events:
        if event.step is None or event.step.key not in bounds:
            events.append(Event(event.time + shift, event.done, event.total, event.message, event.step))
            continue
        start, end, median = bounds[event.step.key]
        if event.step.key not in origins:
            origins[event.step.key] = clock = start + shift
            shift += median - (end - start)
        scale = median / (end - start) if end > start else 1.0
        events.append(Event(origins[event.step.key] + (event.time - start) * scale, event.done, event.total,
                            event.message, event.step))
    del clock
    steady = Log(f"{log.name} (steadied)", log.condition + "; each phase at its kind's median duration",
                 events, log.end + shift, 0.0)
    return Log(steady.name, steady.condition, events, steady.end, _first_epoch_end(events))


# ----------------------------------------------------------------------------- estimators
class WindowRate:
    """The estimate before this one (pipeline.progress.TimeLeft until issue 22): seconds left from the
    rate of the whole fraction over the last ``window_s`` seconds. Kept here only to compare with."""

    def __init__(self, window_s: float = 30.0, min_span_s: float = 1.0) -> None:
        self.window_s, self.min_span_s = window_s, min_span_s
        self._points: deque[tuple[float, float]] = deque()

    def update(self, fraction: float, now: float, step: Optional[Step] = None) -> None:
        if self._points and fraction < self._points[-1][1]:
            self._points.clear()
        self._points.append((now, fraction))
        while len(self._points) > 2 and now - self._points[1][0] >= self.window_s:
            self._points.popleft()

    def seconds(self, now: float) -> Optional[float]:
        if len(self._points) < 2:
            return None
        (start, first), (last, latest) = self._points[0], self._points[-1]
        if last - start < self.min_span_s or latest <= first:
            return None
        return (1.0 - latest) * (last - start) / (latest - first) - (now - last)


class EpochMean:
    """The training loop's own estimate before issue 22: the mean epoch time so far times the batches
    left (in the first epoch, the time since the start per batch)."""

    def __init__(self) -> None:
        self._origin: Optional[float] = None
        self._epoch_start: dict[int, float] = {}
        self._left: Optional[float] = None
        self._at = 0.0

    def update(self, fraction: float, now: float, step: Optional[Step] = None) -> None:
        if self._origin is None:
            self._origin = now
        if step is None or "epoch" not in step.key or step.key[-1] != "train":
            return
        epoch = step.key[step.key.index("epoch") + 1]
        self._epoch_start.setdefault(epoch, now)
        finished = [self._epoch_start[e + 1] - self._epoch_start[e] for e in sorted(self._epoch_start)
                    if e + 1 in self._epoch_start]
        epochs_left = sum(1 for phase in step.ahead if phase.kind == step.phase.kind) + 1 - step.fraction
        if finished:
            self._left = statistics.fmean(finished) * epochs_left
        elif step.fraction > 0:
            self._left = (now - self._origin) / step.fraction * epochs_left
        self._at = now

    def seconds(self, now: float) -> Optional[float]:
        return None if self._left is None else self._left - (now - self._at)


ESTIMATORS: dict[str, Callable[[], Any]] = {"new": TimeLeft, "old window": WindowRate, "old epochs": EpochMean}


# -------------------------------------------------------------------------------- judging
@dataclass(frozen=True)
class Judgement:
    median_error: float  #: relative to the real time left
    worst_error: float
    worst_jump: float  #: largest ratio between an estimate and the previous one counted down
    judged: int  #: estimates judged
    missing: int  #: reports after the first epoch without an estimate


def estimates(log: Log, make: Callable[[], Any]) -> Iterator[tuple[float, Optional[float]]]:
    """(time, seconds left) after each report, the estimator fed with the log's own clock."""
    estimator = make()
    for event in log.events:
        if event.total:
            estimator.update(min(event.done / event.total, 1.0), event.time, event.step)
        yield event.time, estimator.seconds(event.time)


def judge(log: Log, make: Callable[[], Any]) -> Judgement:
    errors: list[float] = []
    jumps: list[float] = [1.0]
    missing = 0
    previous: Optional[tuple[float, float]] = None
    for now, left in estimates(log, make):
        real = log.end - now
        if now < log.first_epoch_end or real < max(TAIL_S, TAIL_SHARE * log.end):
            continue
        if left is None:
            missing += 1
            continue
        errors.append(abs(left - real) / real)
        if previous is not None:
            before = previous[1] - (now - previous[0])
            if before > 0 and left > 0:
                jumps.append(max(left / before, before / left))
        previous = (now, left)
    if not errors:
        return Judgement(float("nan"), float("nan"), float("nan"), 0, missing)
    return Judgement(statistics.median(errors), max(errors), max(jumps), len(errors), missing)


def table(logs: list[Log]) -> str:
    lines = ["| log | condition | run (s) | speed change | estimate | median error | worst error | largest jump "
             "| judged |", "|---|---|---|---|---|---|---|---|---|"]
    for log in logs:
        for name, make in ESTIMATORS.items():
            j = judge(log, make)
            lines.append(f"| {log.name} | {log.condition} | {log.end:.0f} | {unsteadiness(log):.2f}x | {name} | "
                         f"{j.median_error:.0%} | {j.worst_error:.0%} | {j.worst_jump:.2f}x | "
                         f"{j.judged} (+{j.missing} none) |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ recording
def record(name: str, condition: str, flags: list[str]) -> Path:
    """Train once in this process with ``flags`` (as ``python -m pipeline train`` takes them) and
    write every progress report the job's status gets to ``tests/data/eta/NAME.json``."""
    import tempfile

    from pipeline.training import TrainConfig, train
    from pipeline.training.cli import add_parser as add_train_parser, _settings  # noqa: F401
    from pipeline.training.config import PRESETS, merge_settings

    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers())
    args = parser.parse_args(["train", *flags])
    explicit = {n: getattr(args, n) for n, _ in _settings() if getattr(args, n) is not None}
    config = TrainConfig.from_dict(merge_settings(PRESETS[args.preset] if args.preset else {}, {}, explicit),
                                   strict=True)
    phases: dict[Phase, int] = {}
    events: list[list[Any]] = []
    origin: list[float] = []

    def index(phase: Phase) -> int:
        return phases.setdefault(phase, len(phases))

    def seen(done: int, total: int, message: str, step: Optional[Step]) -> None:
        now = time.monotonic()
        origin.append(origin[0] if origin else now)
        encoded = None if step is None else [list(step.key), index(step.phase), round(step.fraction, 5),
                                             [index(p) for p in step.ahead]]
        events.append([round(now - origin[0], 3), done, total, message, encoded])

    with tempfile.TemporaryDirectory() as runs:
        train(config, runs, progress=Progress(seen), track=False)
    end = round(time.monotonic() - origin[0], 3)
    data = {
        "what": "every progress report of one real training (python -m pipeline train "
                + " ".join(flags) + "), times in seconds from the first; bench/eta.py replays it",
        "condition": condition,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {_threads()}",
        "recorded": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "phases": [[p.kind, p.work, p.unit] for p in phases],
        "events": events,
        "end": end,
    }
    steps = [Event(e[0], e[1], e[2], e[3], None if e[4] is None else Step(tuple(e[4][0]), Phase("x"), 0.0))
             for e in events]
    data["first_epoch_end"] = _first_epoch_end(steps)
    LOGS.mkdir(parents=True, exist_ok=True)
    path = LOGS / f"{name}.json"
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    return path


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="replay", choices=["replay", "record"])
    parser.add_argument("name", nargs="?", help="the log's name (record)")
    parser.add_argument("--condition", default="shared machine", help="how the machine was loaded (record)")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])  # after "--": the training's flags (record)
    if args.command == "record":
        if not args.name:
            parser.error("record needs a NAME")
        print(f"wrote {record(args.name, args.condition, argv[cut + 1:])}")
        return
    real = [load_log(path) for path in sorted(LOGS.glob("*.json"))]
    logs = [log for pair in ((log, steadied(log)) for log in real) for log in pair]
    print(f"{len(real)} logs from {LOGS}, each also steadied; judged from the end of the first epoch while at least "
          f"{TAIL_S:.0f} s and {TAIL_SHARE:.0%} of the run are left")
    print(table(logs))


if __name__ == "__main__":
    main()
