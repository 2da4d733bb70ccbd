"""Training speed, memory and accuracy of the full-catalog loss: dense fp32 vs chunked fp32 vs
chunked bf16 (whole step, or the loss alone) vs the default (``precision: auto``,
``loss_impl: auto``: ``models.precision``), for CORE-ave, CORE-trm and CORE-HN, in one run.

    python benchmarks/bench_train.py --dataset tmall --data-dir path/to/datasets --seeds 3
    python benchmarks/bench_train.py --dataset tmall --data-dir path/to/datasets --limit-rows 20000

Every (seed, model, configuration) trains in its own spawned process, so that the peak RSS printed
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``; on CUDA also the peak of allocated device memory)
is that run's alone. Runs are interleaved (seed, then model, then configuration), so that a
machine shared with other work slows every configuration alike; the 1-minute load average is
printed with each run. Per configuration the summary gives the mean training time of an epoch,
the validation time, the peak RSS, and the valid R@20 / MRR@20 after the last epoch (mean over
seeds, and the largest difference from dense fp32 over the seeds), then the speed-up of chunked
bf16 over dense fp32 in epoch CPU time (process time, all threads: less sensitive to other work
on the machine) and in epoch wall time, the default's ratio, and, with 3 seeds or more, each
configuration's seed-paired difference from dense fp32 with its 95% confidence interval.
Chunked bf16 runs by default only where bf16 matrix products are native (a GPU, or a CPU with
AMX or AVX-512 BF16: ``models.trainer.native_bf16``); elsewhere it is left out, with a note, and
the speed-ups are chunked fp32's. The first line names the processor and torch's CPU capability.

Where an epoch's time goes is measured separately (``--profile-batches`` batches per model, for
dense fp32 and for the fastest chunked configuration run) with timers around each phase of the
trainer's step (process CPU
time by default, wall-clock time with ``--profile-clock wall``):
data (slicing the batch), forward without the loss (encoder, table dropout and normalisation),
the loss's forward (``catalog_loss``; the chunked one computes its gradients here), the loss's
backward (from ``backward()`` until the gradients of its inputs exist), the rest of the backward
(encoder, table) and the optimizer (``zero_grad`` + Adam's step). On CUDA each phase ends with a
synchronisation.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402

import models.core  # noqa: E402
from data import load_dataset  # noqa: E402
from models.precision import device_label  # noqa: E402
from models.trainer import Trainer, cpuinfo_field, native_bf16  # noqa: E402

# label -> config keys; the first is the reference of every comparison; "default" is the
# registry's defaults (precision auto, loss_impl auto, bf16_scope all).
CONFIGS = {
    "dense fp32": {"loss_impl": "dense", "precision": "fp32"},
    "chunked fp32": {"loss_impl": "chunked", "precision": "fp32"},
    "chunked bf16": {"loss_impl": "chunked", "precision": "bf16", "bf16_scope": "all"},
    "bf16 loss": {"loss_impl": "chunked", "precision": "bf16", "bf16_scope": "loss"},
    "default": {},
}
REFERENCE, FAST, FAST_FP32, DEFAULT = "dense fp32", "chunked bf16", "chunked fp32", "default"
BF16_ONLY = ("chunked bf16", "bf16 loss")  # left out where bf16 is not native
PHASES = ("data", "forward", "loss fwd", "loss bwd", "backward", "optimizer")


def _dataset(args: argparse.Namespace):
    dataset = load_dataset(args.dataset, args.data_dir).without_test()
    if args.limit_rows:
        dataset = dataclasses.replace(
            dataset, train=dataset.train.subset(slice(0, args.limit_rows))
        )
    return dataset


def _trainer(args: argparse.Namespace, dataset, model: str, label: str, seed: int) -> Trainer:
    config = {"model": model, "epochs": args.epochs, "seed": seed, **CONFIGS[label]}
    return Trainer(config, dataset, device=args.device, num_threads=args.threads)


def bf16_support(device: str) -> str:
    """What bf16 matrix products run on here, for the ratio line: the CPU flags that make them
    native (AMX, AVX-512 BF16), or "none"; a GPU's bf16 support."""
    if device.startswith("cuda"):
        return "CUDA bf16" if torch.cuda.is_bf16_supported() else "no CUDA bf16"
    flags = (cpuinfo_field("flags") or "").split()
    native = [flag for flag in ("amx_bf16", "avx512_bf16") if flag in flags]
    return ", ".join(native) if native else "none (bf16 converted to fp32)"


def _hardware(device: str) -> str:
    """The processor and the vector ISA torch's CPU kernels use (bf16 pays off only with native
    bf16 matrix units: AMX or AVX-512 BF16; on AVX2 bf16 products are converted to fp32), or
    the GPU's name."""
    if device.startswith("cuda"):
        return device_label(torch.device(device))
    return (f"{device_label(torch.device('cpu'))}, torch CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}")


