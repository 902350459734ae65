"""Loading point clouds and meshes: the strict numpy readers of ``formats.py``, open3d where needed.

Binary and ASCII PCD, ASCII PLY, ``.txt``/``.pts``/``.xyz``, ``.npy``, ``.off`` and ``.obj`` are
read by the numpy readers, which check every file against its header (open3d's readers accept
truncated or malformed files silently). open3d reads binary PLY (after a size check against the
header) and compressed PCD, and does Poisson-disk sampling; open3d-cpu needs the system library
``libusb-1.0.so.0``, and where it cannot be imported a one-line error says so, with the fix.
Meshes are sampled with an area-weighted uniform sampler.

Shapes: P points, F faces.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np

from capsule_kit.errors import DataError, UserError
from capsule_kit_tasks.points.formats import (  # noqa: F401 (read_* re-exported: the readers' public home was here)
    NeedsOpen3d,
    check_binary_ply,
    read_npy,
    read_obj,
    read_off,
    read_pcd,
    read_ply_ascii,
    read_table,
)

CLOUD_EXTS = (".pcd", ".txt", ".pts", ".xyz", ".npy")
MESH_EXTS = (".off", ".obj")
EXTS = (*CLOUD_EXTS, *MESH_EXTS, ".ply")
OPEN3D_FIX = "apt-get install libusb-1.0-0, or pip install 'capsule-kit[points]'"


class DataWarning(UserWarning):
    """Recoverable problem with one input file (named in the message)."""


def warn(message: str) -> None:
    """Emit a :class:`DataWarning` that prints as one line (it names the file; no source line follows)."""
    warnings.warn_explicit(message, DataWarning, "capsule-kit points", 0)


@functools.cache
def open3d_or_reason():
    """``(open3d module, None)`` or ``(None, one-line reason with the fix)``."""
    try:
        import open3d as o3d
    except ImportError as exc:  # typically libusb-1.0.so.0 missing, or not installed
        return None, f"open3d cannot be imported ({exc}); fix: {OPEN3D_FIX}"
    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    return o3d, None


def require_open3d(why: str):
    """The open3d module, or a UserError saying why it is needed and how to install it."""
    o3d, reason = open3d_or_reason()
    if o3d is None:
        raise UserError(f"{why} needs open3d: {reason}")
    return o3d


# -- sampling ------------------------------------------------------------------


def check_vertices(path: Path, verts: np.ndarray) -> None:
    """Raise a one-line DataError when mesh vertices are NaN/inf (sampling would fail obscurely).

    Shapes:
        verts: [V, 3]
    """
    bad = int((~np.isfinite(verts).all(axis=1)).sum())
    if bad:
        raise DataError(f"{path}: {bad} of {len(verts)} mesh vertices have NaN/inf coordinates")


def sample_mesh(verts: np.ndarray, faces: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points uniformly on the surface (faces picked by area, uniform barycentric).

    Shapes:
        verts: [V, 3], faces: [F, 3]
        returns: [n, 3]
    """
    tri = verts[faces]  # [F, 3, 3]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    total = area.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError("mesh has zero surface area")
    pick = rng.choice(len(tri), size=n, p=area / total)
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1  # reflect into the triangle instead of rejecting
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    t = tri[pick]
    return t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])


def _read_open3d(path: Path, exc: NeedsOpen3d, reader: str) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (or points) and faces of a file only open3d reads, checked against its header's counts."""
    if reader == "numpy":
        raise UserError(f"{path}: {exc.what} needs open3d (data.reader=numpy)")
    o3d = require_open3d(f"{path}: {exc.what}")
    if exc.elements is not None:
        check_binary_ply(path, exc.elements)
        mesh = o3d.io.read_triangle_mesh(str(path))
        if len(mesh.triangles):
            return np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    pts = np.asarray(o3d.io.read_point_cloud(str(path)).points)
    want = exc.points if exc.points is not None else exc.elements[0][1]
    if len(pts) != want:
        raise DataError(f"{path}: {exc.what}: the header declares {want} points, open3d read {len(pts)}")
    return pts, np.zeros((0, 3), np.int64)


