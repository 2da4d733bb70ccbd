"""What Ray Tune trials run: train one configuration, reporting and saving its state every epoch.

Search trials receive the dataset without its test split (see ``SessionDataset.without_test``), so
nothing in a search can score test data. Test-stage trials retrain a selected configuration and
score the test split exactly once, with the best-validation checkpoint, inside their last report.

Resuming (issue 20). A search trial keeps its own resume files, ``<root>/<trial id>/
epoch_NNNNNN.pt`` (``ResumeStore``; the newest two while it trains, the last one once it has
finished; each written to a ``.partial`` file and renamed, so a file is whole or absent), and
reports a Tune checkpoint only with its last result.
Why not Tune's checkpoint every epoch, as before: with ``CheckpointConfig(num_to_keep=1)`` Tune
deletes a trial's previous checkpoint as soon as the driver registers the next one, while the
experiment state that ``--resume`` restores is written only every few seconds (and copied to
storage in a background thread). A driver killed in between leaves a state naming a checkpoint
that is gone, and Ray's ``Trainable.restore`` then fails the trial before any of our code runs
("Could not recover from checkpoint as it does not exist on storage anymore"). Keeping two
checkpoints and snapshotting after every step narrows that window but cannot close it (the
snapshot is still copied asynchronously), and restarting trials that errored that way after the
fact would re-open runs already recorded as failed. With one Tune checkpoint per trial, written
when the trial ends, Tune never deletes a checkpoint a state file may name; a trial Tune restarts
finds its newest readable resume file by itself (public APIs only: ``tune.get_context()
.get_trial_id()`` and the root the driver passes). A file it cannot read (truncated) is moved
aside as ``.unreadable`` with a warning naming it, and the one before is used, or none.

A resumed trial first reports the epoch it resumed from again (with ``RESUMED_KEY``): the driver
that died may not have logged it, and the MLflow logger skips epochs it already holds, so every
epoch is logged exactly once. At most the epoch in progress is lost. The last Tune checkpoint of
a trial still holds ``trainer.pt`` (and, for test-stage trials, the test files), as the test stage
expects. Test-stage trials, which are never resumed, keep a Tune checkpoint every epoch.

A trial that cannot write its resume file (the output directory became unwritable) reports that
(``STORAGE_ERROR_KEY``) instead of failing, and the driver stops the search: the trial stays
resumable.

Every report also says where the trial ran (``node_id``, ``device``, ``gpu_ids``), which the
MLflow logger records as tags. A trial trains on the GPU Ray assigned to it; given a GPU but no
usable CUDA device it says so and trains on CPU, or fails when CUDA is required.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow.fs
import ray
import torch
from ray import tune

from hpo.faultpoints import FaultPoints
from hpo.outcome import (
    DEVICE_WARNING_KEY,
    FINISHED_KEY,
    RESUME_NOTE_KEY,
    RESUMED_KEY,
    STORAGE_ERROR_KEY,
    split_meta,
)
from models.recommend import MODEL_FILE, save_bundle
from models.registry import fits_once
from models.trainer import Trainer
from models.trainers import make_trainer

CHECKPOINT_FILE = "trainer.pt"
TEST_ROWS_FILE = "test_rows.npz"
TEST_METRICS_FILE = "test_metrics.json"

log = logging.getLogger(__name__)


class CudaUnavailableError(RuntimeError):
    """The trial was given a GPU and CUDA is required, but torch cannot use any CUDA device."""


def train_trial(
    config: dict, dataset, *, num_threads: int = 1, require_cuda: bool = False,
    resume_root: str | None = None, faults: FaultPoints | None = None,
) -> None:
    """A search trial: train until early stopping, the epoch budget, or ASHA stops it.

    Args:
        config: the trial's config (with the searcher's bookkeeping, ``META_KEY``).
        dataset: the dataset, without its test split.
        num_threads: torch threads.
        require_cuda: fail instead of training on CPU when a GPU was given but CUDA is unusable.
        resume_root: where trials keep their resume files (``ResumeStore``): a local path or a
            URI pyarrow opens; None: a Tune checkpoint every epoch instead.
        faults: the fault suite's test hooks (``hpo.faultpoints``), none by default.
    """
    config, meta = split_meta(config)
    store = ResumeStore(resume_root, tune.get_context().get_trial_id()) if resume_root else None
    _train_reporting(config, dataset, num_threads, require_cuda, store=store,
                     trial=meta.get("number"), faults=faults or FaultPoints())


def retrain_trial(
    config: dict, dataset, *, num_threads: int = 1, require_cuda: bool = False,
    faults: FaultPoints | None = None,
) -> None:
    """A test-stage trial: `config["job"]` holds the selected configuration with its seed.

    Args:
        config: the Tune trial's config (``{"job": ...}``, see ``hpo.seed_runs.seed_job``).
        dataset: the dataset, test split included (scored once, at the end).
        num_threads: torch threads.
        require_cuda: fail instead of training on CPU when a GPU was given but CUDA is unusable.
        faults: the fault suite's test hooks (their TRIAL field matches no seed run: leave it
            out), none by default.
    """
    _train_reporting(config["job"]["config"], dataset, num_threads,
                     require_cuda, on_last_epoch=_score_test, faults=faults)


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


def trial_device(require_cuda: bool) -> tuple[torch.device, list[str], str]:
    """The device of the running trial (see `pick_device`), the GPU ids Ray assigned, and the
    warning about a fallback to CPU ("" if none; also reported, so the driver's console shows
    it without the trials' logs)."""
    gpu_ids = [str(i) for i in ray.get_gpu_ids()]
    device, warning = pick_device(gpu_ids, torch.cuda.is_available(),
                                  os.environ.get("CUDA_VISIBLE_DEVICES"), require_cuda)
    if warning:
        log.warning(warning)
    return device, gpu_ids, warning or ""


class ResumeStore:
    """One trial's own resume files: ``<root>/<trial id>/epoch_NNNNNN.pt``, the newest two kept.

    Each file is the trainer's whole state (``Trainer.state_dict``), written to a ``.partial``
    file and renamed, so a file present is whole unless something outside damaged it.

    Args:
        root: the folder of all trials' resume files: a local path or a URI pyarrow opens
            (``s3://...``), the same on every node.
        trial_id: the Ray Tune trial id (kept by ``--resume``).
    """

    KEEP = 2
    PATTERN = re.compile(r"epoch_(\d{6})\.pt$")

    def __init__(self, root: str, trial_id: str):
        self.fs, base = pyarrow.fs.FileSystem.from_uri(root)
        self.directory = f"{base.rstrip('/')}/{trial_id}"

    def path(self, epoch: int) -> str:
        """The resume file of ``epoch``.

        Args:
            epoch: the epoch the file ends with.
        """
        return f"{self.directory}/epoch_{epoch:06d}.pt"

    def files(self) -> list[tuple[int, str]]:
        """The complete resume files as ``(epoch, path)``, newest first."""
        selector = pyarrow.fs.FileSelector(self.directory, allow_not_found=True)
        found = []
        for info in self.fs.get_file_info(selector):
            match = self.PATTERN.search(info.base_name)
            if match and info.type == pyarrow.fs.FileType.File:
                found.append((int(match.group(1)), info.path))
        return sorted(found, reverse=True)

    def save(self, trainer: Trainer, faults: FaultPoints | None = None,
             trial: int | None = None) -> str:
        """Write the trainer's state as the resume file of its epoch; keep the newest two.

        Args:
            trainer: the trainer, after an epoch.
            faults: test hooks (``checkpoint`` fires halfway through the write).
            trial: the Optuna trial number (for the test hooks).

        Returns:
            The file written.

        Raises:
            OSError: the file cannot be written.
        """
        buffer = io.BytesIO()
        torch.save(trainer.state_dict(), buffer)
        data = buffer.getvalue()
        path = self.path(trainer.epoch)
        partial = path + ".partial"
        self.fs.create_dir(self.directory, recursive=True)
        with self.fs.open_output_stream(partial) as out:
            out.write(data[: len(data) // 2])
            if faults:
                out.flush()
                faults.fire("checkpoint", trial, trainer.epoch, path=partial)
            out.write(data[len(data) // 2:])
        self.fs.move(partial, path)
        self.prune(self.KEEP)
        return path

    def prune(self, keep: int) -> None:
        """Delete all but the newest ``keep`` resume files (the last epoch needs no fallback).

        Args:
            keep: how many to keep.
        """
        for _, old in self.files()[keep:]:
            self.fs.delete_file(old)

    def restore(self, trainer: Trainer) -> tuple[int, str | None]:
        """Load the newest readable resume file into ``trainer``.

        A file that cannot be read (truncated, corrupt, another epoch inside) is moved aside as
        ``<file>.unreadable`` and the next older one tried.

        Args:
            trainer: a freshly built trainer of the trial's config.

        Returns:
            ``(epoch, note)``: the epoch restored (0: none, train from scratch) and, when files
            were skipped, a sentence naming them (None otherwise).
        """
        skipped = []
        for epoch, path in self.files():
            try:
                with self.fs.open_input_file(path) as source:
                    state = torch.load(io.BytesIO(source.read()), map_location=trainer.device,
                                       weights_only=True)
                if state.get("epoch") != epoch:
                    raise ValueError(f"it holds epoch {state.get('epoch')}")
            except Exception as exc:  # any unreadable file is skipped, said so, and kept aside
                skipped.append(f"{path} is unreadable ({type(exc).__name__}: {exc})")
                with contextlib.suppress(OSError):  # kept aside when the storage allows it
                    self.fs.move(path, path + ".unreadable")
                continue
            trainer.load_state_dict(state)
            return epoch, (f"{'; '.join(skipped)}: resumed from {path} (epoch {epoch})"
                           if skipped else None)
        return 0, f"{'; '.join(skipped)}: restarted from scratch" if skipped else None


def _train_reporting(
    config: dict, dataset, num_threads: int, require_cuda: bool = False,
    on_last_epoch: Callable[[Trainer, Path], dict] | None = None,
    store: ResumeStore | None = None, trial: int | None = None,
    faults: FaultPoints | None = None,
) -> None:
    """Train and report every epoch; see the module docstring for what is saved where."""
    faults = faults or FaultPoints()
    device, gpu_ids, device_warning = trial_device(require_cuda)
    placement = {
        "node_id": ray.get_runtime_context().get_node_id(),
        "device": str(device),
        "gpu_ids": ",".join(gpu_ids),
        DEVICE_WARNING_KEY: device_warning,
    }
    trainer = make_trainer(config, dataset, device=device, num_threads=num_threads)
    # What the run's auto settings became here (a kNN baseline has neither: "-").
    placement["precision_used"] = getattr(trainer, "precision", "-")
    placement["loss_impl_used"] = getattr(trainer, "loss_impl", "-")
    resumed, note = store.restore(trainer) if store is not None else (0, None)
    if note:
        log.warning("trial %s: %s", tune.get_context().get_trial_id(), note)
    checkpoint = tune.get_checkpoint() if not resumed else None
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trainer.load_checkpoint(Path(directory) / CHECKPOINT_FILE)
        resumed = trainer.epoch if store is not None else 0
    # A resumed trial first reports the epoch it resumed from again (module docstring).
    repeat = {**trainer.history[-1], RESUMED_KEY: resumed} if resumed else None
    if repeat is not None and note:
        repeat[RESUME_NOTE_KEY] = note
    while repeat is not None or not trainer.should_stop:
        if repeat is not None:
            metrics, repeat = repeat, None
        else:
            faults.fire("train", trial, trainer.epoch + 1, trainer=trainer)
            metrics = trainer.run_epoch()
            if store is not None:
                try:
                    store.save(trainer, faults, trial)
                except OSError as exc:
                    _report_storage_error(metrics, f"cannot write {store.path(trainer.epoch)}",
                                          exc)
        metrics[FINISHED_KEY] = int(trainer.should_stop)
        metrics.update(placement)
        if store is not None:
            if not trainer.should_stop:
                tune.report(metrics)
                continue
            with contextlib.suppress(OSError):  # only the last state is needed from now on
                store.prune(1)
        with tempfile.TemporaryDirectory() as directory:
            trainer.save_checkpoint(Path(directory) / CHECKPOINT_FILE)
            if trainer.should_stop and on_last_epoch is not None:
                metrics.update(on_last_epoch(trainer, Path(directory)))
            try:
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
            except OSError as exc:
                if store is None:
                    raise
                _report_storage_error(metrics, "cannot write the trial's last checkpoint", exc)
        if trainer.should_stop:
            break


def _report_storage_error(metrics: dict, what: str, exc: OSError) -> None:
    """Tell the driver this trial cannot write its state; the driver stops the search."""
    tune.report({**metrics, STORAGE_ERROR_KEY: f"{what}: {exc}"})
    raise exc  # reached only under a driver that did not stop the search


def has_model_bundle(config: dict) -> bool:
    """Whether a run of ``config`` leaves a model bundle (``models.recommend``): the CORE
    variants; a kNN baseline is its training data and is not bundled.

    Args:
        config: a run's config, or a test-stage trial's (``{"job": {"config": ...}}``).
    """
    config = config.get("job", {}).get("config", config)
    return not fits_once(config["model"])


def _score_test(trainer: Trainer, directory: Path) -> dict:
    """Score the selected (best-validation) checkpoint on test, once; keep per-row results and
    the model bundle of that checkpoint (``models.recommend``, logged to MLflow as
    ``model/model.pt``)."""
    metrics, ranks, topk = trainer.evaluate_detailed("test", use_best=True)
    np.savez_compressed(directory / TEST_ROWS_FILE, ranks=ranks, topk=topk)
    (directory / TEST_METRICS_FILE).write_text(json.dumps(metrics))
    if has_model_bundle(trainer.config):
        save_bundle(trainer, directory / MODEL_FILE)
    return {f"test_{name}": value for name, value in metrics.items()}