def _peak_memory(device: str) -> dict:
    peak = {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if device.startswith("cuda"):
        peak["peak_device_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return peak


def _run(args: argparse.Namespace, model: str, label: str, seed: int) -> dict:
    dataset = _dataset(args)
    trainer = _trainer(args, dataset, model, label, seed)
    train_epoch, cpu_seconds = trainer._train_epoch, []

    def timed_train_epoch() -> float:
        start = time.process_time()
        value = train_epoch()
        cpu_seconds.append(time.process_time() - start)
        return value

    trainer._train_epoch = timed_train_epoch
    epochs = [trainer.run_epoch() for _ in range(args.epochs)]
    last = epochs[-1]
    return {
        "model": model,
        "label": label,
        "seed": seed,
        "train_rows": len(dataset.train),
        "valid_rows": len(dataset.valid),
        "epoch_s": sum(e["train_time"] for e in epochs) / len(epochs),
        "epoch_cpu_s": sum(cpu_seconds) / len(cpu_seconds),
        "eval_s": sum(e["epoch_time"] - e["train_time"] for e in epochs) / len(epochs),
        "recall_20": last["valid_recall_20"],
        "mrr_20": last["valid_mrr_20"],
        "loss": last["train_loss"],
        "load": os.getloadavg()[0],
        "resolved": f"{trainer.precision}, {trainer.loss_impl}",
        **_peak_memory(args.device),
    }


class _Mark(torch.autograd.Function):
    """Identity whose backward records when the gradient of its input arrives."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, log: list, clock) -> torch.Tensor:
        ctx.log, ctx.clock = log, clock
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        ctx.log.append(ctx.clock())
        return grad, None, None


def _profile(args: argparse.Namespace, model: str, label: str) -> dict:
    """Seconds per batch in each of ``PHASES`` (see the module docstring), the trainer's step
    replayed with timers for ``args.profile_batches`` batches after one warm-up batch."""
    dataset = _dataset(args)
    trainer = _trainer(args, dataset, model, label, args.seed)
    device = trainer.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    clock = time.perf_counter if args.profile_clock == "wall" else time.process_time
    loss_time, marks = [0.0], []
    catalog_loss = models.core.catalog_loss

    def timed_loss(query, table, *rest, **options):
        query, table = _Mark.apply(query, marks, clock), _Mark.apply(table, marks, clock)
        sync()
        start = clock()
        loss = catalog_loss(query, table, *rest, **options)
        sync()
        loss_time[0] += clock() - start
        return loss

    models.core.catalog_loss = timed_loss
    rows = trainer._split_rows("train")
    size = trainer.config["batch_size"]
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(rows))).to(device)
    bf16 = trainer.precision == "bf16" and trainer.config["bf16_scope"] == "all"
    trainer.model.train()
    totals = dict.fromkeys(PHASES, 0.0)
    n_batches = min(args.profile_batches + 1, -(-len(rows) // size))
    for batch in range(n_batches):
        loss_time[0], marks[:] = 0.0, []
        sync()
        t0 = clock()
        items, targets = rows.batch(order[batch * size : (batch + 1) * size])[:2]
        sync()
        t1 = clock()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = trainer.model(items, targets)
        loss.item()
        t2 = clock()
        trainer.optimizer.zero_grad(set_to_none=True)
        t3 = clock()
        loss.backward()
        sync()
        t4 = clock()
        trainer.optimizer.step()
        sync()
        t5 = clock()
        if batch == 0:
            continue  # warm-up
        loss_bwd = max(marks) - t3 if marks else 0.0
        for phase, seconds in zip(
            PHASES,
            (t1 - t0, t2 - t1 - loss_time[0], loss_time[0], loss_bwd, t4 - t3 - loss_bwd,
             t5 - t4 + t3 - t2),
            strict=True,
        ):
            totals[phase] += seconds
    models.core.catalog_loss = catalog_loss
    n = n_batches - 1  # after the warm-up batch
    return {"model": model, "label": label, "batches": n, "load": os.getloadavg()[0],
            **{phase: seconds / max(n, 1) for phase, seconds in totals.items()}}


def _op_table(args: argparse.Namespace, model: str, label: str) -> str:
    """torch.profiler's per-op table (self CPU time, the ``args.op_table`` costliest ops) of a few
    training steps of ``label``: which matmuls, norms, softmaxes, dropouts and dtype conversions
    an epoch's time goes to (``aten::to`` / ``aten::copy_`` are the conversions)."""
    from torch.profiler import ProfilerActivity, profile

    dataset = _dataset(args)
    trainer = _trainer(args, dataset, model, label, args.seed)
    rows = trainer._split_rows("train")
    size = trainer.config["batch_size"]
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(rows))).to(trainer.device)
    n = -(-len(rows) // size)
    trainer._train_step(rows, order[:size], 0, n)  # warm-up
    activities = [ProfilerActivity.CPU] + (
        [ProfilerActivity.CUDA] if trainer.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for batch in range(1, 4):
            index = order[(batch % n) * size : (batch % n + 1) * size]
            trainer._train_step(rows, index, batch, n)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.op_table)


def _in_process(context, function, *arguments):
    with context.Pool(1) as pool:
        return pool.apply(function, arguments)


def _summary(results: list[dict], models_: list[str], labels: list[str], fast: str,
             device: str = "cpu") -> list[str]:
    lines = []
    seeds = sorted({r["seed"] for r in results})
    header = (f"{'model':>5} {'configuration':<13} {'epoch s':>8} {'CPU s':>7} {'valid s':>8} "
              f"{'peak RSS GiB':>12} {'R@20':>6} {'MRR@20':>6}")
    if len(seeds) > 1:
        header += f" {'max |diff| vs ' + REFERENCE + ' (R@20 / MRR@20)':>40}"
    lines.append(header)
    speedups = {}
    for model in models_:
        by_label = {
            label: [r for r in results if r["model"] == model and r["label"] == label]
            for label in labels
        }
        reference = {r["seed"]: r for r in by_label.get(REFERENCE, [])}
        for label, runs in by_label.items():
            if not runs:
                continue
            mean = {key: float(np.mean([r[key] for r in runs]))
                    for key in ("epoch_s", "epoch_cpu_s", "eval_s", "peak_rss_gib", "recall_20",
                                "mrr_20")}
            line = (f"{model:>5} {label:<13} {mean['epoch_s']:8.1f} {mean['epoch_cpu_s']:7.1f} "
                    f"{mean['eval_s']:8.1f} "
                    f"{mean['peak_rss_gib']:12.2f} {100 * mean['recall_20']:6.2f} "
                    f"{100 * mean['mrr_20']:6.2f}")
            if len(seeds) > 1 and reference:
                diffs = [
                    max(abs(r[m] - reference[r["seed"]][m]) for r in runs if r["seed"] in reference)
                    for m in ("recall_20", "mrr_20")
                ]
                line += f" {100 * diffs[0]:>29.2f} / {100 * diffs[1]:.2f}"
            lines.append(line)
        quick, ref = by_label.get(fast), by_label.get(REFERENCE)
        if quick and ref:
            speedups[model] = tuple(
                np.mean([r[key] for r in ref]) / np.mean([r[key] for r in quick])
                for key in ("epoch_s", "epoch_cpu_s")
            )
    if speedups:
        lines.append(f"{fast} vs {REFERENCE}, epoch CPU time: "
                     + ", ".join(f"{m} {s[1]:.2f}x" for m, s in speedups.items()))
        lines.append(f"speedup vs {REFERENCE} ({fast}): "
                     + ", ".join(f"{m} {s[0]:.2f}x" for m, s in speedups.items()))
    defaults = {m: [r for r in results if r["model"] == m and r["label"] == DEFAULT]
                for m in models_}
    if all(defaults.values()) and DEFAULT in labels and REFERENCE in labels:
        parts = []
        for model, runs in defaults.items():
            ref = [r for r in results if r["model"] == model and r["label"] == REFERENCE]
            ratio = np.mean([r["epoch_s"] for r in ref]) / np.mean([r["epoch_s"] for r in runs])
            parts.append(f"{model} {ratio:.2f}x ({runs[0]['resolved']})")
        lines.append(f"default vs {REFERENCE}, epoch wall time, bf16 on this machine: "
                     f"{bf16_support(device)}: " + ", ".join(parts))
    lines.extend(_paired(results, models_, labels))
    return lines


def _paired(results: list[dict], models_: list[str], labels: list[str]) -> list[str]:
    """Per model and configuration, the valid R@20 / MRR@20 difference from dense fp32 paired by
    seed: its mean, the 95% confidence interval of that mean (paired t, ``scipy.stats.ttest_rel``)
    and, as the scale it is read against, the standard deviation of dense fp32 over the seeds.
    Empty with fewer than 3 shared seeds."""
    lines = []
    for model in models_:
        reference = {r["seed"]: r for r in results
                     if r["model"] == model and r["label"] == REFERENCE}
        for label in labels:
            if label == REFERENCE:
                continue
            runs = {r["seed"]: r for r in results if r["model"] == model and r["label"] == label}
            seeds = sorted(set(runs) & set(reference))
            if len(seeds) < 3:
                continue
            parts = []
            for metric, name in (("recall_20", "R@20"), ("mrr_20", "MRR@20")):
                ours = np.array([100 * runs[s][metric] for s in seeds])
                ref = np.array([100 * reference[s][metric] for s in seeds])
                interval = stats.ttest_rel(ours, ref).confidence_interval(0.95)
                parts.append(f"{name} {np.mean(ours - ref):+.3f} ({interval.low:+.3f} to "
                             f"{interval.high:+.3f}; dense sd {np.std(ref, ddof=1):.3f})")
            lines.append(f"{model:>5} {label:<13} minus {REFERENCE}, paired over {len(seeds)} "
                         f"seeds, 95% CI: " + ", ".join(parts))
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="tmall")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--limit-rows", type=int, default=0, help="train on the first N rows")
    parser.add_argument("--models", nargs="+", default=["ave", "trm", "hn"])
    parser.add_argument("--configs", nargs="+", default=None, choices=list(CONFIGS),
                        metavar="CONFIG",
                        help=f"of {list(CONFIGS)} (default: all of them, chunked bf16 only where "
                             "bf16 matrix products are native)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per configuration")
    parser.add_argument("--seed", type=int, default=2020, help="the first seed")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--profile-batches", type=int, default=10,
                        help="batches timed per phase for each model (0: skip)")
    parser.add_argument("--op-table", type=int, default=0, metavar="N",
                        help="also print torch.profiler's N costliest ops (self CPU time) of 3 "
                             "training steps, for dense fp32 and the fastest configuration")
    parser.add_argument("--profile-clock", choices=("cpu", "wall"), default="cpu",
                        help="phases in process CPU time (all threads; robust to other work "
                             "on a shared machine) or wall-clock time")
    args = parser.parse_args(argv)

    context = multiprocessing.get_context("spawn")
    if args.configs is None:
        args.configs = list(CONFIGS)
        if not native_bf16(torch.device(args.device)):
            args.configs = [label for label in args.configs if label not in BF16_ONLY]
            print(f"{', '.join(BF16_ONLY)} left out: no native bf16 matrix products on this "
                  f"{args.device} (they would run several times slower than fp32; --configs "
                  "includes them anyway)", flush=True)
    fast = FAST if FAST in args.configs else FAST_FP32
    print(f"device {args.device} ({_hardware(args.device)}) | "
          f"threads {args.threads or len(os.sched_getaffinity(0))} | "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    results = []
    for seed in range(args.seed, args.seed + args.seeds):
        for model in args.models:
            for label in args.configs:
                r = _in_process(context, _run, args, model, label, seed)
                results.append(r)
                device_peak = (f" (device {r['peak_device_gib']:.2f} GiB)"
                               if "peak_device_gib" in r else "")
                print(
                    f"{model:>5} {label:<13} seed {seed}: epoch {r['epoch_s']:6.1f} s "
                    f"(CPU {r['epoch_cpu_s']:6.1f} s; {r['train_rows'] / r['epoch_s']:,.0f} rows/s "
                    f"on {r['train_rows']:,}) | "
                    f"valid {r['eval_s']:5.1f} s ({r['valid_rows']:,} rows) | "
                    f"peak RSS {r['peak_rss_gib']:.2f} GiB{device_peak} | loss {r['loss']:.4f} | "
                    f"R@20 {100 * r['recall_20']:.2f} MRR@20 {100 * r['mrr_20']:.2f} | "
                    f"load {r['load']:.1f}",
                    flush=True,
                )
    if args.profile_batches:
        print(f"\nwhere a training batch's time goes (ms per batch, {args.profile_clock} time; "
              "timers around the trainer's phases):", flush=True)
        print(f"{'model':>5} {'configuration':<13} " + " ".join(f"{p:>9}" for p in PHASES)
              + f" {'total':>9}", flush=True)
        for model in args.models:
            for label in (REFERENCE, fast):
                if label not in args.configs:
                    continue
                p = _in_process(context, _profile, args, model, label)
                print(f"{model:>5} {label:<13} "
                      + " ".join(f"{1000 * p[phase]:9.1f}" for phase in PHASES)
                      + f" {1000 * sum(p[phase] for phase in PHASES):9.1f}"
                      + f"  ({p['batches']} batches, load {p['load']:.1f})", flush=True)
    if args.op_table:
        for model in args.models:
            for label in (REFERENCE, fast):
                if label in args.configs:
                    print(f"\nper-op table: {model} {label}", flush=True)
                    print(_in_process(context, _op_table, args, model, label), flush=True)
    print(flush=True)
    for line in _summary(results, args.models, args.configs, fast, args.device):
        print(line, flush=True)


if __name__ == "__main__":
    main()
