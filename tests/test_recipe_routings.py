"""Routing by name in every domain: every shipped recipe x every routing its model declares.

Each pair validates and trains 2 steps through the library (small data limits and,
where the recipe's model is large, smaller sizes); every registered routing the
model does not declare is refused at validation naming ``model.routing`` and the
supported names; through the CLI such a pair exits 2 with one line.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from capsule_kit import run
from capsule_kit.errors import ConfigError
from capsule_kit.models import supported_routings
from capsule_kit.routing import names, routings_of
from tests.conftest import data_path
from tests.helpers import REPO, run_cli

RECIPES = sorted(p.name for p in (REPO / "recipes").glob("*.yaml"))
FAST = ["trainer.max_steps=2", "trainer.eval_max_steps=1", "trainer.progress=false", "trainer.threads=1"]
DIGITS = ["trainer.batch_size=4", "data.train_limit=8", "data.test_limit=8", "data.test_pairs=8"]
TEXT = ["trainer.batch_size=4", "data.train_limit=8", "model.embed_dim=8", "model.conv_types=2", "model.conv_dim=4"]
SMALL = {  # recipe -> overrides keeping the recipe's model family and data, at smoke size
    "mnist.yaml": DIGITS,
    "mnist_efficient.yaml": DIGITS,
    "mnist_em.yaml": DIGITS,
    "mnist_em_small.yaml": DIGITS,
    "mnist_em_cpu.yaml": DIGITS,
    "affine.yaml": DIGITS,
    "affine_cnn.yaml": DIGITS,
    "multimnist.yaml": DIGITS,
    "multimnist_gpu.yaml": [*DIGITS, "trainer.num_workers=0"],
    "text_cls.yaml": TEXT,
    "text_trec.yaml": TEXT[:1] + TEXT[2:],  # its first rows miss some of the 6 classes
    "text_mr.yaml": TEXT[:1] + TEXT[2:],  # MR's file is sorted by label: its first rows are one class
    "text_sst2_minilm.yaml": TEXT[:2] + ["model.pretrained_layer=2", *TEXT[3:]],
    "text_sst2_minilm_ft.yaml": TEXT[:2] + ["model.pretrained_layer=2", "model.finetune_layers=1", *TEXT[3:]],
    "text_trec_minilm.yaml": TEXT[:2] + ["model.pretrained_layer=2", "model.finetune_layers=1", *TEXT[3:]],
    "graph_cls.yaml": ["split.folds=1", "trainer.batch_size=4", "model.channels=4", "model.layers=2"],
    "graph_proteins.yaml": ["split.folds=1", "trainer.batch_size=4", "model.channels=4", "model.layers=2"],
    "graph_nci109.yaml": ["split.folds=1", "trainer.batch_size=4", "model.channels=4", "model.layers=2"],
    "points_tiny.yaml": ["data.train_limit=12", "data.test_limit=8"],
    "points_ae.yaml": ["data.train_limit=12", "data.test_limit=8", "trainer.batch_size=4", "data.num_points=256",
                       "data.input_points=128", "model.primary_caps=32", "model.latent_caps=8", "model.latent_dim=8",
                       "model.out_points=64", "model.share_groups=8", "pictures.shapes=2",
                       "transfer.C=1.0"],  # 12 shapes cannot cut 3 folds per class to choose C
    "points_ae_paper.yaml": ["data.train_limit=12", "data.test_limit=8", "trainer.batch_size=4",
                             "data.num_points=256", "model.primary_caps=32", "model.latent_caps=8",
                             "model.latent_dim=8", "model.out_points=64", "pictures.shapes=2", "transfer.C=1.0"],
}  # fmt: skip


def test_every_recipe_has_smoke_settings():
    assert sorted(SMALL) == RECIPES


def declared(name: str) -> list[str]:
    """The routings the recipe's model declares (digits: by model name; other domains: vector routings)."""
    cfg, _ = run.load_recipe(REPO / "recipes" / name)
    return supported_routings(cfg.model.name) if cfg.task == "digits" else routings_of("vector")


def needs_data(name: str, tmp_path: Path) -> list[str]:
    """Skip when the recipe's data is absent; extra overrides (a tiny local encoder for the MiniLM recipe)."""
    folder = {"text": ("text",), "graph": ("graphs", "TU"), "points": ("points",)}.get(name.split("_")[0])
    if folder and not data_path(*folder).is_dir():
        pytest.skip(f"no {'/'.join(folder)} data under the data root")
    if "minilm" in name:
        from tests.test_text import make_tiny_bert

        return [f"model.pretrained_path={make_tiny_bert(tmp_path)}"]
    return []


def pairs() -> list[tuple[str, str]]:
    return [(name, routing) for name in RECIPES for routing in declared(name)]


