"""The kNN baselines searched and tested like any variant: launch.py's search (trial 0 is
session-rec's published configuration, one fit per trial) and --stage all against CORE-trm."""

from __future__ import annotations

import contextlib
import io
import json

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

import launch
from hpo.optuna_study import published_params
from hpo.space import SPACES_DIR, load_space
from hpo.tracking import PARENT_TAG
from models.knn import KNN_DEFAULTS

TINY = "tiny"  # written by the tiny_data_dir fixture


def run(args: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = launch.main(args)
    return rc, out.getvalue()


@pytest.mark.parametrize("name", ["sknn", "vsknn", "stan", "vstan"])
def test_trial_0_of_each_knn_space_is_session_recs_published_configuration(name):
    params, skipped = published_params(load_space(f"{name}.yaml"))
    assert skipped == []
    assert params == {k: v for k, v in KNN_DEFAULTS[name].items()
                      if k in {p.name for p in load_space(f"{name}.yaml").parameters}}
    assert set(params) >= {"k", "sample_size", "sampling"}


@pytest.mark.slow
def test_knn_search_and_test_stage_against_core_trm(tmp_path, tiny_data_dir, ray_local):
    small_trm = yaml.safe_load((SPACES_DIR / "trm.yaml").read_text())
    small_trm["fixed"] = {"embedding_size": 16, "inner_size": 32, "batch_size": 256}
    (tmp_path / "trm.yaml").write_text(yaml.safe_dump(small_trm))
    out = tmp_path / "out"
    rc, console = run(["--space", str(tmp_path / "trm.yaml"), "stan.yaml", "--stage", "all",
                       "--dataset", TINY, "--data-dir", str(tiny_data_dir),
                       "--num-samples", "2", "--max-epochs", "2", "--grace-period", "1",
                       "--seeds", "2", "--retrain-max-epochs", "2", "--max-concurrent", "2",
                       "--baseline", "strongest", "--precision", "fp32",
                       "--output-dir", str(out)])
    assert rc == 0, console
    assert "one fit each (a kNN model: ASHA has nothing to stop)" in console
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"{TINY}/stan")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if PARENT_TAG not in r.data.tags)
    assert "ASHA has nothing to stop" in parent.data.tags["schedule"]
    trials = [r for r in runs if PARENT_TAG in r.data.tags]
    assert len(trials) == 2 and all(r.data.tags["outcome"] == "completed" for r in trials)
    # one result per trial: epoch 1, no loss
    for trial in trials:
        history = client.get_metric_history(trial.info.run_id, "best_valid_mrr_20")
        assert [m.step for m in history] == [1]
        assert "train_loss" not in trial.data.metrics
    published = next(r for r in trials if r.data.tags.get("config_source") == "published defaults")
    assert int(published.data.params["k"]) == KNN_DEFAULTS["stan"]["k"]
    # the test stage: both arms retrained over the seeds, the report compares them
    reports = sorted((out / TINY / "test").iterdir())
    seeds = pd.read_csv(reports[-1] / "seed_results.csv")
    assert set(seeds["variant"]) == {"trm", "stan"} and len(seeds) == 4
    stan = seeds[seeds["variant"] == "stan"]
    assert stan["mrr_20"].nunique() == 1  # recent sampling: nothing depends on the seed
    markdown = (reports[-1] / "results.md").read_text()
    assert "Deterministic: the seed runs of STAN" in markdown
    assert "strongest baseline on validation" in markdown
    selections = json.loads((reports[-1] / "selections.json").read_text())
    assert {s["variant"] for s in selections} == {"trm", "stan"}
