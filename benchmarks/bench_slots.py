"""How to spend a machine's cores on training: one trial with every core, or one trial per core.

A search runs ``concurrent`` trials of one thread each (the default on a 2-core machine: two
trials at once), a study's seed run one trial with every core, and ``--dry-run`` estimates a
search's time from a few batches timed alone. This benchmark measures all three layouts on the
same batches of the same variant, in one run:

- ``solo x1``: one process, one torch thread (what ``--dry-run`` times);
- ``solo xN``: one process, N threads (a study's seed run);
- ``N at once x1``: N processes of one thread each, started together and timed over the same
  window (a search's trials side by side);
- ``N in one x1``: N trainers in one process, timed at once from N Python threads, one torch
  thread in all (whether a dry-run could measure the side-by-side slowdown without spawning).

Every process is spawned fresh, loads the dataset itself (as a Ray trial does) and times
``Trainer.time_epoch`` (one untimed warm-up step, then ``--batches`` training steps and
validation batches). The summary prints, per variant and layout, seconds per training and
validation batch and the throughput in trial-epochs per hour (an epoch being the dataset's
training and validation batches), and the ratios that matter: what running N at once costs each
trial (the slowdown a search's estimate has to include) and which layout trains more epochs per
hour. The first line names the processor.

    python benchmarks/bench_slots.py --dataset diginetica --data-dir DIR --train-rows 100000
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data import DatasetSource  # noqa: E402
from models.precision import device_label  # noqa: E402


def _time(dataset: str, data_dir: str | None, train_rows: int | None, model: str, threads: int,
          batches: int, precision: str, barrier=None) -> dict:
    """In a spawned process: load the dataset, build the trainer, wait for the others, time."""
    import torch

    from models.trainers import make_trainer

    data = DatasetSource(dataset, data_dir=Path(data_dir) if data_dir else None,
                         train_rows=train_rows).load().without_test()
    trainer = make_trainer({"model": model, "epochs": 1, "precision": precision}, data,
                           num_threads=threads)
    if barrier is not None:
        barrier.wait()
    start = time.perf_counter()
    timing = trainer.time_epoch(batches)
    return {**timing, "window_s": time.perf_counter() - start,
            "threads": torch.get_num_threads()}


def _threads_at_once(dataset: str, data_dir: str | None, train_rows: int | None, model: str,
                     n: int, batches: int, precision: str) -> list[dict]:
    """In a spawned process: ``n`` trainers timed at once from ``n`` Python threads."""
    import threading

    import torch

    from models.trainers import make_trainer

    data = DatasetSource(dataset, data_dir=Path(data_dir) if data_dir else None,
                         train_rows=train_rows).load().without_test()
    trainers = [make_trainer({"model": model, "epochs": 1, "precision": precision}, data,
                             num_threads=1) for _ in range(n)]
    torch.set_num_threads(1)
    out: list[dict] = [{} for _ in range(n)]

    def work(i: int) -> None:
        out[i] = trainers[i].time_epoch(batches)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return out


def _layout(context, args, model: str, processes: int, threads: int) -> list[dict]:
    """Time ``processes`` spawned processes of ``threads`` threads each, started together."""
    barrier = context.Manager().Barrier(processes) if processes > 1 else None
    with context.Pool(processes) as pool:
        jobs = [pool.apply_async(_time, (args.dataset, args.data_dir, args.train_rows, model,
                                         threads, args.batches, args.precision, barrier))
                for _ in range(processes)]
        return [job.get() for job in jobs]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--train-rows", type=int, default=None,
                        help="the training split's last N rows (a study's declared cut)")
    parser.add_argument("--models", nargs="+", default=["ave", "trm", "dahn"])
    parser.add_argument("--batches", type=int, default=20, help="timed batches of each kind")
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)),
                        help="N: the cores to spend (default: all this process may use)")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--rounds", type=int, default=1,
                        help="times each layout is measured, interleaved")
    args = parser.parse_args(argv)
    n = args.cores
    print(f"CPU: {device_label(torch.device('cpu'))}; {n} cores; dataset {args.dataset}"
          + (f" (last {args.train_rows:,} training rows)" if args.train_rows else "")
          + f"; {args.batches} batches of each kind; precision {args.precision}", flush=True)
    layouts = [("solo x1", 1, 1), (f"solo x{n}", 1, n), (f"{n} at once x1", n, 1),
               (f"{n} in one x1", n, 0)]
    context = multiprocessing.get_context("spawn")
    results: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.rounds):
        for model in args.models:
            for label, processes, threads in layouts:
                if threads == 0:
                    with context.Pool(1) as pool:
                        runs = pool.apply(_threads_at_once, (
                            args.dataset, args.data_dir, args.train_rows, model, n,
                            args.batches, args.precision))
                else:
                    runs = _layout(context, args, model, processes, threads)
                results.setdefault((model, label), []).extend(runs)
                train = sum(r["train_batch_s"] for r in runs) / len(runs)
                print(f"  {model:6s} {label:14s} train {1000 * train:7.1f} ms/batch, valid "
                      f"{1000 * sum(r['valid_batch_s'] for r in runs) / len(runs):7.1f} "
                      f"ms/batch", flush=True)
    print()
    print(f"{'model':6s} {'layout':14s} {'train ms':>9s} {'valid ms':>9s} {'epoch s':>8s} "
          f"{'epochs/h':>9s}")
    for model in args.models:
        per_hour = {}
        for label, processes, _ in layouts:
            runs = results[(model, label)]
            epoch = sum(r["epoch_s"] for r in runs) / len(runs)
            per_hour[label] = processes * 3600 / epoch
            print(f"{model:6s} {label:14s} "
                  f"{1000 * sum(r['train_batch_s'] for r in runs) / len(runs):9.1f} "
                  f"{1000 * sum(r['valid_batch_s'] for r in runs) / len(runs):9.1f} "
                  f"{epoch:8.1f} {per_hour[label]:9.1f}")
        solo, wide, side, inside = (per_hour[label] for label, _, _ in layouts)
        print(f"{model:6s} side by side each trial runs at {side / n / solo:.2f}x its solo speed "
              f"(a search's per-trial slowdown {n * solo / side:.2f}x; measured in one process "
              f"{n * solo / inside:.2f}x); trial-epochs per hour: {n} at once "
              f"{side / wide:.2f}x one trial with {n} threads")


if __name__ == "__main__":
    main()
