"""Fault suite (issue 15): bad input gets one line on stderr and exit code 2, no traceback, no run
directory; numerics stay finite over the float range and NaN is never hidden.

CLI-visible probes run the real CLI in a subprocess (so warnings printed before an error count);
numeric ones call the library and compare with a float64 naive reference.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from capsule_kit import routing
from capsule_kit.config import MAX_RECIPE_BYTES, apply_overrides, parse_override, read_yaml, validate
from capsule_kit.errors import ConfigError, DataError, UserError, excerpt
from capsule_kit.functional import lengths, safe_norm, squash, squash_efficient
from capsule_kit_tasks.digits.task import DigitsTask
from capsule_kit_tasks.points import io
from tests.helpers import REPO, run_cli

MNIST = str(REPO / "recipes" / "mnist.yaml")


def cli_error(tmp_path: Path, *args: str) -> str:
    """Run the CLI with ``output_dir`` under ``tmp_path``; assert the one-line refusal and return it."""
    out = tmp_path / "runs"
    proc = run_cli(*args, f"output_dir={out}", timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(lines[0]) < 2100
    assert not out.exists() or not any(out.iterdir()), "a run directory was left behind"
    return lines[0]


def bomb(levels: int = 9) -> str:
    """A billion-laughs recipe: ``levels`` lists of 9 aliases of the list before (9**levels strings)."""
    text = 'task: digits\nl0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for i in range(1, levels):
        text += f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 9)}]\n"
    return text + f"trainer:\n  epochs: *l{levels - 1}\n"


# --- 1. Bounded YAML --------------------------------------------------------------------------


def test_alias_bomb_is_refused_in_one_short_line(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb())
    assert len(path.read_bytes()) < 500
    err = cli_error(tmp_path, str(path), "--validate")
    assert err == f"error: {path}: line 2, column 5: YAML anchors and aliases (&name, *name) are not allowed in recipes"


@pytest.mark.parametrize(
    "text, problem",
    [
        ("task: digits\nbase: &b {epochs: 1}\ntrainer:\n  <<: *b\n", "line 2, column 7: YAML anchors"),
        ("task: digits\ntrainer:\n  epochs: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than 32 levels"),
    ],
    ids=["merge-key", "deep-nesting"],
)
def test_anchors_and_deep_nesting_are_refused(tmp_path, text, problem):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=problem):
        read_yaml(path)


def test_oversized_recipe_is_refused_before_parsing(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("task: digits\n" + "# padding\n" * (MAX_RECIPE_BYTES // 10))
    with pytest.raises(ConfigError, match=r"big.yaml: \d+ bytes, more than a recipe may hold"):
        read_yaml(path)


def test_override_aliases_refused_and_huge_values_echoed_as_excerpts(tmp_path):
    with pytest.raises(ConfigError, match="override 'trainer.epochs': YAML anchors and aliases"):
        parse_override("trainer.epochs=[&a [1, 2], *a, *a]")
    err = cli_error(tmp_path, MNIST, "trainer.seed=" + "7x" * 50_000, "--validate")
    assert "trainer.seed: input should be a valid integer" in err and len(err) < 400


def test_messages_are_one_bounded_line_whatever_they_hold():
    shared = ["lol"] * 9
    for _ in range(30):  # 9**30 leaves if expanded; excerpt must not expand it
        shared = [shared] * 9
    assert len(excerpt(shared)) <= 83 and len(excerpt("x" * 10**6)) <= 83
    msg = str(UserError("first line\nsecond line\r\n" + "y" * 10**5))
    assert "\n" not in msg and msg.startswith("first line second line yyy") and len(msg) < 2100


# --- 2. Finite recipes, stable squash and norms, NaN never hidden -------------------------------

SCALES = [0.0, 1e-40, 1e-30, 1e-15, 1.0, 1e19, 1e30, 1e38]  # 1e-40: subnormal in float32


def naive_squash(s: torch.Tensor) -> torch.Tensor:
    """The textbook formula in float64 (exact for any float32 input: no over- or underflow)."""
    sq = s.pow(2).sum(-1, keepdim=True)
    return torch.where(sq > 0, sq / (1 + sq) * s / sq.sqrt(), 0.0)


def naive_efficient(s: torch.Tensor) -> torch.Tensor:
    r = s.norm(dim=-1, keepdim=True)
    return torch.where(r > 0, -torch.expm1(-r) * s / r, s)


def capsules(scale: float) -> torch.Tensor:
    """Three float32 capsules of length ~``scale`` (8D, unit-ish random directions)."""
    gen = torch.Generator().manual_seed(0)
    return (torch.rand(3, 8, generator=gen) - 0.5).mul(2 * scale / 8**0.5).float()


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize(
    "fn, ref", [(squash, naive_squash), (squash_efficient, naive_efficient)], ids=["sabour", "efficient"]
)
def test_squash_matches_float64_reference_over_the_float32_range(fn, ref, scale):
    x = capsules(scale).requires_grad_()
    x64 = x.detach().double().requires_grad_()
    out, want = fn(x), ref(x64)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), want.float().double(), rtol=4e-6, atol=1e-44)
    g = torch.linspace(-1, 1, 24).reshape(3, 8)
    (out * g).sum().backward()
    assert torch.isfinite(x.grad).all()
    if fn is squash and 0 < scale < 1e-19:  # |s|^2 underflows float32: the gradient (~|s|) too, to 0
        assert (x.grad.abs() <= 10 * scale).all()
    elif scale > 0:  # the float64 reference's own gradient is NaN at exactly 0
        (want * g.double()).sum().backward()
        torch.testing.assert_close(x.grad.double(), x64.grad.float().double(), rtol=1e-4, atol=1e-43)
    elif fn is squash:
        assert (x.grad == 0).all()  # d squash / ds = 0 at s = 0
    else:
        assert torch.equal(x.grad, g)  # the efficient squash is the identity to first order at 0


@pytest.mark.parametrize("scale", SCALES)
def test_lengths_and_safe_norm_match_float64_norm(scale):
    x = capsules(scale)[None].requires_grad_()  # [B=1, N=3, D=8]
    out = lengths(x)
    torch.testing.assert_close(out.double(), x.detach().double().norm(dim=-1).float().double(), rtol=2e-6, atol=1e-44)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.equal(safe_norm(x.detach(), dim=-1, keepdim=True).squeeze(-1), out.detach())


def test_nan_capsule_is_nan_everywhere_and_inf_has_infinite_length():
    x = torch.tensor([[float("nan"), 1.0, 0.0], [0.0, 3.0, 4.0], [float("inf"), 1.0, 0.0]])
    assert lengths(x[None])[0, 0].isnan() and lengths(x[None])[0, 1] == 5.0 and lengths(x[None])[0, 2].isinf()
    for fn in (squash, squash_efficient):
        out = fn(x)
        assert out[0].isnan().all() and torch.isfinite(out[1]).all() and out[2].isnan().any()


@pytest.mark.parametrize("name", ["dynamic", "attention"])
def test_routing_activation_of_a_nan_pose_is_nan_not_zero(name):
    torch.manual_seed(0)
    layer = routing.build(name, num_in=6, num_out=4, iterations=1 if name == "attention" else 3)
    votes = torch.randn(2, 6, 4, 8)
    votes[0, 2] = float("nan")  # one input capsule of the first example
    routed = layer(votes)
    assert routed.activations[0].isnan().all(), routed.activations[0]
    assert torch.isfinite(routed.activations[1]).all() and (routed.activations[1] < 1).all()


def test_recipe_floats_must_be_finite(tmp_path):
    err = cli_error(tmp_path, MNIST, "trainer.lr=.inf", "--validate")
    assert err == f"error: {MNIST}: trainer.lr: input should be a finite number (got inf)"
    for value, shown in (("-.inf", "-inf"), (".nan", "nan")):
        with pytest.raises(ConfigError, match=rf"trainer.grad_clip: input should be a finite number \(got {shown}\)"):
            validate(DigitsTask.Config, apply_overrides(read_yaml(MNIST), [f"trainer.grad_clip={value}"]), MNIST)


# --- 3. Malformed point files: refused in one line naming the file (and line), with both readers ---

CLOUD = np.arange(30, dtype=np.float64).reshape(10, 3) / 7


def ply(rows: list[str], count: int = 10) -> str:
    head = f"ply\nformat ascii 1.0\nelement vertex {count}\nproperty float x\nproperty float y\nproperty float z\n"
    return head + "end_header\n" + "".join(f"{r}\n" for r in rows)


def pcd_ascii(rows: list[str], count: int = 10) -> str:
    head = "VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\n"
    return head + f"WIDTH {count}\nHEIGHT 1\nPOINTS {count}\nDATA ascii\n" + "".join(f"{r}\n" for r in rows)


def off(rows: list[str]) -> str:
    return "OFF\n10 2 0\n" + "".join(f"{r}\n" for r in rows) + "3 0 1 2\n3 1 2 3\n"


def write_fault(folder: Path, fmt: str, fault: str) -> tuple[Path, str]:
    """A file of format ``fmt`` with ``fault`` (truncated / inf / nan / garbage) and the message it must give."""
    rows = [" ".join(f"{v:.4f}" for v in p) for p in CLOUD]
    first = {"ply": 8, "pcd": 10, "off": 3, "xyz": 1}.get(fmt, 0)  # line of the first point
    if fault == "truncated":
        rows, want = rows[:6], "truncated: the header declares"
    else:
        rows[3] = {"inf": "0.5 inf 0.1", "nan": "nan 0.5 0.1", "garbage": "0.5 0x1g 0.1"}[fault]
        want = f"line {first + 3}: " + ("'0x1g' is not a number" if fault == "garbage" else "NaN/inf coordinate")
    path = folder / f"{fault}.{fmt}"
    if fmt == "npy":
        arr = CLOUD.copy()
        arr[3, 1] = float(fault) if fault in ("inf", "nan") else 0.0
        np.save(path, arr)
        if fault == "truncated":
            path.write_bytes(path.read_bytes()[:-40])
        return path, "unreadable .npy" if fault == "truncated" else "row 3: NaN/inf coordinate"
    if fmt == "pcd-binary":
        path = folder / f"{fault}-binary.pcd"
        arr = CLOUD.astype(np.float32)
        arr[3, 1] = np.inf
        body = arr[:6] if fault == "truncated" else arr
        head = pcd_ascii([]).replace("DATA ascii", "DATA binary")
        path.write_bytes(head.encode() + body.tobytes())
        return path, "truncated: the header declares 10 points, the file has 6" if fault == "truncated" else "NaN/inf"
    if fault == "truncated" and fmt == "xyz":
        rows.append("0.5 0.25")  # a cut last line: the only truncation a header-less table shows
        want = "line 7: 2 values, expected 3"
    text = {"ply": ply, "pcd": pcd_ascii, "off": off, "xyz": lambda r: "".join(f"{x}\n" for x in r)}[fmt](rows)
    path.write_text(text)
    return path, want


FAULTS = [
    (fmt, fault)
    for fmt in ("ply", "pcd", "pcd-binary", "off", "xyz", "npy")
    for fault in ("truncated", "inf", "nan", "garbage")
    if fmt in ("ply", "pcd", "off", "xyz") or fault in ("truncated", "inf")  # binary files hold no tokens
]


@pytest.mark.parametrize("reader", ["numpy", "open3d"])
@pytest.mark.parametrize("fmt, fault", FAULTS)
def test_malformed_point_file_is_refused_naming_file_and_line(tmp_path, fmt, fault, reader):
    if reader == "open3d" and io.open3d_or_reason()[0] is None:
        pytest.skip(io.open3d_or_reason()[1])
    path, want = write_fault(tmp_path, fmt, fault)
    with pytest.raises(DataError) as err:
        io.load_points(path, 8, reader=reader)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and want in msg and "\n" not in msg, msg


def test_truncated_binary_ply_is_refused_before_open3d_reads_it(tmp_path):
    head = "ply\nformat binary_little_endian 1.0\nelement vertex 10\nproperty float x\nproperty float y\n"
    path = tmp_path / "cut.ply"
    path.write_bytes(f"{head}property float z\nend_header\n".encode() + CLOUD.astype(np.float32)[:6].tobytes())
    with pytest.raises(DataError, match="cut.ply: truncated binary PLY: the header declares 120"):
        io.load_points(path, 8)


def test_truncated_ply_through_the_cli_is_one_line(tmp_path):
    good = ply([f"{k} {k % 3} {k % 5}" for k in range(20)], count=20)
    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "data" / cls / f"{i}.ply").write_text(good)
    bad = tmp_path / "data" / "b" / "2.ply"
    bad.write_text(good[: good.index("15 0 0")])  # cut after 15 of 20 vertices
    proc = run_cli(
        str(REPO / "recipes" / "points_tiny.yaml"), f"data.path={tmp_path / 'data'}", "data.num_points=16",
        "data.cache=false", f"output_dir={tmp_path / 'runs'}", timeout=300,
    )  # fmt: skip
    err = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("points: reading")]
    assert proc.returncode == 2 and len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert err[0] == f"error: {bad}: truncated: the header declares 20 'vertex' rows, the file has 15 (to line 22)"


# --- 4. --validate runs the run's content checks (MNIST idx, label names, TU files) ----------------

MUTAG = REPO.parent / "shared" / "data" / "graphs" / "TU" / "MUTAG" / "raw"
GRAPHS = str(REPO / "recipes" / "graph_cls.yaml")


def mutag_copy(tmp_path: Path) -> tuple[Path, Path]:
    """A writable copy of MUTAG's raw files: (data root, raw folder)."""
    if not MUTAG.is_dir():
        pytest.skip("MUTAG not under the shared data root")
    raw = tmp_path / "data" / "graphs" / "TU" / "MUTAG" / "raw"
    shutil.copytree(MUTAG, raw)
    return tmp_path / "data", raw


