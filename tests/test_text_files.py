"""Text task, the user's files: data.encoding, data.empty_rows, folds and hold-outs of one file with string labels."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("datasets")

from capsule_kit import run  # noqa: E402
from capsule_kit.errors import DataError  # noqa: E402
from tests.helpers import REPO, only_run_dir, results  # noqa: E402
from tests.test_text import make_task, write_tsv  # noqa: E402
from tests.test_text_cli import SMALL  # noqa: E402

LATIN1 = {
    "train.tsv": "label\ttext\n1\tun film très réussi\n0\tcafé froid , déçu\n",
    "train.csv": 'label,text\n1,un film très réussi\n0,"café froid, déçu"\n',
    "train.jsonl": '{"label": 1, "text": "un film très réussi"}\n{"label": 0, "text": "café froid, déçu"}\n',
}


@pytest.fixture(autouse=True)
def _cache(cache_env):
    """Every test caches ``datasets`` files in a temporary folder."""
    return cache_env


def cli(tmp_path, *overrides: str) -> list[str]:
    """The text_cls recipe on files in ``tmp_path/d``, tiny and two steps."""
    return [str(REPO / "recipes" / "text_cls.yaml"), f"data.root={tmp_path}", "data.dir=d", "data.val=null",
            "trainer.test_weights=last", *SMALL, f"output_dir={tmp_path / 'runs'}", *overrides]  # fmt: skip


@pytest.mark.parametrize("name", sorted(LATIN1))
def test_latin1_file_needs_data_encoding(tmp_path, name):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / name).write_bytes(LATIN1[name].encode("latin-1"))
    with pytest.raises(DataError) as err:
        make_task(tmp_path, train=name, test=name).check_data()
    message, line = str(err.value), 1 if name.endswith(".jsonl") else 2  # the header comes first in TSV/CSV
    assert f"{name}: line {line}: not UTF-8 text (byte 0xe8); set data.encoding (e.g. latin-1)" in message, message
    splits = make_task(tmp_path, train=name, test=name, encoding="latin-1").build_data()
    assert splits.train.texts[0] == "un film très réussi" and "déçu" in splits.train.texts[1]


def test_encoding_error_exits_2_with_one_line_and_unknown_encodings_are_refused(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.tsv").write_bytes(LATIN1["train.tsv"].encode("latin-1"))
    (tmp_path / "d" / "test.tsv").write_text("label\ttext\n1\tfine\n", encoding="utf-8")
    assert run.main(cli(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("error: ") and "train.tsv: line 2: not UTF-8 text" in err and "set data.encoding" in err
    assert not (tmp_path / "runs").exists()
    assert run.main([*cli(tmp_path, "data.encoding=latin-1"), "--validate"]) == 0
    assert run.main([*cli(tmp_path, "data.encoding=latin-42"), "--validate"]) == 2
    err = capsys.readouterr().err
    assert "data.encoding" in err and "unknown text encoding 'latin-42'" in err, err
    with pytest.raises(DataError, match=r"train.tsv: line 2: not ascii text \(byte 0xe8\)"):
        make_task(tmp_path, encoding="ascii").check_data()


def test_empty_rows_are_refused_or_dropped_and_counted(tmp_path, capsys):
    rows = [(1, "good"), (0, "  "), (1, "fine"), (0, ""), (1, "great"), (0, "bad")]
    write_tsv(tmp_path / "d" / "train.tsv", rows)
    write_tsv(tmp_path / "d" / "test.tsv", [(1, "ok"), (0, "meh")])
    with pytest.raises(DataError, match=r"train.tsv: line 3: empty text \(data.empty_rows=drop"):
        make_task(tmp_path).check_data()
    task = make_task(tmp_path, empty_rows="drop")
    splits = task.build_data()
    assert splits.train.texts == ["good", "fine", "great", "bad"] and splits.train.labels.tolist() == [1, 1, 1, 0]
    assert task.dropped_rows() == {"train": 2, "test": 0} and splits.info["empty_rows_dropped"] == task.dropped_rows()
    err = capsys.readouterr().err
    assert "data.train (" in err and "train.tsv): dropped 2 rows with an empty text" in err
    assert "test.tsv): dropped 0 rows" in err
    # Later messages still name the file's own lines (line 7 holds "bad", after two dropped rows).
    write_tsv(tmp_path / "d" / "test.tsv", [(1, "ok"), (0, "")])
    write_tsv(tmp_path / "d" / "train.tsv", [*rows[:-1], ("", "bad")])
    with pytest.raises(DataError, match=r"train.tsv: line 7: empty label"):
        make_task(tmp_path, empty_rows="drop").check_data()
    write_tsv(tmp_path / "d" / "train.tsv", [(1, " "), (0, "")])
    with pytest.raises(DataError, match=r"train.tsv: every text is empty \(2 rows\)"):
        make_task(tmp_path, empty_rows="drop").check_data()


def test_dropped_rows_reach_results_json(tmp_path, capsys):
    write_tsv(tmp_path / "d" / "train.tsv", [(i % 2, "" if i % 5 == 0 else f"text {i}") for i in range(20)])
    write_tsv(tmp_path / "d" / "test.tsv", [(1, "ok"), (0, ""), (1, "fine")])
    assert run.main(cli(tmp_path, "data.empty_rows=drop")) == 0
    err = capsys.readouterr().err
    assert "train.tsv): dropped 4 rows" in err and "test.tsv): dropped 1 rows" in err
    res = results(only_run_dir(tmp_path / "runs"))
    assert res["data"]["empty_rows_dropped"] == {"train": 4, "test": 1}
    assert res["data"]["train_size"] == 16 and res["data"]["test_size"] == 2


def one_file(tmp_path, counts: dict[str, int]) -> list[tuple[str, str]]:
    """A CSV file of string labels (interleaved) and unique texts, no test or validation file."""
    labels = [name for name, n in counts.items() for _ in range(n)]
    random.Random(0).shuffle(labels)
    rows = [(label, f"sentence {i} about {label}") for i, label in enumerate(labels)]
    (tmp_path / "d").mkdir(exist_ok=True)
    (tmp_path / "d" / "all.csv").write_text("text,category\n" + "".join(f"{t},{y}\n" for y, t in rows))
    return rows


def test_folds_of_one_file_with_string_labels_are_stratified(tmp_path):
    counts = {"sport": 23, "politics": 14, "arts": 8}
    rows = one_file(tmp_path, counts)
    task = make_task(tmp_path, split={"folds": 5}, train="all.csv", test=None, label_column="category")
    held: list[str] = []
    for fold in task.folds():
        s = task.build_data(fold)
        assert task.keys == ["arts", "politics", "sport"] and task.names == task.keys  # labels become names
        test = Counter(task.keys[i] for i in s.test.labels.tolist())
        train = Counter(task.keys[i] for i in s.train.labels.tolist())
        for name, n in counts.items():
            assert abs(test[name] - n / 5) <= 1, (fold, test)  # class proportions kept per fold
            assert test[name] + train[name] == n
        held += s.test.texts
    assert sorted(held) == sorted(t for _, t in rows)  # every row tested exactly once


def test_holdout_of_one_file_with_string_labels_is_stratified(tmp_path):
    counts = {"sport": 40, "politics": 30, "arts": 10}
    one_file(tmp_path, counts)
    split = {"test_fraction": 0.2, "val_fraction": 0.25}
    task = make_task(tmp_path, split=split, train="all.csv", test=None, label_column="category",
                     label_names=["Arts", "Politics", "Sport"])  # fmt: skip
    s = task.build_data()
    assert task.names == ["Arts", "Politics", "Sport"] and (len(s.train), len(s.val), len(s.test)) == (48, 16, 16)
    for part, share in ((s.test, 0.2), (s.val, 0.2), (s.train, 0.6)):
        got = Counter(part.labels.tolist())
        for index, n in enumerate(counts[k] for k in ("arts", "politics", "sport")):
            assert abs(got[index] - n * share) <= 1, (part, got)


def test_cross_validation_of_one_user_file_through_the_cli(tmp_path):
    one_file(tmp_path, {"sport": 12, "politics": 8})
    argv = cli(tmp_path, "data.train=all.csv", "data.test=null", "data.label_column=category", "split.folds=2",
               "data.label_names=null")  # fmt: skip
    assert run.main(argv) == 0
    res = results(only_run_dir(tmp_path / "runs"))
    assert len(res["folds"]) == 2 and res["extra"]["labels"] == ["politics", "sport"]
    assert all(sum(map(sum, f["confusion_matrix"])) == 10 for f in res["folds"])  # each fold tests half the file
    labels = json.loads((only_run_dir(tmp_path / "runs") / "labels.json").read_text())
    assert [x["value"] for x in labels] == ["politics", "sport"]
