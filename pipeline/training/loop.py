"""The training loop: data on the device once, one strategy step per batch, a checkpoint per epoch.

Design choices that matter:

- The decoded dataset is moved to the device once; batches are gathered by index and augmented
  there, so a GPU never waits for a data loader.
- Nothing waits on the GPU inside an epoch: losses and correct counts are summed on the device
  and read once per epoch.
- Each epoch's shuffling and augmentation come from a generator seeded by (seed, epoch), and
  each batch's attacks from (seed, epoch, batch, rank), so a resumed run replays exactly the
  epochs it lost.
- The model kept is the one with the best validation accuracy under PGD (robust overfitting is
  real), or under clean scans for standard training.
- Per epoch, in this order: the metrics line, the best model, the resumable checkpoint, the
  status; each file is replaced atomically, so a kill at any instant loses at most the epoch in
  flight, and a metrics line of an epoch whose checkpoint never landed is dropped on resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from pipeline import jobs, tracking
from pipeline.attacks import get_attack
from pipeline.data import ScanDataset, Split, load_dataset, same_data, split_for
from pipeline.data.poison import poison_split
from pipeline.device import autocast, mixed_precision
from pipeline.errors import CheckpointError, DatasetError, UserInputError
from pipeline.models import ScanClassifier, build_model
from pipeline.progress import Phase, ProgressCallback, Step, report
from pipeline.store import (
    CONFIG,
    METRICS,
    MODEL,
    TRAINING_KIND,
    append_metrics,
    has_checkpoint,
    has_config,
    load_checkpoint,
    load_model,
    new_run_dir,
    read_config,
    read_metrics,
    read_settings,
    read_status,
    remove_partial_writes,
    remove_run,
    resolve_run,
    save_checkpoint,
    save_model,
    write_config,
    write_metrics,
    write_request,
)
from pipeline.training import distributed
from pipeline.training.augment import Augmentation
from pipeline.training.config import CPU_CHANNELS_LAST_FROM, TrainConfig
from pipeline.training.distributed import DistContext
from pipeline.training.strategies import Strategy, build_strategy

#: Settings of how to run, not what to train: a resumed run may change them.
EXECUTION_FIELDS = ("device", "amp", "channels_last", "compile")


def memory_format(config: TrainConfig, device: torch.device) -> torch.memory_format:
    """The memory format a training keeps its model and batches in: channels-last where
    ``config.channels_last`` asks for it and it is faster (CUDA; a CPU from ``CPU_CHANNELS_LAST_FROM``
    pixels, :mod:`pipeline.training.config`), else contiguous."""
    wanted = config.channels_last and (
        device.type == "cuda" or (device.type == "cpu" and config.data.image_size >= CPU_CHANNELS_LAST_FROM)
    )
    return torch.channels_last if wanted else torch.contiguous_format


def train(
    config: Optional[TrainConfig],
    runs_dir: Path | str,
    *,
    progress: Optional[ProgressCallback] = None,
    resume: Path | str | None = None,
    run_dir: Path | str | None = None,
    track: Optional[bool] = None,
) -> Path:
    """Train a model and return its run directory.

    ``resume`` continues a run (a directory or a name under ``runs_dir``) from its last finished
    epoch with its stored settings; ``config`` may then be None, or give new execution settings
    (device, amp, compile). ``run_dir`` writes a new run into a prepared directory (background
    jobs create it first so that the dashboard can show it at once). ``track`` turns MLflow
    tracking on or off for this run (None: the usual settings, see :mod:`pipeline.tracking`).
    """
    if resume is not None:
        run_dir = resolve_run(runs_dir, resume)
        config = _resumed_config(run_dir, config)
        jobs.clear_cancel(run_dir)
    elif config is None:
        raise UserInputError("give a training configuration (or a run to resume)")
    else:
        config = with_start_run(config, runs_dir)
    created = run_dir is None and resume is None  # a folder this call makes, and so may take back
    context = distributed.setup(config.device)
    try:
        if run_dir is None:
            run_dir = Path(
                distributed.broadcast_text(
                    str(new_run_dir(runs_dir, config.run_label)) if context.is_main else "", context
                )
            )
        run_dir = Path(run_dir)
        if context.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            remove_partial_writes(run_dir)
            if not has_config(run_dir):
                write_request(run_dir, config.to_dict())  # resumable from the first instant
        try:
            Trainer(config, run_dir, context, progress, track).run()
        except Exception:  # an interrupt is a cancel: the run stays, resumable
            if created and context.is_main:
                _forget_unstarted(run_dir)
            raise
    finally:
        distributed.teardown(context)
    return run_dir


def finished_run(run_dir: Path, role: str) -> Path:
    """``run_dir`` when its training finished; raises :class:`pipeline.jobs.JobCancelled` when it was
    cancelled and :class:`UserInputError` saying why when it ended otherwise. ``role`` names the model
    in those messages ("standard", "shadow 2"): for work that trains several models one after another."""
    status = read_status(run_dir)
    phase = status.get("phase")
    if phase == "cancelled":
        raise jobs.JobCancelled(f"cancelled while training the {role} model")
    if phase != "done":
        raise UserInputError(f"the {role} model's training ended {phase}: {status.get('error') or 'no reason given'}")
    return run_dir


def _forget_unstarted(run_dir: Path) -> None:
    """Remove a run this training created when it failed before finishing any epoch.

    Bad data or a bad setting found at start-up leaves nothing worth keeping (no epoch, no model),
    and a folder left behind would be listed as a run. A run with a finished epoch keeps everything
    it saved; a folder made by someone else (a background job's, which shows the failure) stays too.
    """
    if has_checkpoint(run_dir):
        return
    with contextlib.suppress(OSError, CheckpointError):  # the error that ended the training matters more
        remove_run(run_dir)


def with_start_run(config: TrainConfig, runs_dir: Path | str) -> TrainConfig:
    """``config`` with ``init_from`` resolved to a run whose model fits, and ``teacher_run`` (or an
    extraction's ``victim_run``) to a run whose model loads (any architecture teaches, any can be
    stolen); checked before any run exists."""
    for name, strategy in (("teacher_run", "distillation"), ("victim_run", "extraction")):
        if getattr(config, name) and config.strategy == strategy:
            source = resolve_run(runs_dir, getattr(config, name))
            load_model(source)  # a missing, truncated or tampered model is refused before any work
            config = dataclasses.replace(config, **{name: str(source)})
    if not config.init_from:
        return config
    start = resolve_run(runs_dir, config.init_from)
    _, record = load_model(start)  # a missing, truncated or tampered model is refused here too
    arch = record.config.get("arch")
    if arch != config.arch:
        raise UserInputError(
            f"run {start.name} holds a {arch}, this training builds a {config.arch}: start from a "
            f"{config.arch} run, or set the architecture to {arch}"
        )
    return dataclasses.replace(config, init_from=str(start))


#: The start-up phase of a training as the time-left estimate sees it (its own unit: one load).
LOADING = Phase("load data", 1.0, "load")


def epoch_phases(config: TrainConfig, train_scans: int, val_scans: int, strategy: Optional[Strategy] = None,
                 *, first_epoch: int = 1) -> tuple[Phase, ...]:
    """The phases of epochs ``first_epoch`` to ``config.epochs``: each a train part and a validation.

    Work is in :data:`pipeline.progress.PASS` (forward and backward passes of one image): the
    train part ``train_scans`` (rounded down to whole batches) times the strategy's passes per
    scan, the validation the re-measured training scans and ``val_scans`` times a clean forward,
    ``val_steps`` PGD steps and a forward under attack. ``strategy`` defaults to the config's.
    """
    strategy = strategy or build_strategy(config, None)
    batch = max(2, config.batch_size)
    trained = max(1, train_scans // batch) * batch
    train = Phase(f"train {config.strategy}", trained * strategy.passes_per_image())
    checked = min(config.eval_size, train_scans) + val_scans
    validate = Phase("validate", checked * (config.val_steps + 2 / 3))
    return (train, validate) * max(0, config.epochs - first_epoch + 1)


def planned_phases(config: TrainConfig) -> tuple[Phase, ...]:
    """Every phase of a new training of ``config`` (loading, then the epochs), its split sizes
    expected from the data's count and fractions: how a caller prices a training not started yet."""
    count = config.data.count
    val_scans = max(1, round(count * config.data.val_fraction))
    train_scans = max(2, count - val_scans - round(count * config.data.test_fraction))
    return (LOADING, *epoch_phases(config, train_scans, val_scans))


def _resumed_config(run_dir: Path, override: Optional[TrainConfig]) -> TrainConfig:
    try:
        config = TrainConfig.from_dict(read_settings(run_dir))
    except CheckpointError:
        raise
    except UserInputError as error:
        raise CheckpointError(
            f"the stored settings of run {run_dir.name} are damaged ({error}); start a new run"
        ) from None
    if override is not None:
        config = dataclasses.replace(config, **{name: getattr(override, name) for name in EXECUTION_FIELDS})
    return config


class Trainer:
    """One training run in one process (one rank of a distributed run)."""

    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        context: DistContext,
        progress: Optional[ProgressCallback],
        track: Optional[bool] = None,
    ) -> None:
        self.config, self.run_dir, self.context, self.progress = config, run_dir, context, progress
        self.track = track
        self.tracker = tracking.TrackedRun()  # the MLflow run, opened by run() on the main rank
        self.device = context.device
        self.cuda = self.device.type == "cuda"
        self.memory_format = memory_format(config, self.device)
        self.job = jobs.JobContext(
            run_dir,
            kind=TRAINING_KIND,
            writer=context.is_main,
            cancelled_message="cancelled; the last finished epoch is kept (resume to continue)",
            echo=progress,
        )

    # ------------------------------------------------------------------------- outcome
    def run(self) -> None:
        """Train, recording in ``status.json`` how it ended: done, cancelled or failed (with why)."""
        with self.job:
            self.job.status(phase="loading", message="loading data", epochs=self.config.epochs)
            try:
                with self._tracked() as self.tracker:
                    if self.tracker.entry:
                        self.job.status(tracking=self.tracker.entry)
                    self._train()
            finally:
                if self.tracker.entry.get("error"):  # the tracker failed during the run: say so
                    with contextlib.suppress(CheckpointError):  # the error that ends the run matters more
                        self.job.status(tracking=self.tracker.entry)

    def _tracked(self) -> contextlib.AbstractContextManager[tracking.TrackedRun]:
        """This run in MLflow (main rank only), continuing the MLflow run of an earlier attempt."""
        if not self.context.is_main:
            return contextlib.nullcontext(tracking.TrackedRun())
        return tracking.tracked(
            self.run_dir.parent,
            name=self.run_dir.name,
            kind=TRAINING_KIND,
            params=self.config.to_dict(),
            synthetic=self.config.data.synthetic,
            tags={
                "lunglab.run_dir": str(self.run_dir),
                **({"lunglab.poisoned": self.config.poison.describe()} if self.config.poison else {}),
            },
            flag=self.track,
            resume=read_status(self.run_dir).get("tracking"),
            files=(self.run_dir / CONFIG, self.run_dir / METRICS),
            cancelled=(jobs.JobCancelled, KeyboardInterrupt),
        )

    # ---------------------------------------------------------------------------- setup
    def _train(self) -> None:
        dataset, split = self._load_data()
        self._set_up(dataset, split)
        self._loop()

    def _set_up(self, dataset: ScanDataset, split: Split) -> None:
        """Model, optimiser, resumed state, and every tensor the epochs need, on the device once."""
        config = self.config
        x, y = dataset.tensors()
        x, y = x.to(self.device), y.to(self.device)
        train, val = (torch.as_tensor(indices, device=self.device) for indices in (split.train, split.val))
        if len(train) < 2 or len(val) == 0:
            raise DatasetError(
                f"the split leaves {len(train)} training and {len(val)} validation scans; "
                "use more scans or a larger validation fraction"
            )
        self.classes = list(dataset.classes)
        self.strategy: Strategy = build_strategy(config, None)
        # what the model learns and is validated against: the labels, or a victim's answers (extraction)
        seen = torch.cat([train, val])
        y = y.clone()
        y[seen] = self.strategy.answers(x[seen], y[seen], self._phase_progress("querying"))
        x_train, y_train = x[train], y[train]
        if config.poison is not None:  # the threat experiments' backdoor, planted before anything sees the split
            x_train, y_train, _ = poison_split(
                x_train, y_train, config.poison, seed=config.seed, window=config.data.window
            )
        counts = torch.bincount(y_train, minlength=len(self.classes)).float().clamp(min=1)
        class_weights = counts.sum() / (len(self.classes) * counts)
        self.strategy.class_weights = class_weights if config.imbalance == "weights" else None
        self.model = self._build_model()
        self.optimizer = self._build_optimizer(self.model)
        self.state = self._resume_state()

        # fixed training scans re-measured each epoch (clean and under PGD), before any transfer copies
        chosen = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(config.seed))
        chosen = chosen[: config.eval_size].to(self.device)
        self.x_eval, self.y_eval = x_train[chosen], y_train[chosen]
        self.x_val, self.y_val = x[val], y[val]
        x_train, y_train = self.strategy.prepare(x_train, y_train, self._phase_progress("preparing"))
        self.x_train, self.y_train = x_train, y_train
        labels = y_train if y_train.ndim == 1 else y_train.argmax(dim=1)  # soft targets: their top class
        self.sample_weights = (1.0 / counts)[labels] if config.imbalance == "sampler" else None

        self.net = distributed.wrap(self.model, self.context)
        self.attack_model: nn.Module = self.model
        if config.compile:
            self.net, self.attack_model = torch.compile(self.net), torch.compile(self.model)
        self.augment = Augmentation() if config.augment else None
        self.batch_size = max(2, config.batch_size // self.context.world_size)
        shard_size = len(distributed.shard(torch.arange(len(self.x_train)), self.context))
        self.batches = max(1, shard_size // self.batch_size)
        self.total_steps = config.epochs * self.batches
        self.phases = epoch_phases(
            config, self.batches * self.batch_size * self.context.world_size,
            len(self.x_val), self.strategy,
        )[:2]
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

    def _load_data(self) -> tuple[ScanDataset, Split]:
        config = self.config
        dataset = load_dataset(config.data, progress=self._phase_progress("loading data"))
        stored = read_config(self.run_dir) if has_config(self.run_dir) else None
        if stored is not None:
            if "split" not in stored:
                raise CheckpointError(
                    f"run {self.run_dir.name} stores no data split, so it cannot be resumed"
                )
            if not same_data(stored.get("dataset"), dataset.record()):
                raise DatasetError(
                    f"the data at {config.data.source} changed since run {self.run_dir.name} started (its "
                    "fingerprint differs); resume needs the same data, or start a new run"
                )
            return dataset, Split.from_dict(stored["split"])
        split = split_for(dataset, config.data)
        if self.context.is_main:
            write_config(
                self.run_dir,
                config.to_dict(),
                classes=dataset.classes,
                dataset=dataset,
                split=split,
                created_at=self.job.started,
            )
        return dataset, split

    def _build_model(self) -> ScanClassifier:
        if self.config.init_from and not has_checkpoint(self.run_dir):  # a resumed run has its own
            model = self._model_of_run(self.config.init_from)
        else:
            # The initial weights follow the run's seed (so do all ranks'), not the caller's RNG.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.config.seed)
                model = build_model(
                    self.config.arch,
                    num_classes=len(self.classes),
                    pretrained=self.config.pretrained,
                    zero_init_residual=self.config.zero_init_residual,
                )
        if self.cuda:
            torch.backends.cudnn.benchmark = True
        return self._memory_format(model.to(self.device))

    def _model_of_run(self, run: str) -> ScanClassifier:
        """The kept model of another run (its architecture checked by ``train``) for these classes."""
        model, record = load_model(run)
        classes = record.config.get("classes")
        if classes != self.classes:
            raise UserInputError(
                f"run {record.name} tells apart {classes}, this data {self.classes}: "
                "start from a run trained on the same classes"
            )
        return model.train()

    def _memory_format(self, value: Any) -> Any:
        """``value`` (a model or a batch ``[N, 1, H, W]``) in :attr:`memory_format`; a model of another run
        comes channels-last from :func:`load_model` and is converted back where contiguous is faster."""
        return value.to(memory_format=self.memory_format)

    def _build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        config = self.config
        # Weight decay on conv and linear weights only; decaying norms and biases only hurts.
        decay = [p for p in model.parameters() if p.ndim > 1]
        rest = [p for p in model.parameters() if p.ndim <= 1]
        groups = [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ]
        # One fused kernel per step instead of a loop over tensors: AdamW's step on a ResNet-18 costs
        # half as much on a CPU core (57 -> 28 ms; SGD's 1.05x less; bench/overheads.py).
        fused = self.device.type in ("cpu", "cuda")
        if config.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=config.lr, betas=(config.momentum, 0.999), fused=fused)
        return torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0, fused=fused
        )

    @property
    def amp_dtype(self) -> Optional[torch.dtype]:
        return mixed_precision(self.device) if self.config.amp else None

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.amp_dtype)

    # ------------------------------------------------------------------------ resuming
    def _resume_state(self) -> dict[str, Any]:
        """Where to start: the last checkpoint's state, or a fresh one; metrics trimmed to match."""
        fresh = {
            "epoch": 0,
            "step": 0,
            "best_score": None,
            "best_epoch": None,
            "stale": 0,
            "guard_best": None,
            "stopped": None,
        }
        if not has_checkpoint(self.run_dir):
            if self.context.is_main:
                write_metrics(self.run_dir, [])
            return fresh
        state = {**fresh, **load_checkpoint(self.run_dir, self.model, self.optimizer)}
        if self.context.is_main and not state["stopped"]:  # a stopped run keeps its rolled-back epoch's line
            kept = [line for line in read_metrics(self.run_dir) if line["epoch"] <= state["epoch"]]
            write_metrics(self.run_dir, kept)
        return state

    # ---------------------------------------------------------------------------- epochs
    def _loop(self) -> None:
        config, state = self.config, self.state
        while state["epoch"] < config.epochs and not state["stopped"]:
            epoch = state["epoch"] + 1
            started = time.time()
            self.job.status(phase="training", epoch=epoch, message=f"epoch {epoch}/{config.epochs}")
            self._report(epoch, "train", 0.0)
            trained = self._train_epoch(epoch)
            train_time = time.time() - started
            self.job.status(
                phase="validating", message=f"epoch {epoch}/{config.epochs}: validation under PGD"
            )
            self._report(epoch, "validate", 0.0)
            images = trained.pop("images")
            line = {
                "epoch": epoch,
                "lr": self._lr(state["step"] - 1),
                **trained,
                **self._measure(self.x_eval, self.y_eval, "train", epoch, checked=0),
                **self._measure(self.x_val, self.y_val, "val", epoch, checked=len(self.x_eval)),
                "eps": config.eps,
                "train_eps": config.eps * self._budget_scale(state["step"] - 1),
                "time_s": round(time.time() - started, 3),
                "images_per_s": round(images / max(train_time, 1e-9), 2),
                "train_images": int(images),
            }
            if not all(math.isfinite(value) for value in line.values() if isinstance(value, float)):
                raise UserInputError(
                    f"training diverged in epoch {epoch} (a loss is not finite) at learning rate "
                    f"{config.lr:g}; lower --lr and start again (the last good epoch is kept in this run)"
                )
            if self._collapsed(line):
                self._roll_back(line)
                break
            self._finish_epoch(line)
        self.job.finish(message=self._summary())

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        config, context = self.config, self.context
        self.net.train()
        order_generator = torch.Generator(device=self.device).manual_seed(_seed(config.seed, epoch))
        augment_generator = torch.Generator(device=self.device).manual_seed(
            _seed(config.seed, epoch, context.rank)
        )
        if self.sample_weights is not None:
            order = torch.multinomial(
                self.sample_weights, len(self.x_train), replacement=True, generator=order_generator
            )
        else:
            order = torch.randperm(len(self.x_train), generator=order_generator, device=self.device)
        order = distributed.shard(order, context)
        # loss sum and correct count stay on the device: no host sync per step
        totals = torch.zeros(2, device=self.device, dtype=torch.float64)
        count = 0
        for batch in range(self.batches):
            if self._cancel_requested(batch):
                raise jobs.JobCancelled(f"cancelled in epoch {epoch}")
            index = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            x, y = self.x_train[index], self.y_train[index]
            if self.augment is not None:
                x = self.augment(x, augment_generator)
            x = self._memory_format(x)
            self._set_lr(self._lr(self.state["step"]))
            self.strategy.budget_scale = self._budget_scale(self.state["step"])
            with self.autocast():
                loss, logits, labels = self.strategy.step(
                    self.net, self.attack_model, x, y, _seed(config.seed, epoch, batch, context.rank)
                )
            self._optimise(loss)
            self.state["step"] += 1
            totals += torch.stack(
                [loss.detach().double() * len(labels), (logits.detach().argmax(1) == labels).sum().double()]
            )
            count += len(labels)
            self._report(epoch, "train", (batch + 1) / self.batches)
        loss_sum, correct, count = distributed.all_sum(_with_count(totals, count), context).tolist()
        key = "train_adv_acc" if self.strategy.adversarial else "train_batch_acc"
        return {"train_loss": loss_sum / count, key: correct / count, "images": count}

    def _optimise(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()

    def _cancel_requested(self, batch: int) -> bool:
        if not self.context.active:
            return self.job.cancel_requested()
        # All ranks must stop at the same batch; agreeing costs a collective, so ask every 10th.
        return batch % 10 == 0 and distributed.any_rank(self.job.cancel_requested(), self.context)

    def _lr(self, step: int) -> float:
        """The schedule as a pure function of the step: nothing to save but the step counter."""
        config, total = self.config, max(self.total_steps, 1)
        t = min(max(step, 0), total) / total
        if config.schedule == "constant":
            return config.lr
        if config.schedule == "cosine":
            return config.lr * 0.5 * (1 + math.cos(math.pi * t))
        warm = 0.3  # one-cycle: linear warm-up from lr/25 over 30% of the steps, then cosine to ~0
        if t < warm:
            return config.lr * (0.04 + 0.96 * t / warm)
        return config.lr * 0.5 * (1 + math.cos(math.pi * (t - warm) / (1 - warm)))

    def _budget_scale(self, step: int) -> float:
        """The share of eps the training attacks use at ``step``: a linear ramp under ``eps_warmup``."""
        ramp = self.config.eps_warmup * self.total_steps
        return 1.0 if ramp <= 1 else min(1.0, (step + 1) / ramp)

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _report(self, epoch: int, part: str, fraction: float) -> None:
        """Progress ``fraction`` into ``part`` ("train" or "validate") of ``epoch``, as a structured
        step (the epochs still to come ahead of it) for the one time-left estimate."""
        config = self.config
        train, validate = self.phases
        later = (train, validate) * (config.epochs - epoch)
        if part == "train":
            step = Step(("epoch", epoch, part), train, fraction, (validate, *later))
            done = (epoch - 1) * self.batches + round(fraction * self.batches)
            message = f"epoch {epoch}/{config.epochs}"
        else:
            step = Step(("epoch", epoch, part), validate, fraction, later)
            done = epoch * self.batches
            message = f"epoch {epoch}/{config.epochs}: validation under PGD"
        self.job.report(done, self.total_steps, message, step=step)

    # -------------------------------------------------------------------------- measuring
    def _measure(
        self, x: torch.Tensor, y: torch.Tensor, side: str, epoch: int, *, checked: int
    ) -> dict[str, Any]:
        """Clean and PGD accuracy (and clean loss and answer counts) on fixed scans, shared out over
        the ranks; progress reported as the epoch's validation, ``checked`` scans of it done before."""
        config, context = self.config, self.context
        mine = torch.arange(context.rank, len(x), context.world_size, device=self.device)
        alpha = max(config.eps / 4, 2.5 * config.eps / config.val_steps)
        classes = len(self.classes)
        # loss, clean, robust, then per class: the clean answers, the labels and the right answers
        totals = torch.zeros(3 + 3 * classes, device=self.device, dtype=torch.float64)
        count = 0
        self.model.eval()
        for start in range(0, len(mine), self.batch_size):
            index = mine[start : start + self.batch_size]
            xb, yb = self._memory_format(x[index]), y[index]
            with self.autocast():
                with torch.no_grad():
                    logits = self.attack_model(xb).float()
                pgd = get_attack(
                    "pgd",
                    eps=config.eps,
                    alpha=alpha,
                    steps=config.val_steps,
                    random_start=True,
                    seed=_seed(config.seed, epoch, start, context.rank),
                )
                x_adv = pgd(self.attack_model, xb, yb)
                with torch.no_grad():
                    robust = self.attack_model(x_adv).argmax(1)
            answers = logits.argmax(1)
            totals += torch.cat(
                [
                    torch.stack(
                        [
                            F.cross_entropy(logits, yb, reduction="sum").double(),
                            (answers == yb).sum().double(),
                            (robust == yb).sum().double(),
                        ]
                    ),
                    torch.bincount(answers, minlength=classes).double(),
                    torch.bincount(yb, minlength=classes).double(),
                    torch.bincount(yb[answers == yb], minlength=classes).double(),
                ]
            )
            count += len(yb)
            share = (checked + (start + len(index)) * context.world_size) / (len(self.x_eval) + len(self.x_val))
            self._report(epoch, "validate", min(share, 1.0))
        summed = distributed.all_sum(_with_count(totals, count), context).tolist()
        loss, clean, robust_correct, count = summed[:3] + summed[-1:]
        count = max(count, 1.0)
        values: dict[str, Any] = {f"{side}_acc": clean / count, f"{side}_robust_acc": robust_correct / count}
        if side == "val":
            values["val_loss"] = loss / count
            # what pipeline.evaluation.degenerate judges "a trained classifier" from, for the runs table
            values["val_answers"] = [int(n) for n in summed[3 : 3 + classes]]
            values["val_labels"] = [int(n) for n in summed[3 + classes : 3 + 2 * classes]]
            values["val_balanced_acc"] = _balanced_accuracy(
                summed[3 + 2 * classes : 3 + 3 * classes], values["val_labels"]
            )
        return values

    # --------------------------------------------------------------------- epoch results
    def _score(self, line: dict[str, Any]) -> list[float]:
        clean, robust, balanced = line["val_acc"], line["val_robust_acc"], line["val_balanced_acc"]
        return {
            "robust": [robust, clean],
            "clean": [clean, robust],
            "balanced": [balanced, clean, robust],
        }[self.config.selection]

    def _collapsed(self, line: dict[str, Any]) -> bool:
        """FGSM-RS's catastrophic overfitting: validation PGD accuracy falls off a cliff."""
        if self.config.strategy != "fgsm-rs":
            return False
        best = self.state["guard_best"]
        if best is not None and best - line["val_robust_acc"] > self.config.co_tolerance:
            return True
        self.state["guard_best"] = max(best or 0.0, line["val_robust_acc"])
        return False

    def _roll_back(self, line: dict[str, Any]) -> None:
        """Return to the last good epoch's checkpoint, record why, and stop."""
        best = self.state["guard_best"]
        reason = (
            f"catastrophic overfitting in epoch {line['epoch']}: validation PGD accuracy fell from "
            f"{best:.3f} to {line['val_robust_acc']:.3f}; rolled back to epoch {self.state['epoch']} "
            "and stopped"
        )
        if self.state["epoch"] > 0:
            restored = load_checkpoint(self.run_dir, self.model, self.optimizer)
            self.state.update(restored)
        self.state["stopped"] = reason
        if self.context.is_main:
            append_metrics(self.run_dir, {**line, "best": False, "rolled_back": True})
            save_checkpoint(self.run_dir, self.model, self.optimizer, self.state)
            self.tracker.log_metrics(line, step=line["epoch"])
            self.tracker.set_tags({"lunglab.stop_reason": reason})
        self.job.status(stop_reason=reason, message=reason)

    def _finish_epoch(self, line: dict[str, Any]) -> None:
        state, config = self.state, self.config
        score = self._score(line)
        improved = state["best_score"] is None or score > state["best_score"]
        line["best"] = improved
        state["epoch"] = line["epoch"]
        if improved:
            state.update(best_score=score, best_epoch=line["epoch"], stale=0)
        else:
            state["stale"] += 1
            if config.patience and state["stale"] >= config.patience:
                state["stopped"] = (
                    f"early stopping: no better validation accuracy for {config.patience} epochs "
                    f"since epoch {state['best_epoch']}"
                )
        if self.context.is_main:
            append_metrics(self.run_dir, line)
            if improved:
                save_model(self.run_dir / MODEL, self.model)
            save_checkpoint(self.run_dir, self.model, self.optimizer, state)
            self.tracker.log_metrics(line, step=line["epoch"])
            if improved:  # the kept model's location and epoch, kept current in the tracker
                kept = {"lunglab.model": self.run_dir / MODEL, "lunglab.kept_epoch": line["epoch"]}
                self.tracker.set_tags(kept)
        self.job.status(
            epoch=line["epoch"],
            best_epoch=state["best_epoch"],
            stop_reason=state["stopped"],
            last={key: line[key] for key in ("val_acc", "val_robust_acc", "train_loss")},
            message=f"epoch {line['epoch']}/{config.epochs}: val acc {line['val_acc']:.3f}, "
            f"PGD {line['val_robust_acc']:.3f}",
        )

    def _summary(self) -> str:
        state = self.state
        text = f"finished after epoch {state['epoch']}"
        if state["best_epoch"] is not None:
            text += f"; kept epoch {state['best_epoch']} (best {self.config.selection} validation accuracy)"
        return text + (f"; {state['stopped']}" if state["stopped"] else "")

    def _phase_progress(self, phase: str) -> ProgressCallback:
        """Progress of a start-up phase (loading, preparing), passed on as a step with the epochs
        (their sizes as expected before the data is there) ahead of it."""
        kind = LOADING if phase == "loading data" else Phase(phase, 1.0, phase)
        ahead = planned_phases(self.config)[1:]

        def forward(done: int, total: int, message: str) -> None:
            step = Step((phase,), kind, min(done / total, 1.0) if total else 0.0, ahead)
            report(self.progress, done, total, message or phase, step=step)

        return forward


def _balanced_accuracy(correct: list[float], labels: list[int]) -> float:
    """Mean recall over the classes present (balanced accuracy, in [0, 1]): unlike accuracy it does
    not reward a model for ignoring a rare class such as benign (11% of IQ-OTH/NCCD)."""
    recalls = [right / count for right, count in zip(correct, labels) if count > 0]
    return sum(recalls) / len(recalls) if recalls else 0.0


def _with_count(totals: torch.Tensor, count: int) -> torch.Tensor:
    """Device sums plus a host-side count, in one tensor for one reduction and one read."""
    return torch.cat([totals, torch.tensor([float(count)], dtype=totals.dtype, device=totals.device)])


def _seed(*parts: int) -> int:
    """One seed (in the attacks' range) mixing several integers: seed, epoch, batch, rank."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) + 0x9E3779B97F4A7C15 + (value << 6) + (value >> 2))) & (2**64 - 1)
    return value % (2**31 - 1)
