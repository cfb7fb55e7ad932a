"""Keep the memory of freed CPU tensors in the process, so the next step does not fault it in again.

A training or attack step on a CPU allocates and frees the same activation buffers, megabytes each,
step after step. glibc's malloc serves large blocks with ``mmap`` and gives them back with ``munmap``
once freed, and hands free memory at the top of its heap back to the system past a trim threshold; it
raises both thresholds as it sees blocks freed, but not past 32 and 64 MiB, and a step frees more than
that at once. So every step asks the kernel again for pages it just gave back, and the kernel zeroes
each of them on first touch: about 19,000 page faults per ResNet-18 training step at 64 px (batch 16)
and 25,000 per attack step at 112 px (batch 32), almost none with this module's settings, and both steps
about 1.2x as fast; a 112 px training step on two threads showed no clear change (``python
bench/allocator.py``, medians of paired processes, in ``bench/RESULTS.md``, "Freed memory kept").

PyTorch's performance tuning guide recommends an allocator that keeps memory for the same reason
(https://pytorch.org/tutorials/recipes/recipes/tuning_guide.html, "Switch Memory allocator"); jemalloc
and tcmalloc need a system library and ``LD_PRELOAD``. glibc's own ``mallopt`` (``man 3 mallopt``)
gets the effect without either: a fixed ``mmap`` threshold at its largest value, 32 MiB, and a trim
threshold of 1 GiB, so at most 1 GiB of freed memory stays with the process beyond what it uses.

Every lab process that computes calls :func:`keep_freed_memory` once at start: the command line (and
so every background job and torchrun worker) and the dashboard's server.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from typing import Final

#: ``mallopt`` parameters, from glibc's ``malloc.h``.
M_TRIM_THRESHOLD: Final[int] = -1
M_MMAP_THRESHOLD: Final[int] = -3
#: Blocks up to this size come from the heap, not from their own ``mmap``: glibc's largest allowed value
#: on a 64-bit system (``DEFAULT_MMAP_THRESHOLD_MAX``); larger blocks are mapped whatever the setting.
MMAP_THRESHOLD_BYTES: Final[int] = 32 << 20
#: Free memory at the heap's top past this is handed back to the system.
TRIM_THRESHOLD_BYTES: Final[int] = 1 << 30

_kept = False


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed blocks of up to 32 MiB and up to 1 GiB of free heap in the process.

    Idempotent and cheap; call it once per process before the heavy work. Returns True when the settings
    are in effect, False where the C library is not glibc (macOS, musl, Windows), which keeps its own
    allocator's behaviour. Never raises.
    """
    global _kept
    if _kept:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    mapped = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    _kept = mapped and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    return _kept
