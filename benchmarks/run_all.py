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

STATIC = """
## What limits the remaining gap

- **Our dynamic routing vs. the memory-traffic floor.** The `--profile` listing under the
  routing benchmark shows where our step goes: batched matrix products whose inner sizes are
  tiny (D_i = 8 for the votes and their weight gradient, a single row for each routing
  contraction). Each is one pass over the votes, as the floor assumes, but such small products
  run well below the copy bandwidth, so the step stays several times above the floor. Closing
  that needs a fused kernel (votes computed, routed and reduced in one pass, e.g. Triton on a
  GPU), not more torch operations.
- **Why the seed style is slow on CPU.** Much of its time is page faults: each of its ~1 GiB
  broadcast temporaries is a fresh `mmap` that the kernel zero-fills on first touch. The
  `routing_malloc` run shows the same comparison with `MALLOC_MMAP_THRESHOLD_` and
  `MALLOC_TRIM_THRESHOLD_` raised so that glibc reuses freed blocks: the seed gets several times
  faster there and the ratio shrinks accordingly, while ours barely changes (it never allocates
  such blocks). The default-allocator figure is what a user gets; both are printed.
- **bf16 on a CPU.** Without native bf16 matrix instructions (this EPYC has none), bf16 batched
  products are emulated and our bf16 step is slower than our fp32 one (see `routing_bf16`):
  `trainer.precision: bf16` is for GPUs (and CPUs with AMX/AVX512-BF16), not for this machine.

## Memory: votes within a budget

`DenseCaps` never materialises more than a budget of votes ([B, N_i, N_o, D_o]) at
once: when the batch's votes exceed it, the batch is computed and routed in
chunks, which gives the same results (routing is per sample; tests/test_scale.py
checks dynamic, attention and EM routing against the unchunked layer). The budget
is `$CAPSULE_KIT_VOTE_BUDGET` (bytes, or `2GiB`, `512MiB`, ...; default 2 GiB) on
every device; on CPU chunks are also kept at most 16 MiB, which is faster there
(fewer page faults, see benchmarks/routing.py), and on CUDA at most 1/8 of the free
GPU memory. A layer's `max_vote_bytes` argument
overrides both. The output capsules are never split into chunks: dynamic routing's
softmax couples them, so that would change the result. A single sample whose votes
exceed the budget is routed alone, with a warning.

```bash
CAPSULE_KIT_VOTE_BUDGET=512MiB python -m capsule_kit.run recipes/mnist.yaml
```

## Many classes: parameters that grow slowly

`model.shared: positions` (one transform per primary capsule type and class) or
`model.shared: inputs` (one per class) make the class-capsule layer grow by 4,096 or
128 parameters per class instead of 147,456 (table above).

## Large data: streaming datasets under torchrun

A task's training split may be an `IterableDataset` (a generator, a file reader, or
a Hugging Face `datasets.IterableDataset` from `load_dataset(..., streaming=True)`).
The engine gives it no sampler; under torchrun every rank reads its own part
(`capsule_kit.distributed.shard_iterable`): Hugging Face streams are split with
`datasets.distributed.split_dataset_by_node` (whole shards per rank when the number
of shards is a multiple of the world size), other iterables take every
`world`-th item, dropping a last incomplete round so that all ranks run the same
number of steps. Hugging Face parts can differ in length: set `trainer.max_steps`
so that all ranks stop together. Shuffle a stream in the task
(`dataset.shuffle(seed=..., buffer_size=...)`): the engine calls the stream's
`set_epoch(epoch)` before every epoch, so it is reshuffled each epoch; splitting among DataLoader workers
(`trainer.num_workers`) is the dataset's job (`torch.utils.data.get_worker_info`),
as PyTorch documents. `--resume` restores weights, optimizer and counters, and
reads a stream again from its start.

## The GPU path: what is checked, and how

**No GPU machine was available in this session: the GPU path is tested on CPU with
faked CUDA only** (`tests/test_device.py` fakes `torch.cuda.is_available`/`set_device`,
`tests/test_engine.py` fakes `torch.cuda.mem_get_info`, `tests/test_autocast.py` runs
the precision-sensitive routings under CPU bf16 autocast). No CUDA figure on this page
was measured. On a GPU machine, run

```bash
scripts/gpu_check.sh            # about 5 minutes on one GPU
scripts/gpu_check.sh --dry-run  # the same checks on CPU with tiny settings (tests/test_gpu_check.py runs it)
```

It trains every recipe for 10 steps with `device: auto` at fp32, bf16 and fp16 (exit 0 and
finite losses), MNIST with `trainer.compile=true`, compares dynamic, EM and attention
routing outputs and gradients on CUDA with CPU in fp64, compares a 2-epoch run with
1 epoch + `--resume` (largest weight difference), runs the GPU-relevant tests and
times one MNIST epoch (seconds and images/s). Record its figures here.

What the loop does for the GPU (all of it also runs on CPU):

- **No host sync per step.** Loss and logged values are summed on the device and read
  once per `trainer.log_every` steps (the logged numbers are means over those steps);
  evaluation sums its loss on the device and copies outputs with `non_blocking=True`,
  waiting once at the end of the pass. Tasks return tensors in `step()["log"]`.
- **Loaders**: on CUDA `pin_memory=True`, and with `trainer.num_workers > 0` persistent workers.
- **DDP** without `find_unused_parameters` (a model whose parameters can go unused in a
  step sets `find_unused_parameters = True` as an attribute); `torch.compile` is applied
  after DDP wrapping.
- **Precision**: EM routing runs in fp32 with autocast off (its e-step divides by variances
  down to `eps`: fp16 would overflow); dynamic routing's logits are fp32 and its weighted
  sum runs in the votes' dtype with autocast off (declared with `custom_fwd/custom_bwd`).
  A checkpoint without GradScaler state (CPU, fp32) resumes with fp16 on CUDA.
- **Vote chunks** on CUDA are at most 1/8 of the free GPU memory (`torch.cuda.mem_get_info`)
  and the vote budget.
- **Determinism**: `trainer.deterministic: true` (the default) sets
  `torch.use_deterministic_algorithms(True, warn_only=True)`, cuDNN deterministic with
  benchmark off and `CUBLAS_WORKSPACE_CONFIG=:4096:8` (set by the runner before CUDA
  starts). On CPU resume is bit-identical (tests/test_runner.py, tests/test_engine.py,
  max difference 0.0). On CUDA in deterministic mode the same is expected (0.0, to be
  confirmed by `gpu_check.sh`); ops without a deterministic CUDA kernel (some PyG
  scatters in the graph task) warn once, and for them, or with `deterministic: false`
  (faster: cuDNN autotuning, atomic scatters), expect differences of float rounding
  (about 1e-6 relative in fp32) that can grow over training.
- **Per-rank RNG**: every rank's Python/numpy/torch/CUDA generator state goes into
  `last.pt` (gathered to rank 0); each rank restores its own, and only its own CUDA
  device's generator, so a run resumes exactly under torchrun and on a machine with fewer GPUs.

## More than one machine

One process per GPU on each machine, all started with the same command
(`HOST` is the first machine's address; use the same port everywhere):

```bash
torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
    -m capsule_kit.run RECIPE.yaml
```

`trainer.batch_size` is per process, so the global batch is 16 times larger here;
scale `trainer.lr` with it if needed. Rank 0 writes the run directory, so
`output_dir` should be on storage that rank 0 can write (checkpoints for
`--resume` are read by every rank: a shared file system is simplest). On CPUs the
gloo backend is used, on GPUs nccl.
"""


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
