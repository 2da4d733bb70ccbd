"""Time the session-kNN baselines (SKNN, V-SKNN, STAN, VSTAN; published defaults): fit on the
training split, score the whole validation split in batches, and report valid R@20 / MRR@20;
one CORE-trm validation pass (untrained weights) on the same machine is the reference.

python benchmarks/bench_knn.py [--dataset tmall] [--data-dir path/to/datasets]
                               [--models sknn,vsknn,stan,vstan] [--batch-size 512] [--no-core]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data import DatasetSource  # noqa: E402
from data.dataset import SessionDataset  # noqa: E402
from models.knn import KNN_DEFAULTS, KNN_VARIANTS, build_knn  # noqa: E402
from models.metrics import metrics_from_ranks, rank_and_top_  # noqa: E402
from models.precision import device_label  # noqa: E402
from models.trainer import Trainer  # noqa: E402


def knn_figures(dataset: SessionDataset, variant: str, batch_size: int) -> dict:
    """Fit ``variant`` (published defaults) on the training split and rank the validation
    split's targets with the project's metric code.

    Args:
        dataset: the loaded dataset.
        variant: one of ``KNN_VARIANTS``.
        batch_size: validation rows scored per ``scores`` call.

    Returns:
        ``fit_s``, ``score_s`` (the ``scores`` calls only), ``rank_s`` (the rank counts),
        ``rows``, and the metrics of ``metrics_from_ranks``.
    """
    start = time.perf_counter()
    model = build_knn({"model": variant, "seed": 2020}, dataset.n_items).fit(dataset.train)
    fit_s = time.perf_counter() - start
    valid = dataset.valid
    ranks, score_s, rank_s = [], 0.0, 0.0
    for first in range(0, len(valid), batch_size):
        rows = slice(first, first + batch_size)
        start = time.perf_counter()
        scores = model.scores(valid.prefixes[rows], valid.lengths[rows])
        middle = time.perf_counter()
        rank, _ = rank_and_top_(torch.from_numpy(scores), torch.from_numpy(valid.targets[rows]),
                                k=None)
        ranks.append(rank.numpy())
        rank_s += time.perf_counter() - middle
        score_s += middle - start
    metrics = metrics_from_ranks(np.concatenate(ranks))
    return {"fit_s": fit_s, "score_s": score_s, "rank_s": rank_s, "rows": len(valid), **metrics}


def core_pass_seconds(dataset: SessionDataset) -> tuple[float, dict]:
    """Seconds of one CORE-trm validation pass (untrained weights, CPU) and its metrics."""
    trainer = Trainer({"model": "trm", "seed": 2020}, dataset.without_test(), device="cpu")
    trainer.evaluate("valid", use_best=False)  # warm-up: builds the rows, first allocations
    start = time.perf_counter()
    metrics = trainer.evaluate("valid", use_best=False)
    return time.perf_counter() - start, metrics


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--dataset", default="tmall")
    parser.add_argument("--data-dir", default=None, help="default: $CORE_DATA_DIR, else ./datasets")
    parser.add_argument("--models", default=",".join(KNN_VARIANTS),
                        help="comma-separated kNN variants to time")
    parser.add_argument("--batch-size", type=int, default=512,
                        help="validation rows per scores() call")
    parser.add_argument("--no-core", action="store_true", help="skip the CORE-trm reference")
    args = parser.parse_args()
    variants = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = sorted(set(variants) - set(KNN_VARIANTS))
    if unknown:
        parser.error(f"unknown kNN variant(s) {unknown}; expected some of {KNN_VARIANTS}")

    print(f"cpu          {device_label(torch.device('cpu'))}, "
          f"{len(os.sched_getaffinity(0))} cores available")
    start = time.perf_counter()
    dataset = DatasetSource(args.dataset, args.data_dir).load()
    print(f"dataset      {dataset.summary()} (loaded in {time.perf_counter() - start:.1f} s)")

    for variant in variants:
        figures = knn_figures(dataset, variant, args.batch_size)
        total = figures["score_s"] + figures["rank_s"]
        print(f"{variant:<12} fit {figures['fit_s']:6.2f} s | score {figures['score_s']:6.2f} s "
              f"({figures['rows'] / figures['score_s']:,.0f} rows/s) | + ranks {total:6.2f} s | "
              f"valid R@20 {figures['recall_20']:.4f} MRR@20 {figures['mrr_20']:.4f}")
        print(f"{'':<12} defaults {KNN_DEFAULTS[variant]}")

    if not args.no_core:
        seconds, metrics = core_pass_seconds(dataset)
        rows = len(dataset.valid)
        print(f"{'core-trm':<12} one validation pass {seconds:6.2f} s ({rows / seconds:,.0f} "
              f"rows/s; untrained weights: R@20 {metrics['recall_20']:.4f}), torch "
              f"{torch.__version__}, {torch.get_num_threads()} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
