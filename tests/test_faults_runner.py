"""Runner and checkpoint faults through the real CLI: one line, exit 2, no traceback, nothing lost (issue 15)."""

from __future__ import annotations

import gzip
import hashlib
import os
import resource
import shutil
import sys
from pathlib import Path

import pytest
import torch

from capsule_kit.checkpoint import load_checkpoint, save_checkpoint
from tests.helpers import REPO, TINY_MNIST, only_run_dir, results, run_cli

TINY = [*TINY_MNIST, "trainer.threads=1"]


def one_line(proc, code: int = 2) -> str:
    assert proc.returncode == code, proc.stderr[-2000:]
    text = proc.stderr.strip()
    assert "Traceback" not in text and "Exception ignored" not in text, text
    lines = text.splitlines()  # a failure after the start banner comes after the banner's lines
    assert [ln for ln in lines if ln.startswith("error")] == lines[-1:] and lines[-1].startswith("error: "), text
    return lines[-1]


def snapshot(run_dir: Path) -> dict[str, str]:
    """Hash of every file of a run (to show that a refused command changed nothing)."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A finished 1-epoch tiny MNIST run (3 steps)."""
    out = tmp_path_factory.mktemp("tiny") / "runs"
    proc = run_cli("recipes/mnist.yaml", *TINY, "trainer.epochs=1", f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr
    return only_run_dir(out)


def copy_run(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "runs" / run.name
    shutil.copytree(run, dst)
    return dst


def test_shape_changing_override_on_resume_changes_nothing(tiny_run, tmp_path):
    """Issue 15 item 2: the new model is refused before recipe.yaml/run.json are rewritten."""
    run = copy_run(tiny_run, tmp_path)
    before = snapshot(run)
    err = one_line(run_cli("--resume", str(run), "model.name=capsnet", "trainer.epochs=2"))
    assert "weights do not fit" in err and "shape mismatch" in err and "conv1.weight (16, 1, 9, 9)" in err, err
    assert snapshot(run) == before
    proc = run_cli("--resume", str(run), "trainer.epochs=2")  # the run still resumes as it was
    assert proc.returncode == 0, proc.stderr
    assert results(run)["steps"] == 6 and load_checkpoint(run / "checkpoints" / "last.pt")["loop"]["epoch"] == 2


def test_bad_output_dir_is_one_line(tmp_path):
    """Issue 15 item 8: output_dir a file, under a file, or not writable."""
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out, expected in (
        (a_file, "is a file"),
        (a_file / "runs", "is a file"),
        ("/proc/capsule_kit_runs", "output_dir"),
    ):
        err = one_line(run_cli("recipes/mnist.yaml", *TINY, "trainer.max_steps=1", f"output_dir={out}"))
        assert err.startswith("error: output_dir:") and expected in err, err
    assert a_file.read_text() == "x"
    err = one_line(run_cli("recipes", "--validate"))  # a folder given as the recipe (issue 15 item 14)
    assert "recipes is a folder" in err, err


def bad_checkpoints(folder: Path, good: Path) -> dict[str, Path]:
    """The probes of issue 15 items 9, 10 and 14, keyed by what the message must say."""
    folder.mkdir()
    empty = folder / "empty.pt"
    empty.write_bytes(b"")
    crafted = folder / "crafted.pt"
    torch.save({"format": "capsule-kit/1", "model": torch.ones(3)}, crafted)
    other = folder / "other.pt"
    ckpt = load_checkpoint(good)
    save_checkpoint(other, {**ckpt, "model": {"fc.weight": torch.ones(2, 2)}})
    no_model = folder / "no_model.pt"
    save_checkpoint(no_model, {k: v for k, v in ckpt.items() if k not in ("model", "format")})
    noise = folder / "noise.pt"
    noise.write_bytes(
        torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).byte().numpy().tobytes()
    )
    return {"empty file": empty, "'model' is Tensor": crafted, "unexpected (1): fc.weight": other,
            "no 'model' key": no_model, "not a checkpoint": noise}  # fmt: skip


def test_bad_checkpoints_on_eval_and_resume(tiny_run, tmp_path):
    """Issue 15 items 9, 10, 14: every bad checkpoint is one line through --eval and through --resume."""
    probes = bad_checkpoints(tmp_path / "bad", tiny_run / "checkpoints" / "last.pt")
    on_eval = ("empty file", "'model' is Tensor", "not a checkpoint")  # items 9 and 14
    on_resume = ("empty file", "unexpected (1): fc.weight", "no 'model' key")  # item 10
    for expected, path in ((k, probes[k]) for k in on_eval):
        err = one_line(run_cli("recipes/mnist.yaml", *TINY, f"output_dir={tmp_path / 'ev'}", "--eval", str(path)))
        assert expected in err and "refused" not in err, err
        assert not (tmp_path / "ev").exists() or not any((tmp_path / "ev").iterdir())  # no eval folder left
    for expected, path in ((k, probes[k]) for k in on_resume):
        run = tmp_path / "resume" / expected.replace("'", "").replace(" ", "_")[:20]
        shutil.copytree(tiny_run, run)
        shutil.copy(path, run / "checkpoints" / "last.pt")
        before = snapshot(run)
        err = one_line(run_cli("--resume", str(run), "trainer.epochs=2"))
        assert expected in err, err
        if expected.startswith("unexpected"):
            assert "missing" in err and "primary" in err, err  # the keys, not torch's cut-off header
        assert snapshot(run) == before


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/capsule_kit_pwned_faults",))


def test_refusal_names_the_global(tmp_path):
    """Issue 15 item 14: a code-carrying checkpoint is refused by the global's name; nothing runs."""
    path = tmp_path / "evil.pt"
    torch.save({"format": "capsule-kit/1", "model": Evil()}, path)
    err = one_line(run_cli("recipes/mnist.yaml", *TINY, "--eval", str(path)))
    assert "refused" in err and "system" in err, err
    assert not Path("/tmp/capsule_kit_pwned_faults").exists()


def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))  # an allocation past 8 GB fails, not the machine


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS")
def test_out_of_memory_names_batch_size_and_leaves_no_run_dir(tmp_path):
    """Issue 15 item 12: a batch that does not fit in memory."""
    out = tmp_path / "runs"
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "capsule_kit.run", "recipes/mnist.yaml", "trainer.batch_size=10000000",
         "trainer.progress=false", "trainer.threads=1", f"output_dir={out}"],
        cwd=REPO, capture_output=True, text=True, timeout=600, preexec_fn=limit_memory,
    )  # fmt: skip
    err = one_line(proc)
    assert "out of memory" in err and "trainer.batch_size=10000000" in err, err
    assert not out.exists() or not any(out.iterdir())


