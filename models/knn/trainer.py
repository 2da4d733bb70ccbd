"""The trainer of a kNN baseline: one fit on the training split, then validation, with the calls
and records of ``models.trainer.Trainer``, so a search trial, a test-stage seed run, a study
piece and ``python -m models.train`` treat both alike.

A kNN model has no epochs: ``run_epoch`` fits it (the neighbour index of the training
sessions) and validates once; ``should_stop`` is then true, so a search trial reports one
result (ASHA has nothing to stop). Its record has the keys of a CORE epoch's except
``train_loss`` (there is no loss); ``train_time`` is the fit's time. Scores go through the
project's own ranking (``models.metrics.rank_and_top_``: full catalog, ties against the target,
items in the session not masked).

A checkpoint holds the config and the validation record only: refitting is deterministic (and
takes seconds), so ``load_state_dict`` refits. Test is scored only on request, as for CORE.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from data.dataset import SessionDataset, Split
from models.checkpoint import CheckpointFiles
from models.knn import KNN_SPECS, KNN_VARIANTS, knn_model
from models.metrics import TOP_K, metrics_from_ranks, rank_and_top_


class KnnTrainer(CheckpointFiles):
    """Fits one kNN configuration on one dataset (``Trainer``'s interface; see the module
    docstring).

    Args:
        config: the run's config ("model" one of ``models.knn.KNN_VARIANTS``).
        dataset: the dataset (test withheld in a search).
        device: accepted for ``Trainer``'s signature; kNN models run on the CPU.
        callback: called with each epoch's record.
        num_threads: torch threads of the ranking (default: the CPUs this process may use).
    """

    def __init__(self, config: dict, dataset: SessionDataset, device=None, callback=None,
                 num_threads: int | None = None) -> None:
        variant = config.get("model")
        if variant not in KNN_VARIANTS:
            raise ValueError(f"unknown kNN model {variant!r}; expected one of {KNN_VARIANTS}")
        self.config = KNN_SPECS[variant].resolve(config)  # as models.registry.resolve_config
        self.dataset = dataset
        self.device = torch.device("cpu")
        self.callback = callback
        torch.set_num_threads(num_threads or len(os.sched_getaffinity(0)))
        self.model = knn_model(self.config, dataset.n_items)
        self.fitted = False
        self.epoch = 0
        self.best_epoch = 0
        self.bad_epochs = 0
        self.history: list[dict] = []
        self.best_state = None

    @property
    def should_stop(self) -> bool:
        """Whether fitting is over: a kNN model is fitted in one pass (one "epoch")."""
        return self.epoch >= 1

    @property
    def best_metrics(self) -> dict:
        """The validation record of the one fit."""
        if not self.best_epoch:
            raise RuntimeError("the model has not been fitted yet")
        return self.history[0]

    def fit(self) -> dict:
        """Fits and validates (once); returns the validation record."""
        while not self.should_stop:
            self.run_epoch()
        return self.best_metrics

    def _fit_model(self) -> float:
        if self.fitted:
            return 0.0
        start = time.perf_counter()
        self.model.fit(self.dataset.train)
        self.fitted = True
        return time.perf_counter() - start

    def run_epoch(self) -> dict:
        """Fit on the training split and validate: the one "epoch" of a kNN model."""
        start = time.perf_counter()
        fit_time = self._fit_model()
        valid = self.evaluate("valid")
        self.epoch = self.best_epoch = 1
        metrics = {
            "epoch": 1,
            "epoch_time": time.perf_counter() - start,
            "train_time": fit_time,
            **{f"valid_{name}": value for name, value in valid.items()},
            **{f"best_valid_{name}": value for name, value in valid.items()},
            "best_epoch": 1,
        }
        self.history = [metrics]
        if self.callback is not None:
            self.callback(metrics)
        return metrics

    def evaluate(self, split: str = "valid", use_best: bool = True) -> dict:
        """Metrics (unprefixed) of ``split``; "test" raises when the dataset withholds it."""
        return metrics_from_ranks(self._rank(self.dataset.split(split), top_k=None)[0])

    def evaluate_detailed(self, split: str = "valid", use_best: bool = True):
        """Metrics, per-row ranks and top-20 item ids of ``split`` (as ``Trainer``'s)."""
        ranks, tops = self._rank(self.dataset.split(split), top_k=TOP_K)
        return metrics_from_ranks(ranks), ranks, tops

    def _rank(self, rows: Split, top_k: int | None) -> tuple[np.ndarray, np.ndarray | None]:
        self._fit_model()
        size = self.config["eval_batch_size"]
        ranks, tops = [], []
        for start in range(0, len(rows), size):
            cut = slice(start, start + size)
            scores = torch.from_numpy(self.model.scores(rows.prefixes[cut], rows.lengths[cut]))
            rank, top = rank_and_top_(scores, torch.from_numpy(rows.targets[cut]), top_k)
            ranks.append(rank.numpy())
            if top is not None:
                tops.append(top.int().numpy())
        return np.concatenate(ranks), (np.concatenate(tops) if tops else None)

    def time_epoch(self, batches: int = 3) -> dict:
        """The time of a fit and a whole validation pass, from the fit and ``batches``
        validation batches (``Trainer.time_epoch``'s keys; there are no training batches)."""
        fit_time = self._fit_model()
        valid = self.dataset.split("valid")
        size = self.config["eval_batch_size"]
        cut = valid.subset(slice(0, min(len(valid), batches * size)))
        start = time.perf_counter()
        self._rank(cut, top_k=None)
        n_timed = -(-len(cut) // size)
        valid_s = (time.perf_counter() - start) / max(1, n_timed)
        n_valid = -(-len(valid) // size)
        return {"train_batch_s": fit_time, "valid_batch_s": valid_s, "train_batches": 1,
                "valid_batches": n_valid, "epoch_s": fit_time + valid_s * n_valid}

    # -- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The config and the validation record (the model is refitted on load)."""
        return {"config": dict(self.config), "epoch": self.epoch, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        """Resume from ``state_dict()``'s record (the index is refitted, being cheap).

        Raises:
            ValueError: the record was made with another configuration.
        """
        if state["config"]["model"] != self.config["model"] or any(
                state["config"].get(k) != v for k, v in self.config.items()
                if k not in ("epochs",)):
            raise ValueError("checkpoint was made with a different config")
        self.epoch = self.best_epoch = state["epoch"]
        self.history = list(state["history"])

