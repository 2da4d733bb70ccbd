"""The function each Ray Tune trial runs: train one configuration, reporting every epoch.

The dataset arrives through the object store (tune.with_parameters), already stripped of its
test split, so nothing a trial does can look at test data.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ray import tune

from hpo.searcher import FINISHED_KEY
from models.registry import resolve_config
from models.trainer import Trainer

CHECKPOINT_FILE = "trainer.pt"


def train_trial(config: dict, dataset, num_threads: int = 1, device: str | None = None) -> None:
    trainer = Trainer(resolve_config(config), dataset, device=device, num_threads=num_threads)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trainer.load_checkpoint(Path(directory) / CHECKPOINT_FILE)
    while not trainer.should_stop:
        metrics = trainer.run_epoch()
        metrics[FINISHED_KEY] = int(trainer.should_stop)
        with tempfile.TemporaryDirectory() as directory:
            trainer.save_checkpoint(Path(directory) / CHECKPOINT_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
