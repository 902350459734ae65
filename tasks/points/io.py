"""Point-cloud and mesh readers: open3d when it imports, small numpy readers otherwise.

open3d-cpu needs the system library ``libusb-1.0.so.0``; where it cannot be
imported, binary PCD (x y z float), ASCII PCD, ASCII PLY, ``.txt``/``.pts``,
``.off`` and ``.obj`` are still read with numpy, and meshes are sampled with an
area-weighted uniform sampler. Only Poisson-disk sampling, binary PLY and
compressed PCD need open3d.

Shapes: P points, F faces.
"""

from __future__ import annotations

import functools
import sys
import warnings
from pathlib import Path

import numpy as np

from capsule_kit.errors import DataError, UserError

CLOUD_EXTS = (".pcd", ".txt", ".pts", ".xyz")
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


@functools.cache
def _note_fallback() -> None:
    print(f"points: {open3d_or_reason()[1]}; using the numpy readers", file=sys.stderr)


def use_open3d(reader: str) -> bool:
    """Whether to read with open3d for ``reader`` in {auto, open3d, numpy}."""
    if reader == "numpy":
        return False
    if reader == "open3d":
        require_open3d("data.reader=open3d")
        return True
    if open3d_or_reason()[0] is None:
        _note_fallback()
        return False
    return True


# -- numpy readers -------------------------------------------------------------


def _pcd_header(raw: bytes, path: Path) -> tuple[dict[str, list[str]], int]:
    """PCD header fields and the byte offset of the data."""
    header, pos = {}, 0
    while True:
        end = raw.find(b"\n", pos)
        if end < 0:
            raise DataError(f"{path}: PCD header has no DATA line")
        line = raw[pos:end].decode("ascii", "replace").strip()
        pos = end + 1
        if line and not line.startswith("#"):
            key, *vals = line.split()
            header[key.upper()] = vals
            if key.upper() == "DATA":
                return header, pos


def read_pcd(path: Path) -> np.ndarray:
    """The x y z columns of an ASCII or binary PCD file (any extra fields are skipped).

    Shapes:
        returns: [P, 3] float64
    """
    raw = path.read_bytes()
    h, start = _pcd_header(raw, path)
    fields = h.get("FIELDS", [])
    if not {"x", "y", "z"} <= set(fields):
        raise DataError(f"{path}: PCD has fields {fields}, expected x y z")
    n = int(h.get("POINTS", ["0"])[0])
    counts = [int(c) for c in h.get("COUNT", ["1"] * len(fields))]
    kinds = {"F": "f", "I": "i", "U": "u"}
    types = zip(fields, h["TYPE"], h["SIZE"], counts)
    cols = [(f"{f}_{k}", f"<{kinds[t]}{s}") for f, t, s, c in types for k in range(c)]
    mode = h["DATA"][0].lower()
    if mode == "binary":
        data = np.frombuffer(raw, dtype=np.dtype(cols), count=n, offset=start)
        return np.stack([data[f"{a}_0"].astype(np.float64) for a in "xyz"], axis=1)
    if mode == "ascii":
        table = np.loadtxt(raw[start:].decode("ascii").splitlines(), ndmin=2)
        return table[:, [[c[0] for c in cols].index(f"{a}_0") for a in "xyz"]]
    raise UserError(f"{path}: PCD 'DATA {mode}' needs open3d: {open3d_or_reason()[1] or 'use data.reader=open3d'}")


def read_table(path: Path) -> np.ndarray:
    """First three columns of a whitespace- or comma-separated text cloud (.txt/.pts/.xyz).

    Shapes:
        returns: [P, 3] float64
    """
    text = path.read_text(errors="replace").replace(",", " ")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    cols = len(lines[0].split()) if lines else 3
    bad = DataError(f"{path}: expected rows of {max(cols, 3)} numbers (x y z ...) on every line")
    with warnings.catch_warnings():  # older numpy warns and stops at a non-number (the size check catches it)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            flat = np.fromstring(" ".join(lines), sep=" ") if lines else np.zeros(0)  # C parser: ~50x Python
        except ValueError:  # newer numpy raises
            raise bad from None
    if cols < 3 or flat.size != cols * len(lines):
        raise bad
    return flat.reshape(-1, cols)[:, :3]


def _faces(rows: list[list[str]], path: Path) -> np.ndarray:
    """Polygons ``n i j k ...`` -> triangle fan indices [F, 3]."""
    tris = []
    for r in rows:
        idx = [int(v) for v in r[1 : 1 + int(r[0])]]
        tris += [(idx[0], idx[k], idx[k + 1]) for k in range(1, len(idx) - 1)]
    return np.array(tris, dtype=np.int64).reshape(-1, 3)


