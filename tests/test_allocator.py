"""The allocator fix of Ray actors (harness/allocator.py): freed blocks are reused, not re-faulted."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

# Off the main thread, as Ray runs actor methods: 20 batches of 16 vectors of an avgcnn's size,
# each batch held, then freed. Minor page faults counted for that thread before and after the fix.
PROBE = """
import resource, threading
import numpy as np
from harness.engine.allocator import keep_freed_memory

def faults():
    out = {}
    def work():
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        for _ in range(20):
            batch = [np.ones(582026, dtype=np.float32) for _ in range(16)]
            del batch
        out["n"] = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return out["n"]

untuned = faults()
tuned = keep_freed_memory()
print(untuned, tuned, faults())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and RUSAGE_THREAD are Linux-only")
def test_freed_batches_are_reused_instead_of_faulted_in_again():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True)
    untuned, tuned, after = out.stdout.split()
    assert tuned == "True"
    pages_per_batch = 16 * 582026 * 4 // 4096
    assert int(untuned) > pages_per_batch  # glibc's defaults: batch after batch lands partly on fresh pages
    assert int(after) * 10 < int(untuned)  # fixed thresholds: freed blocks are reused
