"""What a dry-run says a search or a study will cost: the configuration timed and its cache."""

from __future__ import annotations

from conftest import TINY

from data import DatasetSource
from data.cache import CacheStore
from hpo.cost import TIMINGS_FILE, time_variant, timed_config
from hpo.space import load_space


def test_the_timed_configuration_runs_at_the_pieces_precision():
    trm, stan = load_space("trm.yaml"), load_space("stan.yaml")
    assert timed_config(trm, "fp32") == {"model": "trm", **trm.fixed, "precision": "fp32"}
    assert "precision" not in timed_config(trm)  # none given: the configuration's own (auto)
    assert "precision" not in timed_config(stan, "fp32")  # a kNN model has none


def test_timings_are_kept_per_precision(tiny_data_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("CORE_CACHE_DIR", str(tmp_path))
    dataset = DatasetSource(TINY, data_dir=tiny_data_dir).load().without_test()
    space = load_space("ave.yaml")
    fp32 = time_variant(timed_config(space, "fp32"), dataset, threads=1)
    auto = time_variant(timed_config(space), dataset, threads=1)
    kept = CacheStore().read_records(TIMINGS_FILE)
    assert sorted(kept) == sorted([f"ave|fp32|{TINY}|{fp32.device}|1",
                                   f"ave|auto|{TINY}|{auto.device}|1"])
    assert kept[f"ave|fp32|{TINY}|{fp32.device}|1"] == fp32.epoch_s > 0
    # a second estimate reads the cache: the same figure, not a new timing
    assert time_variant(timed_config(space, "fp32"), dataset, threads=1) == fp32