def cut_lines(path: Path, keep: int) -> None:
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:keep]))


def edit_line(path: Path, index: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[index] = text
    path.write_text("\n".join(lines) + "\n")


def add_attributes(raw: Path, bad_row: int) -> None:
    rows = [f"{k * 0.5:.1f}, 1.0" for k in range(3371)]
    rows[bad_row] = "0.5, nan"
    (raw / "MUTAG_node_attributes.txt").write_text("\n".join(rows) + "\n")


TU_FAULTS = {
    "garbage-node-label": (
        lambda raw: edit_line(raw / "MUTAG_node_labels.txt", 10, "C"),
        "MUTAG_node_labels.txt: line 11: 'C' is not one of the comma-separated integers expected",
    ),
    "truncated-A": (
        lambda raw: cut_lines(raw / "MUTAG_A.txt", 7432),
        "MUTAG_A.txt: 7432 lines, but MUTAG_edge_labels.txt has 7442 (one per edge): truncated?",
    ),
    "empty-labels": (
        lambda raw: (raw / "MUTAG_graph_labels.txt").write_text(""),
        "MUTAG_graph_labels.txt: file is empty",
    ),
    "nan-attribute": (
        lambda raw: add_attributes(raw, 4),
        "MUTAG_node_attributes.txt: line 5: NaN/inf value (1 line in all)",
    ),
}


@pytest.mark.parametrize("fault", TU_FAULTS)
def test_malformed_tu_files_fail_validate_in_one_line(tmp_path, fault):
    root, raw = mutag_copy(tmp_path)
    corrupt, want = TU_FAULTS[fault]
    corrupt(raw)
    mode = [] if fault == "nan-attribute" else ["--validate"]  # the run itself stops before a run directory
    err = cli_error(tmp_path, GRAPHS, f"data.root={root}", *mode)
    assert err.startswith(f"error: {raw}/") and err.endswith(want), err


def test_tu_data_sets_with_labels_attributes_both_neither_and_edge_labels(tmp_path, cache_env):
    from capsule_kit_tasks.graphs.data import load_graphs

    root, raw = mutag_copy(tmp_path)
    plain = load_graphs(root, "MUTAG")
    assert (plain.features, plain.num_features, plain.num_attributes) == ("labels", 7, 0)
    with_edges = load_graphs(root, "MUTAG", edge_labels=True)  # + counts of the 4 bond types per atom
    x0, n_edges = with_edges.graphs[0].x, with_edges.graphs[0].edge_index.shape[1]
    assert x0.shape[1] == 11 and float(x0[:, 7:].sum()) == n_edges  # each directed edge counted at its source
    add_attributes(raw, 0)
    edit_line(raw / "MUTAG_node_attributes.txt", 0, "0.0, 1.0")
    both = load_graphs(root, "MUTAG")  # edited files: checked and processed again
    assert (both.num_attributes, both.num_features) == (2, 9)
    assert load_graphs(root, "MUTAG", node_attributes=False).num_features == 7
    (raw / "MUTAG_node_labels.txt").unlink()
    neither = load_graphs(root, "MUTAG", node_attributes=False)
    assert neither.features == "degree" and neither.num_features == 5  # atoms have 0..4 bonds
    with pytest.raises(ConfigError, match="data.edge_labels: TU data set 'M' has no M_edge_labels.txt"):
        shutil.copytree(raw, tmp_path / "m" / "graphs" / "TU" / "M" / "raw")
        for p in (tmp_path / "m" / "graphs" / "TU" / "M" / "raw").iterdir():
            p.rename(p.with_name(p.name.replace("MUTAG", "M")))
        (tmp_path / "m" / "graphs" / "TU" / "M" / "raw" / "M_edge_labels.txt").unlink()
        load_graphs(tmp_path / "m", "M", edge_labels=True)


def mnist_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "mnist"
    shutil.copytree(REPO / "tasks" / "digits" / "mnist", folder)
    return folder


def rewrite_gz(path: Path, edit) -> None:
    path.write_bytes(gzip.compress(edit(gzip.decompress(path.read_bytes())), mtime=0))


def test_truncated_mnist_idx_fails_validate_and_run_without_a_run_directory(tmp_path):
    folder = mnist_copy(tmp_path)
    rewrite_gz(folder / "t10k-images-idx3-ubyte.gz", lambda raw: raw[:-784])  # one image short
    want = f"error: {folder / 't10k-images-idx3-ubyte.gz'}: truncated idx file (header says [10000, 28, 28]"
    assert cli_error(tmp_path, MNIST, f"data.root={folder.parent}", "--validate").startswith(want)
    assert cli_error(tmp_path, MNIST, f"data.root={folder.parent}", "trainer.max_steps=1").startswith(want)


def test_mnist_label_out_of_range_is_named(tmp_path):
    folder = mnist_copy(tmp_path)
    rewrite_gz(folder / "train-labels-idx1-ubyte.gz", lambda raw: raw[: 8 + 5] + bytes([12]) + raw[8 + 6 :])
    err = cli_error(tmp_path, MNIST, f"data.root={folder.parent}", "--validate")
    assert err == f"error: {folder / 'train-labels-idx1-ubyte.gz'}: label 12 at item 5 is not a digit 0-9"


def test_label_names_of_the_wrong_length_fail_validate(tmp_path):
    err = cli_error(tmp_path, str(REPO / "recipes" / "text_trec.yaml"), "data.label_names=[A, B]", "--validate")
    assert err == "error: data.label_names: 2 names for 6 labels ['0', '1', '2', '3', '4', '5']"


# --- 5. Wording ---------------------------------------------------------------------------------


def test_directory_as_recipe_and_unknown_routing_list_their_aliases(tmp_path):
    err = cli_error(tmp_path, str(REPO / "recipes"), "--validate")
    want = f"error: recipe: {REPO / 'recipes'} is a folder; give a recipe file (.yaml) or a shipped recipe name"
    assert err == want
    err = cli_error(tmp_path, MNIST, "model.routing.name=sabor", "--validate")
    assert "unknown routing 'sabor' (did you mean 'sabour'?)" in err and "dynamic (or sabour)" in err, err
