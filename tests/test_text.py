"""Text task: labels, file formats, folds, hub data, data errors; and the shared helpers (tiny model, TSV files,
tiny BERT) that test_text_model.py and the other text tests import. The model itself is in test_text_model.py."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("tokenizers")
pytest.importorskip("datasets")

from capsule_kit.config import validate  # noqa: E402
from capsule_kit.errors import ConfigError, DataError  # noqa: E402
from capsule_kit_tasks.text.config import ModelConfig, TextConfig  # noqa: E402
from capsule_kit_tasks.text.model import TextCapsNet, build_text_model  # noqa: E402
from capsule_kit_tasks.text.task import TextTask  # noqa: E402
from capsule_kit_tasks.text.vocab import build_tokenizer  # noqa: E402

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


# --- a pretrained front end to test with (shared) -----------------------------------------------------


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
