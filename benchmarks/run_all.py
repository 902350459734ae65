"""Run every benchmark in a subprocess and write docs/performance.md from what they print.

Each benchmark prints its ratios last (the lines after its final blank line); this
script collects those lines into the summary table and keeps every full output
below it, with the machine, the commands and the date.

    python benchmarks/run_all.py                    # all benchmarks (several minutes on 2 cores)
    python benchmarks/run_all.py --quick            # fewer steps/repeats
    python benchmarks/run_all.py --only param_counts em_routing --out /tmp/perf.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent

TITLES = {
    "train_throughput": "Training throughput: full Sabour CapsNet, capsule-kit vs. the seed's layers, and its roofline",
    "threads": "Threads: our CapsNet training step at 1 and 2 torch threads (trainer.threads)",
    "train_compile": "trainer.compile: our CapsNet training step eager and through torch.compile",
    "routing": "DigitCaps forward+backward: DenseCaps + dynamic routing vs. the seed and einsum styles",
    "routing_bf16": "The same in bf16",
    "routing_em": "DigitCaps-sized EM routing vs. a broadcasting reference",
    "routing_attention": "DigitCaps-sized self-attention routing (Efficient-CapsNet) vs. a broadcasting reference",
    "routing_malloc": "Dynamic routing again, with glibc told to keep freed memory (both sides)",
    "em_routing": "EM routing forward+backward vs. a per-output-capsule reference",
    "param_counts": "Parameters vs. number of classes, per transform-sharing mode",
}

# the hand-written part of docs/performance.md, appended after the measured sections
STATIC = "\n" + (BENCH / "performance_notes.md").read_text()


def commands(quick: bool, threads: int) -> dict[str, list[str]]:
    """Benchmark name -> argv (helper scripts that are missing are skipped)."""
    t = ["--threads", str(threads)]
    steps = ["--steps", "2" if quick else "3", "--warmup", "1"]
    cmds = {
        "train_throughput": [*steps, "--rounds", "2", "--roofline", "--profile", *t],
        "threads": ["--variants", "ours", "--threads-sweep", "1", "2", *steps, "--rounds", "2" if quick else "3"],
        "train_compile": ["--variants", "ours", "compiled", *steps, "--rounds", "1" if quick else "2", *t],
        "routing": ["--repeats", "3" if quick else "5", "--batches", "64", "256", "--profile", *t],
        "routing_bf16": ["--dtype", "bf16", "--repeats", "3", *t],
        "routing_em": ["--routing", "em", "--repeats", "3", *t],
        "routing_attention": ["--routing", "attention", "--repeats", "3", *t],
        "routing_malloc": ["--repeats", "3" if quick else "5", *t],
        "em_routing": ["--batch", "8" if quick else "16", "--repeats", "3" if quick else "5", "--warmup", "1", *t],
        "param_counts": [],
    }
    scripts = {"threads": "train_throughput", "train_compile": "train_throughput"}
    script = lambda name: scripts.get(name, "routing" if name.startswith("routing") else name)  # noqa: E731
    return {name: [sys.executable, str(BENCH / f"{script(name)}.py"), *args] for name, args in cmds.items()}


def ratio_lines(stdout: str) -> list[str]:
    """The lines after the last blank line: where every benchmark prints its ratios."""
    lines = stdout.rstrip().splitlines()
    blanks = [i for i, line in enumerate(lines) if not line.strip()]
    return [line for line in lines[(blanks[-1] + 1 if blanks else 0) :] if line.strip()]


# glibc keeps freed blocks for reuse instead of returning them to the kernel (see "What limits the remaining gap")
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(4 << 30)}


def run(name: str, argv: list[str], timeout: int) -> dict:
    extra = MALLOC_ENV if name == "routing_malloc" else {}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    shown = "python " + shlex.join([str(Path(argv[1]).relative_to(REPO)), *argv[2:]])
    shown = " ".join(f"{k}={v}" for k, v in extra.items()) + (" " if extra else "") + shown
    print(f"running {shown}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
        out, ok = proc.stdout, proc.returncode == 0
        if not ok:
            out += f"\n[exit code {proc.returncode}]\n{proc.stderr[-2000:]}"
    except subprocess.TimeoutExpired as exc:
        out, ok = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""), False
        out += f"\n[timed out after {timeout} s]"
    wall = time.perf_counter() - t0
    print(f"  {wall:.0f} s, {'ok' if ok else 'FAILED'}", file=sys.stderr, flush=True)
    return {"name": name, "command": shown, "stdout": out, "ok": ok, "wall": wall}


def machine() -> dict[str, str]:
    model = platform.processor() or "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    mem = ""
    if Path("/proc/meminfo").exists():
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / 2**20:.0f} GiB RAM"
    return {
        "cpu": f"{model}, {os.cpu_count()} logical cores{mem}",
        "software": f"Python {platform.python_version()}, torch {torch.__version__}, {platform.platform()}",
        "cuda": torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else "none; every GPU figure is not measured (no GPU machine in this session)",
    }


def render(results: list[dict], info: dict[str, str], argv: list[str], loads: tuple[float, float], threads: int) -> str:
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cores = os.cpu_count() or 1
    out = [
        "# Performance and scale",
        "",
        f"Generated by `python benchmarks/run_all.py{' ' + shlex.join(argv) if argv else ''}` on {date}; "
        "rerun it to refresh this page on your machine.",
        "",
        f"- CPU: {info['cpu']}",
        f"- GPU: {info['cuda']}",
        f"- Software: {info['software']}; torch threads per benchmark process: {threads}",
        f"- Load average (1 min) before / after: {loads[0]:.1f} / {loads[1]:.1f} on {cores} cores"
        + (
            ": the machine was shared with other busy processes, so wall times are noisy. The benchmarks report "
            "medians and interleave or alternate the variants so that the load hits both alike"
            + (
                " and use one torch thread per process (with more threads than free cores every parallel op "
                "waits for its slowest thread)."
                if threads == 1
                else "."
            )
            if max(loads) > cores
            else ""
        ),
        "",
        "## Summary: the ratio lines each benchmark prints last",
        "",
        "| benchmark | result | command | wall |",
        "|---|---|---|---|",
    ]
    for r in results:
        lines = ratio_lines(r["stdout"]) if r["ok"] else ["FAILED (see output below)"]
        result = "<br>".join(line.replace("|", "\\|") for line in lines)
        out.append(f"| {r['name']} | {result} | `{r['command']}` | {r['wall']:.0f} s |")
    for r in results:
        out += ["", f"## {TITLES.get(r['name'], r['name'])}", "", f"`{r['command']}`", "", "```text"]
        out += [r["stdout"].rstrip(), "```"]
    out.append(STATIC)
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    p.add_argument("--threads", type=int, help="torch CPU threads for every benchmark (default: all cores, 1 if busy)")
    p.add_argument("--only", nargs="+", choices=list(TITLES), help="run only these benchmarks")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per benchmark")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "performance.md")
    args = p.parse_args()
    load_before, cores = os.getloadavg()[0], os.cpu_count() or 1
    # oversubscribed: one thread per process is faster and steadier (see train_throughput.default_threads)
    args.threads = args.threads or (1 if load_before > cores else cores)
    results = []
    for name, argv in commands(args.quick, args.threads).items():
        if args.only and name not in args.only:
            continue
        if not Path(argv[1]).exists():
            print(f"skipping {name}: {argv[1]} not found", file=sys.stderr)
            continue
        results.append(run(name, argv, args.timeout))
    text = render(results, machine(), sys.argv[1:], (load_before, os.getloadavg()[0]), args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}", file=sys.stderr)
    if not all(r["ok"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
