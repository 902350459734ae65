"""CPU allocator tuning: keep freed memory for the next training step instead of returning it.

A capsule training step allocates and frees the same large vote-sized tensors every step.
With glibc's defaults, blocks above the (dynamic) mmap threshold are mmapped and unmapped each
time, and the top of the heap is trimmed back to the system, so every step page-faults its
memory in afresh: on the EM model (recipes/mnist_em_small.yaml) 40 % of the process's CPU time
was system time. Raising the mmap threshold to its maximum (32 MiB), the trim threshold to 1 GiB
and the top pad to 256 MiB (``mallopt``, at run time) cut the CPU time per step by 40 % there
(benchmarks/em_train.py). Set ``CAPSULE_KIT_TUNE_MALLOC=0`` to keep glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV = "CAPSULE_KIT_TUNE_MALLOC"
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameter numbers
SETTINGS = ((M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 1 << 30), (M_TOP_PAD, 256 << 20))


def tune_cpu_allocator() -> bool:
    """Apply :data:`SETTINGS` with glibc's ``mallopt``; False where not Linux/glibc or disabled."""
    if os.environ.get(ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in SETTINGS)
