"""The study searcher: truthful states, a persisted and resumable study, the published
configuration first, explicit TPE settings, importances (real Optuna storage, no Ray cluster)."""

from __future__ import annotations

import pickle

import optuna
import pytest
from optuna.trial import TrialState

from hpo.optuna_study import (
    ORPHANED,
    PUBLISHED,
    RAY_TRIAL_ATTR,
    SOURCE_ATTR,
    StudySearcher,
    StudyStorageError,
    check_study_storage,
    close_orphans,
    param_importance,
    published_params,
    sampler_settings,
)
from hpo.outcome import FINISHED_KEY, META_KEY, TrialOutcome, trial_outcome
from hpo.space import load_space, parse_space
from models.registry import default_config

METRIC = "best_valid_mrr_20"


def make_searcher(tmp_path, seed: int = 0, space="hn.yaml", name="s", resume=False,
                  published_first=True, concurrent=1) -> StudySearcher:
    space = load_space(space) if isinstance(space, str) else space
    return StudySearcher(
        space, {"epochs": 5, "seed": 0},
        storage=f"sqlite:///{tmp_path / 'optuna.db'}", study_name=name, metric=METRIC,
        mode="max", settings=sampler_settings(20, concurrent, seed), resume=resume,
        published_first=published_first,
    )


def report(searcher, trial_id, values, finished):
    for step, value in enumerate(values, start=1):
        result = {METRIC: value, "training_iteration": step, "epoch": step, FINISHED_KEY: 0}
        searcher.on_trial_result(trial_id, result)
    return {**result, FINISHED_KEY: int(finished)}


def test_asha_stopped_trial_is_pruned_not_completed(tmp_path):
    searcher = make_searcher(tmp_path)
    for trial_id in ("a", "b", "c"):
        searcher.suggest(trial_id)
    searcher.on_trial_complete("a", report(searcher, "a", [0.10, 0.20, 0.25], finished=True))
    searcher.on_trial_complete("b", report(searcher, "b", [0.05], finished=False))
    searcher.on_trial_complete("c", report(searcher, "c", [0.07, 0.08], finished=False),
                               error=True)
    trials = searcher.study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    assert trials[0].value == 0.25
    # A pruned trial keeps its partial learning curve: TPE sees it as a partial observation.
    assert trials[1].intermediate_values == {1: 0.05}
    assert trials[1].value == 0.05
    # Told once: a second completion (Tune may call on_trial_complete again) changes nothing.
    searcher.on_trial_complete("b", {METRIC: 0.5, "epoch": 1, FINISHED_KEY: 1})
    assert searcher.study.get_trials()[1].state == TrialState.PRUNED


def test_stopping_result_is_reported_before_pruning(tmp_path):
    """Tune hands the result that made ASHA stop a trial to on_trial_complete only."""
    searcher = make_searcher(tmp_path)
    searcher.suggest("a")
    searcher.on_trial_complete("a", {METRIC: 0.07, "epoch": 1, FINISHED_KEY: 0})
    [trial] = searcher.study.get_trials()
    assert trial.state == TrialState.PRUNED
    assert trial.intermediate_values == {1: 0.07} and trial.value == 0.07


def test_outcome_rule():
    assert trial_outcome({FINISHED_KEY: 1}, error=False) is TrialOutcome.COMPLETED
    assert trial_outcome({FINISHED_KEY: 0}, error=False) is TrialOutcome.STOPPED
    assert trial_outcome(None, error=False) is TrialOutcome.STOPPED
    assert trial_outcome({FINISHED_KEY: 1}, error=True) is TrialOutcome.FAILED


def test_published_configuration_is_the_first_trial(tmp_path):
    space = load_space("dahn.yaml")
    searcher = make_searcher(tmp_path, space=space)
    first, second = searcher.suggest("a"), searcher.suggest("b")
    defaults = default_config("dahn")
    for parameter in space.parameters:
        assert first[parameter.name] == defaults[parameter.name], parameter.name
    assert first[META_KEY] == {"number": 0, "source": PUBLISHED}
    assert second[META_KEY]["source"].startswith("random")
    trials = searcher.study.get_trials()
    assert trials[0].user_attrs[SOURCE_ATTR] == PUBLISHED
    assert [t.user_attrs[RAY_TRIAL_ATTR] for t in trials] == ["a", "b"]
    # Without the option the first trial is sampled like any other.
    other = make_searcher(tmp_path, space=space, name="other", published_first=False)
    assert other.suggest("a")[META_KEY]["source"] != PUBLISHED


def test_published_values_outside_the_range_are_left_to_the_sampler(tmp_path):
    raw = {"model": "trm", "parameters": {
        "lr": {"type": "loguniform", "low": 0.01, "high": 0.1},  # default 0.001: outside
        "n_layers": {"type": "int", "low": 1, "high": 3}}}
    space = parse_space(raw, tmp_path / "x.yaml")
    params, skipped = published_params(space)
    assert params == {"n_layers": default_config("trm")["n_layers"]}
    assert skipped and skipped[0].startswith("lr=")


def test_conditional_parameter_follows_the_published_values(tmp_path):
    raw = {"model": "enhanced", "parameters": {
        "enh_inbatch": {"type": "categorical", "choices": [True, False]},
        "beta": {"type": "uniform", "low": 0.1, "high": 1.0, "condition": {"enh_inbatch": True}}}}
    params, _ = published_params(parse_space(raw, tmp_path / "x.yaml"))
    assert params == {"enh_inbatch": True, "beta": default_config("enhanced")["beta"]}
    raw["parameters"]["beta"]["condition"] = {"enh_inbatch": False}
    params, _ = published_params(parse_space(raw, tmp_path / "x.yaml"))
    assert params == {"enh_inbatch": True}


