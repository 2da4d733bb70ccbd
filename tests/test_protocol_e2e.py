"""Selection-then-test end to end: search two spaces, select from MLflow, retrain, report.

Real local Ray, real SQLite MLflow store, tiny generated data. The test stage runs with
``--baseline strongest`` and two ablation arms: one that changes trm's selection (retrained) and
one that every selection already has (not retrained).
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from scipy import stats as scipy_stats

import hpo.search
import launch
from hpo.selection import SelectionError, select_best
from hpo.tracking import PARENT_TAG
from models.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
TINY = "tiny"
TRAIN_ROWS = 1200  # of 1,449: the protocol also runs on a cut training split
LABEL = f"{TINY}-last{TRAIN_ROWS}"  # what a cut dataset's runs are filed under
SEEDS = 2
RETRAIN_EPOCHS = 3  # the test stage's --retrain-max-epochs (the protocol's 300 is for real runs)
SMALL = {"embedding_size": 16, "batch_size": 256}
ARM = "n_layers=1"  # a trm key only (ave has no transformer): retrained for trm
SAME = "embedding_size=16"  # what every selection already has: not retrained


def small_space(tmp_path: Path, name: str) -> Path:
    raw = yaml.safe_load((ROOT / "search_spaces" / f"{name}.yaml").read_text())
    raw["fixed"] = {**SMALL, **({"inner_size": 32} if name != "ave" else {})}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def stage_runs(client, experiment: str, stage: str):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], filter_string=f"tags.stage = '{stage}'")


@pytest.fixture(scope="module")
def protocol(tmp_path_factory, tiny_data_dir, ray_local):
    tmp = tmp_path_factory.mktemp("protocol")
    out = tmp / "outputs"
    spaces = [str(small_space(tmp, name)) for name in ("ave", "trm")]
    searched_datasets = []
    original = hpo.search.tune.with_parameters

    def spy(trainable, **kwargs):  # the dataset every search trial receives
        searched_datasets.append(kwargs["dataset"])
        return original(trainable, **kwargs)

    patch = pytest.MonkeyPatch()
    patch.setattr(hpo.search.tune, "with_parameters", spy)
    common = ["--dataset", TINY, "--train-rows", str(TRAIN_ROWS), "--data-dir", str(tiny_data_dir),
              "--output-dir", str(out),
              "--num-samples", "2", "--max-epochs", "2", "--grace-period", "2", "--seeds",
              str(SEEDS), "--max-concurrent", "2"]
    try:
        assert launch.main(["--space", *spaces, "--stage", "search", *common]) == 0
    finally:
        patch.undo()
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    return client, out, spaces, common, searched_datasets


def test_search_trials_never_get_test_data(protocol):
    client, _, _, _, searched_datasets = protocol
    assert len(searched_datasets) == 2
    assert all(dataset.test is None for dataset in searched_datasets)
    assert all(len(dataset.train) == TRAIN_ROWS for dataset in searched_datasets)
    with pytest.raises(PermissionError, match="withheld"):
        searched_datasets[0].split("test")
    for space in ("ave", "trm"):
        for run in stage_runs(client, f"{LABEL}/{space}", "search"):
            assert not [k for k in run.data.metrics if k.startswith("test_")]


def test_trainer_on_a_search_dataset_cannot_score_test(protocol):
    _, _, _, _, searched_datasets = protocol
    trainer = Trainer({"model": "ave", "embedding_size": 8, "epochs": 1}, searched_datasets[0])
    with pytest.raises(PermissionError):
        trainer.evaluate("test")


def test_selection_reads_validation_only_and_refuses_leaks(protocol, monkeypatch):
    client, *_ = protocol

    def forbidden(*args, **kwargs):
        raise AssertionError("selection must not evaluate anything")

    monkeypatch.setattr(Trainer, "evaluate_detailed", forbidden)
    selection = select_best(client, LABEL, "trm", "valid_mrr_20")
    children = [r for r in stage_runs(client, f"{LABEL}/trm", "search")
                if r.data.tags.get(PARENT_TAG) == selection.search_run_id]
    best = max(r.data.metrics["best_valid_mrr_20"] for r in children)
    assert selection.value == best
    assert selection.config["model"] == "trm"
    assert isinstance(selection.config["embedding_size"], int)  # MLflow strings typed back
    assert isinstance(selection.config["temperature"], float)
    with pytest.raises(SelectionError, match="validation metrics only"):
        select_best(client, LABEL, "trm", "test_mrr_20")


@pytest.fixture(scope="module")
def test_stage(protocol):
    client, out, spaces, common, _ = protocol
    console = io.StringIO()
    with contextlib.redirect_stdout(console):
        assert launch.main(["--space", *spaces, "--stage", "test", "--baseline", "strongest",
                            "--ablate", ARM, "--ablate", SAME, "--retrain-max-epochs",
                            str(RETRAIN_EPOCHS), *common]) == 0
    [parent] = [r for r in stage_runs(client, f"{LABEL}/test", "test")
                if PARENT_TAG not in r.data.tags]
    children = [r for r in stage_runs(client, f"{LABEL}/test", "test")
                if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
    return client, parent, children, console.getvalue()


def strongest(client) -> str:
    """The baseline --baseline strongest must pick, from MLflow's records alone."""
    values = {space: select_best(client, LABEL, space, "valid_mrr_20").value
              for space in ("ave", "trm")}
    return "ave" if values["ave"] > values["trm"] else "trm"