def _read(path: Path, n: int, sampling: str, seed: int, reader: str) -> np.ndarray:
    """A cloud's points, or ``n`` points sampled on a mesh's surface."""
    ext = path.suffix.lower()
    try:
        if ext in (".txt", ".pts", ".xyz"):
            return read_table(path)
        if ext == ".npy":
            return read_npy(path)
        if ext == ".pcd":
            return read_pcd(path)
        verts, faces = read_off(path) if ext == ".off" else read_obj(path) if ext == ".obj" else read_ply_ascii(path)
    except NeedsOpen3d as exc:
        verts, faces = _read_open3d(path, exc, reader)
    check_vertices(path, verts)
    if len(faces) == 0:
        return verts if ext in (".ply", ".pcd") else np.zeros((0, 3))
    if sampling == "poisson":
        o3d = require_open3d(f"{path}: data.sampling=poisson")
        mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(verts), o3d.utility.Vector3iVector(faces))
        o3d.utility.random.seed(seed)
        return np.asarray(mesh.sample_points_poisson_disk(n).points)
    return sample_mesh(verts, faces, n, np.random.default_rng(seed))


def load_points(path: Path, n: int, *, sampling: str = "uniform", reader: str = "auto", seed: int = 0) -> np.ndarray:
    """Read a cloud or sample a mesh, check it, and return exactly ``n`` points.

    Clouds with more than ``n`` points are subsampled without replacement
    (seeded); fewer are sampled with replacement and a :class:`DataWarning`
    names the file.

    Shapes:
        returns: [n, 3] float32 (raw coordinates; see :func:`normalize`)

    Raises:
        DataError: unreadable/empty file or non-finite coordinates (naming the file).

    """
    path = Path(path)
    if path.suffix.lower() not in EXTS:
        raise DataError(f"{path}: unsupported extension (expected one of {', '.join(EXTS)})")
    if reader == "open3d":
        require_open3d("data.reader=open3d")
    try:
        pts = _read(path, n, sampling, seed, reader)
    except (OSError, UnicodeDecodeError, ValueError, IndexError, KeyError) as exc:
        raise DataError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    if len(pts) == 0:
        raise DataError(f"{path}: empty or unreadable (no points or faces)")
    if not np.isfinite(pts).all():
        raise DataError(f"{path}: {int((~np.isfinite(pts).all(1)).sum())} points have NaN/inf coordinates")
    rng = np.random.default_rng(seed)
    if len(pts) < n:
        warn(f"{path}: has {len(pts)} points, fewer than the {n} requested; sampling with replacement")
        return pts[rng.choice(len(pts), n, replace=True)].astype(np.float32)
    return pts[rng.choice(len(pts), n, replace=False)].astype(np.float32) if len(pts) > n else pts.astype(np.float32)


def normalize(points: np.ndarray) -> np.ndarray:
    """Centre each cloud on its centroid and scale it into the unit sphere.

    Shapes:
        points: [..., P, 3] -> same
    """
    centred = points - points.mean(axis=-2, keepdims=True)
    radius = np.linalg.norm(centred, axis=-1).max(axis=-1)[..., None, None]
    return (centred / np.where(radius > 0, radius, 1.0)).astype(np.float32)


def write_ply(path: Path, points: np.ndarray, colors: np.ndarray | None = None, comment: str = "") -> Path:
    """Write an ASCII PLY point cloud (colours as uint8 RGB in [0, 255]).

    Shapes:
        points: [P, 3], colors: [P, 3] floats in [0, 1] or None
    """
    head = ["ply", "format ascii 1.0", *([f"comment {comment}"] if comment else [])]
    head += [f"element vertex {len(points)}", "property float x", "property float y", "property float z"]
    cols = [f"{x:.6f} {y:.6f} {z:.6f}" for x, y, z in points]
    if colors is not None:
        head += ["property uchar red", "property uchar green", "property uchar blue"]
        rgb = np.clip(np.round(np.asarray(colors) * 255), 0, 255).astype(int)
        cols = [f"{c} {r} {g} {b}" for c, (r, g, b) in zip(cols, rgb)]
    Path(path).write_text("\n".join([*head, "end_header", *cols]) + "\n")
    return Path(path)
