"""Training/evaluation speed and memory of CORE-ave and CORE-trm, fp32 vs bf16, in one run.

Each (model, precision) trains in its own spawned process, so that the peak RSS printed
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is that configuration's alone. The same seed and
epochs are used for fp32 and bf16, and the validation R@20 / MRR@20 differences are reported.

    python benchmarks/bench_train.py --dataset tmall --data-dir path/to/datasets --epochs 1
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import load_dataset  # noqa: E402
from models.trainer import Trainer  # noqa: E402

TOLERANCE = 0.003  # bf16 must match fp32 validation R@20 / MRR@20 within 0.3 points


def _run(args: argparse.Namespace, model: str, precision: str) -> dict:
    dataset = load_dataset(args.dataset, args.data_dir)
    if args.limit_rows:
        train = dataset.train.subset(slice(0, args.limit_rows))
        dataset = type(dataset)(dataset.name, dataset.n_items, train, dataset.valid, None)
    config = {"model": model, "precision": precision, "epochs": args.epochs, "seed": args.seed}
    trainer = Trainer(config, dataset, device="cpu", num_threads=args.threads)
    epochs = [trainer.run_epoch() for _ in range(args.epochs)]
    last = epochs[-1]
    train_time = sum(e["train_time"] for e in epochs) / len(epochs)
    return {
        "model": model,
        "precision": precision,
        "train_rows": len(dataset.train),
        "epoch_s": train_time,
        "rows_per_s": len(dataset.train) / train_time,
        "eval_s": sum(e["epoch_time"] - e["train_time"] for e in epochs) / len(epochs),
        "valid_rows": len(dataset.valid),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "recall_20": last["valid_recall_20"],
        "mrr_20": last["valid_mrr_20"],
        "loss": last["train_loss"],
        "load": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="tmall")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--limit-rows", type=int, default=0, help="train on the first N rows")
    parser.add_argument("--models", nargs="+", default=["ave", "trm"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    context = multiprocessing.get_context("spawn")
    results = []
    for model in args.models:
        for precision in args.precisions:
            with context.Pool(1) as pool:
                result = pool.apply(_run, (args, model, precision))
            results.append(result)
            print(
                f"{model:>4} {precision}: epoch {result['epoch_s']:6.1f} s "
                f"({result['rows_per_s']:,.0f} rows/s on {result['train_rows']:,} rows) | "
                f"eval {result['eval_s']:5.1f} s ({result['valid_rows']:,} rows) | "
                f"peak RSS {result['peak_rss_gib']:.2f} GiB | loss {result['loss']:.4f} | "
                f"valid R@20 {100 * result['recall_20']:.2f} MRR@20 {100 * result['mrr_20']:.2f} | "
                f"load {result['load']:.1f}",
                flush=True,
            )
    by_key = {(r["model"], r["precision"]): r for r in results}
    for model in args.models:
        fp32, bf16 = by_key.get((model, "fp32")), by_key.get((model, "bf16"))
        if fp32 and bf16:
            delta = max(abs(bf16[m] - fp32[m]) for m in ("recall_20", "mrr_20"))
            print(
                f"{model:>4} bf16 vs fp32: speed-up x{fp32['epoch_s'] / bf16['epoch_s']:.2f}, "
                f"valid R@20 {100 * (bf16['recall_20'] - fp32['recall_20']):+.2f} points, "
                f"MRR@20 {100 * (bf16['mrr_20'] - fp32['mrr_20']):+.2f} points "
                f"after {args.epochs} epoch(s): "
                f"{'within' if delta <= TOLERANCE else 'NOT within'} {100 * TOLERANCE:.1f} points"
            )


if __name__ == "__main__":
    main()
