"""Graph protocol: the epoch is chosen on an inner validation split and the test fold is seen once, at the end.

Also the structure-agnostic baseline (``model.name=baseline``) on the same folds, on tiny
synthetic TU folders (no download, a few seconds).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torch_geometric")
pytest.importorskip("sklearn")

from capsule_kit import run  # noqa: E402
from capsule_kit.config import validate  # noqa: E402
from capsule_kit_tasks.graphs import data as graph_data  # noqa: E402
from capsule_kit_tasks.graphs.baseline import SumMLP  # noqa: E402
from capsule_kit_tasks.graphs.registry import GRAPH_MODELS  # noqa: E402
from capsule_kit_tasks.graphs.task import GraphTask  # noqa: E402
from tests.helpers import REPO, only_run_dir, results, run_cli  # noqa: E402
from tests.test_graphs import write_tu  # noqa: E402

RECIPE = str(REPO / "recipes" / "graph_cls.yaml")
TINY = ["model.channels=3", "model.layers=2", "model.graph_caps=2", "model.graph_dim=4", "model.class_dim=4",
        "model.attention_hidden=4", "model.decoder_hidden=[4]", "trainer.batch_size=4",
        "trainer.progress=false"]  # fmt: skip


def toy(root, name="TOY", n=30):
    """``n`` graphs of two kinds (paths and stars, 3-5 nodes), labels 0..2 on the nodes."""
    graphs = [(k, [(i, i + 1) for i in range(k - 1)]) if g % 2 else (k, [(0, i) for i in range(1, k)])
              for g, k in enumerate(3 + i % 3 for i in range(n))]  # fmt: skip
    nodes = sum(k for k, _ in graphs)
    return write_tu(root, name, graphs, [g % 2 for g in range(n)], node_labels=[i % 3 for i in range(nodes)])


def test_recipes_default_to_the_inner_validation_protocol():
    for name in ("graph_cls.yaml", "graph_proteins.yaml", "graph_nci109.yaml"):
        cfg, _ = run.load_recipe(REPO / "recipes" / name)
        assert cfg.split.folds == 10 and cfg.split.val_fraction == 0.1, name
        assert cfg.trainer.test_weights == "best" and cfg.trainer.eval_every == 1, name


def test_test_fold_is_evaluated_only_after_training_and_epochs_are_chosen_on_validation(
    tmp_path, cache_env, monkeypatch
):
    toy(tmp_path)
    events: list[tuple] = []  # ("fold", train, val, test) | ("train", ids) | ("eval", ids), in order

    def tagged(*args, **kwargs):  # every graph carries its index, so each batch says which graphs it holds
        gs = load(*args, **kwargs)
        for i, g in enumerate(gs.graphs):
            g.gid = torch.tensor([i])
        return gs

    def build_data(self, fold=None):
        splits = build(self, fold)
        ids = [{int(g.gid) for g in part.graphs} for part in (splits.train, splits.val, splits.test)]
        events.append(("fold", *ids))
        return splits

    def step(self, model, batch, *, train):
        events.append(("train" if train else "eval", set(batch.gid.tolist())))
        return original_step(self, model, batch, train=train)

    load, build, original_step = graph_data.load_graphs, GraphTask.build_data, GraphTask.step
    monkeypatch.setattr(graph_data, "load_graphs", tagged)
    monkeypatch.setattr(GraphTask, "build_data", build_data)
    monkeypatch.setattr(GraphTask, "step", step)
    res = run.train_recipe(RECIPE, "data.name=TOY", f"data.root={tmp_path}", "split.folds=3", "split.val_fraction=0.2",
                           "trainer.epochs=3", f"output_dir={tmp_path / 'runs'}", *TINY)  # fmt: skip

    starts = [i for i, e in enumerate(events) if e[0] == "fold"] + [len(events)]
    assert len(starts) == 4
    tested = set()
    for a, b in zip(starts[:-1], starts[1:]):
        _, train, val, test = events[a]
        assert val and test and not (train & val or train & test or val & test)
        seen = events[a + 1 : b]
        first_test = next(i for i, e in enumerate(seen) if e[0] == "eval" and e[1] & test)
        before, after = seen[:first_test], seen[first_test:]
        assert all(e[0] == "eval" for e in after), "training went on after the test fold was seen"
        assert set().union(*(e[1] for e in after)) == test  # the final evaluation: the whole test fold, only it
        assert all(e[1] <= train for e in before if e[0] == "train")
        evals = [e[1] for e in before if e[0] == "eval"]
        assert len(evals) == 3 and all(ids <= val for ids in evals)  # one validation pass per epoch, nothing else
        tested |= test
    assert tested == set(range(30))  # every graph is in exactly one test fold
    assert res["test_weights"] == "best" and len(res["folds"]) == 3
    assert all(f["best_epoch"] in (1, 2, 3) for f in res["folds"])  # each fold names its selected epoch
    assert res["data"]["val"] > 0


def test_test_weights_best_without_validation_is_refused(tmp_path, cache_env):
    toy(tmp_path)
    from capsule_kit.errors import ConfigError

    with pytest.raises(ConfigError, match="needs a validation split"):
        run.train_recipe(RECIPE, "data.name=TOY", f"data.root={tmp_path}", "split.folds=2", "split.val_fraction=0",
                         "trainer.max_steps=1", f"output_dir={tmp_path / 'runs'}", *TINY)  # fmt: skip


def test_baseline_ignores_edges_and_is_standardised_on_training_graphs_only(tmp_path, cache_env):
    toy(tmp_path)
    cfg = {"task": "graphs", "data": {"name": "TOY", "root": str(tmp_path)}, "split": {"folds": 3, "val_fraction": 0.2},
           "model": {"name": "baseline", "hidden": [8]}}  # fmt: skip
    task = GraphTask(validate(GraphTask.Config, cfg, "test"))
    splits = task.build_data(1)
    model = task.build_model()
    assert isinstance(model, SumMLP) and model.routing_kind == "none"
    task.before_training(model, splits, torch.device("cpu"))
    train_sums = torch.stack([g.x.sum(0) for g in splits.train.graphs])
    torch.testing.assert_close(model.mean, train_sums.mean(0))
    b = graph_data.collate(splits.test.graphs[:4])
    model.eval()
    out = model(b.x, b.edge_index, b.batch, b.num_graphs)
    shuffled = model(b.x, b.edge_index[:, torch.randperm(b.edge_index.shape[1])][:, :2], b.batch, b.num_graphs)
    torch.testing.assert_close(out.lengths, shuffled.lengths)  # structure-agnostic: edges do not matter
    assert out.lengths.shape == (4, 2) and out.reconstruction is None
    assert GRAPH_MODELS.resolve("sum_mlp") == "baseline" and GRAPH_MODELS.names() == ["baseline", "capsgnn"]


def test_baseline_two_steps_through_the_cli(tmp_path, cache_env):
    toy(tmp_path)
    argv = ["model.name=baseline", "data.name=TOY", f"data.root={tmp_path}", "split.folds=2", "trainer.max_steps=2"]
    proc = run_cli(RECIPE, *argv, *TINY, f"output_dir={tmp_path / 'runs'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = results(only_run_dir(tmp_path / "runs"))
    assert res["steps"] == 4 and len(res["folds"]) == 2 and res["params"] == (3 * 64 + 64) + (64 * 2 + 2)
    assert sum(sum(map(sum, f["confusion_matrix"])) for f in res["folds"]) == 30  # every graph tested once


def test_baseline_and_capsgnn_get_the_same_folds(tmp_path, cache_env):
    toy(tmp_path)

    def parts(name: str, fold: int) -> list[list]:
        cfg = {"task": "graphs", "data": {"name": "TOY", "root": str(tmp_path)}, "model": {"name": name},
               "split": {"folds": 3, "val_fraction": 0.2}}  # fmt: skip
        splits = GraphTask(validate(GraphTask.Config, cfg, "test")).build_data(fold)
        return [[(g.x.tolist(), g.edge_index.tolist(), int(g.y)) for g in p.graphs] for p in (splits.train, splits.val,
                splits.test)]  # fmt: skip

    assert all(parts("baseline", k) == parts("capsgnn", k) for k in range(3))


def test_unknown_model_name_lists_the_known_ones(tmp_path, capsys):
    assert run.main([RECIPE, "model.name=gin", "--validate"]) == 2
    err = capsys.readouterr().err
    assert "unknown graph model 'gin'" in err and "baseline (or sum_mlp), capsgnn" in err
