"""What a search or a study piece will cost here, before it runs (``--dry-run``).

Two parts:

- **trial-epochs**: at most ``num_samples x max_epochs``; expected under ASHA from a simulation
  of its asynchronous rule with the search's concurrency (``asha_trial_epochs``). Early stopping
  by patience only lowers it. A kNN model fits once per trial: one "epoch".
- **seconds per epoch**: timed here, on this machine's device, from a few training and
  validation batches of the variant's published configuration (``Trainer.time_epoch``) on the
  dataset as the search sees it (the training-row cut included). Results are kept in the
  project's cache folder (``$CORE_CACHE_DIR/timings.json``, default ``~/.cache/core-hpo``) by
  (variant, precision, dataset, CPU or GPU, threads), so a second dry-run does not time again
  and a dry-run writes nothing into the output directory. The configuration timed is the
  published one at the precision the runs will use (``--precision``, a study's pin). Stages
  before a trial's first epoch (diffaug's diffusion, persona's HDGI) are not timed.

Wall time = trial-epochs x seconds per epoch / trials running at once (an estimate: trials that
share the CPUs run slower each).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from hpo.space import Budget

log = logging.getLogger(__name__)

TIMINGS_FILE = "timings.json"
TIMED_BATCHES = 3


def asha_trial_epochs(
    budget: Budget, fits_once: bool = False, concurrent: int = 1, runs: int = 200
) -> tuple[int, float]:
    """Trial-epochs of a search: at most, and expected under ASHA (module docstring).

    The expectation is a simulation of Ray Tune's asynchronous rule: ``concurrent`` trials run
    at once, each epoch takes the same time, each trial's score is a fixed random draw (so its
    rank among its peers does not change with epochs), and a trial reaching a rung stops when
    its score is below the ``1 - 1/reduction_factor`` percentile of the scores recorded at that
    rung so far (itself included), as ``ray.tune.schedulers.ASHAScheduler`` decides. Early
    trials meet few peers and are promoted more often than successive halving would.

    Args:
        budget: the search's budget.
        fits_once: a kNN model (one fit per trial).
        concurrent: trials running at once.
        runs: simulated searches averaged.

    Returns:
        (at most, expected).
    """
    if fits_once:
        return budget.num_samples, float(budget.num_samples)
    rungs, rung = [], budget.grace_period
    while rung < budget.max_epochs:
        rungs.append(rung)
        rung *= budget.reduction_factor
    rng = np.random.default_rng(0)
    total = 0
    for _ in range(runs):
        total += _simulate_asha(budget, rungs, max(1, concurrent), rng)
    return budget.num_samples * budget.max_epochs, total / runs


def _simulate_asha(budget: Budget, rungs: list[int], concurrent: int, rng) -> int:
    """Trial-epochs of one simulated ASHA search (see ``asha_trial_epochs``)."""
    scores = rng.random(budget.num_samples)
    recorded: dict[int, list[float]] = {r: [] for r in rungs}
    running: list[tuple[int, int, int]] = []  # (time the next epoch ends, trial, epochs done)
    started, now, epochs = 0, 0, 0
    while started < budget.num_samples or running:
        while started < budget.num_samples and len(running) < concurrent:
            running.append((now + 1, started, 0))
            started += 1
        running.sort()
        now, trial, done = running.pop(0)
        done += 1
        epochs += 1
        if done >= budget.max_epochs:
            continue
        if done in recorded:
            seen = recorded[done]
            seen.append(scores[trial])
            cutoff = np.percentile(seen, (1 - 1 / budget.reduction_factor) * 100)
            if scores[trial] < cutoff:
                continue
        running.append((now + 1, trial, done))
    return epochs


@dataclass(frozen=True)
class Timing:
    """Seconds of one epoch (a kNN model: one fit and validation) of a variant on a dataset."""

    epoch_s: float
    device: str  # the CPU's model name or the GPU's
    threads: int

    def describe(self) -> str:
        """The timing as the plan prints it: seconds per epoch, device and threads."""
        return f"{self.epoch_s:,.1f} s per epoch on {self.device} ({self.threads} threads)"


def device_name() -> str:
    """The GPU's name when CUDA is available, else the CPU's model name with its vector tier,
    family and model (``models.precision.device_label``)."""
    from models.precision import device_label

    return device_label()


def time_variant(config: dict, dataset, *, threads: int, cache: bool = True) -> Timing:
    """One epoch's time of ``config`` on ``dataset`` here, timed from a few batches (or read
    from the cache of earlier timings).

    Args:
        config: the configuration timed (``{"model": ...}`` and any keys; the published
            configuration when only the model is given).
        dataset: the loaded dataset, as a search sees it (without test).
        threads: torch threads of one trial.
        cache: read and keep timings in ``$CORE_CACHE_DIR/timings.json``.

    Returns:
        The timing.
    """
    from data.cache import CacheStore
    from models.trainers import make_trainer

    device = device_name()
    precision = config.get("precision", "auto")
    key = f"{config['model']}|{precision}|{dataset.name}|{device}|{threads}"
    store = CacheStore() if cache else None
    known = store.read_records(TIMINGS_FILE) if store else {}
    if key in known:
        return Timing(known[key], device, threads)
    before = _torch_threads()
    try:
        trainer = make_trainer({**config, "epochs": 1}, dataset, num_threads=threads)
        epoch_s = trainer.time_epoch(TIMED_BATCHES)["epoch_s"]
    finally:
        _set_torch_threads(before)
    if store and store.write_record(TIMINGS_FILE, key, epoch_s) is None:
        # an estimate is not worth failing a dry-run for
        log.warning("cannot keep the timing in %s", store.path(TIMINGS_FILE))
    return Timing(epoch_s, device, threads)


def timed_config(space, precision: str | None = None) -> dict:
    """The configuration a cost estimate times: the space's published configuration with its
    fixed keys, at the precision its runs will use (``--precision`` or a study's pin; a bf16
    epoch on a CPU with native bf16 is much shorter than the fp32 one a pinned study runs).

    Args:
        space: the ``hpo.space.SearchSpace``.
        precision: the precision every run is given (None: the configuration's own, auto).
    """
    from models.registry import config_keys

    config = {"model": space.model, **space.fixed}
    if precision and "precision" in config_keys(space.model):
        config["precision"] = precision
    return config


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def local_slots(cpus_per_trial: float) -> int:
    """Trials this machine runs side by side at ``cpus_per_trial`` (for an estimate without a
    Ray cluster).

    Args:
        cpus_per_trial: CPUs one trial takes.
    """
    return max(1, int(len(os.sched_getaffinity(0)) // max(cpus_per_trial, 1e-9)))


def format_duration(seconds: float) -> str:
    """``3 h 05 min``, ``12 min``, ``40 s``."""
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def search_cost_lines(plan, dataset=None) -> list[str]:
    """The cost of one search here, in words (for ``--dry-run``): trial-epochs at most and
    expected under ASHA, the timed seconds per epoch and the wall time they give.

    Args:
        plan: the search's ``hpo.search.SearchPlan``.
        dataset: the dataset already loaded as the search sees it (None: loaded here).
    """
    from models.registry import dataset_needs, fits_once

    once = fits_once(plan.space.model)
    slots = plan.resources.max_concurrent or local_slots(plan.resources.cpus_per_trial)
    most, expected = asha_trial_epochs(plan.budget, once, slots)
    if dataset is None:
        dataset = plan.dataset.load(**dataset_needs(plan.space.model)).without_test()
    timing = time_variant(timed_config(plan.space, plan.precision), dataset,
                          threads=plan.resources.torch_threads)
    unit = "fits" if once else "trial-epochs"
    what = ("one fit and validation per trial (ASHA has nothing to stop)" if once
            else f"at most {most:,}, expected {expected:,.1f} under ASHA")
    return [
        f"cost        {unit}: {what}; {timing.describe()}"
        + (" (fit + validation)" if once else ", timed from a few batches"),
        f"            about {format_duration(expected * timing.epoch_s / slots)} expected, "
        f"{format_duration(most * timing.epoch_s / slots)} at most, with {slots} trial(s) at "
        "once (stages before a first epoch not included)",
    ]
