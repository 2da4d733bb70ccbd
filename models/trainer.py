"""Training loop of the CORE protocol: Adam, full-catalog softmax, validation every epoch,
best checkpoint by valid MRR@20, early stopping, exact resume, test scored only on request."""

from __future__ import annotations

import copy
import ctypes
import os
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from data.dataset import SessionDataset
from models.batches import Rows
from models.checkpoint import CheckpointFiles
from models.ema import WeightEMA
from models.metrics import TOP_K, metrics_from_ranks, rank_and_top_
from models.precision import (  # noqa: F401 (cpuinfo_field, BF16_CPU_FLAGS: re-exported)
    BF16_CPU_FLAGS,
    choose_loss_impl,
    cpuinfo_field,
    native_bf16,
    resolve_precision,
)
from models.registry import build_model_for, default_config, resolve_config
from models.weighting import training_rows

SELECTION_METRIC = "mrr_20"
# The selection metric is compared at 4 decimal places and a tie keeps the later epoch, as the
# CORE reference implementation does (RecBole rounds metrics to 4 places and early-stops on
# ">="). Such differences are far inside a validation split's sampling noise, yet they decide
# between checkpoints that differ on test: on tmall CORE-ave's valid MRR@20 moved by 0.00002
# from epoch 4 to 5 while test R@20 rose 0.6 points, and the SPEC's reference is epoch 5's.
SELECTION_DECIMALS = 4
# Evaluation scores this many floats at a time (16 MiB).
SCORE_BLOCK_FLOATS = 1 << 22
# Allocations from this size up get their own memory map, returned to the OS when freed.
MMAP_THRESHOLD = 32 << 20
# oneDNN primitives kept for reuse (``bound_onednn_cache``; oneDNN's default is 1,024).
ONEDNN_CACHE_CAPACITY = 64
# Keys that only say how long to train: a checkpoint may be resumed with other values.
RUN_LENGTH_KEYS = frozenset({"epochs", "patience"})


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def pin_mmap_threshold() -> None:
    """Fixes glibc's mmap threshold at 32 MiB (glibc only; a no-op elsewhere).

    By default glibc moves the threshold to the size of every large block freed, so which
    allocations come from the (fragmenting, never returned) heaps changes during a run: the
    same CORE-ave tmall run peaked anywhere between 0.9 and 4 GiB, CORE-trm past 7 GiB. A
    fixed threshold makes the peak repeatable; a lower one would page-fault the transformer's
    [tokens, d] tensors in on every allocation (a 4 MiB threshold made CORE-trm 40% slower).
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass


def bound_onednn_cache() -> None:
    """Caps oneDNN's primitive cache at ``ONEDNN_CACHE_CAPACITY`` primitives unless the user set
    ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` (oneDNN reads it when it creates its first primitive, so
    this must run before the process's first CPU matrix product).

    Every batch packs a different number of tokens, so every batch's products have new shapes
    and new cached primitives, each holding its own buffers: with oneDNN's default of 1,024 a
    CORE-trm run in bf16 kept ~0.3 GiB more resident than it used, and peaked above dense fp32
    (tmall, 20,000 rows: 1.46 against 1.39 GiB). 64 keeps the full-catalog loss's fixed-shape
    products of the last few batches (as fast as 1,024; 16 evicts them and was ~5% slower)
    and peaked at 1.30 GiB; 0 (no cache) peaked at 1.02 GiB but took ~15% longer.
    """
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_CACHE_CAPACITY))


def release_free_memory() -> None:
    """Returns the heap's free pages to the OS (glibc's ``malloc_trim``; a no-op elsewhere).

    Called once an epoch, between training and validation: the training step's freed blocks
    (of other sizes and, in bf16, other dtypes than validation's) would otherwise stay resident
    while validation allocates beside them, and the run's peak resident size would be their sum.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (the trial is diverging)."""


def default_device() -> torch.device:
    """CUDA when available, else the CPU.

    Returns:
        The device.
    """
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _at_least_as_good(value: float, best: float) -> bool:
    """Whether a checkpoint scoring ``value`` replaces the best one (see SELECTION_DECIMALS)."""
    return round(value, SELECTION_DECIMALS) >= round(best, SELECTION_DECIMALS)


class Trainer(CheckpointFiles):
    """Trains one configuration on one dataset (see the contract for the API).

    Seeds torch's global RNG (model init, dropout) and a numpy generator (shuffling) from
    ``config["seed"]``; both are checkpointed, so a resumed run continues bit-identically.
    """

    def __init__(
        self,
        config: dict,
        dataset: SessionDataset,
        device: str | torch.device | None = None,
        callback: Callable[[dict], None] | None = None,
        num_threads: int | None = None,
    ) -> None:
        self.config = resolve_config(config)
        self.dataset = dataset
        self.device = torch.device(device) if device is not None else default_device()
        self.callback = callback
        torch.set_num_threads(num_threads or len(os.sched_getaffinity(0)))
        pin_mmap_threshold()
        bound_onednn_cache()
        native = native_bf16(self.device)
        # What this run uses where the config says auto (models.precision; recorded by
        # hpo.trainable as the MLflow tags precision_used and loss_impl_used).
        self.precision = resolve_precision(self.config["precision"], native)
        if self.precision == "bf16" and not native:
            warnings.warn(
                f"precision bf16 on {self.device.type} without native bf16 matrix products "
                f"(a CPU needs one of {', '.join(BF16_CPU_FLAGS)}): they are converted to fp32 "
                "and run several times slower than precision fp32", RuntimeWarning, stacklevel=2)
        self.loss_impl = self._loss_impl()
        torch.manual_seed(self.config["seed"])
        self.rng = np.random.default_rng(self.config["seed"])
        built = {**self.config, "precision": self.precision, "loss_impl": self.loss_impl}
        self.model = build_model_for(built, dataset).to(self.device)
        self.with_users = bool(getattr(self.model, "wants_users", False))
        self.optimizer = torch.optim.Adam(
            self.model.parameters(),
            lr=self.config["lr"],
            weight_decay=self.config["weight_decay"],
            fused=True,
        )
        # With ema_decay > 0, validation, checkpoint selection and test use the averaged weights.
        decay = self.config["ema_decay"]
        self.ema = WeightEMA(self.model, decay) if decay > 0 else None
        self.epoch = 0
        self.best_epoch = 0
        self.best_state: dict | None = None
        self.bad_epochs = 0
        self.history: list[dict] = []
        self._rows: dict[str, Rows] = {}
        # diffaug: what its stages produced (models.diffusion.Augmentation), once they ran.
        self.augmentation = None

    def _loss_impl(self) -> str:
        """The config's ``loss_impl``, or with ``auto`` the faster one here for this run's
        shapes (``models.precision.choose_loss_impl``, kept in the cache folder)."""
        if self.config["loss_impl"] != "auto":
            return self.config["loss_impl"]
        from data.cache import cache_root

        hard = self.config.get("hn_lambda", 0.0) > 0
        return choose_loss_impl(
            n_items=self.dataset.n_items, batch_size=self.config["batch_size"],
            dim=self.config["embedding_size"], precision=self.precision, hard_negatives=hard,
            device=self.device, cache_dir=cache_root())

    # -- training ---------------------------------------------------------------------------

    @property
    def should_stop(self) -> bool:
        """Whether training is over: patience spent or the epoch cap reached."""
        return self.bad_epochs >= self.config["patience"] or self.epoch >= self.config["epochs"]

    def fit(self) -> dict:
        """Runs epochs until early stopping or the epoch cap; returns the best epoch's metrics."""
        while not self.should_stop:
            self.run_epoch()
        return self.best_metrics

    @property
    def best_metrics(self) -> dict:
        """The validation record of the best epoch so far."""
        if not self.best_epoch:
            raise RuntimeError("no epoch has been trained yet")
        return self.history[self.best_epoch - 1]

    def run_epoch(self) -> dict:
        """Trains one epoch, validates, updates the best checkpoint and patience."""
        self._split_rows("train")  # the training rows (diffaug: its stages) are not epoch time
        start = time.perf_counter()
        train_loss = self._train_epoch()
        train_time = time.perf_counter() - start
        if self.device.type == "cpu":
            release_free_memory()
        averaged = self.ema.model_state(self.model) if self.ema is not None else None
        with self._weights(averaged):
            valid = self.evaluate("valid", use_best=False)
        self.epoch += 1
        if not self.best_epoch or _at_least_as_good(
            valid[SELECTION_METRIC], self.best_metrics[f"valid_{SELECTION_METRIC}"]
        ):
            self.best_epoch, self.bad_epochs = self.epoch, 0
            self.best_state = copy.deepcopy(averaged or self.model.state_dict())
        else:
            self.bad_epochs += 1
        metrics = {
            "epoch": self.epoch,
            "train_loss": train_loss,
            "epoch_time": time.perf_counter() - start,
            "train_time": train_time,
            **{f"valid_{name}": value for name, value in valid.items()},
        }
        # Every metric "at the best checkpoint" (chosen by valid MRR@20): a search may rank
        # trials by any of them and still describe the model the trial would deliver.
        best_valid = metrics if self.best_epoch == self.epoch else self.best_metrics
        metrics.update({f"best_valid_{name}": best_valid[f"valid_{name}"] for name in valid})
        metrics["best_epoch"] = self.best_epoch
        if self.augmentation is not None:  # diffaug: the rows it added, in every epoch's record
            metrics.update({f"aug_{name}": count
                            for name, count in self.augmentation.counts.items()})
        self.history.append(metrics)
        if self.callback is not None:
            self.callback(metrics)
        return metrics

    def _train_epoch(self) -> float:
        rows = self._split_rows("train")
        order = torch.from_numpy(self.rng.permutation(len(rows))).to(self.device)
        size = self.config["batch_size"]
        n_batches = -(-len(rows) // size)
        self.model.train()
        total = 0.0
        for batch in range(n_batches):
            index = order[batch * size : (batch + 1) * size]
            value = self._train_step(rows, index, batch, n_batches)
            total += value * len(index)
        return total / len(rows)

    def _train_step(self, rows: Rows, index: torch.Tensor, batch: int, n_batches: int) -> float:
        """One optimiser step on the training rows ``index``; returns the batch's loss.

        With ``grad_accum`` = k > 1 the rows are split into k micro-batches (sizes differing by
        at most one), each one's loss L_j scaled by its share of the rows n_j / n and
        backpropagated on its own, so the step applies the gradient of sum_j (n_j / n) L_j: that
        of the batch's mean loss for the terms that are means over rows (the full-catalog loss,
        hard negatives, the auxiliary tasks), at a k-th of the activation memory. The terms that
        compare a row with the batch's other rows (the in-batch session term, NT-Xent) take
        their negatives from the micro-batch, and dropout draws in another order, so k > 1 is
        not bit-identical to k = 1. With ``grad_clip`` = c > 0 the summed gradients are scaled
        by min(1, c / ||g||) over all parameters together before the step
        (``torch.nn.utils.clip_grad_norm_``). Then the EMA target table (``ema_target``) and
        the weight average (``ema_decay``) are updated.
        """
        parts = self.config["grad_accum"]
        # bf16 autocast around the whole step (bf16_scope all); with scope loss the model puts
        # it around its full-catalog loss alone (models.core.Objective.loss_autocast).
        bf16 = self.precision == "bf16" and self.config["bf16_scope"] == "all"
        self.optimizer.zero_grad(set_to_none=True)
        value = 0.0
        for part in index.tensor_split(parts) if parts > 1 else (index,):
            if not len(part):  # fewer rows than micro-batches
                continue
            items, targets, *users = rows.batch(part)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = self.model(items, targets, *users, **rows.row_weights(part))
            part_value = loss.item()
            if not np.isfinite(part_value):
                raise NonFiniteLossError(
                    f"training loss is {part_value} at epoch {self.epoch + 1}, batch {batch + 1}"
                    f"/{n_batches}; config: {self.config}"
                )
            if parts == 1:
                loss.backward()
                value = part_value
            else:
                share = len(part) / len(index)
                (loss * share).backward()
                value += share * part_value
        if self.config["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config["grad_clip"])
        self.optimizer.step()
        update_target = getattr(self.model, "update_target", None)
        if update_target is not None:
            update_target()
        if self.ema is not None:
            self.ema.update(self.model)
        return value

    def time_epoch(self, batches: int = 3) -> dict:
        """An estimate of one epoch's time on this trainer's device from a few batches: one
        untimed warm-up step, ``batches`` timed training steps (they change the weights: time a
        throwaway trainer) and ``batches`` validation batches. Stages a variant runs before its
        first epoch (diffaug's diffusion, persona's HDGI) are not included.

        Args:
            batches: timed batches of each kind.

        Returns:
            ``train_batch_s`` and ``valid_batch_s`` (seconds per batch), ``train_batches`` and
            ``valid_batches`` (per epoch) and ``epoch_s``, the estimate of a whole epoch.
        """
        rows = self._split_rows("train")
        size = self.config["batch_size"]
        n_train = -(-len(rows) // size)
        order = torch.from_numpy(self.rng.permutation(len(rows))).to(self.device)
        self.model.train()
        self._train_step(rows, order[:size], 0, n_train)  # warm-up: allocations, kernels
        start = time.perf_counter()
        for batch in range(1, batches + 1):
            index = order[(batch % n_train) * size : (batch % n_train + 1) * size]
            self._train_step(rows, index, batch, n_train)
        train_s = (time.perf_counter() - start) / batches
        valid = self.dataset.split("valid")
        eval_size = self.config["eval_batch_size"]
        n_valid = -(-len(valid) // eval_size)
        cut = self.dataset.valid.subset(slice(0, min(len(valid), batches * eval_size)))
        timed = replace(self.dataset, valid=cut)
        start = time.perf_counter()
        self._rank_rows(Rows(timed.valid, self.config["max_seq_length"], self.device,
                             self.with_users), use_best=False, top_k=None)
        valid_s = (time.perf_counter() - start) / max(1, -(-len(cut) // eval_size))
        return {"train_batch_s": train_s, "valid_batch_s": valid_s, "train_batches": n_train,
                "valid_batches": n_valid, "epoch_s": train_s * n_train + valid_s * n_valid}

    # -- evaluation -------------------------------------------------------------------------

    def evaluate(self, split: str = "valid", use_best: bool = True) -> dict:
        """Metrics (unprefixed names) of ``split``; "test" raises when the dataset withholds it."""
        return metrics_from_ranks(self._rank(split, use_best, top_k=None)[0])

    def evaluate_detailed(
        self, split: str = "valid", use_best: bool = True
    ) -> tuple[dict, np.ndarray, np.ndarray]:
        """Metrics, per-row target ranks (int64 [n_rows]) and top-20 item ids (int32
        [n_rows, 20]) of ``split``, with the best checkpoint (if any) or the current weights."""
        ranks, tops = self._rank(split, use_best, top_k=TOP_K)
        return metrics_from_ranks(ranks), ranks, tops

    def _rank(
        self, split: str, use_best: bool, top_k: int | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Target ranks (and top-k lists) of every row, scoring the catalog ``SCORE_BLOCK``
        rows at a time into one reused buffer: small enough to stay in cache for the rank
        count, and never re-allocated (a fresh block would be page-faulted in every time)."""
        return self._rank_rows(self._split_rows(split), use_best, top_k)

    def _rank_rows(
        self, rows: Rows, use_best: bool, top_k: int | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``_rank`` of the given rows."""
        if self.with_users:
            return self._rank_with_users(rows, use_best, top_k)
        size = self.config["eval_batch_size"]
        ranks, tops = [], []
        with self._weights(self.best_state if use_best else None), torch.inference_mode():
            self.model.eval()
            table = self.model.item_table()
            catalog = F.normalize(table, dim=-1)
            block = max(1, SCORE_BLOCK_FLOATS // len(catalog))
            buffer = catalog.new_empty(len(catalog), block)
            for start in range(0, len(rows), size):
                items, targets = rows.batch(slice(start, start + size))
                h, _ = self.model.encode(items, table)
                for part in range(0, len(targets), block):
                    h_part = h[part : part + block]
                    out = buffer if len(h_part) == block else None
                    scores = self.model.score(h_part, catalog, out=out)
                    rank, top = rank_and_top_(scores, targets[part : part + block], top_k)
                    ranks.append(rank)
                    if top is not None:
                        tops.append(top.int())
        ranks = torch.cat(ranks).cpu().numpy()
        return ranks, (torch.cat(tops).cpu().numpy() if tops else None)

    def _rank_with_users(
        self, rows: Rows, use_best: bool, top_k: int | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``_rank`` for models that score with the rows' users (``wants_users``): their
        ``predict(items, users, context)`` returns full-catalog scores, a block of rows at a
        time."""
        size = self.config["eval_batch_size"]
        ranks, tops = [], []
        with self._weights(self.best_state if use_best else None), torch.inference_mode():
            self.model.eval()
            context = self.model.inference_context()
            block = max(1, SCORE_BLOCK_FLOATS // self.dataset.n_items)
            for start in range(0, len(rows), size):
                items, targets, users = rows.batch(slice(start, start + size))
                for part in range(0, len(targets), block):
                    cut = slice(part, part + block)
                    scores = self.model.predict(items[cut], users[cut], context)
                    rank, top = rank_and_top_(scores, targets[cut], top_k)
                    ranks.append(rank)
                    if top is not None:
                        tops.append(top.int())
        ranks = torch.cat(ranks).cpu().numpy()
        return ranks, (torch.cat(tops).cpu().numpy() if tops else None)

    @contextmanager
    def _weights(self, state: dict | None) -> Iterator[None]:
        """Temporarily swaps ``state`` into the model (None: keep the current weights)."""
        if state is None:
            yield
            return
        current = copy.deepcopy(self.model.state_dict())
        self.model.load_state_dict(state)
        try:
            yield
        finally:
            self.model.load_state_dict(current)

    def _split_rows(self, split: str) -> Rows:
        if split not in self._rows:
            data, weights = self.dataset.split(split), None
            if split == "train":  # pop_weighting's weights, diffaug's generated rows
                rows = training_rows(self.config, data, self.dataset.n_items,
                                     name=self.dataset.name, device=self.device)
                data, weights = rows.split, rows.weights
                self.augmentation = rows.augmentation
            self._rows[split] = Rows(
                data, self.config["max_seq_length"], self.device, self.with_users, weights
            )
        return self._rows[split]

    # -- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """A snapshot (copied tensors) of everything needed to resume exactly."""
        rng = {"torch": torch.get_rng_state(), "numpy": self.rng.bit_generator.state}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return copy.deepcopy(
            {
                "config": self.config,
                "epoch": self.epoch,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "best_epoch": self.best_epoch,
                "best_state": self.best_state,
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "bad_epochs": self.bad_epochs,
                "history": self.history,
                "rng": rng,
            }
        )

    def load_state_dict(self, state: dict) -> None:
        """Resume from a ``state_dict()`` checkpoint: weights, optimizer, epoch and history.

        Raises:
            ValueError: the checkpoint was made with another configuration (run-length keys
                such as the epoch cap may differ).
        """
        # Keys added since the checkpoint was written count with their defaults.
        saved = {**default_config(self.config["model"]), **state["config"]}
        differing = sorted(
            key
            for key in set(saved) | set(self.config)
            if key not in RUN_LENGTH_KEYS and saved.get(key) != self.config.get(key)
        )
        if differing:
            raise ValueError(f"checkpoint was trained with a different config: keys {differing}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = state["epoch"]
        self.best_epoch = state["best_epoch"]
        self.best_state = state["best_state"]
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.bad_epochs = state["bad_epochs"]
        self.history = list(state["history"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.rng.bit_generator.state = state["rng"]["numpy"]


