"""Borrow a model safely: one user at a time, in eval mode, with frozen parameters.

The dashboard caches one model per run and shares it between sessions. Attacks and Grad-CAM
flip its mode and its parameters' ``requires_grad``; without a lock, two sessions would see each
other's half-changed state. ``exclusive_eval`` serialises use per model and restores every
module's mode and every parameter's flag exactly, even when the body raises.
"""

from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from typing import Iterator

from torch import nn

_locks: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock that serialises work on ``model`` across threads."""
    with _locks_guard:
        lock = _locks.get(model)
        if lock is None:
            lock = _locks[model] = threading.RLock()
        return lock


@contextmanager
def exclusive_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Hold ``model``'s lock with it in eval mode and its parameters frozen; restore on exit."""
    with model_lock(model):
        modes = [(module, module.training) for module in model.modules()]
        flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
        try:
            model.eval()
            for parameter, _ in flags:
                parameter.requires_grad_(False)
            yield model
        finally:
            for module, training in modes:
                module.training = training
            for parameter, requires_grad in flags:
                parameter.requires_grad_(requires_grad)
