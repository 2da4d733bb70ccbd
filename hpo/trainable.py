"""What Ray Tune trials run: train one configuration, reporting and checkpointing every epoch.

Search trials receive the dataset without its test split (see ``SessionDataset.without_test``), so
nothing in a search can score test data. Test-stage trials retrain a selected configuration and
score the test split exactly once, with the best-validation checkpoint, inside their last report.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from ray import tune

from hpo.searcher import FINISHED_KEY
from models.registry import resolve_config
from models.trainer import Trainer

CHECKPOINT_FILE = "trainer.pt"
TEST_ROWS_FILE = "test_rows.npz"
TEST_METRICS_FILE = "test_metrics.json"


def train_trial(config: dict, dataset, num_threads: int = 1) -> None:
    """A search trial: train until early stopping, the epoch budget, or ASHA stops it."""
    _train_reporting(resolve_config(config), dataset, num_threads)


def retrain_trial(config: dict, dataset, num_threads: int = 1) -> None:
    """A test-stage trial: `config["job"]` holds the selected configuration with its seed."""
    _train_reporting(resolve_config(config["job"]["config"]), dataset, num_threads,
                     on_last_epoch=_score_test)


def _train_reporting(
    config: dict, dataset, num_threads: int,
    on_last_epoch: Callable[[Trainer, Path], dict] | None = None,
) -> None:
    trainer = Trainer(config, dataset, num_threads=num_threads)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trainer.load_checkpoint(Path(directory) / CHECKPOINT_FILE)
    while not trainer.should_stop:
        metrics = trainer.run_epoch()
        metrics[FINISHED_KEY] = int(trainer.should_stop)
        with tempfile.TemporaryDirectory() as directory:
            trainer.save_checkpoint(Path(directory) / CHECKPOINT_FILE)
            if trainer.should_stop and on_last_epoch is not None:
                metrics.update(on_last_epoch(trainer, Path(directory)))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


def _score_test(trainer: Trainer, directory: Path) -> dict:
    """Score the selected (best-validation) checkpoint on test, once; keep per-row results."""
    metrics, ranks, topk = trainer.evaluate_detailed("test", use_best=True)
    np.savez_compressed(directory / TEST_ROWS_FILE, ranks=ranks, topk=topk)
    (directory / TEST_METRICS_FILE).write_text(json.dumps(metrics))
    return {f"test_{name}": value for name, value in metrics.items()}
