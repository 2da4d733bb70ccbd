"""The Optuna searcher is told how each trial really ended (no Ray cluster needed)."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from hpo.searcher import FINISHED_KEY, PruningAwareOptunaSearch, TrialOutcome, trial_outcome
from hpo.space import ConfigSampler, load_space

METRIC = "best_valid_mrr_20"


def make_searcher(seed: int = 0) -> PruningAwareOptunaSearch:
    space = load_space("hn.yaml")
    return PruningAwareOptunaSearch(
        space=ConfigSampler(space, {"epochs": 5, "seed": 0}),
        metric=METRIC,
        mode="max",
        sampler=optuna.samplers.TPESampler(seed=seed),
    )


def report(searcher, trial_id, values, finished):
    for step, value in enumerate(values, start=1):
        result = {METRIC: value, "training_iteration": step, "epoch": step, FINISHED_KEY: 0}
        searcher.on_trial_result(trial_id, result)
    return {**result, FINISHED_KEY: int(finished)}


def test_asha_stopped_trial_is_pruned_not_completed():
    searcher = make_searcher()
    for trial_id in ("a", "b", "c"):
        searcher.suggest(trial_id)
    searcher.on_trial_complete("a", report(searcher, "a", [0.10, 0.20, 0.25], finished=True))
    searcher.on_trial_complete("b", report(searcher, "b", [0.05], finished=False))
    searcher.on_trial_complete("c", report(searcher, "c", [0.07, 0.08], finished=False),
                               error=True)
    trials = searcher.study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    assert trials[0].value == 0.25
    # A pruned trial keeps its partial learning curve: TPE sees it as a partial observation.
    assert trials[1].intermediate_values == {1: 0.05}
    assert trials[1].value == 0.05


def test_ray_default_would_have_told_completed():
    """Guard that the override matters: the base class reports early-stopped trials as COMPLETE."""
    searcher = make_searcher()
    searcher.suggest("x")
    result = report(searcher, "x", [0.05], finished=False)
    super(PruningAwareOptunaSearch, searcher).on_trial_complete("x", result)
    assert searcher.study.get_trials()[0].state == TrialState.COMPLETE


def test_outcome_rule():
    assert trial_outcome({FINISHED_KEY: 1}, error=False) is TrialOutcome.COMPLETED
    assert trial_outcome({FINISHED_KEY: 0}, error=False) is TrialOutcome.STOPPED
    assert trial_outcome(None, error=False) is TrialOutcome.STOPPED
    assert trial_outcome({FINISHED_KEY: 1}, error=True) is TrialOutcome.FAILED


def test_proposals_reproducible_for_a_seed():
    def proposals(seed):
        searcher = make_searcher(seed)
        return [searcher.suggest(f"t{i}") for i in range(5)]

    first = proposals(11)
    assert first == proposals(11)
    assert first != proposals(12)
    assert all(c["model"] == "hn" and c["epochs"] == 5 for c in first)
