"""Shared fixtures: small generated datasets on disk and one local Ray instance per test session."""

from __future__ import annotations

import os

import pytest

TINY = "tiny"


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """A data dir with `tiny/tiny.{train,valid,test}.inter`, written by the synthetic generator."""
    from data.synthetic import write_atomic

    root = tmp_path_factory.mktemp("datasets")
    write_atomic(root / TINY, name=TINY, preset="tiny", seed=0)
    return root


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance (2 CPUs), started once: start-up costs seconds."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()
