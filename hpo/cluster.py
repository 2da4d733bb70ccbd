"""Where trials run: connecting to Ray and the resources each trial asks for."""

from __future__ import annotations

import os
from dataclasses import dataclass

import ray


@dataclass(frozen=True)
class Resources:
    """Per-trial resources, shared by the search and the test stage."""

    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 0  # 0: as many as the cluster fits
    address: str | None = None  # None: a local instance, or the cluster of the current Ray job

    @property
    def torch_threads(self) -> int:
        return max(1, int(self.cpus_per_trial))

    def per_trial(self) -> dict[str, float]:
        return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}


def init_ray(address: str | None) -> None:
    """Connect once: to `address`, to the job's cluster under `ray job submit`, or start locally."""
    # Trials checkpoint every epoch by design; Tune's "excessive snapshot" warning is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address)
    else:
        ray.init(include_dashboard=False, configure_logging=False)
