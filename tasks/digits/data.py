"""MNIST (idx, gzip, read with numpy), Sabour's shift augmentation, and MultiMNIST.

MNIST is vendored in ``tasks/digits/mnist/`` so the main job runs offline; a
recipe's ``data.root`` or ``$CAPSULE_KIT_DATA/mnist`` takes precedence.

Shapes: B batch, H, W image size.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from capsule_kit.data import data_root
from capsule_kit.errors import DataError

VENDORED = Path(__file__).with_name("mnist")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzip) into a numpy array; DataError names the file."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read idx file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte idx file (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise DataError(f"{path}: truncated idx file (header says {dims}, {len(raw) - offset} bytes of data)")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def mnist_dir(root: str | None) -> Path:
    """Folder of the four MNIST idx files: ``<data root>/mnist`` (``root``: data.root), else the vendored copy.

    The files found are read and checked (sizes against their headers, images against labels,
    labels in 0..9) before the folder is returned, so ``--validate`` runs the run's checks; the
    arrays are kept for :func:`load_mnist`.
    """
    # A data root the user named is the only place looked; otherwise the default data root, then the vendored copy.
    candidates = [data_root(root) / "mnist"] if root else [data_root() / "mnist", VENDORED]
    for folder in candidates:
        if all((folder / name).exists() for pair in FILES.values() for name in pair):
            for split in FILES:
                _read_split(folder, split, _stamp(folder, split))
            return folder
    if root:
        raise DataError(
            f"MNIST idx files not found in {candidates[0]} (expected {', '.join(FILES['train'] + FILES['test'])})"
        )
    raise DataError(f"MNIST idx files not found in {candidates} (set CAPSULE_KIT_DATA=/path/with/mnist)")


def _stamp(folder: Path, split: str) -> tuple:
    return tuple((st.st_size, st.st_mtime_ns) for st in ((folder / name).stat() for name in FILES[split]))


@functools.lru_cache(maxsize=4)
def _read_split(folder: Path, split: str, stamp: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Checked images [N, H, W] and labels [N] of one split (cached per file sizes and times)."""
    images, labels = (read_idx(folder / name) for name in FILES[split])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match")
    if len(labels) and labels.max() > 9:
        item = int(np.argmax(labels > 9))
        raise DataError(f"{folder / FILES[split][1]}: label {labels[item]} at item {item} is not a digit 0-9")
    return images, labels


def load_mnist(root: str | None, split: str) -> tuple[Tensor, Tensor]:
    """Images [N, 1, 28, 28] uint8 and labels [N] int64 of one split."""
    folder = mnist_dir(root)
    images, labels = _read_split(folder, split, _stamp(folder, split))
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def random_shift(x: Tensor, max_shift: int) -> Tensor:
    """Shift each image by up to ``max_shift`` pixels in x and y with zero padding (Sabour).

    One gather for the whole batch (no loop over images): each output pixel reads
    the zero-padded input at its image's (dy, dx) offset.

    Shapes:
        x: [B, C, H, W] -> [B, C, H, W]
    """
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (b, 2)).to(x.device)  # [B, 2] (dy, dx) in the padded frame
    return window(padded, offsets, h, w)


def window(x: Tensor, corner: Tensor, h: int, w: int) -> Tensor:
    """The ``h`` x ``w`` window of each image starting at its own (row, col) ``corner``.

    Shapes:
        x: [B, C, H, W], corner: [B, 2] int -> [B, C, h, w]
    """
    return x[_grid(corner, x.shape[1], h, w)]


def place(x: Tensor, size: int, offsets: Tensor | list[tuple[int, int]]) -> Tensor:
    """Put each image on a ``size`` x ``size`` zero canvas at (row, col) offsets (one scatter, no loop).

    Shapes:
        x: [B, C, h, w], offsets: [B, 2] -> [B, C, size, size]
    """
    b, c, h, w = x.shape
    corner = torch.as_tensor(offsets, dtype=torch.long).to(x.device).reshape(b, 2)
    canvas = x.new_zeros(b, c, size, size)
    canvas[_grid(corner, c, h, w)] = x
    return canvas


def _grid(corner: Tensor, c: int, h: int, w: int) -> tuple[Tensor, ...]:
    """Advanced-indexing tuple addressing an ``h`` x ``w`` window at each image's ``corner``.

    Shapes:
        corner: [B, 2] -> four index tensors broadcasting to [B, C, h, w]
    """
    dev = corner.device
    rows = (corner[:, :1] + torch.arange(h, device=dev))[:, None, :, None]  # [B, 1, h, 1]
    cols = (corner[:, 1:] + torch.arange(w, device=dev))[:, None, None, :]  # [B, 1, 1, w]
    batch = torch.arange(len(corner), device=dev)[:, None, None, None]
    return batch, torch.arange(c, device=dev)[None, :, None, None], rows, cols


def random_offsets(n: int, size: int, digit: int, max_shift: int, gen: torch.Generator | None = None) -> Tensor:
    """Offsets of a digit centred on the canvas and shifted by up to ``max_shift`` pixels.

    Shapes:
        returns: [n, 2] int64 (row, col)
    """
    centre = (size - digit) // 2
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=gen) + centre
    return shifts.clamp(0, size - digit)


def partners(labels: Tensor, gen: torch.Generator | None = None) -> Tensor:
    """For each example, the index of a random other example of a different class.

    Shapes:
        labels: [N] -> [N]
    """
    n = len(labels)
    idx = torch.randint(0, n, (n,), generator=gen)
    for _ in range(100):  # redraw the few that hit the same class
        same = labels[idx] == labels
        if not same.any():
            return idx
        idx[same] = torch.randint(0, n, (int(same.sum()),), generator=gen)
    raise DataError("MultiMNIST needs at least two classes in a batch")


def multimnist(x: Tensor, y: Tensor, size: int = 36, max_shift: int = 4, gen: torch.Generator | None = None):
    """Overlay pairs of different-class digits (Sabour et al. 2017, section 6).

    Shapes:
        x: [B, 1, 28, 28] float in [0, 1], y: [B]
        returns: merged [B, 1, S, S], labels [B, 2], digits [B, 2, 1, S, S] (each shifted digit alone)
    """
    j = partners(y, gen)
    a = place(x, size, random_offsets(len(x), size, x.shape[-1], max_shift, gen))
    b = place(x[j], size, random_offsets(len(x), size, x.shape[-1], max_shift, gen))
    return (a + b).clamp(max=1.0), torch.stack([y, y[j]], dim=1), torch.stack([a, b], dim=1)


def multimnist_test_set(x: Tensor, y: Tensor, pairs: int, seed: int, size: int = 36, max_shift: int = 4):
    """A fixed, seeded MultiMNIST test set of ``pairs`` images built from ``x`` (uint8).

    Shapes:
        returns: merged [P, 1, S, S] uint8, labels [P, 2], digits [P, 2, 1, S, S] uint8
    """
    gen = torch.Generator().manual_seed(seed)
    base = torch.randint(0, len(x), (pairs,), generator=gen)
    merged, labels, digits = multimnist(x[base].float() / 255, y[base], size, max_shift, gen)
    to_u8 = lambda t: (t * 255).round().to(torch.uint8)  # noqa: E731
    return to_u8(merged), labels, to_u8(digits)
