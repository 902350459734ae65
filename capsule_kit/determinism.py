"""``trainer.deterministic``: the same numbers on every run and after every resume.

On CPU, capsule-kit's kernels are deterministic already; the switch matters on
CUDA, where cuDNN autotuning, cuBLAS workspaces and atomic ``index_add_``/scatter
kernels change the last bits from run to run. The runner calls
:func:`configure_determinism` before CUDA is initialised (``CUBLAS_WORKSPACE_CONFIG``
is read when cuBLAS starts).
"""

from __future__ import annotations

import os

import torch

CUBLAS_WORKSPACE = ":4096:8"  # the setting torch documents for deterministic cuBLAS (about 24 MiB per stream)


def configure_determinism(on: bool) -> None:
    """Turn deterministic algorithms, cuDNN determinism and the cuBLAS workspace setting on or off.

    ``warn_only``: an op with no deterministic CUDA kernel (some PyG scatters) warns
    once instead of stopping the run. Uninitialised memory is not filled with NaN
    (a debugging aid that costs a write of every new tensor).
    """
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = not on
