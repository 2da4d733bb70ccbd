"""OptunaSearch that tells Optuna the truth about trials ASHA stopped early.

Ray's OptunaSearch reports every trial that ends with a result as COMPLETE with its last value.
A trial ASHA stopped after two epochs would then look to TPE like a finished, full-budget trial
with a poor score, biasing the sampler against configurations that merely start slowly. Here such
a trial is told as PRUNED (Optuna then uses its last intermediate value, which TPE handles as a
partial observation), a crashed trial as FAIL, and only trials the trainer finished itself
(early stopping on patience or the epoch budget) as COMPLETE.
"""

from __future__ import annotations

import enum

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

# Result key the trainable sets to 1 on its last report, when training ended on its own.
FINISHED_KEY = "finished"


class TrialOutcome(enum.Enum):
    COMPLETED = "completed"
    STOPPED = "stopped"  # stopped early by the scheduler (ASHA)
    FAILED = "failed"


def trial_outcome(last_result: dict | None, error: bool) -> TrialOutcome:
    """One rule, shared by the searcher and the MLflow logger, for how a trial ended."""
    if error:
        return TrialOutcome.FAILED
    if last_result and last_result.get(FINISHED_KEY):
        return TrialOutcome.COMPLETED
    return TrialOutcome.STOPPED


class PruningAwareOptunaSearch(OptunaSearch):
    @property
    def study(self):
        return self._ot_study

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        outcome = trial_outcome(result, error)
        value = (result or {}).get(self.metric)
        if outcome is TrialOutcome.COMPLETED and value is not None:
            self._ot_study.tell(ot_trial, value, state=TrialState.COMPLETE)
        elif outcome is TrialOutcome.FAILED:
            self._ot_study.tell(ot_trial, state=TrialState.FAIL)
        else:
            # PRUNED: Optuna takes the last intermediate value reported in on_trial_result.
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)
