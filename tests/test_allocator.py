"""The lab's processes keep freed memory for the next step, not fault it in again (pipeline.allocator)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from tests.training_helpers import REPO

#: Frees a hundred MiB in blocks of 3 to 14 MiB, as a step frees its activations, ten times over, and
#: prints the minor page faults of the ten rounds after a first one.
ROUNDS = r"""
import json, resource, sys
import numpy as np
if sys.argv[1] == "kept":
    from pipeline.allocator import keep_freed_memory
    assert keep_freed_memory() and keep_freed_memory()  # twice: the second call is a no-op
def step():
    blocks = [np.ones((3 + i) << 20, dtype=np.uint8) for i in range(12)]
    del blocks
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""


def faults(setting: str) -> int:
    done = subprocess.run([sys.executable, "-c", ROUNDS, setting], cwd=REPO, capture_output=True, text=True,
                          check=True)
    return int(json.loads(done.stdout))


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc setting; elsewhere a no-op")
def test_freed_blocks_are_reused_without_new_page_faults() -> None:
    plain, kept = faults("default"), faults("kept")
    # glibc's defaults give pages back and fault them in again: about 6,000 per round of 26,000 written
    assert plain > 10_000, plain
    assert kept < plain // 100, (kept, plain)
