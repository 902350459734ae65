"""Strict numpy readers for point clouds and meshes: every file is checked against its header.

A truncated file, a missing or extra column, a non-number or a NaN/inf token is refused in one
line naming the file (and the line, for text formats). open3d's readers accept such files
silently (a truncated ASCII PLY comes back padded with uninitialised values, an ``inf`` token as
an all-zero cloud, with only ``RPly: Error reading`` on stderr), so the runner reads with these
wherever they apply, and uses open3d only for binary PLY and compressed PCD (see ``io.py``).

Shapes: P points, V vertices, F faces.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from capsule_kit.errors import DataError


def _text_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text file (expected ASCII numbers)") from None


def numbers(path: Path, lines: list[str], first: int | list[int], cols: int | None = None) -> np.ndarray:
    """Parse ``lines`` (from line ``first`` of the file on, or on the lines listed) as rows of finite numbers.

    ``cols`` fixes the row width (default: the first row's). A short or long row, a non-number
    or a NaN/inf token raises a DataError naming the file and its line.

    Shapes:
        returns: [len(lines), cols] float64
    """
    width = cols or (len(lines[0].split()) if lines else 0)
    linenos = first if isinstance(first, list) else range(first, first + len(lines))
    with warnings.catch_warnings():  # older numpy warns and stops at a non-number; newer raises
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            flat = np.fromstring(" ".join(lines), sep=" ") if lines else np.zeros(0)  # C parser: ~50x Python
        except ValueError:
            flat = None
    if flat is None or flat.size != width * len(lines):
        for k, line in zip(linenos, lines):  # slow path, only to name the line
            tokens = line.split()
            if len(tokens) != width:
                raise DataError(f"{path}: line {k}: {len(tokens)} values, expected {width}")
            for t in tokens:
                try:
                    float(t)
                except ValueError:
                    raise DataError(f"{path}: line {k}: {t[:20]!r} is not a number") from None
        raise DataError(f"{path}: line {linenos[0]}: malformed numbers")
    table = flat.reshape(len(lines), width)
    bad = np.flatnonzero(~np.isfinite(table).all(axis=1))
    if bad.size:
        raise DataError(
            f"{path}: line {linenos[bad[0]]}: NaN/inf coordinate ({bad.size} row{'s' * (bad.size > 1)} in all)"
        )
    return table


def _count(path: Path, what: str, want: int, got: int, line: int | None) -> None:
    if got < want:
        where = f" (to line {line})" if line else ""
        raise DataError(f"{path}: truncated: the header declares {want} {what}, the file has {got}{where}")


def _pcd_header(raw: bytes, path: Path) -> tuple[dict[str, list[str]], int, int]:
    """PCD header fields, the byte offset of the data and the number of header lines."""
    header, pos, lineno = {}, 0, 0
    while True:
        end = raw.find(b"\n", pos)
        if end < 0:
            raise DataError(f"{path}: PCD header has no DATA line")
        line = raw[pos:end].decode("ascii", "replace").strip()
        pos, lineno = end + 1, lineno + 1
        if line and not line.startswith("#"):
            key, *vals = line.split()
            header[key.upper()] = vals
            if key.upper() == "DATA":
                return header, pos, lineno


def read_pcd(path: Path) -> np.ndarray:
    """The x y z columns of an ASCII or binary PCD file (any extra fields are skipped).

    Shapes:
        returns: [P, 3] float64
    """
    raw = path.read_bytes()
    h, start, head_lines = _pcd_header(raw, path)
    fields = h.get("FIELDS", [])
    if not {"x", "y", "z"} <= set(fields):
        raise DataError(f"{path}: PCD has fields {fields}, expected x y z")
    try:
        n = int(h.get("POINTS", ["0"])[0])
        counts = [int(c) for c in h.get("COUNT", ["1"] * len(fields))]
        kinds = {"F": "f", "I": "i", "U": "u"}
        types = zip(fields, h["TYPE"], h["SIZE"], counts)
        cols = [(f"{f}_{k}", f"<{kinds[t]}{s}") for f, t, s, c in types for k in range(c)]
    except (KeyError, ValueError):
        raise DataError(f"{path}: malformed PCD header (FIELDS/SIZE/TYPE/COUNT/POINTS)") from None
    xyz = [[c[0] for c in cols].index(f"{a}_0") for a in "xyz"]
    mode = h["DATA"][0].lower() if h["DATA"] else ""
    if mode == "binary":
        dtype = np.dtype(cols)
        _count(path, "points", n, (len(raw) - start) // dtype.itemsize, None)
        data = np.frombuffer(raw, dtype=dtype, count=n, offset=start)
        return np.stack([data[f"{a}_0"].astype(np.float64) for a in "xyz"], axis=1)
    if mode == "ascii":
        lines = [ln for ln in raw[start:].decode("ascii", "replace").splitlines() if ln.strip()]
        _count(path, "points", n, len(lines), head_lines + len(lines))
        return numbers(path, lines[:n], head_lines + 1, len(cols))[:, xyz]
    if mode == "binary_compressed":
        raise NeedsOpen3d(f"compressed PCD ({n} points)", points=n)
    raise DataError(f"{path}: unknown PCD 'DATA {mode}' (expected ascii, binary or binary_compressed)")


def read_table(path: Path) -> np.ndarray:
    """First three columns of a whitespace- or comma-separated text cloud (.txt/.pts/.xyz).

    Shapes:
        returns: [P, 3] float64
    """
    rows = [(k + 1, ln.replace(",", " ")) for k, ln in enumerate(_text_lines(path))]
    rows = [(k, ln) for k, ln in rows if ln.strip() and not ln.lstrip().startswith("#")]
    if not rows:
        return np.zeros((0, 3))
    table = numbers(path, [ln for _, ln in rows], [k for k, _ in rows])
    if table.shape[1] < 3:
        raise DataError(f"{path}: line {rows[0][0]}: {table.shape[1]} values, expected at least 3 (x y z)")
    return table[:, :3]


def read_npy(path: Path) -> np.ndarray:
    """A [P, >=3] numeric ``.npy`` array (x y z first); pickled objects are refused.

    Shapes:
        returns: [P, 3] float64
    """
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: unreadable .npy ({str(exc).splitlines()[0][:120]})") from None
    if arr.ndim != 2 or arr.shape[1] < 3 or not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{path}: .npy holds a {arr.dtype} array of shape {arr.shape}, expected [points, 3+] numbers")
    bad = np.flatnonzero(~np.isfinite(arr[:, :3]).all(axis=1))
    if bad.size:
        raise DataError(f"{path}: row {bad[0]}: NaN/inf coordinate ({bad.size} row{'s' * (bad.size > 1)} in all)")
    return arr[:, :3].astype(np.float64)


def faces(path: Path, rows: list[list[str]], linenos: list[int], nverts: int) -> np.ndarray:
    """Polygons ``n i j k ...`` (on lines ``linenos``) -> triangle fan indices [F, 3]."""
    tris = []
    for k, r in zip(linenos, rows):
        try:
            idx = [int(v) for v in r[1 : 1 + int(r[0])]]
        except (ValueError, IndexError):
            raise DataError(f"{path}: line {k}: malformed face (expected 'n i j k ...')") from None
        if len(idx) < 3 or len(idx) != int(r[0]) or not all(0 <= i < nverts for i in idx):
            raise DataError(f"{path}: line {k}: face needs 3+ vertex indices in [0, {nverts})")
        tris += [(idx[0], idx[j], idx[j + 1]) for j in range(1, len(idx) - 1)]
    return np.array(tris, dtype=np.int64).reshape(-1, 3)


def read_off(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices [V, 3] and triangles [F, 3] of an OFF mesh (ModelNet's 'OFF490 518 0' quirk included)."""
    rows = [(k + 1, ln.split("#")[0].strip()) for k, ln in enumerate(_text_lines(path))]
    rows = [(k, ln) for k, ln in rows if ln]
    if not rows or not rows[0][1].upper().startswith("OFF"):
        raise DataError(f"{path}: not an OFF file (first line should be 'OFF')")
    inline = rows[0][1][3:].split()
    head, body = (inline, rows[1:]) if inline else ((rows[1][1].split() if len(rows) > 1 else []), rows[2:])
    try:
        nv, nf = int(head[0]), int(head[1])
    except (ValueError, IndexError):
        raise DataError(f"{path}: OFF header needs vertex and face counts") from None
    last = body[-1][0] if body else rows[-1][0]
    _count(path, "vertices and faces", nv + nf, len(body), last)
    verts = numbers(path, [ln for _, ln in body[:nv]], body[0][0], 3) if nv else np.zeros((0, 3))
    face_rows = body[nv : nv + nf]
    return verts, faces(path, [ln.split() for _, ln in face_rows], [k for k, _ in face_rows], nv)


def read_obj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices and triangles of a Wavefront OBJ (``v`` and ``f`` lines; ``f 1/2/3`` forms)."""
    verts, polys, linenos = [], [], []
    for k, line in enumerate(_text_lines(path), start=1):
        parts = line.split()
        if parts and parts[0] == "v":
            verts.append((k, " ".join(parts[1:4])))
        elif parts and parts[0] == "f":
            try:
                idx = [int(p.split("/")[0]) for p in parts[1:]]
            except ValueError:
                raise DataError(f"{path}: line {k}: malformed face") from None
            polys.append([str(len(idx)), *(str(i - 1 if i > 0 else len(verts) + i) for i in idx)])
            linenos.append(k)
    table = numbers(path, [v for _, v in verts], [k for k, _ in verts], 3) if verts else np.zeros((0, 3))
    return table, faces(path, polys, linenos, len(verts))


def _ply_header(path: Path, lines: list[str]) -> tuple[str, list[tuple[str, int, list[list[str]]]], int]:
    """Format, elements ``(name, count, property lines)`` and the index of ``end_header``."""
    if not lines or lines[0].strip() != "ply" or len(lines) < 2:
        raise DataError(f"{path}: not a PLY file")
    fmt = lines[1].split()[1] if len(lines[1].split()) > 1 else "?"
    elements: list[tuple[str, int, list[list[str]]]] = []
    for k, line in enumerate(lines[2:], start=2):
        p = line.split()
        if p[:1] == ["end_header"]:
            if not elements or elements[0][0] != "vertex":
                break
            return fmt, elements, k
        try:
            if p[:1] == ["element"]:
                elements.append((p[1], int(p[2]), []))
            elif p[:1] == ["property"] and elements:
                elements[-1][2].append(p[1:])
        except (IndexError, ValueError):
            raise DataError(f"{path}: line {k + 1}: malformed PLY header line") from None
    raise DataError(f"{path}: PLY header without end_header or a leading vertex element")


def read_ply_ascii(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices and triangles of an ASCII PLY (x y z from the vertex element; faces if present)."""
    raw = path.read_bytes()
    head_end = raw.find(b"end_header")
    lines = raw[: max(head_end, 0) + 11].decode("ascii", "replace").splitlines()
    fmt, elements, end = _ply_header(path, lines)
    if fmt != "ascii":
        raise NeedsOpen3d(f"binary PLY ({fmt})", elements=elements)
    try:
        text = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{path}: ASCII PLY with non-text bytes") from None
    body = [(k + 1, ln) for k, ln in enumerate(text[end + 1 :], start=end + 1) if ln.strip()]
    pos, verts, tris = 0, None, np.zeros((0, 3), np.int64)
    for name, count, props in elements:
        rows = body[pos : pos + count]
        _count(path, f"'{name}' rows", count, len(rows), body[-1][0] if body else end + 1)
        pos += count
        if name == "vertex":
            names = [p[-1] for p in props]
            if not {"x", "y", "z"} <= set(names) or any(p[0] == "list" for p in props):
                raise DataError(f"{path}: PLY vertex element needs scalar x y z properties")
            table = numbers(path, [ln for _, ln in rows], rows[0][0] if rows else end + 2, len(props))
            verts = table[:, [names.index(a) for a in "xyz"]]
        elif name == "face":
            tris = faces(path, [ln.split() for _, ln in rows], [k for k, _ in rows], len(verts))
    return verts, tris


class NeedsOpen3d(Exception):
    """A binary PLY or compressed PCD: open3d reads it, after the checks its header allows."""

    def __init__(self, what: str, *, elements: list | None = None, points: int | None = None) -> None:
        super().__init__(what)
        self.what, self.elements, self.points = what, elements, points


_PLY_SIZES = {
    **dict.fromkeys(("char", "uchar", "int8", "uint8"), 1),
    **dict.fromkeys(("short", "ushort", "int16", "uint16"), 2),
    **dict.fromkeys(("int", "uint", "int32", "uint32", "float", "float32"), 4),
    **dict.fromkeys(("double", "float64"), 8),
}


def check_binary_ply(path: Path, elements: list) -> None:
    """Refuse a binary PLY shorter than its header's fixed-size records (list properties count 1+ byte)."""
    need = 0
    for _, count, props in elements:
        for p in props:
            size = _PLY_SIZES.get(p[1] if p[0] == "list" else p[0])
            if size is None:
                raise DataError(f"{path}: unknown PLY property type {p[0]!r}")
            need += count * (_PLY_SIZES.get(p[1], 1) if p[0] == "list" else size)
    raw = path.read_bytes()
    have = len(raw) - (raw.find(b"end_header") + len(b"end_header\n"))
    if have < need:
        raise DataError(f"{path}: truncated binary PLY: the header declares {need}+ data bytes, the file has {have}")