def test_test_stage_reads_selection_from_mlflow_and_retrains_each_seed(protocol, test_stage):
    client, parent, children, _ = test_stage
    assert len(children) == 2 * SEEDS + SEEDS  # ave, trm, and trm's one retrained arm
    assert parent.data.tags["dataset"] == LABEL
    assert {(r.data.tags["variant"], r.data.tags["arm"], r.data.tags["seed"])
            for r in children} == {
        (v, arm, str(s)) for v, arm in (("ave", "full"), ("trm", "full"), ("trm", ARM))
        for s in range(1, SEEDS + 1)
    }
    for run in children:
        selected = select_best(client, LABEL, run.data.tags["variant"], "valid_mrr_20")
        assert run.data.tags["selected_from"] == selected.trial_run_id
        assert run.data.params["seed"] == run.data.tags["seed"]
        assert run.data.params["epochs"] == str(RETRAIN_EPOCHS)  # not the search's budget
        assert 0.0 <= run.data.metrics["test_mrr_20"] <= run.data.metrics["test_recall_20"]
        model_files = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
        assert "model/model.pt" in model_files  # the seed's model (python -m models.recommend)
        if run.data.tags["arm"] == ARM:
            assert run.data.params["n_layers"] == "1"
            assert run.data.params["temperature"] == str(selected.config["temperature"])
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.md", "results.csv", "seed_results.csv", "seed_distributions.png",
            "beyond_mean.csv", "session_tests.csv", "selections.json", "anova.csv",
            "posthoc.csv", "ablation.csv"} <= artifacts


def test_the_test_stage_prints_a_line_per_seed_run_not_tunes_tables(test_stage):
    _, _, children, console = test_stage
    assert "== Status ==" not in console and "Trial status" not in console
    for run in children:
        tags, metrics = run.data.tags, run.data.metrics
        arm = "" if tags["arm"] == "full" else f" [{tags['arm']}]"
        name = f"{tags['variant']}{arm} seed {tags['seed']}"
        assert f"] {name} started\n" in console
        [done] = [line for line in console.splitlines() if f"] {name} done in " in line]
        assert re.search(rf": {RETRAIN_EPOCHS} epochs, best [1-{RETRAIN_EPOCHS}]; test "
                         rf"R@20 {100 * metrics['test_recall_20']:.2f}, "
                         rf"M@20 {100 * metrics['test_mrr_20']:.2f}$", done), done


