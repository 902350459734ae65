"""Atomic, safe checkpoints.

A checkpoint is a dict of tensors and plain data (model/optimizer/scheduler
state, RNG states, counters, the resolved recipe). It is written to a temporary
file in the same folder, fsync'ed and renamed over the target, so a crash never
leaves a half-written file; it is read with ``torch.load(weights_only=True)``,
so a file someone sent you cannot run code.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from capsule_kit.errors import CheckpointError
from capsule_kit.rundir import RunDir

FORMAT = "capsule-kit/1"


def atomic_write(path: Path, write) -> None:
    """Call ``write(file_object)`` on a temp file next to ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes -rw-------: follow the user's umask instead
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """Atomically write a text file."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states of this process as tensors/plain data.

    CUDA: only the generator of this process's current device (``cuda``), so a
    checkpoint does not depend on how many GPUs the machine has.
    """
    np_state = np.random.get_state()
    state = {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return state


def set_rng_state(state: dict[str, Any], rank: int = 0) -> None:
    """Restore what :func:`rng_state` captured; ``state`` may be one state or ``{"ranks": [...]}``.

    A checkpoint from ``W`` processes holds one state per rank: rank ``r`` takes its own
    (rank 0's when the resumed run has more ranks than the saved one). Only this
    process's CUDA device generator is set, so a run resumes on a machine with fewer GPUs.
    """
    if "ranks" in state:
        ranks = state["ranks"]
        state = ranks[rank] if rank < len(ranks) else ranks[0]
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        if isinstance(cuda, (list, tuple)):  # older checkpoints: every device's state, from rank 0
            index = torch.cuda.current_device()
            cuda = cuda[index] if index < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, torch.cuda.current_device())


def rng_states(world: int) -> dict[str, Any]:
    """Every rank's :func:`rng_state` as ``{"ranks": [rank 0's, rank 1's, ...]}``.

    Collective under torchrun (every rank must call it); rank 0 writes the result.
    """
    mine = rng_state()
    if world <= 1:
        return {"ranks": [mine]}
    import torch.distributed as dist

    box: list[Any] = [None] * world
    dist.all_gather_object(box, mine)
    return {"ranks": box}


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Atomically save a checkpoint dict (adds the format tag)."""
    data = {"format": FORMAT, **payload}
    atomic_write(Path(path), lambda f: torch.save(data, f))


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely.

    Raises:
        CheckpointError: missing, empty, truncated, not a capsule-kit checkpoint, or
            carrying objects other than tensors and plain data (e.g. code; the message
            names the refused global).
    """
    p = Path(path)
    if p.is_dir():
        p = RunDir(p).last if RunDir(p).checkpoints.is_dir() else p / RunDir(p).last.name
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: empty file (0 bytes), not a checkpoint")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's pickle-protocol warning before the error below
            data = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if refused:
            raise CheckpointError(
                f"{p}: refused: it holds code or objects other than tensors and plain data "
                f"(global '{refused.group(1)}'); nothing was executed"
            ) from None
        raise CheckpointError(f"{p}: not a checkpoint (unreadable: not a torch.save file)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{p}: unreadable or truncated checkpoint ({first[:160]})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a capsule-kit checkpoint (no '{FORMAT}' format tag)")
    if "model" in data and not _is_state_dict(data["model"]):
        raise CheckpointError(f"{p}: not a capsule-kit checkpoint ('model' is {type(data['model']).__name__}, "
                              "not a dict of tensors)")  # fmt: skip
    return data


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and all(isinstance(k, str) for k in obj)


def load_weights(model: torch.nn.Module, ckpt: dict[str, Any], where: str | os.PathLike) -> None:
    """Put a checkpoint's ``model`` weights into ``model``.

    Raises:
        CheckpointError: no weights, or weights of another model; the message lists
            the missing, unexpected and wrongly shaped keys.
    """
    state = ckpt.get("model")
    if state is None:
        raise CheckpointError(f"{where}: holds no model weights (no 'model' key)")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [f"{label} ({len(keys)}): {_few(keys)}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if keys]  # fmt: skip
        raise CheckpointError(f"{where}: weights do not fit this model; " + "; ".join(parts))
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: weights do not fit this model ({' '.join(str(exc).split())[:300]})") from None


def _few(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def weights_only(payload: dict[str, Any]) -> dict[str, Any]:
    """The parts of a checkpoint payload needed to use the model (no optimizer, scheduler, RNG)."""
    return {k: v for k, v in payload.items() if k in ("model", "config", "fold", "loop", "task_paths")}