def test_vector_models_take_dynamic_and_attention():
    assert {"dynamic", "attention"} <= set(routings_of("vector")) and routings_of("matrix") == ["em"]
    assert supported_routings("matrix_capsnet") == ["em"]
    for model in ("capsnet", "capsnet_tiny", "efficient_capsnet", "efficient_capsnet_tiny"):
        assert supported_routings(model) == routings_of("vector")


@pytest.mark.parametrize("name, routing", pairs())
def test_recipe_trains_two_steps_with_each_declared_routing(name, routing, tmp_path, cache_env):
    if name.startswith("graph") and importlib.util.find_spec("torch_geometric") is None:
        pytest.skip("torch_geometric missing")
    overrides = [
        *FAST, *SMALL[name], *needs_data(name, tmp_path), f"model.routing={{name: {routing}}}",
        f"output_dir={tmp_path / 'runs'}",
    ]  # fmt: skip
    cfg, _ = run.load_recipe(REPO / "recipes" / name, overrides)
    assert cfg.model.routing.name == routing
    res = run.train_recipe(REPO / "recipes" / name, *overrides)
    assert res["steps"] == 2 and res["test"]


@pytest.mark.parametrize("name", RECIPES)
def test_undeclared_routings_are_refused_naming_the_supported_ones(name):
    supported = declared(name)
    if not supported:
        pytest.skip("the model routes nothing (the CNN baseline)")
    for routing in sorted(set(names()) - set(supported)):
        with pytest.raises(ConfigError) as err:
            run.load_recipe(REPO / "recipes" / name, [f"model.routing={{name: {routing}}}"])
        assert "model.routing" in str(err.value) and f"supported: {', '.join(supported)}" in str(err.value)


def test_cli_refuses_an_unsupported_pair_in_one_line_exit_2():
    proc = run_cli("recipes/mnist_em.yaml", "--validate", "model.routing={name: dynamic}")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "error: recipes/mnist_em.yaml: model.routing: routing 'dynamic' is not supported by model 'matrix_capsnet'; "
        "supported: em"
    ]


@pytest.mark.parametrize(
    "name, key, new",
    [
        ("mnist.yaml", "model.iterations=2", "model.routing.iterations"),
        ("text_cls.yaml", "model.leaky=false", "model.routing.leaky"),
        ("text_cls.yaml", "model.iterations=2", "model.routing.iterations"),
        ("graph_cls.yaml", "model.iterations=2", "model.routing.iterations"),
        ("points_ae.yaml", "model.routing_iterations=2", "model.routing.iterations"),
    ],
)
def test_old_routing_spellings_are_refused_with_did_you_mean(name, key, new):
    with pytest.raises(ConfigError, match=f"did you mean '{new}'"):
        run.load_recipe(REPO / "recipes" / name, [key])


def test_unknown_routing_options_are_refused_naming_the_known_ones():
    with pytest.raises(ConfigError, match=r"routing 'attention' has no option 'leaky' \(takes: squash\)"):
        run.load_recipe(REPO / "recipes" / "text_cls.yaml", ["model.routing={name: attention, leaky: true}"])
    with pytest.raises(ConfigError, match="iterations must be 1"):
        run.load_recipe(REPO / "recipes" / "mnist.yaml", ["model.routing.name=attention"])


@pytest.fixture
def user_routing():
    """A user's own vector routing, registered for one test (the registry has no unregister)."""
    from capsule_kit.registry import ROUTING
    from capsule_kit.routing import DynamicRouting

    @ROUTING.register("user_mean")
    class MeanRouting(DynamicRouting):
        def __init__(self, *, num_in=None, num_out=None, iterations: int = 1, scale: float = 1.0) -> None:
            super().__init__(num_in=num_in, num_out=num_out, iterations=iterations)
            self.scale = scale

    yield "user_mean"
    del ROUTING._items["user_mean"]


def test_a_users_vector_routing_is_taken_by_every_vector_model(user_routing, tmp_path):
    assert user_routing in supported_routings("capsnet") and user_routing not in supported_routings("matrix_capsnet")
    cfg, _ = run.load_recipe(
        REPO / "recipes" / "points_tiny.yaml", [f"model.routing={{name: {user_routing}, scale: 2}}"]
    )
    assert cfg.model.routing.options == {"scale": 2.0}
    with pytest.raises(ConfigError, match=r"has no option 'leaky' \(takes: scale\)"):
        run.load_recipe(REPO / "recipes" / "graph_cls.yaml", [f"model.routing={{name: {user_routing}, leaky: true}}"])
    res = run.train_recipe(
        REPO / "recipes" / "mnist.yaml", *FAST, *DIGITS, "model.name=capsnet_tiny",
        f"model.routing={{name: {user_routing}, scale: 2}}", f"output_dir={tmp_path}",
    )  # fmt: skip
    assert res["steps"] == 2
