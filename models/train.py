"""Train one CORE variant from the command line, printing one line per epoch.

    python -m models.train --model trm --dataset tmall --data-dir path/to/datasets \\
        --epochs 1 [--precision bf16] [--set key=value ...] [--test] [--save ckpt.pt]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import yaml

from data import DatasetSource
from data.cli import OneLineParser, fail, positive_int
from models.precision import PRECISIONS
from models.registry import VARIANTS, dataset_needs, fits_once, resolve_config
from models.trainers import make_trainer


def _assignment(text: str) -> tuple[str, object]:
    """``key=value`` with the value parsed as YAML (numbers, booleans, strings)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, yaml.safe_load(value)


def _percent(metrics: dict, prefix: str = "") -> str:
    return " ".join(
        f"{label} {100 * metrics[prefix + name]:.2f}"
        for label, name in (("R@20", "recall_20"), ("MRR@20", "mrr_20"), ("NDCG@20", "ndcg_20"))
    )


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time (it may be replaced, e.g. in tests)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def _log_progress_to_stdout() -> None:
    """Progress lines of the data and persona stages (item vectors, graph, HDGI) to stdout."""
    for name in ("data", "models"):
        logger = logging.getLogger(name)
        if not any(isinstance(handler, _StdoutHandler) for handler in logger.handlers):
            handler = _StdoutHandler()
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)


def cli(argv: list[str] | None = None) -> int:
    """``python -m models.train``: ``main``, with bad input (an unknown key or value, a dataset
    that is missing or malformed, a variant the dataset cannot serve) reported on one line of
    stderr and exit code 2, before any training.

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0, or 2 for bad input.
    """
    from data.errors import DataError

    try:
        main(argv)
    except (DataError, ValueError, TypeError, FileNotFoundError, PermissionError) as exc:
        return fail(str(exc))
    return 0


def main(argv: list[str] | None = None) -> dict:
    """Train one configuration as the CORE protocol does, printing a line per epoch.

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The best epoch's record (with ``test_*`` metrics when ``--test``).

    Raises:
        data.errors.DataError, ValueError, TypeError: bad input (``cli`` prints them).
    """
    parser = OneLineParser(prog="python -m models.train",
                           description="Train a CORE variant (spec protocol).")
    parser.add_argument("--model", required=True, choices=VARIANTS)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--train-rows", type=positive_int, default=None, metavar="N",
                        help="train on the last N training rows only")
    parser.add_argument("--text-model", default=None, metavar="PATH",
                        help="local sentence-transformers model for the item text of the "
                             "semantic variants (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="max epochs (default: config)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="auto (the default): bf16 where bf16 matrix products are native "
                             "(AMX, AVX-512 BF16, CUDA), else fp32 (models.precision)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--set", type=_assignment, action="append", default=[], metavar="K=V")
    parser.add_argument("--test", action="store_true", help="score the test split at the end")
    parser.add_argument("--save", default=None, help="write the final checkpoint here")
    parser.add_argument("--threads", type=positive_int, default=None)
    args = parser.parse_args(argv)

    config = {"model": args.model, **dict(args.set)}
    for key in ("epochs", "precision", "seed"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    resolve_config(config)  # a bad key or value is refused before the data is read
    _log_progress_to_stdout()
    source = DatasetSource(args.dataset, args.data_dir, args.train_rows, args.text_model)
    needs = dataset_needs(args.model)
    source.check(**needs)
    dataset = source.load(**needs)
    if not args.test:
        dataset = dataset.without_test()
    print(dataset.summary(), flush=True)
    start = time.perf_counter()
    trainer = make_trainer(config, dataset, num_threads=args.threads)
    once = fits_once(args.model)
    resolved = ("" if once else f" | precision {trainer.precision}, loss {trainer.loss_impl}")
    print(f"config: {trainer.config} | device {trainer.device}{resolved} | model built in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    n_train = len(dataset.train)
    while not trainer.should_stop:
        m = trainer.run_epoch()
        valid_s = m["epoch_time"] - m["train_time"]
        if once:  # a kNN baseline: one fit, one validation
            print(f"fit {m['train_time']:6.1f} s ({n_train:,} training rows) | valid "
                  f"{valid_s:5.1f} s {len(dataset.valid) / valid_s:7,.0f} rows/s "
                  f"{_percent(m, 'valid_')}", flush=True)
            continue
        print(
            f"epoch {m['epoch']:3d} | train {m['train_time']:6.1f} s "
            f"{n_train / m['train_time']:7,.0f} rows/s loss {m['train_loss']:.4f} | "
            f"valid {valid_s:5.1f} s {_percent(m, 'valid_')} | "
            f"best epoch {m['best_epoch']}",
            flush=True,
        )
    best = trainer.best_metrics
    print(f"{'fitted' if once else 'best epoch ' + str(best['epoch'])}: valid "
          f"{_percent(best, 'valid_')}; {time.perf_counter() - start:.1f} s in all", flush=True)
    result = dict(best)
    if args.test:
        test = trainer.evaluate("test")
        print(f"test (best checkpoint): {_percent(test)}", flush=True)
        result.update({f"test_{name}": value for name, value in test.items()})
    if args.save:
        trainer.save_checkpoint(args.save)
    return result


if __name__ == "__main__":
    sys.exit(cli())
