"""Smoke and speed check of the GPU path in about 5 minutes (``scripts/gpu_check.sh``).

On a GPU machine (``trainer.device: auto`` picks CUDA):

1. every recipe for 10 steps at fp32, bf16 and fp16 (exit 0 and finite logged losses);
2. the MNIST recipe with ``trainer.compile=true``;
3. routing outputs and gradients on the device against CPU, in fp64 (dynamic, EM, attention);
4. a 2-epoch run against 1 epoch + ``--resume`` (largest weight difference; 0 in deterministic mode);
5. the GPU-relevant tests (``pytest`` picks CUDA through ``device: auto``);
6. one MNIST epoch (Sabour CapsNet, batch 100): seconds and images/s.

``--dry-run`` does the same on CPU with tiny settings (1 step, fp32 for most recipes, no compile,
a few MNIST steps) in under 2 minutes, so the script itself is tested where no GPU is.
Prints one line per check and a JSON summary (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from capsule_kit import run  # noqa: E402
from capsule_kit.checkpoint import load_checkpoint  # noqa: E402
from capsule_kit.config import read_yaml  # noqa: E402
from capsule_kit.routing import build  # noqa: E402

QUICK = {  # per task: overrides that keep a smoke run small (data limits, one fold)
    "digits": ["data.train_limit=2000", "data.test_limit=200", "data.test_pairs=200"],
    "graphs": ["split.folds=1"],
    "points": ["data.train_limit=64", "data.test_limit=32"],
}
DRY = {  # dry run: one recipe per domain, tiny models and data, on CPU
    "mnist": ["model.name=capsnet_tiny", "data.train_limit=64", "data.test_limit=32", "trainer.batch_size=16"],
    "graph_cls": ["split.folds=1", "trainer.eval_max_steps=1"],
    "points_tiny": [],
    "text_trec": ["data.train_limit=64"],
}
GPU_TESTS = ["tests/test_device.py", "tests/test_autocast.py", "tests/test_routing.py", "tests/test_routing_em.py",
             "tests/test_runner.py::test_resume_after_epoch_equals_uninterrupted"]  # fmt: skip


def quiet_main(argv: list[str]) -> tuple[int, str]:
    """``capsule_kit.run.main`` with its stdout/stderr captured; returns (exit code, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = run.main(argv)
    return code, err.getvalue()


def train_losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "train"]


def one_run(recipe: Path, out: Path, extra: list[str], quick: bool = True) -> dict:
    """Train a recipe briefly; exit code, finite losses, seconds."""
    task = read_yaml(recipe)["task"]
    t0 = time.perf_counter()
    code, err = quiet_main([str(recipe), *(QUICK.get(task, []) if quick else []), *extra, "trainer.progress=false",
                            "trainer.eval_max_steps=1", f"output_dir={out}"])  # fmt: skip
    dirs = [p for p in out.iterdir() if p.is_dir()] if out.exists() else []
    losses = train_losses(dirs[0]) if code == 0 and dirs else []
    ok = code == 0 and bool(losses) and all(math.isfinite(v) for v in losses)
    return {"ok": ok, "code": code, "seconds": round(time.perf_counter() - t0, 1),
            "error": "" if ok else (err.strip().splitlines() or ["no loss logged"])[-1][:200]}  # fmt: skip


def check_recipes(work: Path, dry: bool) -> dict:
    """Every recipe: 10 steps at fp32, bf16 and fp16 (dry run: one tiny recipe per domain, 1 step on CPU)."""
    results = {}
    recipes = [REPO / "recipes" / f"{k}.yaml" for k in DRY] if dry else sorted((REPO / "recipes").glob("*.yaml"))
    for recipe in recipes:
        for prec in ["fp32", "bf16", "fp16"] if not dry or recipe.stem == "mnist" else ["fp32"]:
            name = f"{recipe.stem}/{prec}"
            extra = [f"trainer.max_steps={1 if dry else 10}", f"trainer.precision={prec}", "trainer.log_every=1"]
            extra += ["trainer.device=cpu", *DRY[recipe.stem]] if dry else []  # GPU machine: device auto
            results[name] = one_run(recipe, work / name.replace("/", "-"), extra, quick=not dry)
            report(name, results[name])
    return results


def check_compile(work: Path, dry: bool) -> dict:
    if dry:
        return {"ok": True, "skipped": "dry run (no compiler needed)"}
    res = one_run(REPO / "recipes" / "mnist.yaml", work / "compile", ["trainer.max_steps=10", "trainer.compile=true"])
    report("mnist/compile", res)
    return res


