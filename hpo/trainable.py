"""What Ray Tune trials run: train one configuration, reporting and checkpointing every epoch.

Search trials receive the dataset without its test split (see ``SessionDataset.without_test``), so
nothing in a search can score test data. Test-stage trials retrain a selected configuration and
score the test split exactly once, with the best-validation checkpoint, inside their last report.

Every report also says where the trial ran (``node_id``, ``device``, ``gpu_ids``), which the
MLflow logger records as tags. A trial trains on the GPU Ray assigned to it; given a GPU but no
usable CUDA device it says so and trains on CPU, or fails when CUDA is required.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import ray
import torch
from ray import tune

from hpo.outcome import FINISHED_KEY, split_meta
from models.recommend import MODEL_FILE, save_bundle
from models.trainer import Trainer

CHECKPOINT_FILE = "trainer.pt"
TEST_ROWS_FILE = "test_rows.npz"
TEST_METRICS_FILE = "test_metrics.json"

log = logging.getLogger(__name__)


class CudaUnavailableError(RuntimeError):
    """The trial was given a GPU and CUDA is required, but torch cannot use any CUDA device."""


def train_trial(config: dict, dataset, num_threads: int = 1, require_cuda: bool = False) -> None:
    """A search trial: train until early stopping, the epoch budget, or ASHA stops it."""
    _train_reporting(split_meta(config)[0], dataset, num_threads, require_cuda)


def retrain_trial(
    config: dict, dataset, num_threads: int = 1, require_cuda: bool = False
) -> None:
    """A test-stage trial: `config["job"]` holds the selected configuration with its seed."""
    _train_reporting(config["job"]["config"], dataset, num_threads,
                     require_cuda, on_last_epoch=_score_test)


def pick_device(
    gpu_ids: Sequence, cuda_available: bool, visible_devices: str | None, require_cuda: bool
) -> tuple[torch.device, str | None]:
    """The device of a trial Ray gave `gpu_ids`; returns it with a warning to log, if any.

    No GPU assigned: CPU, even on a GPU node, so CPU trials never crowd the GPU trials. A GPU
    assigned: its place among the visible devices; Ray narrows CUDA_VISIBLE_DEVICES to the
    assigned GPU, so that is device 0 (without it, e.g. with Ray's
    RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES, the id itself).
    """
    if not gpu_ids:
        return torch.device("cpu"), None
    if cuda_available:
        visible = [d.strip() for d in visible_devices.split(",")] if visible_devices else None
        first = str(gpu_ids[0])
        if visible is None:
            index = int(first)
        else:
            index = visible.index(first) if first in visible else 0
        return torch.device("cuda", index), None
    problem = (
        f"Ray assigned GPU {','.join(map(str, gpu_ids))} to this trial but torch sees no CUDA "
        f"device (torch {torch.__version__}, CUDA build {torch.version.cuda}, "
        f"CUDA_VISIBLE_DEVICES={visible_devices!r})"
    )
    if require_cuda:
        raise CudaUnavailableError(f"{problem}; --require-cuda was given, so the trial fails")
    return torch.device("cpu"), f"{problem}: falling back to CPU for this trial"


def trial_device(require_cuda: bool) -> tuple[torch.device, list[str]]:
    """The device of the running trial (see `pick_device`) and the GPU ids Ray assigned."""
    gpu_ids = [str(i) for i in ray.get_gpu_ids()]
    device, warning = pick_device(gpu_ids, torch.cuda.is_available(),
                                  os.environ.get("CUDA_VISIBLE_DEVICES"), require_cuda)
    if warning:
        log.warning(warning)
    return device, gpu_ids


def _train_reporting(
    config: dict, dataset, num_threads: int, require_cuda: bool = False,
    on_last_epoch: Callable[[Trainer, Path], dict] | None = None,
) -> None:
    device, gpu_ids = trial_device(require_cuda)
    placement = {
        "node_id": ray.get_runtime_context().get_node_id(),
        "device": str(device),
        "gpu_ids": ",".join(gpu_ids),
    }
    trainer = Trainer(config, dataset, device=device, num_threads=num_threads)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trainer.load_checkpoint(Path(directory) / CHECKPOINT_FILE)
    while not trainer.should_stop:
        metrics = trainer.run_epoch()
        metrics[FINISHED_KEY] = int(trainer.should_stop)
        metrics.update(placement)
        with tempfile.TemporaryDirectory() as directory:
            trainer.save_checkpoint(Path(directory) / CHECKPOINT_FILE)
            if trainer.should_stop and on_last_epoch is not None:
                metrics.update(on_last_epoch(trainer, Path(directory)))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


def _score_test(trainer: Trainer, directory: Path) -> dict:
    """Score the selected (best-validation) checkpoint on test, once; keep per-row results and
    the model bundle of that checkpoint (``models.recommend``, logged to MLflow as
    ``model/model.pt``)."""
    metrics, ranks, topk = trainer.evaluate_detailed("test", use_best=True)
    np.savez_compressed(directory / TEST_ROWS_FILE, ranks=ranks, topk=topk)
    (directory / TEST_METRICS_FILE).write_text(json.dumps(metrics))
    save_bundle(trainer, directory / MODEL_FILE)
    return {f"test_{name}": value for name, value in metrics.items()}