def test_mnist_label_out_of_range(tmp_path):
    """Issue 15 item 12: a label 12 in the MNIST test labels is named with its file and item."""
    from capsule_kit_tasks.digits.data import FILES, mnist_dir

    src, root = mnist_dir(None), tmp_path / "mnist"
    shutil.copytree(src, root)
    labels = root / FILES["test"][1]
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[8 + 5] = 12  # item 5
    labels.write_bytes(gzip.compress(bytes(raw)))
    out = tmp_path / "runs"
    err = one_line(
        run_cli("recipes/mnist.yaml", *TINY, "trainer.max_steps=1", f"data.root={tmp_path}", f"output_dir={out}")
    )
    assert "t10k-labels-idx1-ubyte.gz" in err and "label 12 at item 5" in err, err
    assert not out.exists() or not any(out.iterdir())


TASK_FILE = '''
import os, signal
from capsule_kit_tasks.digits.task import DigitsTask

class SignalInPictures(DigitsTask):
    """Ctrl-C while the pictures are drawn."""
    def pictures(self, *args):
        os.kill(os.getpid(), signal.SIGINT)
        return super().pictures(*args)

class SignalInTest(DigitsTask):
    """Ctrl-C during the last evaluation, once (a marker file remembers it)."""
    def metrics(self, outputs):
        marker = os.path.join(os.path.dirname(__file__), "sent")
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGINT)
        return super().metrics(outputs)
'''


def test_ctrl_c_after_training_loses_nothing(tmp_path):
    """Issue 15 item 7: a signal while testing or drawing never says 'nothing to resume' and loses no result."""
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "sigtasks.py").write_text(TASK_FILE)
    out = tmp_path / "runs"
    args = (str(REPO / "recipes" / "mnist.yaml"), *TINY, "trainer.max_steps=2", f"output_dir={out}")
    proc = run_cli(*args, "task=sigtasks:SignalInPictures", env={"PYTHONPATH": str(tmp_path / "user")})
    assert proc.returncode == 0 and "nothing to resume" not in proc.stderr, proc.stderr  # finished anyway
    assert "Exception ignored" not in proc.stderr and "complete" in proc.stderr
    run = only_run_dir(out)
    assert results(run)["extra"] and (run / "reconstructions.png").exists()

    out2 = tmp_path / "runs2"  # interrupted before the pictures: results.json kept, the line says what to run
    proc = run_cli(*args[:-1], f"output_dir={out2}", "task=sigtasks:SignalInTest", cwd=tmp_path / "user")
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr
    err = proc.stderr.strip().splitlines()[-1]  # after the epoch line, one line
    run = only_run_dir(out2)
    assert f"capsule-kit --resume {run}" in err and "results.json written" in err, err
    assert results(run)["steps"] == 2 and not (run / "reconstructions.png").exists()
    proc = run_cli("--resume", str(run))  # from the repo (another folder): the task module is found again
    assert proc.returncode == 0, proc.stderr
    assert (run / "reconstructions.png").exists() and results(run)["extra"]