def check_routing(device: torch.device) -> dict:
    """Max |device - CPU| of poses and vote/activation gradients, fp64."""
    out = {}
    for name, kwargs in {"dynamic": {}, "em": {"num_out": 10}, "attention": {"num_in": 32, "num_out": 10}}.items():
        torch.manual_seed(0)
        routing = build(name, **kwargs).double()
        votes = torch.randn(4, 32, 10, 16, dtype=torch.float64)
        acts = torch.rand(4, 32, dtype=torch.float64)
        results = []
        for dev in (torch.device("cpu"), device):
            r = routing.to(dev)
            v, a = votes.to(dev).requires_grad_(), acts.to(dev).requires_grad_()
            routed = r(v, a)
            (routed.poses.square().sum() + routed.activations.sum()).backward()
            results.append([t.detach().cpu() for t in (routed.poses, routed.activations, v.grad, a.grad)])
        diff = max(float((x - y).abs().max()) for x, y in zip(*results))
        out[name] = {"ok": diff < 1e-9, "max_abs_diff": diff}
        report(f"routing {name} {device.type} vs cpu fp64", out[name])
    return out


def check_resume(work: Path, dry: bool) -> dict:
    tiny = [
        "model.name=capsnet_tiny",
        "data.train_limit=96" if dry else "data.train_limit=3200",
        "data.test_limit=32",
        "trainer.batch_size=32",
        "trainer.progress=false",
        "trainer.eval_max_steps=1",
        "trainer.schedule=exponential",  # more epochs on resume: a cosine's horizon would move
    ]
    tiny += ["trainer.device=cpu"] if dry else []
    recipe = str(REPO / "recipes" / "mnist.yaml")
    quiet_main([recipe, *tiny, "trainer.epochs=2", f"output_dir={work / 'full'}"])
    quiet_main([recipe, *tiny, "trainer.epochs=1", f"output_dir={work / 'part'}"])
    part = next((work / "part").iterdir())
    code, _ = quiet_main(["--resume", str(part), "trainer.epochs=2"])
    a = load_checkpoint(next((work / "full").iterdir()) / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(part / "checkpoints" / "last.pt")["model"]
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    res = {"ok": code == 0 and diff == 0.0, "max_abs_weight_diff": diff}
    report("resume 2 epochs = 1 + resume", res)
    return res


def check_tests(dry: bool) -> dict:
    tests = ["tests/test_autocast.py"] if dry else GPU_TESTS
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", *tests], cwd=REPO, capture_output=True, text=True
    )
    failed = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    res = {"ok": proc.returncode == 0, "exit": proc.returncode, "failed": "; ".join(failed)[:300]}
    report("pytest " + " ".join(tests), res)
    return res


def check_speed(work: Path, dry: bool) -> dict:
    """One MNIST epoch (dry run: 3 tiny steps)."""
    extra = ["trainer.max_steps=3", *DRY["mnist"]] if dry else ["trainer.max_steps=600", "trainer.batch_size=100"]
    extra += ["trainer.progress=false", "trainer.eval_max_steps=1", "data.test_limit=100"]
    code, _ = quiet_main([str(REPO / "recipes" / "mnist.yaml"), *extra, f"output_dir={work / 'speed'}"])
    res = json.loads((next((work / "speed").iterdir()) / "results.json").read_text()) if code == 0 else {}
    rate = res.get("train_examples_per_s")
    out = {"ok": code == 0, "train_seconds": res.get("train_time_s"), "images_per_s": rate and round(rate, 1),
           "steps": res.get("steps")}  # fmt: skip
    report("MNIST epoch (capsnet_tiny, dry run)" if dry else "MNIST epoch (Sabour CapsNet, batch 100)", out)
    return out


def report(name: str, res: dict) -> None:
    shown = "  ".join(f"{k} {v}" for k, v in res.items() if k != "ok" and v not in ("", None))
    print(f"{'ok  ' if res.get('ok') else 'FAIL'} {name}  {shown}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny settings (< 2 minutes): checks the script")
    p.add_argument("--out", type=Path, help="write the JSON summary here")
    args = p.parse_args(argv)
    device = torch.device("cpu" if args.dry_run else "cuda" if torch.cuda.is_available() else "cpu")
    if not args.dry_run and device.type != "cuda":
        print("no CUDA device: run with --dry-run to check the script on CPU", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)"
    print(f"gpu_check on {name}, torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work, t0 = Path(tmp), time.perf_counter()
        summary = {
            "device": name,
            "recipes": check_recipes(work / "recipes", args.dry_run),
            "compile": check_compile(work, args.dry_run),
            "routing": check_routing(device),
            "resume": check_resume(work / "resume", args.dry_run),
            "tests": check_tests(args.dry_run),
            "speed": check_speed(work, args.dry_run),
        }
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    bad = [k for k, v in flatten(summary) if k.endswith(".ok") and v is False]
    print(json.dumps(summary, indent=1) if args.out is None else f"summary: {args.out}")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))
    print(f"{'all ok' if not bad else 'FAILED: ' + ', '.join(bad)} in {summary['seconds']} s", flush=True)
    return 0 if not bad else 1


def flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in d.items():
        out += flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]
    return out


if __name__ == "__main__":
    sys.exit(main())