def read_off(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices [V, 3] and triangles [F, 3] of an OFF mesh (ModelNet's 'OFF490 518 0' quirk included)."""
    tokens = [ln.split("#")[0].strip() for ln in path.read_text(errors="replace").splitlines()]
    lines = [t for t in tokens if t]
    if not lines or not lines[0].upper().startswith("OFF"):
        raise DataError(f"{path}: not an OFF file (first line should be 'OFF')")
    head = lines[0][3:].split() or lines[1].split()
    body = lines[1:] if lines[0][3:].split() else lines[2:]
    try:
        nv, nf = int(head[0]), int(head[1])
        verts = np.array([ln.split()[:3] for ln in body[:nv]], dtype=np.float64).reshape(-1, 3)
        faces = _faces([ln.split() for ln in body[nv : nv + nf]], path)
    except (ValueError, IndexError):
        raise DataError(f"{path}: malformed OFF (vertex/face counts do not match the body)") from None
    return verts, faces


def read_obj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices and triangles of a Wavefront OBJ (``v`` and ``f`` lines; ``f 1/2/3`` forms)."""
    verts, polys = [], []
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        if parts and parts[0] == "v":
            verts.append(parts[1:4])
        elif parts and parts[0] == "f":
            idx = [int(p.split("/")[0]) for p in parts[1:]]
            polys.append([str(len(idx)), *(str(i - 1 if i > 0 else len(verts) + i) for i in idx)])
    try:
        return np.array(verts, dtype=np.float64).reshape(-1, 3), _faces(polys, path)
    except ValueError:
        raise DataError(f"{path}: malformed OBJ vertex line") from None


def read_ply_ascii(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices and triangles of an ASCII PLY (x y z from the vertex element; faces if present)."""
    lines = path.read_text(errors="replace").splitlines()
    if not lines or lines[0].strip() != "ply":
        raise DataError(f"{path}: not a PLY file")
    if "ascii" not in lines[1]:
        raise UserError(f"{path}: binary PLY needs open3d: {open3d_or_reason()[1] or 'use data.reader=open3d'}")
    elements, props, end = [], {}, lines.index("end_header") if "end_header" in lines else -1
    for line in lines[2:end]:
        p = line.split()
        if p[:1] == ["element"]:
            elements.append((p[1], int(p[2])))
            props[p[1]] = []
        elif p[:1] == ["property"] and elements:
            props[elements[-1][0]].append(p[-1])
    if end < 0 or not elements or elements[0][0] != "vertex":
        raise DataError(f"{path}: PLY header without a leading vertex element")
    body, pos, verts, faces = lines[end + 1 :], 0, None, np.zeros((0, 3), np.int64)
    for name, count in elements:
        rows = [ln.split() for ln in body[pos : pos + count]]
        pos += count
        if name == "vertex":
            cols = [props["vertex"].index(a) for a in "xyz"]
            verts = np.array([[r[c] for c in cols] for r in rows], dtype=np.float64).reshape(-1, 3)
        elif name == "face":
            faces = _faces(rows, path)
    return verts, faces


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


def _mesh_numpy(path: Path) -> tuple[np.ndarray, np.ndarray]:
    ext = path.suffix.lower()
    return read_off(path) if ext == ".off" else read_obj(path) if ext == ".obj" else read_ply_ascii(path)


def _read_open3d(path: Path, n: int, sampling: str, seed: int) -> np.ndarray:
    o3d = require_open3d(f"{path}")
    if path.suffix.lower() in MESH_EXTS or path.suffix.lower() == ".ply":
        mesh = o3d.io.read_triangle_mesh(str(path))
        if len(mesh.triangles):
            check_vertices(path, np.asarray(mesh.vertices))
            if sampling == "poisson":
                o3d.utility.random.seed(seed)
                return np.asarray(mesh.sample_points_poisson_disk(n).points)
            return sample_mesh(np.asarray(mesh.vertices), np.asarray(mesh.triangles), n, np.random.default_rng(seed))
        if path.suffix.lower() in MESH_EXTS:
            # open3d's OFF reader gives up on a 'nan' token (and keeps garbage vertices): the numpy
            # reader says what is wrong, or finds the file has no faces
            verts, faces = _mesh_numpy(path)
            check_vertices(path, verts)
            return np.zeros((0, 3)) if len(faces) == 0 else _read_numpy(path, n, sampling, seed)
    if path.suffix.lower() in (".txt", ".pts"):
        return read_table(path)
    return np.asarray(o3d.io.read_point_cloud(str(path)).points)


def _read_numpy(path: Path, n: int, sampling: str, seed: int) -> np.ndarray:
    ext = path.suffix.lower()
    if ext == ".pcd":
        return read_pcd(path)
    if ext in (".txt", ".pts", ".xyz"):
        return read_table(path)
    verts, faces = _mesh_numpy(path)
    if len(faces) == 0:
        return verts if ext == ".ply" else np.zeros((0, 3))
    check_vertices(path, verts)
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
    read = _read_open3d if use_open3d(reader) else _read_numpy
    try:
        pts = read(path, n, sampling, seed)
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
