"""A procedurally generated, seeded shape set: the fallback when no real shapes are found.

Eight classes of primitives and simple composed objects (sphere, box, cylinder,
cone, torus, table, chair, lamp) with random proportions, sampled uniformly on
their surfaces (parts by area). Everything built from it is labelled synthetic.

Shapes: P points.
"""

from __future__ import annotations

import numpy as np

CLASSES = ("sphere", "box", "cylinder", "cone", "torus", "table", "chair", "lamp")


def _box(c, size, n, rng):
    """Points on the surface of an axis-aligned box (faces by area)."""
    size = np.asarray(size, float)
    areas = np.array([size[1] * size[2], size[0] * size[2], size[0] * size[1]]).repeat(2)
    face = rng.choice(6, n, p=areas / areas.sum())
    pts = rng.random((n, 3)) - 0.5
    axis = face // 2
    pts[np.arange(n), axis] = np.where(face % 2, 0.5, -0.5)
    return np.asarray(c) + pts * size


def _cylinder(c, r, h, n, rng, caps=True):
    """Points on a z-aligned cylinder (side, and both caps if ``caps``)."""
    side, cap = 2 * np.pi * r * h, np.pi * r * r
    k = rng.choice(3, n, p=np.array([side, cap * caps, cap * caps]) / (side + 2 * cap * caps))
    t = rng.random(n) * 2 * np.pi
    rad = np.where(k == 0, r, r * np.sqrt(rng.random(n)))
    z = np.where(k == 0, (rng.random(n) - 0.5) * h, np.where(k == 1, h / 2, -h / 2))
    return np.asarray(c) + np.stack([rad * np.cos(t), rad * np.sin(t), z], 1)


def _cone(c, r, h, n, rng):
    """Points on a z-aligned cone (lateral surface and base)."""
    slant, base = np.pi * r * np.hypot(r, h), np.pi * r * r
    lateral = rng.random(n) < slant / (slant + base)
    t, s = rng.random(n) * 2 * np.pi, np.sqrt(rng.random(n))
    rad = r * s
    z = np.where(lateral, h * (1 - s), 0.0) - h / 2
    return np.asarray(c) + np.stack([rad * np.cos(t), rad * np.sin(t), z], 1)


def _sphere(c, radii, n, rng):
    v = rng.normal(size=(n, 3))
    return np.asarray(c) + v / np.linalg.norm(v, axis=1, keepdims=True) * radii


def _torus(c, big, small, n, rng):
    u, v = rng.random(n) * 2 * np.pi, rng.random(n) * 2 * np.pi
    ring = big + small * np.cos(v)
    return np.asarray(c) + np.stack([ring * np.cos(u), ring * np.sin(u), small * np.sin(v)], 1)


def _split(n: int, weights: list[float], rng) -> list[int]:
    """``n`` points over parts in proportion to ``weights`` (areas)."""
    return list(rng.multinomial(n, np.asarray(weights) / np.sum(weights)))


def _table(n, rng):
    w, d, h, leg = rng.uniform(1.0, 2.0), rng.uniform(0.6, 1.2), rng.uniform(0.6, 1.1), rng.uniform(0.04, 0.1)
    parts = [((0, 0, h), (w, d, 0.06))] + [
        ((sx * (w / 2 - leg), sy * (d / 2 - leg), h / 2), (leg, leg, h)) for sx in (-1, 1) for sy in (-1, 1)
    ]
    counts = _split(n, [2 * s[0] * s[1] + 2 * s[2] * (s[0] + s[1]) for _, s in parts], rng)
    return np.concatenate([_box(c, s, k, rng) for (c, s), k in zip(parts, counts)])


def _chair(n, rng):
    w, h, back, leg = rng.uniform(0.7, 1.0), rng.uniform(0.6, 0.9), rng.uniform(0.6, 1.2), rng.uniform(0.05, 0.09)
    parts = [((0, 0, h), (w, w, 0.08)), ((0, -w / 2, h + back / 2), (w, 0.08, back))] + [
        ((sx * (w / 2 - leg), sy * (w / 2 - leg), h / 2), (leg, leg, h)) for sx in (-1, 1) for sy in (-1, 1)
    ]
    counts = _split(n, [2 * s[0] * s[1] + 2 * s[2] * (s[0] + s[1]) for _, s in parts], rng)
    return np.concatenate([_box(c, s, k, rng) for (c, s), k in zip(parts, counts)])


def _lamp(n, rng):
    pole, r_base, r_shade = rng.uniform(1.2, 2.0), rng.uniform(0.3, 0.5), rng.uniform(0.3, 0.6)
    a, b, c = _split(n, [2 * np.pi * 0.04 * pole, 2 * np.pi * r_base**2, 2 * np.pi * r_shade * 0.5], rng)
    return np.concatenate(
        [
            _cylinder((0, 0, pole / 2), 0.04, pole, a, rng, caps=False),
            _cylinder((0, 0, 0.03), r_base, 0.06, b, rng),
            _cone((0, 0, pole), r_shade, 0.5, c, rng),
        ]
    )


def make_shape(label: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """One shape of class ``CLASSES[label]`` with random proportions.

    Shapes:
        returns: [n, 3] float32, raw coordinates (normalise afterwards)
    """
    name = CLASSES[label]
    if name == "sphere":
        pts = _sphere((0, 0, 0), rng.uniform(0.7, 1.3, 3), n, rng)
    elif name == "box":
        pts = _box((0, 0, 0), rng.uniform(0.4, 2.0, 3), n, rng)
    elif name == "cylinder":
        pts = _cylinder((0, 0, 0), rng.uniform(0.3, 0.8), rng.uniform(0.8, 2.5), n, rng)
    elif name == "cone":
        pts = _cone((0, 0, 0), rng.uniform(0.4, 1.0), rng.uniform(0.8, 2.0), n, rng)
    elif name == "torus":
        pts = _torus((0, 0, 0), rng.uniform(0.8, 1.2), rng.uniform(0.15, 0.45), n, rng)
    else:
        pts = {"table": _table, "chair": _chair, "lamp": _lamp}[name](n, rng)
    return pts.astype(np.float32)


def synthetic_set(per_class_train: int, per_class_test: int, n: int, seed: int):
    """A balanced synthetic train + test set.

    Returns:
        (points [S, n, 3] float32 raw, labels [S] int64, split [S] uint8 with 0 train / 1 test, class names)

    """
    rng = np.random.default_rng(seed)
    pts, labels, split = [], [], []
    for part, count in ((0, per_class_train), (1, per_class_test)):
        for label in range(len(CLASSES)):
            for _ in range(count):
                pts.append(make_shape(label, n, rng))
                labels.append(label)
                split.append(part)
    return np.stack(pts), np.array(labels, np.int64), np.array(split, np.uint8), list(CLASSES)