def test_baseline_strongest_is_the_better_validated_baseline_and_recorded(test_stage):
    client, parent, _, _ = test_stage
    chosen = strongest(client)
    assert parent.data.params["baseline"] == chosen
    assert parent.data.params["baseline_rule"] == "strongest"
    assert parent.data.params["correction"] == "holm"
    out_dir = Path(parent.data.tags["output_dir"])
    results = pd.read_csv(out_dir / "results.csv")
    other = "ave" if chosen == "trm" else "trm"
    assert results.loc[results.variant == chosen, "p_value"].isna().all()
    assert results.loc[results.variant == other, "p_value"].notna().any()
    markdown = (out_dir / "results.md").read_text()
    assert "strongest baseline on validation" in markdown


def test_ablation_table_compares_the_arm_with_the_full_model(test_stage):
    client, parent, children, _ = test_stage
    out_dir = Path(parent.data.tags["output_dir"])
    ablation = pd.read_csv(out_dir / "ablation.csv")
    recorded = {(r.data.tags["arm"], int(r.data.tags["seed"])): r.data.metrics["test_recall_20"]
                for r in children if r.data.tags["variant"] == "trm"}
    row = ablation[(ablation.variant == "trm") & (ablation.arm == ARM)
                   & (ablation.metric == "recall_20")].iloc[0]
    arm = [recorded[(ARM, s)] for s in range(1, SEEDS + 1)]
    full = [recorded[("full", s)] for s in range(1, SEEDS + 1)]
    assert row["mean"] == pytest.approx(np.mean(arm))
    assert row["mean_diff"] == pytest.approx(np.mean(arm) - np.mean(full))
    diff = np.subtract(arm, full)
    if np.ptp(diff) > 1e-12:
        assert row["p_value"] == pytest.approx(scipy_stats.ttest_rel(arm, full).pvalue)
    not_retrained = ablation[ablation.arm == SAME]
    assert set(not_retrained["variant"]) == {"ave", "trm"}
    assert not_retrained["note"].str.contains("already has").all()
    markdown = (out_dir / "results.md").read_text()
    assert "## Ablation" in markdown and f"| {ARM} | R@20 |" in markdown
    # the arm's test rows reach the session-level ablation table
    rows = pd.read_csv(out_dir / "ablation_session_tests.csv")
    assert set(rows["arm"]) == {ARM} and (rows["n_seeds"] == SEEDS).all()
    assert "## Ablation at the session level" in markdown


def test_report_statistics_equal_scipy_on_recorded_values(test_stage):
    client, parent, children, _ = test_stage
    out_dir = Path(parent.data.tags["output_dir"])
    seeds = pd.read_csv(out_dir / "seed_results.csv")
    recorded = {(r.data.tags["variant"], r.data.tags["arm"], int(r.data.tags["seed"])):
                r.data.metrics["test_mrr_20"] for r in children}
    for row in seeds.itertuples():
        assert row.mrr_20 == pytest.approx(recorded[(row.variant, row.arm, row.seed)])
    results = pd.read_csv(out_dir / "results.csv")
    baseline = strongest(client)
    other = "ave" if baseline == "trm" else "trm"
    base = [recorded[(baseline, "full", s)] for s in range(1, SEEDS + 1)]
    values = [recorded[(other, "full", s)] for s in range(1, SEEDS + 1)]
    row = results[(results.variant == other) & (results.metric == "mrr_20")].iloc[0]
    assert row["mean"] == pytest.approx(np.mean(values))
    assert row["std"] == pytest.approx(np.std(values, ddof=1))
    expected = scipy_stats.ttest_rel(values, base)
    if np.isfinite(expected.pvalue) and np.std(np.subtract(values, base)) > 0:
        assert row["p_value"] == pytest.approx(expected.pvalue)
        assert row["diff_ci_low"] == pytest.approx(expected.confidence_interval().low)
    markdown = (out_dir / "results.md").read_text()
    assert "CORE-trm" in markdown and "CORE-ave" in markdown


def test_selection_refuses_a_search_that_saw_test_metrics(protocol, test_stage):
    """Runs last in this module: the planted leak stays in the store (MLflow cannot delete it)."""
    client, *_ = protocol
    selection = select_best(client, LABEL, "ave", "valid_mrr_20")
    client.log_metric(selection.trial_run_id, "test_mrr_20", 0.5)
    with pytest.raises(SelectionError, match="holds test metrics"):
        select_best(client, LABEL, "ave", "valid_mrr_20")
