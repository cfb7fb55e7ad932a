"""One evaluation across several processes: torchrun's processes split the batches, then share the rows.

``torchrun --nproc-per-node N -m pipeline evaluate ...`` starts N copies of the command; each joins
the process group as training's do (:func:`pipeline.training.distributed.setup`: one GPU each where
there are GPUs, gloo on CPUs). Every loop over scans that takes a :class:`Shards` (the attacks, the
strength checks, the defences, the corruptions, minimal epsilons, certificates, the transfer
matrix) cuts the scans into the batches one process would use and runs batch ``k`` on the process of
rank ``k mod N``; then every process receives every other's rows (``all_gather_object`` over a gloo
group, whatever the main backend) and holds the whole result, from which intervals, confusion
matrices and worst cases are computed as in one process.

Why whole batches and not single scans: an attack draws its random start for the batch as a whole
from its seed (:meth:`pipeline.attacks.base.Attack.generator`), and a model's arithmetic (cuDNN's
choice of algorithm, a CPU kernel's blocking) may depend on the batch's size; the same scans in the
same batch, seeded the same way, give the same per-scan outcomes bit for bit, on one process or N.
A stream of random draws that runs across batches would break this; randomised defences are
reseeded per batch for that reason (:func:`pipeline.evaluation.batches.reseed`).

A process that crashes or is killed: torchrun prints which rank failed first and stops the others
with SIGTERM. :meth:`Shards.naming_failures` turns that SIGTERM, or an exchange that failed because
a process was gone, into a roll call in which every surviving process answers rank 0, and raises
:class:`ShardFailure` naming the ranks that did not answer.
"""

from __future__ import annotations

import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Iterator, Mapping, Optional, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from pipeline.errors import UserInputError
from pipeline.training.distributed import DistContext

#: How long a process waits at an exchange for the slowest of the others: a section that runs on
#: one process only (faithfulness) or a rank with more batches keeps the rest waiting there.
EXCHANGE_TIMEOUT = timedelta(hours=6)
#: How long rank 0 waits for the survivors' answers once a process has failed; torchrun's SIGKILL
#: follows its SIGTERM after 30 s.
ROLL_CALL_SECONDS = 10.0
#: The message tag of the roll call, apart from every exchange of results.
ROLL_CALL_TAG = 0x5EA1

T = TypeVar("T")


