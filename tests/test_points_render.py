"""reconstructions.png: open3d offscreen rendering where it works, an explicit matplotlib fallback otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from capsule_kit_tasks.points import render
from capsule_kit_tasks.points.io import open3d_or_reason

PTS = np.random.default_rng(0).uniform(-1, 1, (64, 3))
PANELS = [(PTS, np.full((64, 3), 0.35), "input: 0_chair"), (PTS * 0.5, np.tile([1.0, 0.0, 0.0], (64, 1)), "recon")]


def read_png(path):
    import matplotlib.image

    return matplotlib.image.imread(path)


def test_this_machine_renders_with_whichever_renderer_works(tmp_path):
    ok, reason = render.open3d_renderer()  # the probe: a child process with a timeout, never a hang here
    assert render.open3d_renderer() == (ok, reason)  # probed once per process
    if ok:
        images = render.render_clouds_open3d([(PTS, PANELS[1][1])], px=64)
        assert images[0].shape == (64, 64, 3) and (images[0] < 200).any()  # red points on white
    else:
        assert reason and "\n" not in reason and ("open3d" in reason)
    used = render.render_panels(PANELS, 2, tmp_path / "r.png", "title")
    assert used == ("open3d" if ok else "matplotlib") and read_png(tmp_path / "r.png").shape[2] in (3, 4)


class FakeScene:
    def __init__(self, log):
        self.log = log

    def set_background(self, rgba):
        self.log.append(("background", tuple(rgba)))

    def clear_geometry(self):
        self.log.append(("clear",))

    def add_geometry(self, name, geometry, material):
        self.log.append(("add", len(geometry.points), material.shader))


class FakeRenderer:
    """Stands in for OffscreenRenderer (needs EGL/Vulkan); its images are grey squares."""

    log: list = []

    def __init__(self, width, height):
        self.size, self.scene = (height, width), FakeScene(self.log)

    def setup_camera(self, fov, center, eye, up):
        self.log.append(("camera", float(fov), tuple(np.round(up, 3))))

    def render_to_image(self):
        return np.full((*self.size, 4), 128, np.uint8)


def test_open3d_path_lays_out_rendered_images_and_says_so(tmp_path, monkeypatch):
    o3d, reason = open3d_or_reason()
    if o3d is None:
        pytest.skip(reason)
    real = o3d.visualization.rendering.OffscreenRenderer
    for method in ("setup_camera", "render_to_image", "scene"):  # the fake mirrors the real API
        assert hasattr(real, method), method
    monkeypatch.setattr(o3d.visualization.rendering, "OffscreenRenderer", FakeRenderer)
    monkeypatch.setattr(render, "open3d_renderer", lambda: (True, ""))
    FakeRenderer.log = []
    assert render.render_panels(PANELS, 2, tmp_path / "o.png", "t") == "open3d"
    adds = [e for e in FakeRenderer.log if e[0] == "add"]
    assert adds == [("add", 64, "defaultUnlit")] * 2 and ("camera", 40.0, (0.0, 0.0, 1.0)) in FakeRenderer.log
    assert read_png(tmp_path / "o.png").shape[1] > read_png(tmp_path / "o.png").shape[0]  # two panels side by side


def test_matplotlib_fallback_when_open3d_cannot_render(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(render, "open3d_renderer", lambda: (False, "no EGL"))
    assert render.render_panels(PANELS, 1, tmp_path / "m.png", "t") == "matplotlib"
    img = read_png(tmp_path / "m.png")
    assert img.shape[0] > img.shape[1]  # one column, two rows

    def broken(*a, **k):
        raise RuntimeError("Failed to load vulkan library!")

    monkeypatch.setattr(render, "open3d_renderer", lambda: (True, ""))
    monkeypatch.setattr(render, "render_clouds_open3d", broken)
    assert render.render_panels(PANELS, 2, tmp_path / "b.png", "t") == "matplotlib"
    assert "open3d rendering failed (Failed to load vulkan library!)" in capsys.readouterr().err
    assert (tmp_path / "b.png").exists()
