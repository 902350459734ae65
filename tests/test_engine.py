"""The training loop: mid-epoch checkpoints, SIGKILL, the non-finite guard, banner, plain logs, no per-step sync."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
from types import SimpleNamespace

import pytest
import torch

from capsule_kit import run
from capsule_kit.checkpoint import load_checkpoint, rng_state, set_rng_state
from capsule_kit.distributed import DistInfo
from capsule_kit.engine import LoopState, Trainer
from capsule_kit.layers import CPU_VOTE_BYTES, vote_limit
from capsule_kit.loaders import unwrap
from capsule_kit.meters import CheckpointClock, RunningSums, parse_every
from capsule_kit.progress import MetricsLog, Progress
from tests.helpers import REPO, only_run_dir, run_cli

TINY = [
    "model.name=capsnet_tiny",
    "split.val_size=null",
    "data.train_limit=48",
    "data.test_limit=32",
    "trainer.batch_size=16",
    "trainer.log_every=1",
    "trainer.eval_max_steps=1",
]  # fmt: skip  (no validation)
FAULTY = ["recipes/mnist.yaml", "task=tests.fault_tasks:FaultyDigits", *TINY, "trainer.progress=false"]


def train_lines(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r["kind"] == "train"]


def test_sigkill_mid_epoch_then_resume_is_bit_identical_without_duplicate_lines(tmp_path):
    args = [*FAULTY, "trainer.epochs=3", "trainer.checkpoint_every=2"]
    full = run_cli(*args, f"output_dir={tmp_path / 'a'}")
    assert full.returncode == 0, full.stderr
    killed = run_cli(*args, f"output_dir={tmp_path / 'b'}", env={"CK_KILL_AT_STEP": "6"})
    assert killed.returncode == -signal.SIGKILL
    part = only_run_dir(tmp_path / "b")
    ckpt = load_checkpoint(part / "checkpoints" / "last.pt")
    assert ckpt["loop"]["step"] == 4 and ckpt["loop"]["batch_in_epoch"] == 1  # mid-epoch 2
    assert train_lines(part) == [1, 2, 3, 4, 5]  # step 5 was logged after the checkpoint
    resumed = run_cli("--resume", str(part))
    assert resumed.returncode == 0, resumed.stderr
    a, b = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (only_run_dir(tmp_path / "a"), part))
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert train_lines(part) == list(range(1, 10)) == train_lines(only_run_dir(tmp_path / "a"))


def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    proc = run_cli(*FAULTY, "trainer.epochs=3", "trainer.checkpoint_every=2", f"output_dir={tmp_path}",
                   env={"CK_NAN_AT_STEP": "3"})  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    err = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(err) == 1 and "Traceback" not in proc.stderr
    assert "not finite" in err[0] and "at step 3" in err[0] and "last.pt" in err[0]
    run_dir = only_run_dir(tmp_path)
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert ckpt["loop"]["step"] == 2  # written before the bad step, never after
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert train_lines(run_dir) == [1, 2]  # no NaN line in metrics.jsonl


def test_banner_plan_honours_max_steps_and_logs_are_plain_lines_off_a_terminal(tmp_path):
    argv = ["recipes/mnist.yaml", *TINY, "data.train_limit=160", "trainer.epochs=50", "trainer.max_steps=4"]
    proc = run_cli(*argv, f"output_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    run_dir = only_run_dir(tmp_path)
    assert "\r" not in err  # stderr is a pipe: no progress-bar frames
    for line in ("device: cpu  threads", "model: 123,808 parameters", "data: train 160  test 32  (no validation split)",
                 "plan: 4 steps (1 epoch(s) x 10 batches, capped by max_steps 4)", f"run: {run_dir}",
                 f"report: {run_dir / 'report.html'}"):  # fmt: skip
        assert line in err, (line, err)
    assert "step 1/4  epoch 1/1  loss " in err  # the first plain progress line
    assert "epoch 1/1 (partial)  step 4  test_loss" in err and "val_" not in err
    assert "trained: 4 steps" in err and "checkpoints: last.pt" in err
    assert err.index("plan:") < err.index("step 1/4") < err.index("trained:")


def test_no_host_sync_per_training_step(tmp_path, monkeypatch):
    """Reads of tensor values from capsule-kit's own code (torch's Adam reads its CPU step counter)."""
    calls = {"n": 0}
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            caller = sys._getframe(1).f_code.co_filename
            calls["n"] += str(REPO) in caller and "site-packages" not in caller
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def syncs(steps: int) -> int:
        calls["n"] = 0
        out = tmp_path / str(steps)
        argv = [str(REPO / "recipes" / "mnist.yaml"), *TINY, "data.train_limit=160", "trainer.log_every=100",
                "trainer.progress=false", f"trainer.max_steps={steps}", f"output_dir={out}"]  # fmt: skip
        assert run.main(argv) == 0
        return calls["n"]

    assert syncs(2) == syncs(7)  # five more steps, not one more read of a device value
    assert torch.are_deterministic_algorithms_enabled()  # trainer.deterministic defaults on
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == ":4096:8"
    torch.use_deterministic_algorithms(False)


def test_running_sums_means_and_first_bad_step():
    sums = RunningSums(torch.device("cpu"))
    sums.add({"loss": torch.tensor(1.0), "acc": torch.tensor(0.5), "k": 2}, [torch.tensor(1.0)])
    sums.add({"loss": torch.tensor(3.0), "acc": torch.tensor(1.0), "k": 4}, [torch.tensor(float("inf"))])
    sums.add({"loss": torch.tensor(5.0), "acc": torch.tensor(0.0), "k": 0}, [torch.tensor(float("nan"))])
    assert sums.read() == pytest.approx({"loss": 3.0, "acc": 0.5, "k": 2.0})
    assert sums.bad_step() == 2 and sums.read() == {}


def test_checkpoint_every_steps_and_minutes(monkeypatch):
    assert parse_every("500") == (500, None) and parse_every(500) == (500, None)
    assert parse_every("10m") == (None, 600.0) and parse_every("30s") == (None, 30.0)
    assert parse_every("1.5h") == (None, 5400.0) and parse_every("off") == parse_every(0) == (None, None)
    clock_time = [100.0]
    monkeypatch.setattr("capsule_kit.meters.time.monotonic", lambda: clock_time[0])
    clock = CheckpointClock("2m")
    clock_time[0] = 219.0
    assert not clock.due(7)
    clock_time[0] = 220.0
    assert clock.due(8)
    clock.reset()
    assert not clock.due(9)
    assert [s for s in range(1, 10) if CheckpointClock(3).due(s)] == [3, 6, 9]
    with pytest.raises(Exception, match="checkpoint_every"):
        run.load_recipe(REPO / "recipes" / "mnist.yaml", ["trainer.checkpoint_every=10 minutes"])


def test_metrics_log_truncates_what_came_after_the_checkpoint(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl", True)
    log.write({"step": 1})
    size = log.size()
    log.write({"step": 2})
    log.truncate(size)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_plain_progress_lines_are_throttled(tmp_path):
    with (tmp_path / "log.txt").open("w") as f:
        bar = Progress(total=10, initial=0, epochs=1, enabled=True, live=True, stream=f)
        assert bar.bar is None  # a file is not a terminal
        bar.show(1, 1, {"loss": 0.5}, 10.0)
        bar.show(2, 1, {"loss": 0.4}, 10.0)  # within the interval: no line
        bar.interval = 0.0
        bar.show(3, 1, {"loss": 0.3}, 10.0)
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert [line.split("  ")[0] for line in lines] == ["step 1/10", "step 3/10"]


def test_rng_state_is_per_rank():
    torch.manual_seed(1)
    rank0 = rng_state()
    torch.manual_seed(2)
    rank1 = rng_state()
    set_rng_state({"ranks": [rank0, rank1]}, rank=1)
    assert torch.equal(torch.get_rng_state(), rank1["torch"])
    set_rng_state({"ranks": [rank0, rank1]}, rank=0)
    assert torch.equal(torch.get_rng_state(), rank0["torch"])
    set_rng_state({"ranks": [rank0]}, rank=3)  # more ranks than saved: rank 0's
    assert torch.equal(torch.get_rng_state(), rank0["torch"])


def test_empty_scaler_state_is_skipped_on_load(tmp_path):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=True)  # as fp16 on CUDA: an enabled scaler
    with pytest.raises(RuntimeError):
        scaler.load_state_dict({})  # what resuming a CPU checkpoint did
    fake = SimpleNamespace(model=model, opt=opt, sched=sched, scaler=scaler, sums=RunningSums(torch.device("cpu")),
                           metrics=MetricsLog(tmp_path / "m.jsonl", True))  # fmt: skip
    ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": {}, "loop": {**LoopState(step=5).__dict__}}  # fmt: skip
    Trainer.load_state(fake, ckpt)
    assert fake.state.step == 5 and scaler.get_scale() == 65536.0


def test_cuda_vote_budget_considers_free_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (800 << 20, 80 << 30))
    assert vote_limit(torch.device("cuda", 0), 2 << 30) == 100 << 20  # 1/8 of the free 800 MiB
    assert vote_limit(torch.device("cuda", 0), 50 << 20) == 50 << 20  # the budget still caps it
    assert vote_limit(torch.device("cpu"), 2 << 30) == CPU_VOTE_BYTES


def test_ddp_without_unused_parameter_search_and_compile_after_wrapping(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        cfg = SimpleNamespace(compile=True)
        plain = run.wrap_model(torch.nn.Linear(2, 2), cfg, torch.device("cpu"), DistInfo(world=2))
        ddp = plain._orig_mod  # torch.compile wraps the DDP module, not the other way round
        assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel) and not ddp.find_unused_parameters
        flagged = torch.nn.Linear(2, 2)
        flagged.find_unused_parameters = True  # a model that says some parameters can go unused
        ddp = run.wrap_model(flagged, SimpleNamespace(compile=False), torch.device("cpu"), DistInfo(world=2))
        assert ddp.find_unused_parameters and unwrap(ddp) is flagged
        assert isinstance(unwrap(plain), torch.nn.Linear)
    finally:
        dist.destroy_process_group()


def test_terminal_bar_counts_the_whole_run():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    bar = Progress(total=20, initial=5, epochs=1, enabled=True, live=True, stream=stream)
    bar.step(1)
    bar.bar.refresh()
    bar.close()
    frames = [f for f in stream.getvalue().split("\r") if "epoch" in f]
    assert frames and "epoch 1/1" in frames[-1] and "6/20" in frames[-1]  # max_steps=20: not the epoch's 600 batches


def test_digits_model_declares_unused_parameters_only_without_reconstruction_loss():
    def model(*overrides):
        cfg, task_cls = run.load_recipe(REPO / "recipes" / "mnist.yaml", ["model.name=capsnet_tiny", *overrides])
        return task_cls(cfg).build_model()

    assert model().find_unused_parameters is False  # decoder trained by the reconstruction loss
    assert model("loss.recon_weight=0").find_unused_parameters is True  # decoder gets no gradient
    assert model("loss.recon_weight=0", "model.decoder=false").find_unused_parameters is False