def test_study_is_persisted_and_a_restored_searcher_continues_it(tmp_path):
    """What Tune does on --resume: unpickle the searcher, resume running trials, ask for more."""
    searcher = make_searcher(tmp_path)
    for trial_id in ("a", "b", "c"):
        searcher.suggest(trial_id)
    searcher.on_trial_complete("a", report(searcher, "a", [0.1, 0.2], finished=True))
    report(searcher, "b", [0.05], finished=False)  # b is training when the driver dies
    searcher.save(str(tmp_path / "searcher-state.json"))  # Tune saves it with its state
    restored = pickle.loads(pickle.dumps(searcher))
    restored.restore(str(tmp_path / "searcher-state.json"))
    restored.on_trial_result("b", {METRIC: 0.3, "epoch": 2})
    restored.on_trial_complete("b", {METRIC: 0.3, "epoch": 2, FINISHED_KEY: 1})
    restored.suggest("d")
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    trials = study.get_trials()
    assert [t.user_attrs[RAY_TRIAL_ATTR] for t in trials] == ["a", "b", "c", "d"]
    assert trials[1].state == TrialState.COMPLETE and trials[1].value == 0.3
    assert trials[1].intermediate_values == {1: 0.05, 2: 0.3}
    # "c" was asked but never ran (the driver died first): closed as FAIL, not left RUNNING.
    restored.on_trial_complete("d", {METRIC: 0.2, "epoch": 1, FINISHED_KEY: 1})
    assert close_orphans(study) == 1
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL,
                      TrialState.COMPLETE]
    assert study.user_attrs[ORPHANED] == [2]


def test_restore_refuses_another_studys_state(tmp_path):
    make_searcher(tmp_path, name="one").save(str(tmp_path / "state.json"))
    with pytest.raises(StudyStorageError, match="one"):
        make_searcher(tmp_path, name="two").restore(str(tmp_path / "state.json"))


def test_resume_loads_the_study_and_maps_ray_trials(tmp_path):
    searcher = make_searcher(tmp_path)
    searcher.suggest("a")
    again = make_searcher(tmp_path, resume=True)
    again.on_trial_complete("a", report(again, "a", [0.4], finished=True))
    assert again.study.get_trials()[0].value == 0.4
    assert again.suggest("b")[META_KEY]["number"] == 1  # not a duplicate of trial 0


def test_storage_checks(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    check_study_storage(url, "new", exists=False)
    with pytest.raises(StudyStorageError, match="not in"):
        check_study_storage(url, "new", exists=True)
    make_searcher(tmp_path, name="taken")
    with pytest.raises(StudyStorageError, match="already exists"):
        check_study_storage(url, "taken", exists=False)
    with pytest.raises(StudyStorageError, match="unusable"):
        check_study_storage("postgresql://nobody@127.0.0.1:9/none", "x", exists=False)


def test_sampler_settings_follow_budget_and_concurrency():
    assert sampler_settings(8, 1, 0).n_startup_trials == 3  # the README demo reaches TPE
    assert sampler_settings(20, 1, 0).n_startup_trials == 5
    assert sampler_settings(200, 1, 0).n_startup_trials == 10
    assert not sampler_settings(8, 1, 0).constant_liar
    assert sampler_settings(8, 4, 0).constant_liar
    settings = sampler_settings(8, 2, 7)
    params = settings.as_params()
    assert params["sampler.n_startup_trials"] == 3 and params["sampler.seed"] == 7
    assert params["sampler.multivariate"] and params["sampler.group"]
    sampler = settings.make()
    assert isinstance(sampler, optuna.samplers.TPESampler)


def test_proposals_reproducible_for_a_seed(tmp_path):
    def proposals(seed, name):
        searcher = make_searcher(tmp_path, seed=seed, name=name, published_first=False)
        return [searcher.suggest(f"t{i}") for i in range(5)]

    first = proposals(11, "a")
    assert first == proposals(11, "b")
    assert first != proposals(12, "c")
    assert all(c["model"] == "hn" and c["epochs"] == 5 for c in first)


def _study_with(values_of, n):
    """A study whose trials report per-epoch values from ``values_of(params)``."""
    study = optuna.create_study(direction="maximize")
    for i in range(n):
        trial = study.ask()
        x = trial.suggest_float("x", 0.0, 1.0)
        y = trial.suggest_float("y", 0.0, 1.0)
        curve = values_of(x, y)
        for step, value in enumerate(curve[: 1 + i % 3], start=1):
            trial.report(value, step)
        study.tell(trial, state=TrialState.PRUNED)
    return study


def test_importance_finds_the_parameter_that_matters(tmp_path):
    # Only x moves the objective; trials stop after 1-3 epochs, as under ASHA.
    study = _study_with(lambda x, y: [x, 2 * x, 3 * x], 24)
    table, note = param_importance(study, seed=0, plot_path=tmp_path / "imp.png")
    assert list(table["parameter"]) == ["x", "y"]
    assert table["importance"].iloc[0] > 0.8
    assert table["importance"].sum() == pytest.approx(1.0)
    assert "epoch 1" in note and "24 trials" in note
    assert (tmp_path / "imp.png").stat().st_size > 0


def test_importance_needs_enough_trials():
    table, note = param_importance(_study_with(lambda x, y: [x], 3))
    assert table.empty and "not computed" in note
