"""How a trial ended, and what a search tells about a trial besides its config.

Shared by the trainable (which reports ``FINISHED_KEY``), the study searcher (which tells Optuna),
the MLflow logger and the console (which record and print the outcome), so every part of a search
agrees on one rule.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

# Result key the trainable sets to 1 on its last report, when training ended on its own.
FINISHED_KEY = "finished"
# Result key of a trial's warning about its device (a GPU assigned, CUDA unusable: CPU instead).
DEVICE_WARNING_KEY = "device_warning"
# Config key under which the searcher passes a trial's bookkeeping (its Optuna trial number and
# where its configuration came from); the trainable and every record of the config drop it.
META_KEY = "trial_meta"
# Result keys of a trial that resumed from its own resume file (``hpo.trainable``): the epoch it
# resumed from (its first report repeats that epoch), and what it skipped on the way (a file it
# could not read), which the driver logs as a warning and tags on the trial's run.
RESUMED_KEY = "resumed_from_epoch"
RESUME_NOTE_KEY = "resume_note"
# Result key of a trial that could not write its state (the output directory became unwritable):
# the driver stops the search on it, leaving the trial resumable instead of failed.
STORAGE_ERROR_KEY = "storage_error"


class OutputUnwritableError(RuntimeError):
    """A trial could not write its state to the search's storage: the search stopped, every
    trial is left resumable (``--resume`` once the storage is writable again)."""


def storage_error(result: dict | None) -> OutputUnwritableError | None:
    """The error a trial's result reports about writing its state, if any.

    Args:
        result: a trial's result.
    """
    message = (result or {}).get(STORAGE_ERROR_KEY)
    if not message:
        return None
    return OutputUnwritableError(
        f"{message}. The search stopped; no trial is marked failed for it. Make the output "
        "directory writable again and continue with --resume.")


class TrialOutcome(enum.Enum):
    COMPLETED = "completed"
    STOPPED = "stopped"  # stopped early by the scheduler (ASHA)
    FAILED = "failed"


def trial_outcome(last_result: dict | None, error: bool) -> TrialOutcome:
    """How a trial ended.

    Args:
        last_result: the trial's last reported result (None if it reported nothing).
        error: whether Ray Tune recorded an error for the trial.

    Returns:
        FAILED on an error; COMPLETED when the trainer finished on its own (early stopping or
        the epoch budget, ``FINISHED_KEY`` set); otherwise STOPPED (the scheduler stopped it).
    """
    if error:
        return TrialOutcome.FAILED
    if last_result and last_result.get(FINISHED_KEY):
        return TrialOutcome.COMPLETED
    return TrialOutcome.STOPPED


def split_meta(config: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A trial's config without the searcher's bookkeeping, and that bookkeeping.

    Args:
        config: a trial's config as Ray Tune holds it.

    Returns:
        ``(config, meta)``: the training config, and the ``META_KEY`` entry ({} if none).
    """
    config = dict(config or {})
    meta = config.pop(META_KEY, None) or {}
    return config, dict(meta)


def trial_error_text(trial) -> str:
    """The error Ray Tune recorded for a failed trial (its error file), or a placeholder.

    Args:
        trial: a Ray Tune trial.
    """
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        return Path(path).read_text(errors="replace").strip()
    return "trial failed (no error file recorded by Ray Tune)"
