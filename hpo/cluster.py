"""Where trials run: connecting to Ray, the resources each trial asks for, where results live.

One machine or a cluster, the driver is the same: it connects (``--address``, or the cluster of
the Ray job it runs in), asks Ray for ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs per
trial (fractions pack several trials on one GPU), and keeps trial directories and checkpoints
under ``storage_path`` when given: a path every node mounts or a cloud URI, since Ray does not
copy trial directories from worker nodes to the head.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import ray

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resources:
    """Per-trial resources and failure policy, shared by the search and the test stage."""

    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 0  # 0: as many as the cluster's CPUs/GPUs hold at once
    address: str | None = None  # None: a local instance, or the cluster of the current Ray job
    storage_path: str | None = None  # None: trial directories under the output directory
    max_failures: int = 0  # retries of a trial that errored (also a node that died under it)
    require_cuda: bool = False  # a trial given a GPU fails instead of falling back to CPU

    @property
    def torch_threads(self) -> int:
        """Torch threads of a trial: its whole CPUs (at least one)."""
        return max(1, int(self.cpus_per_trial))

    def per_trial(self) -> dict[str, float]:
        """What each trial asks Ray for (``tune.with_resources``)."""
        return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}

    def concurrent_trials(self) -> int:
        """--max-concurrent, else the trials the connected cluster fits side by side.

        Tune with a search algorithm and no limit keeps one trial pending at a time, which on a
        2-CPU machine already halves throughput; so the limit is always set.
        """
        if self.max_concurrent:
            return self.max_concurrent
        total = ray.cluster_resources()
        slots = total.get("CPU", 1.0) // self.cpus_per_trial
        if self.gpus_per_trial:
            slots = min(slots, total.get("GPU", 0.0) // self.gpus_per_trial)
        return max(1, int(slots))

    def trials_location(self, local_dir: Path, output_dir: Path) -> str:
        """Where Tune keeps an experiment's trials: `local_dir`, or its mirror in storage_path.

        `local_dir` lies under `output_dir`; with a storage path its place below the output
        directory (`<dataset>/<space>/<stamp>`) is kept, so --resume finds the same trials again.
        """
        if not self.storage_path:
            return str(local_dir)
        relative = Path(local_dir).resolve().relative_to(Path(output_dir).resolve()).as_posix()
        return join_storage(self.storage_path, relative)


def tune_experiment_name(kind: str, run_id: str) -> str:
    """The name of a Tune experiment (its folder under the storage path): ``<kind>-<8 hex>``,
    from the MLflow parent run it belongs to.

    Ray stages a driver's experiment files in ``<Ray session>/artifacts/<start second>/<name>``
    on the driver's node, so two drivers on one cluster that start experiments of one name in
    the same second share that folder and sync each other's experiment state (Ray reports a
    failed sync, and --resume could restore the other search's trials). A name per parent run
    keeps them apart.

    Args:
        kind: what the experiment holds ("trials", "seeds").
        run_id: the MLflow parent run's id (unique per search or test stage).

    Returns:
        The name.
    """
    return f"{kind}-{run_id[:8]}"


class RunInterruptedError(Exception):
    """Ray Tune was stopped (Ctrl-C, SIGINT or SIGUSR1) before every trial of an experiment
    ended: Tune saves the experiment's state and returns from ``Tuner.fit()`` as if it had
    finished, with the unfinished trials still running or pending. What was recorded is kept;
    the experiment continues from its saved state (``--resume``; a study's piece stays partial).

    Args:
        stopped: what stopped where ("search trm interrupted: 1 of 6 trials ended ...").
        advice: how to continue, for the message's end.
    """

    def __init__(self, stopped: str, advice: str = "") -> None:
        super().__init__(f"{stopped}; {advice}" if advice else stopped)
        self.stopped = stopped


def check_ended(grid, expected: int, what: str) -> None:
    """Raise ``RunInterruptedError`` unless ``expected`` trials of the experiment ended.

    A trial has ended when it finished, was stopped by the scheduler (both TERMINATED) or
    failed for good (ERROR). The statuses in ``grid`` cannot tell: when interrupted, Tune saves
    the experiment's state and then stops the trials still running, marking them TERMINATED in
    memory as well. So this reads the state Tune saved (``tune.ExperimentAnalysis``), where they
    are still unfinished, and trials the searcher had yet to suggest are missing altogether.

    Args:
        grid: the ``ResultGrid`` that ``Tuner.fit()`` returned.
        expected: the trials the experiment was asked for (a search's ``num_samples``, a
            seed experiment's jobs).
        what: the experiment, for the message ("search trm", "seed runs").

    Raises:
        RunInterruptedError: fewer than ``expected`` trials ended.
    """
    from ray import tune

    saved = tune.ExperimentAnalysis(grid.experiment_path,
                                    storage_filesystem=grid.filesystem).trials
    ended = sum(trial.status in ("TERMINATED", "ERROR") for trial in saved)
    if ended < expected:
        raise RunInterruptedError(
            f"{what} interrupted: {ended} of {expected} trials ended before Ray Tune stopped")


def join_storage(storage_path: str, relative: str) -> str:
    """`relative` under a storage path: a cloud URI (s3://, gs://, ...) or a shared directory."""
    if "://" in storage_path:
        return f"{storage_path.rstrip('/')}/{relative}"
    return str(Path(storage_path).expanduser().resolve() / relative)


def validate_resources(resources: Resources) -> None:
    """Reject what Ray would refuse later, or a GPU option that cannot do what it says."""
    if resources.cpus_per_trial <= 0:
        raise ValueError(f"--cpus-per-trial must be > 0; got {resources.cpus_per_trial}")
    gpus = resources.gpus_per_trial
    if not 0 <= gpus <= 1:
        raise ValueError(f"--gpus-per-trial must be in [0, 1] (a trial trains on one device; "
                         f"a fraction packs several trials on one GPU); got {gpus}")
    if resources.require_cuda and gpus == 0:
        raise ValueError("--require-cuda needs --gpus-per-trial > 0: trials given no GPU "
                         "always train on CPU")
    if resources.max_failures < 0:
        raise ValueError(f"--max-failures must be >= 0; got {resources.max_failures}")


def in_ray_job() -> bool:
    """True in the entrypoint of a `ray job submit` job (Ray hands it the job's config)."""
    return "job_submission_id" in os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "")


class OneLineSaveError(logging.Filter):
    """Ray Tune logs a failed copy of the experiment state with a traceback (ERROR). One seen
    on Ctrl-C: its background copy of the driver's staging folder listed the searcher's
    temporary state file, which was renamed before it was opened (FileNotFoundError); Tune
    then writes the state again before it stops, and ``check_ended`` reads what was saved.
    This filter keeps the record as one WARNING line with the exception, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite a failed state save in place as one line; keep every record."""
        if record.exc_info and record.getMessage().startswith("Saving experiment state"):
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()}{type(exc).__name__}: {exc}"
            record.args, record.exc_info, record.exc_text = (), None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


EXPERIMENT_STATE_LOGGER = "ray.tune.execution.experiment_state"


def quiet_state_save_errors() -> None:
    """Puts ``OneLineSaveError`` on Ray Tune's experiment-state logger, once."""
    logger = logging.getLogger(EXPERIMENT_STATE_LOGGER)
    if not any(isinstance(f, OneLineSaveError) for f in logger.filters):
        logger.addFilter(OneLineSaveError())


def init_ray(address: str | None, log_to_driver: bool = True) -> None:
    """Connect once: to `address`, to the job's cluster under `ray job submit`, or start locally.

    Args:
        address: an existing cluster ('auto' or HOST:PORT), or None.
        log_to_driver: show the trials' own output (logs, warnings) on the driver's console;
            off for the quiet default console (a failed trial's error is reported either way).
    """
    # Trials checkpoint every epoch by design; Tune's "excessive snapshot" warning is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    quiet_state_save_errors()
    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        # An existing cluster: given explicitly, or the one a Ray job's entrypoint runs in.
        ray.init(address=address or None, log_to_driver=log_to_driver)
        resources = ray.cluster_resources()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        log.info("connected to a Ray cluster of %d node(s): %s", len(nodes),
                 {k: v for k, v in sorted(resources.items()) if k in ("CPU", "GPU")})
    else:
        ray.init(include_dashboard=False, configure_logging=False, log_to_driver=log_to_driver)
