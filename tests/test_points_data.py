"""Point-cloud readers, layouts, cache, bad input, synthetic set and the task's data."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from capsule_kit.errors import DataError, UserError
from capsule_kit_tasks.points import io
from capsule_kit_tasks.points.augment import rotate_up
from capsule_kit_tasks.points.data import PointSet, detect_layout, discover, load_folder
from capsule_kit_tasks.points.synthetic import CLASSES, synthetic_set
from capsule_kit_tasks.points.task import DataConfig, PointsConfig, PointsTask
from conftest import data_path

PCD_DIR = data_path("points", "ModelNet10_pcd1024")
BUNNY = data_path("points", "meshes", "stanford_bunny.ply")
CUBE_OFF = (
    "OFF8 6 0\n"
    + "\n".join(f"{x} {y} {z}" for x in (0, 1) for y in (0, 1) for z in (0, 1))
    + ("\n4 0 1 3 2\n4 4 6 7 5\n4 0 4 5 1\n4 2 3 7 6\n4 0 2 6 4\n4 1 5 7 3\n")
)


def write_pcd(path, pts, binary=True):
    head = f"VERSION 0.7\nFIELDS x y z rgb\nSIZE 4 4 4 4\nTYPE F F F U\nCOUNT 1 1 1 1\nWIDTH {len(pts)}\nHEIGHT 1\n"
    head += f"POINTS {len(pts)}\nDATA {'binary' if binary else 'ascii'}\n"
    if binary:
        body = b"".join(struct.pack("<fffI", *p, 7) for p in pts)
        path.write_bytes(b"# .PCD v0.7\n" + head.encode() + body)
    else:
        path.write_text(head + "".join(f"{p[0]} {p[1]} {p[2]} 7\n" for p in pts))
    return path


def test_pcd_readers_binary_and_ascii(tmp_path):
    pts = np.random.default_rng(0).random((20, 3)).astype(np.float32)
    np.testing.assert_array_equal(io.read_pcd(write_pcd(tmp_path / "a.pcd", pts)), pts)
    np.testing.assert_allclose(io.read_pcd(write_pcd(tmp_path / "b.pcd", pts, binary=False)), pts, rtol=1e-6)


def test_numpy_reader_matches_open3d_on_real_files():
    if not PCD_DIR.exists() or not BUNNY.exists():
        pytest.skip("points data not in the data root")
    o3d, reason = io.open3d_or_reason()
    if o3d is None:
        pytest.skip(reason)
    pcd = next((PCD_DIR / "chair" / "test").glob("*.pcd"))
    np.testing.assert_allclose(io.read_pcd(pcd), np.asarray(o3d.io.read_point_cloud(str(pcd)).points))
    verts, faces = io.read_ply_ascii(BUNNY)
    mesh = o3d.io.read_triangle_mesh(str(BUNNY))
    assert verts.shape == (1839, 3) and faces.shape == (3674, 3)
    np.testing.assert_allclose(verts, np.asarray(mesh.vertices), rtol=1e-6)
    np.testing.assert_array_equal(faces, np.asarray(mesh.triangles))


def test_text_clouds_off_obj_and_mesh_sampling(tmp_path):
    (tmp_path / "m40.txt").write_text("0.1,0.2,0.3,0,0,1\n0.4,0.5,0.6,0,1,0\n")
    (tmp_path / "part.pts").write_text("1 2 3\n4 5 6\n")
    np.testing.assert_allclose(io.read_table(tmp_path / "m40.txt"), [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    np.testing.assert_allclose(io.read_table(tmp_path / "part.pts"), [[1, 2, 3], [4, 5, 6]])
    (tmp_path / "cube.off").write_text(CUBE_OFF)  # ModelNet's "OFF8 6 0" on one line
    verts, faces = io.read_off(tmp_path / "cube.off")
    assert verts.shape == (8, 3) and faces.shape == (12, 3)
    (tmp_path / "tri.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1/1 2/2 3/3\n")
    pts = io.load_points(tmp_path / "tri.obj", 500, reader="numpy", seed=3)
    assert pts.shape == (500, 3) and np.allclose(pts[:, 2], 0) and (pts[:, :2].sum(1) <= 1 + 1e-6).all()
    cube = io.load_points(tmp_path / "cube.off", 400, reader="numpy", seed=1)
    on_face = np.isclose(cube, 0, atol=1e-6) | np.isclose(cube, 1, atol=1e-6)
    assert on_face.any(1).all()  # every sample lies on the surface
    np.testing.assert_array_equal(cube, io.load_points(tmp_path / "cube.off", 400, reader="numpy", seed=1))


def test_bad_inputs_name_the_file(tmp_path):
    (tmp_path / "empty.off").write_text("OFF\n0 0 0\n")
    with pytest.raises(DataError, match="empty.off: empty"):
        io.load_points(tmp_path / "empty.off", 10, reader="numpy")
    (tmp_path / "nan.txt").write_text("0 0 0\nnan 1 1\n")
    with pytest.raises(DataError, match="nan.txt: line 2: NaN/inf coordinate"):
        io.load_points(tmp_path / "nan.txt", 2)
    (tmp_path / "junk.off").write_text("OFF\n3 1 0\n0 0\n")
    with pytest.raises(
        DataError, match="junk.off: truncated: the header declares 4 vertices and faces, the file has 1"
    ):
        io.load_points(tmp_path / "junk.off", 10, reader="numpy")
    (tmp_path / "bad.pts").write_text("1 2 3\n4 x 6\n")
    with pytest.raises(DataError, match="bad.pts: line 2: 'x' is not a number"):
        io.load_points(tmp_path / "bad.pts", 2)
    (tmp_path / "few.pts").write_text("0 0 0\n1 1 1\n")
    with pytest.warns(io.DataWarning, match="few.pts: has 2 points, fewer than the 5"):
        few = io.load_points(tmp_path / "few.pts", 5)
    assert few.shape == (5, 3) and {tuple(p) for p in few} == {(0, 0, 0), (1, 1, 1)}


def test_without_open3d_numpy_readers_and_clear_messages(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(io, "open3d_or_reason", lambda: (None, f"open3d cannot be imported (x); fix: {io.OPEN3D_FIX}"))
    (tmp_path / "cube.off").write_text(CUBE_OFF)
    assert io.load_points(tmp_path / "cube.off", 50).shape == (50, 3)
    assert capsys.readouterr().err == ""  # the numpy readers read every format but binary PLY / compressed PCD
    with pytest.raises(UserError, match="poisson needs open3d.*apt-get install libusb-1.0-0"):
        io.load_points(tmp_path / "cube.off", 50, sampling="poisson")
    head = "ply\nformat binary_little_endian 1.0\nelement vertex 2\nproperty float x\nproperty float y\n"
    (tmp_path / "b.ply").write_bytes(f"{head}property float z\nend_header\n".encode() + bytes(24))
    with pytest.raises(
        UserError, match=r"b.ply: binary PLY \(binary_little_endian\) needs open3d.*capsule-kit\[points\]"
    ):
        io.load_points(tmp_path / "b.ply", 2)


def test_normalize_and_rotation():
    pts = np.random.default_rng(0).random((2, 100, 3)).astype(np.float32) * 50 + 1000
    out = io.normalize(pts)
    np.testing.assert_allclose(out.mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1).max(1), 1, rtol=1e-6)
    x = torch.tensor(out[0])
    r = rotate_up(x, 2, 0.7)
    torch.testing.assert_close(r[:, 2], x[:, 2])
    torch.testing.assert_close(r.norm(dim=1), x.norm(dim=1))
    torch.testing.assert_close(rotate_up(x, 2, np.pi / 2)[:, :2], torch.stack([-x[:, 1], x[:, 0]], 1))


def make_tree(root, layout):
    """A tiny data folder in one of the standard layouts (two classes)."""
    cloud = "\n".join(f"{i} {i % 3} {i % 5}" for i in range(20))
    if layout == "modelnet":
        for cls in ("chair", "desk"):
            for split in ("train", "test"):
                (root / cls / split).mkdir(parents=True)
                (root / cls / split / f"{cls}_1.off").write_text(CUBE_OFF)
    elif layout == "modelnet40_txt":
        for name in ("chair_0001", "chair_0002", "desk_0001"):
            (root / name.rsplit("_", 1)[0]).mkdir(exist_ok=True)
            (root / name.rsplit("_", 1)[0] / f"{name}.txt").write_text(cloud.replace(" ", ","))
        (root / "modelnet40_train.txt").write_text("chair_0001\ndesk_0001\n")
        (root / "modelnet40_test.txt").write_text("chair_0002\n")
    elif layout == "shapenet_part":
        for syn, ids in (("03001627", ("a", "b")), ("02691156", ("c",))):
            (root / syn).mkdir(parents=True)
            for i in ids:
                (root / syn / f"{i}.txt").write_text(cloud)
        (root / "synsetoffset2category.txt").write_text("Chair\t03001627\nAirplane\t02691156\n")
        (root / "train_test_split").mkdir()
        split = (root / "train_test_split" / "shuffled_{}_file_list.json").as_posix()
        (root / split.format("train")).write_text('["shape_data/03001627/a", "shape_data/02691156/c"]')
        (root / split.format("test")).write_text('["shape_data/03001627/b"]')
    else:
        for cls in ("bunny", "cube"):
            (root / cls).mkdir(parents=True)
            for i in range(5):
                (root / cls / f"{i}.xyz").write_text(cloud)


@pytest.mark.parametrize("layout", ["modelnet", "modelnet40_txt", "shapenet_part", "folder"])
def test_layouts_are_detected_and_split(tmp_path, layout):
    make_tree(tmp_path, layout)
    assert detect_layout(tmp_path) == layout
    entries, found = discover(tmp_path, "auto", test_fraction=0.4, seed=0)
    assert found == layout
    classes = {c for _, c, _ in entries}
    splits = sorted(s for *_, s in entries)
    if layout == "shapenet_part":
        assert classes == {"Chair", "Airplane"} and splits == [0, 0, 1]
    elif layout == "folder":
        assert classes == {"bunny", "cube"} and len(entries) == 10 and set(splits) == {0, 1}
    else:
        assert classes == {"chair", "desk"} and splits == ([0, 0, 1, 1] if layout == "modelnet" else [0, 0, 1])


def test_modelnet40_lists_win_over_modelnet10_lists_and_names_are_read_once(tmp_path):
    make_tree(tmp_path, "modelnet40_txt")  # modelnet40 lists: chair_0001 + desk_0001 train, chair_0002 test
    (tmp_path / "modelnet10_train.txt").write_text("chair_0001\n")  # as in modelnet40_normal_resampled
    (tmp_path / "modelnet10_test.txt").write_text("chair_0002\n")
    (tmp_path / "modelnet40_train.txt").write_text("chair_0001\ndesk_0001\nchair_0001\n")  # a repeated name
    entries, layout = discover(tmp_path, "auto")
    assert layout == "modelnet40_txt"
    assert sorted((f.name, s) for f, _, s in entries) == [("chair_0001.txt", 0), ("chair_0002.txt", 1),
                                                          ("desk_0001.txt", 0)]  # fmt: skip
    for name in ("modelnet40_train.txt", "modelnet40_test.txt"):  # only ModelNet10 lists: those are used
        (tmp_path / name).unlink()
    entries, _ = discover(tmp_path, "modelnet40_txt")
    assert sorted((f.name, s) for f, _, s in entries) == [("chair_0001.txt", 0), ("chair_0002.txt", 1)]


@pytest.mark.parametrize("reader", ["numpy", "open3d"])
@pytest.mark.parametrize("ext", [".obj", ".off"])
def test_mesh_with_nan_vertex_names_the_file_and_count(tmp_path, reader, ext):
    if reader == "open3d" and io.open3d_or_reason()[0] is None:
        pytest.skip(io.open3d_or_reason()[1])
    verts = ["0 0 0", "1 0 0", "nan 1 0", "0 0 1", "0 inf 1"]
    if ext == ".obj":
        text = "".join(f"v {v}\n" for v in verts) + "f 1 2 3\nf 1 2 4\nf 1 4 5\n"
    else:
        text = f"OFF\n{len(verts)} 3 0\n" + "".join(f"{v}\n" for v in verts) + "3 0 1 2\n3 0 1 3\n3 0 3 4\n"
    (tmp_path / f"bad{ext}").write_text(text)
    with pytest.raises(DataError) as err:
        io.load_points(tmp_path / f"bad{ext}", 10, reader=reader)
    line = 3 if ext == ".obj" else 5  # the first bad vertex
    assert str(err.value) == f"{tmp_path / f'bad{ext}'}: line {line}: NaN/inf coordinate (2 rows in all)"


def test_cache_is_reused_and_invalidated(tmp_path, cache_env, monkeypatch):
    make_tree(tmp_path / "data", "folder")
    d = DataConfig(num_points=16)
    first = load_folder(tmp_path / "data", d)
    assert first.points.shape == (10, 16, 3) and len(list((cache_env / "points").glob("*.npz"))) == 1

    def boom(*a, **k):
        raise AssertionError("read a file although the cache is valid")

    monkeypatch.setattr("capsule_kit_tasks.points.data.load_points", boom)
    again = load_folder(tmp_path / "data", d)
    np.testing.assert_array_equal(again.points, first.points)
    (tmp_path / "data" / "cube" / "0.xyz").write_text("0 0 0\n1 1 1\n2 2 2\n3 3 3\n4 4 4\n5 5 5\n6 6 6\n7 7 7\n")
    with pytest.raises(AssertionError, match="although the cache"):
        load_folder(tmp_path / "data", d)  # a changed file changes the key


def test_synthetic_set_is_seeded_and_labelled(tmp_path, monkeypatch):
    a, la, sa, names = synthetic_set(2, 1, 64, seed=5)
    b, *_ = synthetic_set(2, 1, 64, seed=5)
    assert a.shape == (24, 64, 3) and names == list(CLASSES) and sa.tolist().count(1) == 8
    np.testing.assert_array_equal(a, b)
    cfg = PointsConfig(task="points", data={"path": str(tmp_path / "missing"), "num_points": 64, "synthetic_train": 2,
                                            "synthetic_test": 1})  # fmt: skip
    task = PointsTask(cfg)
    splits = task.build_data()
    assert splits.info["synthetic"] and "SYNTHETIC" in splits.info["data"]
    out = task.step(task.build_model().eval(), next(iter(torch.utils.data.DataLoader(splits.test, 4))), train=False)
    assert "SYNTHETIC" in task.metrics([out["out"]])["data_kind"]
    bad = PointsTask(PointsConfig(task="points", data={"path": str(tmp_path / "missing"), "synthetic_fallback": False}))
    with pytest.raises(DataError, match="missing"):
        bad.check_data()


def test_real_modelnet10_slice_through_the_task(cache_env):
    if not PCD_DIR.exists():
        pytest.skip("ModelNet10_pcd1024 not in the data root")
    cfg = PointsConfig(task="points", data={"train_limit": 12, "test_limit": 6, "input_points": 100})
    task = PointsTask(cfg)
    splits = task.build_data()
    assert isinstance(task.point_set, PointSet) and not task.point_set.synthetic
    assert len(splits.train) == 12 and len(splits.test) == 6 and len(task.point_set.classes) <= 10
    pts, _ = splits.test[0]
    assert pts.shape == (1024, 3) and float(pts.norm(dim=1).max()) == pytest.approx(1.0, abs=1e-5)
    sub = task.encoder_input(pts[None], train=False)
    assert sub.shape == (1, 100, 3) and torch.equal(sub, task.encoder_input(pts[None], train=False))
