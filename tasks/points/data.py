"""Point-cloud data sets: standard folder layouts, a stacked-array cache, augmentation.

Layouts (``data.layout``; ``auto`` detects them in this order):

* ``modelnet40_txt``: ModelNet40/10 resampled clouds, ``<class>/<class>_0001.txt``
  with ``modelnet40_train.txt`` / ``modelnet40_test.txt`` name lists in the root
  (other ``*_train.txt`` lists, e.g. ``modelnet10_*``, only when those are absent).
* ``shapenet_part``: ``<synset>/*.txt|*.pts`` (also ``<synset>/points/*.pts``), split
  by ``train_test_split/shuffled_{train,val,test}_file_list.json`` (train+val for
  training), class names from ``synsetoffset2category.txt`` when present.
* ``modelnet``: ``<class>/{train,test}/*`` (ModelNet10/40 ``.off`` meshes, or the
  ``.pcd`` clouds of the data root's ``points/ModelNet10_pcd1024``).
* ``folder``: ``<class>/**/*.{ply,pcd,off,obj,txt,pts}``; a ``train``/``test``
  folder on the way gives the split, otherwise a seeded ``test_fraction`` split.

Every cloud is read once (meshes sampled, seeded), centred and scaled into the
unit sphere, and the stacked arrays are cached as one ``.npz`` in
``cache_dir("points")`` keyed by the folder, its files (name, size, mtime) and
the settings. Datasets and augmentation: ``augment.py``.

Shapes: S shapes, P points.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from capsule_kit.data import cache_dir, limit_indices
from capsule_kit.errors import ConfigError, DataError
from capsule_kit.splits import SplitConfig, holdout
from capsule_kit_tasks.points.io import EXTS, load_points, normalize
from capsule_kit_tasks.points.synthetic import synthetic_set

CACHE_VERSION = 1
SYNTHETIC = "SYNTHETIC procedural shapes (not real data)"


@dataclass
class PointSet:
    """Normalised clouds of one data set.

    Attributes:
        points: [S, P, 3] float32 in the unit sphere.
        labels: [S] int64 class indices.
        split: [S] uint8, 0 train / 1 test.
        classes: Class names.
        source: What the clouds are (folder and layout, or the synthetic label).
        synthetic: True for the procedural fallback set.

    """

    points: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    classes: list[str]
    source: str
    synthetic: bool = False


# -- discovery -----------------------------------------------------------------


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTS and p.is_file())


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def detect_layout(root: Path) -> str:
    """Guess the layout of ``root`` (see the module docstring)."""
    if any(root.glob("*_train.txt")):
        return "modelnet40_txt"
    if (root / "train_test_split").is_dir() or (root / "synsetoffset2category.txt").is_file():
        return "shapenet_part"
    if any((d / "train").is_dir() and (d / "test").is_dir() for d in _class_dirs(root)):
        return "modelnet"
    return "folder"


def _listings(root: Path, split: str) -> list[Path]:
    """The name lists of one split: ``modelnet40_<split>.txt`` when present, else every ``*_<split>.txt``.

    The standard ``modelnet40_normal_resampled`` folder also holds ``modelnet10_*`` lists (a subset of
    the same shapes), so reading every list would count the ModelNet10 shapes twice.
    """
    preferred = root / f"modelnet40_{split}.txt"
    return [preferred] if preferred.is_file() else sorted(root.glob(f"*_{split}.txt"))


def _modelnet40_txt(root: Path) -> list[tuple[Path, str, int]]:
    out, seen = [], set()
    for split, part in (("train", 0), ("test", 1)):
        for listing in _listings(root, split):
            for name in listing.read_text().split():
                if name not in seen:  # a shape listed twice is read once (in its first split)
                    seen.add(name)
                    cls = name.rsplit("_", 1)[0]
                    out.append((root / cls / f"{name}.txt", cls, part))
    return out


def _shapenet_part(root: Path, test_fraction: float, seed: int) -> list[tuple[Path, str, int]]:
    names = {}
    if (root / "synsetoffset2category.txt").is_file():
        for line in (root / "synsetoffset2category.txt").read_text().splitlines():
            if len(line.split()) == 2:
                names[line.split()[1]] = line.split()[0]
    split_of = {}
    for split, part in (("train", 0), ("val", 0), ("test", 1)):
        listing = root / "train_test_split" / f"shuffled_{split}_file_list.json"
        if listing.is_file():
            split_of.update({"/".join(e.split("/")[-2:]): part for e in json.loads(listing.read_text())})
    out = []
    for d in _class_dirs(root):
        if d.name == "train_test_split":
            continue
        for f in _files(d):
            if f.suffix.lower() in (".txt", ".pts"):
                out.append((f, names.get(d.name, d.name), split_of.get(f"{d.name}/{f.stem}", -1)))
    return _fill_split(out, test_fraction, seed)


def _folder(root: Path, test_fraction: float, seed: int) -> list[tuple[Path, str, int]]:
    out = []
    for d in _class_dirs(root):
        for f in _files(d):
            parts = {p.lower() for p in f.relative_to(d).parts[:-1]}
            out.append((f, d.name, 1 if "test" in parts else 0 if "train" in parts else -1))
    return _fill_split(out, test_fraction, seed)


def _fill_split(entries: list, test_fraction: float, seed: int) -> list[tuple[Path, str, int]]:
    """Give files without a split (-1) the core's seeded hold-out of ``test_fraction``, stratified by class.

    Too few files of a class to stratify: the same hold-out unstratified.
    """
    free = np.array([i for i, e in enumerate(entries) if e[2] < 0], dtype=np.int64)
    if len(free) < 2:
        return [(f, c, max(s, 0)) for f, c, s in entries]
    classes = [c for _, c, _ in entries]
    try:
        _, held = holdout(free, classes, test_fraction, seed, "split.test_fraction")
    except ConfigError:
        _, held = holdout(free, classes, test_fraction, seed, "split.test_fraction", stratify=False)
    test = set(held.tolist())
    return [(f, c, s if s >= 0 else int(i in test)) for i, (f, c, s) in enumerate(entries)]


def discover(root: Path, layout: str, test_fraction: float = 0.2, seed: int = 0) -> tuple[list, str]:
    """List ``(file, class name, split)`` entries of a data folder.

    Raises:
        DataError: when no point-cloud or mesh files are found.

    """
    layout = detect_layout(root) if layout == "auto" else layout
    if layout == "modelnet40_txt":
        entries = _modelnet40_txt(root)
    elif layout == "shapenet_part":
        entries = _shapenet_part(root, test_fraction, seed)
    else:  # modelnet is the folder layout with train/test sub-folders
        entries = _folder(root, test_fraction, seed)
    if not entries:
        raise DataError(f"{root}: no {'/'.join(EXTS)} files found in <class>/ sub-folders (layout '{layout}')")
    return entries, layout


# -- loading and caching ---------------------------------------------------------


def _limit(entries: list, train_limit: int | None, test_limit: int | None, seed: int) -> list:
    out = []
    for part, limit in ((0, train_limit), (1, test_limit)):
        out += limit_indices([e for e in entries if e[2] == part], limit, seed)
    return out


def _cache_key(root: Path, entries: list, settings: dict) -> str:
    h = hashlib.sha1(json.dumps({"v": CACHE_VERSION, "root": str(root.resolve()), **settings}).encode())
    for f, cls, part in entries:
        st = f.stat() if f.exists() else None
        h.update(f"{f.relative_to(root)}|{cls}|{part}|{st and st.st_size}|{st and st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _read_all(root: Path, entries: list, classes: list[str], d) -> PointSet:
    pts = np.stack(
        [load_points(f, d.num_points, sampling=d.sampling, reader=d.reader, seed=d.seed + i) for i, (f, _, _) in
         enumerate(entries)]
    )  # fmt: skip
    labels = np.array([classes.index(c) for _, c, _ in entries], np.int64)
    return PointSet(normalize(pts), labels, np.array([s for *_, s in entries], np.uint8), classes, str(root))


def load_folder(root: Path, d, split=None) -> PointSet:
    """Read (or load from the cache) the data set in ``root`` with the ``data`` and ``split`` settings."""
    split = split or SplitConfig(test_fraction=0.2)
    entries, layout = discover(root, d.layout, split.test_fraction, split.seed)
    if d.classes:
        missing = sorted(set(d.classes) - {c for _, c, _ in entries})
        if missing:
            raise DataError(f"data.classes: {missing} not found in {root}")
        entries = [e for e in entries if e[1] in d.classes]
    entries = _limit(entries, d.train_limit, d.test_limit, split.seed)
    classes = sorted({c for _, c, _ in entries})
    settings = {"n": d.num_points, "sampling": d.sampling, "seed": d.seed, "layout": layout}
    path = cache_dir("points") / f"{root.name}-{_cache_key(root, entries, settings)}.npz"
    if d.cache and path.exists():
        z = np.load(path, allow_pickle=False)
        return PointSet(z["points"], z["labels"], z["split"], [str(c) for c in z["classes"]], f"{root} ({layout})")
    print(f"points: reading {len(entries)} files from {root} (layout {layout})", file=sys.stderr)
    ps = _read_all(root, entries, classes, d)
    ps.source = f"{root} ({layout})"
    if d.cache:
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, points=ps.points, labels=ps.labels, split=ps.split, classes=np.array(classes))
        os.replace(tmp, path)  # atomic: a concurrent run never reads half a file
    return ps


def load_synthetic(d) -> PointSet:
    """The procedural shape set, normalised like real clouds."""
    pts, labels, split, classes = synthetic_set(d.synthetic_train, d.synthetic_test, d.num_points, d.seed)
    return PointSet(normalize(pts), labels, split, classes, SYNTHETIC, synthetic=True)