class ShardFailure(UserInputError):
    """A sharded evaluation stopped before its end because one of its processes did.

    ``absent`` holds the ranks that did not answer the roll call (on rank 0; on another rank, 0
    when rank 0 itself was gone); empty when every process was stopped by the launcher at once.
    """

    def __init__(self, message: str, absent: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.absent = tuple(absent)


class _ExchangeFailed(RuntimeError):
    """An exchange of results failed: a process on the other end is gone."""


class _LauncherStopped(Exception):
    """SIGTERM from torchrun, which stops every process once one has failed."""


@dataclass(frozen=True)
class Shards:
    """This process's share of an evaluation: rank ``rank`` of ``processes``; ``Shards()`` is one process.

    ``group`` is the gloo process group results travel on (None for one process).
    """

    rank: int = 0
    processes: int = 1
    group: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def join(cls, context: DistContext) -> Shards:
        """The shards of the processes in ``context``'s group; every process must call this together."""
        if not context.active:
            return cls()
        # Results are numpy rows, so they travel on gloo whatever the main backend (NCCL on GPUs).
        group = dist.new_group(backend="gloo", timeout=EXCHANGE_TIMEOUT)
        return cls(context.rank, context.world_size, group)

    @property
    def active(self) -> bool:
        return self.processes > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the report and logs to MLflow."""
        return self.rank == 0

    def owns(self, batch: int) -> bool:
        """Whether this process runs batch number ``batch`` (counted from 0)."""
        return batch % self.processes == self.rank

    def share(self, batches: int) -> int:
        """How many of ``batches`` batches this process runs."""
        return len(range(self.rank, batches, self.processes))

    def rows(self, count: int, batch_size: int) -> np.ndarray:
        """int64 positions (in ``[0, count)``) of the scans in this process's batches of ``batch_size``."""
        starts = range(0, count, batch_size)
        mine = [
            np.arange(start, min(start + batch_size, count)) for b, start in enumerate(starts) if self.owns(b)
        ]
        return np.concatenate(mine) if mine else np.zeros(0, dtype=np.int64)

    def gather(self, value: T, what: str) -> list[T]:
        """Every process's ``value`` (picklable), in rank order; ``[value]`` in one process.

        ``what`` names the exchange in an error. Raises an internal error when a process is gone,
        which :meth:`naming_failures` turns into :class:`ShardFailure`.
        """
        if not self.active:
            return [value]
        gathered: list[Any] = [None] * self.processes
        try:
            dist.all_gather_object(gathered, value, group=self.group)
        except RuntimeError as error:
            raise _ExchangeFailed(f"the exchange of {what} failed: {error}") from error
        return gathered

    def total(self, values: np.ndarray, what: str) -> np.ndarray:
        """The sum over every process of ``values`` (counts: exact in float64 whatever the order)."""
        return np.sum(self.gather(np.asarray(values, dtype=np.float64), what), axis=0)

    def gather_rows(
        self,
        count: int,
        batch_size: int,
        arrays: Mapping[str, Optional[np.ndarray]],
        what: str,
        *,
        axes: Optional[Mapping[str, int]] = None,
    ) -> dict[str, Optional[np.ndarray]]:
        """Whole per-scan arrays from every process's rows of them.

        Each array has ``count`` scans along its axis ``axes[name]`` (0 by default), filled on
        this process at :meth:`rows` only; the result has every process's rows in place. An array
        may be None on a process without batches (allocated at its first batch): it is then built
        from the others' rows. In one process the arrays come back as they are.
        """
        if not self.active:
            return dict(arrays)
        axes = axes or {}
        rows = self.rows(count, batch_size)
        mine = {
            name: None if array is None else np.take(array, rows, axis=axes.get(name, 0))
            for name, array in arrays.items()
        }
        parts = self.gather((rows, mine), what)
        merged: dict[str, Optional[np.ndarray]] = {}
        for name, array in arrays.items():
            axis = axes.get(name, 0)
            blocks = [(where, part[name]) for where, part in parts if part[name] is not None]
            if array is None and not blocks:
                merged[name] = None
                continue
            if array is None:
                shape = list(blocks[0][1].shape)
                shape[axis] = count
                array = np.zeros(shape, dtype=blocks[0][1].dtype)
            whole = np.moveaxis(array, axis, 0)  # a view: writing to it fills ``array``
            for where, block in blocks:
                whole[where] = np.moveaxis(block, axis, 0)
            merged[name] = array
        return merged

    @contextmanager
    def naming_failures(self) -> Iterator[None]:
        """Inside: a process that crashes or is killed raises :class:`ShardFailure` naming it.

        When one process fails, torchrun sends SIGTERM to the others; here that SIGTERM (or an
        exchange that failed first) starts a roll call, and rank 0 names the ranks that did not
        answer within :data:`ROLL_CALL_SECONDS`. Other errors pass through untouched. In one
        process this does nothing.
        """
        if not self.active:
            yield
            return
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _stopped_by_launcher)
        try:
            yield
        except (_LauncherStopped, _ExchangeFailed) as error:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stopping already: a second SIGTERM waits
            absent = self._roll_call()
            raise ShardFailure(self._failure_text(absent), absent) from error
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _roll_call(self) -> list[int]:
        """Rank 0: the ranks that do not answer in time. Another rank: [0] when rank 0 is gone, else []."""
        token = torch.zeros(1)
        if not self.is_main:
            try:
                dist.isend(token, dst=0, group=self.group, tag=ROLL_CALL_TAG).wait(
                    timedelta(seconds=ROLL_CALL_SECONDS)
                )
            except RuntimeError:
                return [0]
            return []
        deadline = time.monotonic() + ROLL_CALL_SECONDS
        absent = []
        for rank in range(1, self.processes):
            try:  # a process that is gone fails at once: its connection was closed when it died
                left = max(deadline - time.monotonic(), 0.1)
                dist.irecv(torch.zeros(1), src=rank, group=self.group, tag=ROLL_CALL_TAG).wait(
                    timedelta(seconds=left)
                )
            except RuntimeError:
                absent.append(rank)
        return absent

    def _failure_text(self, absent: Sequence[int]) -> str:
        if not self.is_main:
            if absent:
                return (
                    f"process {self.rank} of {self.processes} stopped: rank 0, which writes the report, is "
                    "gone (see torchrun's summary for its exit code)"
                )
            return f"process {self.rank} of {self.processes} stopped: another process failed; rank 0 names it"
        if not absent:
            return (
                f"the launcher stopped all {self.processes} processes (SIGTERM) before the evaluation's end; "
                "none of them had failed"
            )
        ranks = ", ".join(map(str, absent))
        return (
            f"process{'es' if len(absent) > 1 else ''} of rank {ranks} (of {self.processes}) stopped before "
            "the evaluation's end: crashed or killed (torchrun's summary gives the exit code, the "
            "process's own output its error); run the evaluation again"
        )


def _stopped_by_launcher(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the roll call must not be interrupted
    raise _LauncherStopped("SIGTERM")
