"""TensorBoard: numeric scalars only, the resolved recipe as text, hparams with the final test metrics."""

from __future__ import annotations

import json

import pytest
import yaml

from capsule_kit import run
from tests.helpers import REPO, only_run_dir, results

TINY = ["model.name=capsnet_tiny", "data.train_limit=48", "data.test_limit=32", "trainer.batch_size=16",
        "trainer.progress=false", "trainer.log_every=1", "trainer.max_steps=2", "trainer.tensorboard=true"]  # fmt: skip


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path_factory.mktemp("tb")
    assert run.main([str(REPO / "recipes" / "mnist.yaml"), *TINY, f"output_dir={out}"]) == 0
    run_dir = only_run_dir(out)
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"tensors": 0, "scalars": 0, "images": 0}).Reload()
    return run_dir, acc


def test_no_boolean_scalars(events):
    run_dir, acc = events
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("partial") is True for r in rows)  # max_steps stopped inside the epoch
    assert "epoch/partial" not in acc.Tags()["scalars"] and "epoch/val_accuracy" in acc.Tags()["scalars"]


def test_recipe_as_text(events):
    run_dir, acc = events
    (event,) = acc.Tensors("recipe/text_summary")
    text = event.tensor_proto.string_val[0].decode()
    assert text.startswith("```\n") and (run_dir / "recipe.yaml").read_text().strip() in text


def test_hparams_with_final_test_metrics(events):
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_dir, acc = events
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert hp["trainer.lr"].number_value == pytest.approx(recipe["trainer"]["lr"])
    assert hp["model.name"].string_value == "capsnet_tiny" and hp["trainer.max_steps"].number_value == 2
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    names = {m.name.tag for m in experiment.metric_infos}
    test = results(run_dir)["test"]
    assert names == {f"hparam/test_{k}" for k, v in test.items() if isinstance(v, float)}
    (final,) = acc.Scalars("hparam/test_accuracy")
    assert final.value == pytest.approx(test["accuracy"]) and final.step == 2
