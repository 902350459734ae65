"""Text model: convolutional capsules vs a naive reference, padding invariance, stabilisers, checkpoints, word
vectors, the pretrained front end and the embedding parameter group. Helpers live in test_text.py."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("tokenizers")
pytest.importorskip("datasets")

from capsule_kit.errors import ConfigError, DataError  # noqa: E402
from capsule_kit.layers import DenseCaps  # noqa: E402
from capsule_kit.routing import RoutingConfig  # noqa: E402
from capsule_kit_tasks.text.config import ModelConfig  # noqa: E402
from capsule_kit_tasks.text.model import SequenceConvCaps, build_text_model, decode_meta  # noqa: E402
from capsule_kit_tasks.text.vocab import build_tokenizer, load_vectors  # noqa: E402
from tests.test_text import SENTENCES, TINY, make_task, make_tiny_bert, tiny_model, write_tsv  # noqa: E402


@pytest.fixture(autouse=True)
def _cache(cache_env):
    """Every test caches ``datasets`` files in a temporary folder."""
    return cache_env


# --- model ---------------------------------------------------------------------------------------


def test_conv_caps_equals_naive_window_loop():
    torch.manual_seed(0)
    layer = SequenceConvCaps(
        3, 4, 2, 5, kernel_size=3, routing=RoutingConfig(name="dynamic", iterations=3, leaky=True)
    ).double()
    caps = torch.randn(2, 6, 3, 4, dtype=torch.float64) * 0.3
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    caps = caps * mask[..., None, None]
    out = layer(caps, mask, amend=True)
    for b in range(2):
        for p in range(6):
            if not mask[b, p]:
                assert out[b, p].abs().max() == 0  # padded positions hold zero capsules
                continue
            window = [caps[b, q] if 0 <= q < 6 else torch.zeros(3, 4, dtype=torch.float64) for q in (p - 1, p, p + 1)]
            u = torch.cat(window).unsqueeze(0)  # [1, K*T_in, D_i], slot-major as the layer orders it
            ref = layer.caps(u, u.norm(dim=-1)).poses[0]
            torch.testing.assert_close(out[b, p], ref)


def test_shapes_gradients_and_lengths_below_one():
    torch.manual_seed(0)
    for arch in ("capsule_a", "capsule_b"):
        model = tiny_model(arch=arch, ngrams=[2, 3, 4])
        ids, mask = model.encode(SENTENCES)
        out = model(ids, mask)
        assert out.poses.shape == (4, 3, 4) and out.lengths.shape == (4, 3)
        assert ((out.lengths >= 0) & (out.lengths < 1)).all()
        out.lengths.sum().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name


def test_output_independent_of_padding_and_batch():
    torch.manual_seed(0)
    model = tiny_model().double().eval()
    ids, mask = model.encode(SENTENCES)
    batched = model(ids, mask).lengths
    for i, text in enumerate(SENTENCES):
        alone_ids, alone_mask = model.encode([text])
        torch.testing.assert_close(model(alone_ids, alone_mask).lengths[0], batched[i])


def test_stabilisers_switch_routing():
    torch.manual_seed(0)
    on = tiny_model(routing={"name": "dynamic", "leaky": True}, amendment=True)
    off = tiny_model(routing={"name": "dynamic", "leaky": False}, amendment=False)
    off.load_state_dict(on.state_dict())
    branch = on.branches[0]
    assert branch.conv_caps.caps.routing.leaky and branch.class_caps.routing.leaky and branch.amend
    assert not off.branches[0].class_caps.routing.leaky and not off.branches[0].amend
    u = torch.randn(2, 2 * 12, 4)  # [B, conv_types * max_len, conv_dim]
    leaky = branch.class_caps(u).coupling  # [B, N_i, N_o]
    assert (leaky.sum(-1) < 1).all()  # the orphan category takes the rest
    plain = off.branches[0].class_caps(u).coupling
    torch.testing.assert_close(plain.sum(-1), torch.ones(2, 24))
    ids, mask = on.encode(SENTENCES)
    assert not torch.allclose(on(ids, mask).lengths, off(ids, mask).lengths)


def test_amendment_scales_couplings_by_child_length():
    torch.manual_seed(0)
    caps = DenseCaps(4, 3, 2, 5, routing=RoutingConfig(name="dynamic", iterations=1))
    u = torch.randn(1, 4, 3)
    acts = torch.tensor([[1.0, 0.5, 0.0, 0.25]])
    routed = caps(u, acts)
    votes = caps.votes(u)[0]  # [N_i, N_o, D_o]; one iteration: uniform couplings 1/N_o times the activation
    s = (acts[0, :, None, None] * votes / 2).sum(0)
    torch.testing.assert_close(routed.poses[0], s * s.norm(dim=-1, keepdim=True) / (1 + s.pow(2).sum(-1, keepdim=True)))


def test_checkpoint_carries_tokenizer_and_labels():
    torch.manual_seed(0)
    model = tiny_model()
    other = build_text_model(
        ModelConfig(**TINY),
        labels=["x", "y", "z"],
        max_len=12,
        tokenizer_json=build_tokenizer(
            [" ".join(reversed(SENTENCES))], min_freq=1, max_vocab=None, lowercase=True, split="words"
        ),
    )
    other.load_state_dict(model.state_dict())
    assert other.labels == ["neg", "pos", "mid"] and decode_meta(other.meta)["labels"] == other.labels
    assert torch.equal(other.encode(SENTENCES)[0], model.encode(SENTENCES)[0])


def test_word_vectors_initialise_embeddings(tmp_path):
    tok = build_tokenizer(SENTENCES, min_freq=1, max_vocab=None, lowercase=True, split="words")
    path = tmp_path / "vec.txt"
    path.write_text("2 3\ngood 1 2 3\nunseen 4 5 6\n")
    table, found = load_vectors(path, tok, 3, seed=0)
    good = json.loads(tok)["model"]["vocab"]["good"]
    assert found == 1 and table[good].tolist() == [1.0, 2.0, 3.0] and table[0].abs().sum() == 0
    path.write_text("good 1 2\n")
    with pytest.raises(DataError, match="line 1: expected a word and 3 numbers"):
        load_vectors(path, tok, 3, seed=0)
    # glove.840B-style tokens holding spaces: the last 3 fields are the vector, the rest is the word.
    path.write_text(". . . 0.5 0.5 0.5\nat&t corp 7 8 9\ngood 1 2 3\n")
    table, found = load_vectors(path, tok, 3, seed=0)
    assert found == 1 and table[good].tolist() == [1.0, 2.0, 3.0]
    path.write_text("good 1 2 3 4\n")  # a wrong model.embed_dim must not make "good 1" a word
    with pytest.raises(DataError, match="line 1: expected a word and 3 numbers .* got 4 values"):
        load_vectors(path, tok, 3, seed=0)
    path.write_text("2 4\ngood 1 2 3 4\n")
    with pytest.raises(DataError, match="line 1: word2vec header says 4-d vectors, model.embed_dim=3"):
        load_vectors(path, tok, 3, seed=0)


# --- pretrained front end ----------------------------------------------------------------------------


@pytest.fixture
def tiny_bert(tmp_path):
    return make_tiny_bert(tmp_path)


def test_pretrained_front_end_cache_is_exact_and_frozen(tiny_bert):
    from capsule_kit_tasks.text.frontends import PretrainedEmbedder

    front = PretrainedEmbedder(str(tiny_bert), max_len=12, finetune_layers=0).train()
    assert not front.encoder.training and not any(p.requires_grad for p in front.parameters())
    ids, mask = front.encode(SENTENCES)
    direct = front.states(ids, mask)
    front.prefill(SENTENCES[:2], torch.device("cpu"))
    assert len(front._cache) == 2
    cached = front(ids, mask)  # two rows from the cache (computed in another batch), two fresh
    assert len(front._cache) == 4
    torch.testing.assert_close(cached * mask[..., None], direct * mask[..., None], atol=1e-5, rtol=1e-5)
    second = PretrainedEmbedder(str(tiny_bert), max_len=12, layer=2)  # hidden_states[2]: output of layer 2 of 2
    torch.testing.assert_close(second.states(ids, mask), direct)
    first = PretrainedEmbedder(str(tiny_bert), max_len=12, layer=1).states(ids, mask)
    assert first.shape == direct.shape and not torch.allclose(first, direct)
    with pytest.raises(ConfigError, match="pretrained_layer: 3 is out of range for an encoder with 2 layers"):
        PretrainedEmbedder(str(tiny_bert), max_len=12, layer=3)
    top = PretrainedEmbedder(str(tiny_bert), max_len=12, finetune_layers=1)
    trained = {n.split(".")[2] for n, p in top.encoder.named_parameters() if p.requires_grad}
    assert trained == {"1"} and top.start == 1  # only the last layer of encoder.layer.{0,1}; layer 1's input cached


def test_pretrained_model_trains_capsules_on_frozen_states(tiny_bert):
    model = build_text_model(
        ModelConfig(**{**TINY, "embedding": "pretrained", "pretrained_path": str(tiny_bert)}),
        labels=["neg", "pos"],
        max_len=12,
    )
    out = model(*model.encode(SENTENCES))
    out.lengths.sum().backward()
    assert out.lengths.shape == (4, 2) and model.branches[0].conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.front.parameters())
    with pytest.raises(ConfigError, match="not a transformers model folder"):
        build_text_model(
            ModelConfig(**{**TINY, "embedding": "pretrained", "pretrained_path": "/nope"}),
            labels=["a", "b"],
            max_len=12,
        )


def test_learned_embeddings_are_a_parameter_group(tmp_path):
    write_tsv(tmp_path / "d" / "train.tsv", [(i % 2, f"text number {i}") for i in range(8)])
    task = make_task(tmp_path, test="train.tsv")
    task.build_data()
    model = task.build_model()
    table, rest = task.param_groups(model)
    assert table["params"] == [model.front.embed.weight] and table["lr_scale"] == task.cfg.model.embed_lr_scale
    assert len(rest["params"]) == len(list(model.parameters())) - 1
    ids = torch.tensor([[2, 3]])
    assert torch.equal(model.front(ids, ids > 0), model.front.embed.weight[ids])  # stored as used: no scaling trick
