"""The Task contract: every hook the runner calls is declared on Task with a default; no task uses the engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import capsule_kit as ck
from capsule_kit import run
from capsule_kit.metrics import multilabel_metrics
from capsule_kit.task import Task, with_extra_metrics

REPO = Path(__file__).resolve().parents[1]
CALLS: list[tuple] = []


class ContractConfig(ck.Recipe):
    task: str = "contract_probe"


@ck.register_task("contract_probe")
class ContractTask(ck.Task):
    """Records what the runner hands it."""

    Config = ContractConfig

    def build_data(self, fold=None):
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(24, 3, generator=g), torch.arange(24) % 2
        return ck.Splits(train=ck.TensorPairs(x[:16], y[:16]), test=ck.TensorPairs(x[16:], y[16:]))

    def build_model(self):
        return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))

    def param_groups(self, model):
        return [{"params": model[0].parameters(), "lr_scale": 10.0}, {"params": model[2].parameters()}]

    def before_training(self, model, data, device):
        CALLS.append(("before", len(data.train), self.progress))

    def step(self, model, batch, *, train):
        x, y = batch
        if train:
            CALLS.append(("step", self.progress))
        logits = model(x)
        return {"loss": nn.functional.cross_entropy(logits, y), "n": len(y), "out": {"pred": logits.argmax(-1), "y": y}}

    def metrics(self, outputs):
        pred, y = torch.cat([o["pred"] for o in outputs]), torch.cat([o["y"] for o in outputs])
        return {"accuracy": float((pred == y).float().mean())}

    def evaluate_extra(self, model, data, device):
        """A probe on the frozen model: nearest class mean of the first layer's features."""
        CALLS.append(("extra", model.training))
        with torch.no_grad():
            feats = model[0](data.train.tensors[0])
            means = torch.stack([feats[data.train.tensors[1] == c].mean(0) for c in (0, 1)])
            x, y = data.test.tensors
            pred = torch.cdist(model[0](x), means).argmin(1)
        cm = [[int(((y == t) & (pred == p)).sum()) for p in (0, 1)] for t in (0, 1)]
        return {"probe_accuracy": float((pred == y).float().mean()), "probe_confusion_matrix": cm}

    def pictures(self, model, data, run_dir, device, outputs):
        CALLS.append(("pictures", sum(len(o["y"]) for o in outputs), self.metrics(outputs)["accuracy"]))
        return {"seen": sum(len(o["y"]) for o in outputs)}


class ContractFoldsConfig(ck.Recipe):
    task: str = "contract_probe_folds"


@ck.register_task("contract_probe_folds")
class ContractFoldsTask(ContractTask):
    """The same task, cross-validated over two folds (the test half swaps)."""

    Config = ContractFoldsConfig

    def folds(self):
        return [0, 1]

    def build_data(self, fold=None):
        splits = super().build_data()
        if fold == 1:
            xa, ya = splits.train.tensors
            splits = ck.Splits(train=ck.TensorPairs(xa[8:], ya[8:]), test=ck.TensorPairs(xa[:8], ya[:8]))
        return splits


def test_every_runner_hook_has_a_default_on_task():
    task = Task(ck.Recipe(task="x"))
    assert task.param_groups(nn.Linear(1, 1)) is None and task.label_names() is None
    assert task.summarize_folds([{"accuracy": 1.0}], Path(".")) == {}
    assert task.before_training(nn.Linear(1, 1), None, "cpu") is None
    assert task.pictures(nn.Linear(1, 1), None, Path("."), "cpu", []) == {}
    assert task.evaluate_extra(nn.Linear(1, 1), None, "cpu") == {}
    assert task.folds() == [None] and task.progress == 0.0


