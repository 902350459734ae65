"""Text task: convolutional capsules vs a naive reference, padding invariance, stabilisers, labels, data errors."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("tokenizers")
pytest.importorskip("datasets")

from capsule_kit.config import validate  # noqa: E402
from capsule_kit.errors import ConfigError, DataError  # noqa: E402
from capsule_kit.layers import DenseCaps  # noqa: E402
from capsule_kit.routing import RoutingConfig  # noqa: E402
from capsule_kit_tasks.text.config import ModelConfig, TextConfig  # noqa: E402
from capsule_kit_tasks.text.model import SequenceConvCaps, TextCapsNet, build_text_model, decode_meta  # noqa: E402
from capsule_kit_tasks.text.task import TextTask  # noqa: E402
from capsule_kit_tasks.text.vocab import build_tokenizer, load_vectors  # noqa: E402

TINY = {
    "embed_dim": 8,
    "filters": 4,
    "primary_types": 3,
    "primary_dim": 4,
    "conv_types": 2,
    "conv_dim": 4,
    "class_dim": 4,
    "dropout": 0.0,
}
SENTENCES = ["a good film .", "a bad , bad film", "good", "the plot is thin but the acting is good ."]


def tiny_model(**over) -> TextCapsNet:
    tok = build_tokenizer(SENTENCES, min_freq=1, max_vocab=None, lowercase=True, split="words")
    return build_text_model(
        ModelConfig(**{**TINY, **over}), labels=["neg", "pos", "mid"], max_len=12, tokenizer_json=tok
    )


def write_tsv(path, rows, header="label\ttext"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join(f"{a}\t{b}\n" for a, b in rows), encoding="utf-8")
    return path


def make_task(tmp_path, split: dict | None = None, **data) -> TextTask:
    raw = {
        "task": "text",
        "data": {"root": str(tmp_path), "dir": "d", "val": None, **data},
        "split": split or {},
        "model": TINY,
        "trainer": {"batch_size": 4},
    }
    return TextTask(validate(TextConfig, raw, "test"))


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


# --- data ------------------------------------------------------------------------------------------


def test_labels_mapped_sorted_and_unseen_test_label(tmp_path):
    write_tsv(tmp_path / "d" / "train.tsv", [(10, "a b"), (9, "c d"), (2, "e"), (10, "f")])
    write_tsv(tmp_path / "d" / "test.tsv", [(9, "a"), (2, "b")])
    task = make_task(tmp_path)
    splits = task.build_data()
    assert task.keys == ["2", "9", "10"]  # numeric order, not "10" < "2"
    assert splits.train.labels.tolist() == [2, 1, 0, 2] and splits.test.labels.tolist() == [1, 0]
    write_tsv(tmp_path / "d" / "test.tsv", [(9, "a"), (7, "b")])
    with pytest.raises(DataError, match=r"test.tsv: line 3: label '7' never occurs in the training split"):
        make_task(tmp_path).build_data()
    with pytest.raises(ConfigError, match="2 names for 3 labels"):
        make_task(tmp_path, label_names=["a", "b"]).build_data()


def test_string_and_multi_labels_from_jsonl(tmp_path):
    lines = [{"t": "great fun", "y": ["pos", "fun"]}, {"t": "dull", "y": ["neg"]}, {"t": "fun but bad", "y": "fun"}]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "tr.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    task = make_task(tmp_path, train="tr.jsonl", test="tr.jsonl", text_column="t", label_column="y", multi_label=True)
    splits = task.build_data()
    assert task.keys == ["fun", "neg", "pos"]
    assert splits.train.labels.tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 0]]
    model = task.build_model()
    batch = splits.collate([splits.train[i] for i in range(3)])  # tokenized in the loader, by the model's tokenizer
    want = model.encode(["great fun", "dull", "fun but bad"])
    assert set(batch) == {"ids", "mask", "label"} and all(
        torch.equal(a, b) for a, b in zip(want, (batch["ids"], batch["mask"]))
    )
    model.encode = None  # the step never tokenizes
    res = task.step(model, batch, train=True)
    res["loss"].backward()
    assert res["out"]["lengths"].shape == (3, 3) and torch.isfinite(res["loss"])
    metrics = task.metrics(
        [{"lengths": torch.tensor([[0.9, 0.1, 0.8], [0.2, 0.7, 0.1]]), "y": torch.tensor([[1.0, 0, 1], [0, 0, 1]])}]
    )
    assert metrics["accuracy"] == 0.5 and metrics["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "train.tsv: empty file"),
        (b"label\ttext\n1\tfine\n0\t\xff\xfe bad\n", "train.tsv: line 3: not UTF-8 text"),
        (b"label\ttext\n1\tfine\n0\t  \n", "train.tsv: line 3: empty text"),
        (b"label\tsentence\n1\tfine\n", "train.tsv: no text column 'text' (columns: label, sentence"),
        (b"label\ttext\n1\tfine\n\tno label\n", "train.tsv: line 3: empty label"),
        (b"label\ttext\n1\tfine\n0\tbad\textra\n1\tok\n", "train.tsv: line 3: 3 fields, but the header has 2"),
        (b"label\ttext\n1\tfine\n\n0\tok\n", "train.tsv: line 3: empty text"),  # a blank line between rows
    ],
)
def test_bad_input_names_file_and_line(tmp_path, content, message):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.tsv").write_bytes(content)
    write_tsv(tmp_path / "d" / "test.tsv", [(1, "x")])
    with pytest.raises(DataError) as err:
        make_task(tmp_path).check_data()  # the runner's check, before it creates a run directory
    assert message in str(err.value) and "\n" not in str(err.value)


def test_check_data_checks_test_labels_against_train(tmp_path):
    write_tsv(tmp_path / "d" / "train.tsv", [(0, "a"), (1, "b")])
    write_tsv(tmp_path / "d" / "test.tsv", [(1, "a"), (2, "b")])
    with pytest.raises(DataError, match=r"test.tsv: line 3: label '2' never occurs in the training split"):
        make_task(tmp_path).check_data()


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            '{"label": 1, "text": "a"}\n\n{"label": 0, "text": "b"}\n{"label": 1, "text": "c"\n',
            "line 4: not valid JSON",
        ),
        ('{"label": 1, "text": "a"\n{"label": 0, "text": "b"}\n', "line 1: not valid JSON"),
        ('"a sentence"\n{"label": 0, "text": "b"}\n', "line 1: expected a JSON object per line, got str"),
    ],
)
def test_malformed_jsonl_names_the_file_line(tmp_path, lines, message):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "tr.jsonl").write_text(lines, encoding="utf-8")
    with pytest.raises(DataError) as err:
        make_task(tmp_path, train="tr.jsonl", test="tr.jsonl").check_data()
    assert f"tr.jsonl: {message}" in str(err.value) and "row" not in str(err.value), err.value


def test_trailing_blank_lines_are_not_rows(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.tsv").write_text("label\ttext\n1\tgood\n0\tbad\n\n\n", encoding="utf-8")
    (tmp_path / "d" / "test.csv").write_text("label,text\n1,fine\n\n", encoding="utf-8")
    splits = make_task(tmp_path, test="test.csv").build_data()
    assert splits.train.texts == ["good", "bad"] and splits.test.texts == ["fine"]


def test_missing_file_and_folds_need_no_test(tmp_path):
    with pytest.raises(DataError, match="CAPSULE_KIT_DATA"):
        make_task(tmp_path).check_data()
    with pytest.raises(ConfigError, match="data.test: null"):
        make_task(tmp_path, split={"folds": 5}).check_data()
    with pytest.raises(ConfigError, match="split.folds: .*drop split.folds or data.hub"):
        make_task(tmp_path, split={"folds": 5}, hub="someone/sst2", test=None).check_data()
    with pytest.raises(ConfigError, match="unknown key 'data.folds' \\(did you mean 'split.folds'\\?\\)"):
        make_task(tmp_path, folds=5)


def test_cv_folds_partition_the_file(tmp_path):
    rows = [(i % 2, f"text number {i}") for i in range(23)]
    write_tsv(tmp_path / "d" / "all.tsv", rows)
    task = make_task(tmp_path, split={"folds": 5}, train="all.tsv", test=None)
    assert task.folds() == [0, 1, 2, 3, 4]
    held = []
    for fold in task.folds():
        s = task.build_data(fold)
        assert len(s.train) + len(s.test) == 23 and not set(s.train.texts) & set(s.test.texts)
        assert abs(int(s.test.labels.sum()) * 2 - len(s.test)) <= 1  # stratified: both labels in every fold
        held += s.test.texts
    assert sorted(held) == sorted(t for _, t in rows)
    holdout = make_task(tmp_path, split={"test_fraction": 0.2, "val_fraction": 0.25}, train="all.tsv", test=None)
    s = holdout.build_data()
    assert (len(s.train), len(s.val), len(s.test)) == (13, 5, 5)  # sklearn rounds held-out shares up
    assert sorted(s.train.texts + s.val.texts + s.test.texts) == sorted(t for _, t in rows)


# --- pretrained front end ----------------------------------------------------------------------------


def make_tiny_bert(tmp_path):
    """A 2-layer, 16-wide BERT with a word-piece tokenizer, saved like a downloaded model folder."""
    transformers = pytest.importorskip("transformers")
    words = sorted({w for s in SENTENCES for w in s.split()})
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    folder = tmp_path / "tiny-bert"
    transformers.BertTokenizerFast(str(vocab)).save_pretrained(folder)
    config = transformers.BertConfig(
        vocab_size=5 + len(words),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    return folder


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


def test_hub_dataset_splits_are_used(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    hub = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"sentence": ["good", "bad", "fine"], "label": [1, 0, 1]}),
            "validation": datasets.Dataset.from_dict({"sentence": ["ok"], "label": [1]}),
            "test": datasets.Dataset.from_dict({"sentence": ["meh", "great"], "label": [0, 1]}),
        }
    )
    seen = {}
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config, cache_dir: seen.update(name=name) or hub)
    task = make_task(tmp_path, hub="someone/sst2", text_column="sentence")
    task.check_data()  # no files to look for
    splits = task.build_data()
    assert seen["name"] == "someone/sst2" and (len(splits.train), len(splits.val), len(splits.test)) == (3, 1, 2)
    assert splits.test.labels.tolist() == [0, 1]

    def fail(*args, **kwargs):
        raise ConnectionError("")  # an exception with an empty message

    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(DataError, match=r"data.hub 'someone/sst2': cannot load \(ConnectionError\)"):
        make_task(tmp_path, hub="someone/sst2").build_data()


def test_csv_with_quotes_and_string_labels(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "tr.csv").write_text('review,stars\n"good, really good",high\nNA,low\n"bad ""film""",low\n')
    task = make_task(tmp_path, train="tr.csv", test="tr.csv", text_column="review", label_column="stars")
    splits = task.build_data()
    assert splits.train.texts == ["good, really good", "NA", 'bad "film"']  # "NA" stays text
    assert task.keys == ["high", "low"] and splits.train.labels.tolist() == [0, 1, 1]


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