def test_runner_calls_the_hooks_and_hands_pictures_the_test_outputs(tmp_path):
    CALLS.clear()
    res = run.train_recipe(
        {"task": "contract_probe"}, "trainer.epochs=2", "trainer.max_steps=3", "trainer.batch_size=8",
        "trainer.progress=false", "trainer.lr=0.01", f"output_dir={tmp_path}",
    )  # fmt: skip
    assert CALLS[0] == ("before", 16, 0.0)  # once, before the first step
    assert [c[0] for c in CALLS[1:4]] == ["step"] * 3 and [c[0] for c in CALLS[-2:]] == ["extra", "pictures"]
    _, seen, acc = CALLS[-1]
    assert seen == 8 and res["extra"]["seen"] == 8 and acc == res["test"]["accuracy"]  # the outputs behind the metrics


def test_evaluate_extra_lands_in_results_json_test(tmp_path):
    CALLS.clear()
    res = run.train_recipe(
        {"task": "contract_probe"}, "trainer.max_steps=2", "trainer.batch_size=8", "trainer.progress=false",
        f"output_dir={tmp_path}",
    )  # fmt: skip
    saved = json.loads((Path(res["run_dir"]) / "results.json").read_text())
    assert ("extra", False) in CALLS  # once, after the test pass left the model in eval mode
    assert 0.0 <= saved["test"]["probe_accuracy"] <= 1.0 and saved["test"]["accuracy"] == res["test"]["accuracy"]
    assert sum(map(sum, saved["test"]["probe_confusion_matrix"])) == 8
    assert (Path(res["run_dir"]) / "probe_confusion.png").is_file()  # drawn by the runner's standard pictures


def test_evaluate_extra_gets_mean_and_std_over_folds(tmp_path):
    res = run.train_recipe(
        {"task": "contract_probe_folds"}, "trainer.max_steps=2", "trainer.batch_size=8", "trainer.progress=false",
        f"output_dir={tmp_path}",
    )  # fmt: skip
    saved = json.loads((Path(res["run_dir"]) / "results.json").read_text())
    per_fold = [f["probe_accuracy"] for f in saved["folds"]]
    assert len(per_fold) == 2 and saved["test"]["probe_accuracy"] == pytest.approx(sum(per_fold) / 2)
    assert saved["test_std"]["probe_accuracy"] == pytest.approx(float(torch.tensor(per_fold).std()))


def test_evaluate_extra_may_not_rename_a_test_metric():
    class Clash(ContractTask):
        def evaluate_extra(self, model, data, device):
            return {"accuracy": 1.0}

    with pytest.raises(ValueError, match=r"evaluate_extra returned metrics its test pass has: \['accuracy'\]"):
        with_extra_metrics(Clash(ContractConfig()), {"accuracy": 0.5}, None, None, "cpu")


def test_param_groups_scale_the_learning_rate():
    model = ContractTask(ContractConfig()).build_model()
    cfg = ck.TrainerConfig(lr=0.002)
    opt = run.build_optimizer(model, cfg, ContractTask(ContractConfig()).param_groups(model))
    assert [g["lr"] for g in opt.param_groups] == [0.02, 0.002]
    assert [len(g["params"]) for g in opt.param_groups] == [2, 2]


def test_no_task_imports_engine_internals():
    for path in (REPO / "tasks").rglob("*.py"):
        assert "capsule_kit.engine" not in path.read_text(), path
    from capsule_kit import engine, loaders

    assert engine.unwrap is loaders.unwrap  # one implementation, in the neutral loaders module


def test_multilabel_metrics_by_hand():
    pred = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0]], dtype=torch.float)
    target = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 0]], dtype=torch.float)
    m = multilabel_metrics(pred, target)
    assert abs(m["accuracy"] - 1 / 3) < 1e-6 and abs(m["hamming_accuracy"] - 7 / 9) < 1e-6
    # tp = [2, 1, 0], fp = [0, 1, 1], fn = [0, 0, 0]: micro F1 = 6 / (6 + 2); class 3 never present
    assert abs(m["micro_f1"] - 0.75) < 1e-6 and abs(m["macro_f1"] - (1.0 + 2 / 3) / 2) < 1e-6
