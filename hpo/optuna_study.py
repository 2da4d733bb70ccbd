"""The Optuna study behind a search: a Ray Tune ``Searcher`` of our own that asks and tells a
persisted study, with explicit TPE settings, the published configuration first, and
hyperparameter importances at the end.

Why not Ray's ``OptunaSearch``: it keeps its study in memory unless handed one, reports every
trial that ends with a result as COMPLETE with its last value (a trial ASHA stopped after two
epochs would look to TPE like a full-budget trial with a poor score), and telling Optuna the
truth meant reaching into its private attributes. Here only public APIs are used: ``Study.ask``
and ``Study.tell`` (by trial number, so a resumed driver can tell trials an earlier driver
asked), ``Trial.report`` for the per-epoch values, and the storage's public trial lookup.

How each trial is told: COMPLETE with its value when the trainer finished on its own (early
stopping or the epoch budget); PRUNED when ASHA stopped it (Optuna then takes its last reported
value, which TPE handles as a partial observation); FAIL when it crashed.

The study lives in an Optuna storage (``<output-dir>/optuna.db`` by default, or any SQLAlchemy
URL), one study per search, named after the search's MLflow experiment and start time. Every
Optuna trial carries the Ray trial id as a user attribute, so a resumed search (``--resume``)
continues the same study: trials Ray resumes are told under their original numbers, no trial is
asked twice, and trials asked by a driver that died before Ray started them are told FAIL at the
end (marked ``orphaned``), never left RUNNING.

Faults: a SQLite study storage shared by searches running at once waits for the other's lock
and creates its tables one process at a time (``hpo.sqlite_stores``); a storage that fails while
the search runs (unwritable, unreachable) stops the search with a ``StudyStorageError`` naming it,
and so does a trial that reports it cannot write its own state (``hpo.outcome.storage_error``),
before its value is told: both leave the study's trials as they were, for ``--resume``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState
from ray.tune.search import Searcher
from sqlalchemy.exc import SQLAlchemyError

from hpo.outcome import META_KEY, TrialOutcome, storage_error, trial_outcome
from hpo.space import ConfigSampler, SearchSpace
from hpo.sqlite_stores import BUSY_TIMEOUT_S, first_use_lock, sqlite_path
from models.registry import default_config

log = logging.getLogger(__name__)

STUDY_FILE = "optuna.db"
RAY_TRIAL_ATTR = "ray_trial_id"
SOURCE_ATTR = "config_source"
PUBLISHED = "published defaults"
ORPHANED = "orphaned"  # study attr: trials asked but never run (the driver died in between)
# Importance needs a few trials with a common budget to mean anything.
MIN_IMPORTANCE_TRIALS = 4


def default_storage(output_dir: Path) -> str:
    """The study storage used without ``--optuna-storage``: a SQLite file in the output dir.

    Args:
        output_dir: the search's output directory.
    """
    return f"sqlite:///{(Path(output_dir) / STUDY_FILE).resolve()}"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The Optuna storage at ``url``. A SQLite file is opened (its tables created if new) under
    a file lock, and its connections wait ``BUSY_TIMEOUT_S`` for another search's write lock
    instead of failing with "database is locked" (``hpo.sqlite_stores``).

    Args:
        url: Optuna storage URL (any SQLAlchemy URL).
    """
    if sqlite_path(url) is None:
        return optuna.storages.get_storage(url)
    with first_use_lock(url):
        return optuna.storages.RDBStorage(
            url, engine_kwargs={"connect_args": {"timeout": BUSY_TIMEOUT_S}})


def storage_label(url: str) -> str:
    """``url`` safe to print and record: a password in it is masked.

    Args:
        url: an Optuna storage URL (any SQLAlchemy URL).
    """
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL: printed as given (it carries no credentials)
        return url


@dataclass(frozen=True)
class SamplerSettings:
    """TPE's settings, explicit so they do not change with Optuna's defaults, and recorded with
    the search.

    ``n_startup_trials`` random trials (the published configuration counts as one) precede TPE;
    ``multivariate`` and ``group`` model parameters jointly and handle conditional parameters
    (a parameter present only when another takes a given value); ``constant_liar`` keeps
    concurrent trials from being proposed at the same point.
    """

    seed: int
    n_startup_trials: int
    multivariate: bool = True
    group: bool = True
    constant_liar: bool = False

    def make(self) -> optuna.samplers.TPESampler:
        """The sampler these settings describe."""
        with warnings.catch_warnings():
            # multivariate, group and constant_liar are flagged experimental by Optuna.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=self.seed,
                n_startup_trials=self.n_startup_trials,
                multivariate=self.multivariate,
                group=self.group,
                constant_liar=self.constant_liar,
            )

    def as_params(self) -> dict[str, Any]:
        """The settings as MLflow params of the search's parent run (``sampler.*``)."""
        return {"sampler": "TPESampler", "sampler.optuna_version": optuna.__version__,
                **{f"sampler.{k}": v for k, v in asdict(self).items()}}


def sampler_settings(num_samples: int, concurrent: int, seed: int) -> SamplerSettings:
    """TPE settings for a search of ``num_samples`` trials, ``concurrent`` at a time.

    The random start follows the budget: a quarter of the trials, at least 3 and at most 10
    (Optuna's default of 10 would leave a 20-trial search half random and an 8-trial search
    entirely random).

    Args:
        num_samples: the search's number of trials.
        concurrent: how many trials run at once (above 1, ``constant_liar`` is on).
        seed: the sampler's seed.
    """
    startup = min(10, max(3, num_samples // 4))
    return SamplerSettings(seed=seed, n_startup_trials=startup, constant_liar=concurrent > 1)


def published_params(space: SearchSpace) -> tuple[dict[str, Any], list[str]]:
    """The variant's published (default) value of every parameter the space searches.

    A conditional parameter is included when its condition holds for the published values of
    the parameters before it; a published value outside the searched range is left out (TPE
    samples that parameter) and reported.

    Args:
        space: the search space.

    Returns:
        ``(params, skipped)``: parameter name -> published value, and the names left out with
        why.
    """
    defaults = {**default_config(space.model), **space.fixed}
    params: dict[str, Any] = {}
    skipped = []
    for parameter in space.parameters:
        if not parameter.active(params):
            continue
        value = defaults.get(parameter.name)
        if parameter.contains(value):
            params[parameter.name] = value
        else:
            skipped.append(f"{parameter.name}={value!r} (outside the searched range)")
    return params, skipped


class StudySearcher(Searcher):
    """A Ray Tune searcher that asks and tells a persisted Optuna study.

    Args:
        space: the search space (sampled define-by-run, see ``hpo.space.ConfigSampler``).
        constants: config keys set for every trial (epochs, seed).
        storage: Optuna storage URL (``sqlite:///...``, ``postgresql://...``).
        study_name: the study's name in the storage.
        metric: the result key to optimise.
        mode: "max" or "min".
        settings: TPE's settings.
        resume: load the existing study instead of creating one.
        published_first: enqueue the variant's published configuration as the first trial.
        study_attrs: user attributes recorded on a new study (experiment, dataset, ...).

    Raises:
        optuna.exceptions.DuplicatedStudyError: a new study's name is taken.
        KeyError: ``resume`` and no study of that name in the storage.
    """

    def __init__(
        self,
        space: SearchSpace,
        constants: dict[str, Any],
        storage: str,
        study_name: str,
        metric: str,
        mode: str,
        settings: SamplerSettings,
        resume: bool = False,
        published_first: bool = True,
        study_attrs: dict[str, Any] | None = None,
    ):
        super().__init__(metric=metric, mode=mode)
        self.sample = ConfigSampler(space, constants)
        self.storage_url = storage
        self.study_name = study_name
        self.settings = settings
        self._numbers: dict[str, int] = {}  # Ray trial id -> Optuna trial number
        self._trial_ids: dict[int, int] = {}  # Optuna trial number -> storage id
        self._storage: optuna.storages.BaseStorage | None = None
        self._study: optuna.Study | None = None
        if resume:
            self.study  # noqa: B018 (opens the study and maps Ray trial ids to numbers)
            return
        direction = "maximize" if mode == "max" else "minimize"
        self._study = optuna.create_study(storage=self.storage, study_name=study_name,
                                          direction=direction, sampler=settings.make())
        for key, value in (study_attrs or {}).items():
            self._study.set_user_attr(key, value)
        self._study.set_user_attr("sampler", asdict(settings))
        if published_first:
            params, skipped = published_params(space)
            if skipped:
                log.warning("%s: published configuration not tried as is: %s",
                            space.name, "; ".join(skipped))
            self._study.enqueue_trial(params, user_attrs={SOURCE_ATTR: PUBLISHED})

    def __getstate__(self):
        # Tune pickles the searcher into its experiment state: the storage connection stays out
        # and is reopened on first use (the Ray trial id -> number map is rebuilt from the study).
        state = self.__dict__.copy()
        state.update(_study=None, _storage=None, _trial_ids={})
        return state

    @property
    def storage(self) -> optuna.storages.BaseStorage:
        """The study's storage (one connection pool for the study and trial lookups)."""
        if self._storage is None:
            self._storage = open_storage(self.storage_url)
        return self._storage

    @contextlib.contextmanager
    def _writing(self, what: str):
        """Turn a storage failure while ``what`` into a ``StudyStorageError`` naming the storage
        (the search stops; ``--resume`` continues it once the storage works again)."""
        try:
            yield
        except (optuna.exceptions.StorageInternalError, SQLAlchemyError, OSError) as exc:
            raise StudyStorageError(
                f"Optuna storage {storage_label(self.storage_url)} failed while {what}: "
                f"{type(exc).__name__}: {exc}. The search stopped; once the storage works "
                "again, continue it with --resume") from exc

    @property
    def study(self) -> optuna.Study:
        """The Optuna study (opened from the storage on first use after unpickling)."""
        if self._study is None:
            self._study = optuna.load_study(study_name=self.study_name, storage=self.storage,
                                            sampler=self.settings.make())
            for trial in self._study.get_trials(deepcopy=False):
                if RAY_TRIAL_ATTR in trial.user_attrs:
                    self._numbers.setdefault(trial.user_attrs[RAY_TRIAL_ATTR], trial.number)
        return self._study

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec) -> bool:
        """Accepts the Tuner's metric and mode when none was given (Ray Tune's protocol)."""
        self._metric = self._metric or metric
        self._mode = self._mode or mode
        return True

    def suggest(self, trial_id: str) -> dict | None:
        """Ask the study for the next configuration.

        Args:
            trial_id: the Ray trial that will run it.

        Returns:
            The trial's config: sampled parameters, fixed keys, and ``META_KEY`` bookkeeping.
        """
        with self._writing(f"asking for trial {trial_id}'s configuration"):
            trial = self.study.ask()
            config = {**self.sample(trial), **trial.params}
            source = trial.user_attrs.get(SOURCE_ATTR)
            if source is None:
                startup = trial.number < self.settings.n_startup_trials
                source = "random (TPE startup)" if startup else "TPE"
                trial.set_user_attr(SOURCE_ATTR, source)
            trial.set_user_attr(RAY_TRIAL_ATTR, trial_id)
        self._numbers[trial_id] = trial.number
        config[META_KEY] = {"number": trial.number, "source": source}
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Report the trial's value at this epoch (what PRUNED trials are judged by).

        Raises:
            OutputUnwritableError: the trial reports it cannot write its state.
            StudyStorageError: the storage failed.
        """
        problem = storage_error(result)
        if problem is not None:
            raise problem
        number = self._numbers.get(trial_id)
        if number is not None:
            with self._writing(f"recording trial {trial_id}'s result"):
                self._report(number, result)

    def _report(self, number: int, result: dict | None) -> None:
        value = (result or {}).get(self.metric)
        if value is None or not math.isfinite(value):
            return
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        frozen = self.study.get_trials(deepcopy=False)[number]
        if step not in frozen.intermediate_values and not frozen.state.is_finished():
            self._trial(number).report(float(value), step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        """Tell the study how the trial ended (COMPLETE, PRUNED or FAIL), once.

        The result that made ASHA stop a trial reaches the searcher only here (Tune skips
        ``on_trial_result`` for it), so it is reported before the trial is told PRUNED.
        """
        number = self._numbers.get(trial_id)
        if number is None:
            return
        with self._writing(f"telling how trial {trial_id} ended"):
            self._tell(number, result, error)

    def _tell(self, number: int, result: dict | None, error: bool) -> None:
        if self.study.get_trials(deepcopy=False)[number].state.is_finished():
            return
        outcome = trial_outcome(result, error)
        value = (result or {}).get(self.metric)
        if outcome is TrialOutcome.COMPLETED and value is not None and math.isfinite(value):
            self._report(number, result)
            self.study.tell(number, float(value), state=TrialState.COMPLETE)
        elif outcome is TrialOutcome.STOPPED:
            self._report(number, result)
            self.study.tell(number, state=TrialState.PRUNED)
        else:
            self.study.tell(number, state=TrialState.FAIL)

    def _trial(self, number: int) -> optuna.Trial:
        """A handle on the study's trial ``number``, also one asked by an earlier driver (built
        from the storage's public lookup of its id)."""
        if number not in self._trial_ids:
            storage = self.storage
            study_id = storage.get_study_id_from_name(self.study_name)
            self._trial_ids[number] = storage.get_trial_id_from_study_id_trial_number(
                study_id, number)
        return optuna.Trial(self.study, self._trial_ids[number])

    def save(self, checkpoint_path: str) -> None:
        """Record which study this searcher drives (Ray Tune calls this with its experiment
        state); the trials themselves are in the study's storage.

        Args:
            checkpoint_path: the file Ray Tune names.
        """
        record = {"study_name": self.study_name, "storage": storage_label(self.storage_url),
                  "trials": dict(self._numbers)}
        Path(checkpoint_path).write_text(json.dumps(record))

    def restore(self, checkpoint_path: str) -> None:
        """Check the saved record names this searcher's study; the Ray trial id -> trial number
        map is rebuilt from the study (its trials carry their Ray trial ids).

        Args:
            checkpoint_path: the file ``save`` wrote.

        Raises:
            StudyStorageError: the record names another study.
        """
        record = json.loads(Path(checkpoint_path).read_text())
        if record.get("study_name") != self.study_name:
            raise StudyStorageError(f"the search's saved state drives study "
                                    f"{record.get('study_name')!r}, not {self.study_name!r}")
        self._numbers.update(record.get("trials", {}))


class StudyStorageError(ValueError):
    """The Optuna storage cannot be used, or the study a resume needs is not in it."""


def check_study_storage(storage: str, study_name: str, exists: bool) -> None:
    """Fail fast, before Ray starts, when the study storage is unusable.

    Args:
        storage: Optuna storage URL.
        study_name: the search's study.
        exists: whether the study must already exist (--resume) or must not (a new search).

    Raises:
        StudyStorageError: the storage cannot be opened (unreachable server, bad URL, missing
            driver), or the study's presence is not as required.
    """
    label = storage_label(storage)
    try:
        names = {s.study_name for s in optuna.get_all_study_summaries(
            storage=open_storage(storage))}
    except Exception as exc:  # any storage error means the study cannot be kept
        raise StudyStorageError(f"Optuna storage {label} is unusable: {exc}") from exc
    if exists and study_name not in names:
        raise StudyStorageError(f"--resume: study {study_name!r} is not in {label}")
    if not exists and study_name in names:
        raise StudyStorageError(f"study {study_name!r} already exists in {label}")


def close_orphans(study: optuna.Study) -> int:
    """Tell FAIL every trial still RUNNING once a search has ended: trials asked by a driver
    that died before Ray ran them (marked with the user attribute ``orphaned``).

    Args:
        study: the search's study.

    Returns:
        How many trials were closed.
    """
    orphans = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in orphans:
        study.tell(trial.number, state=TrialState.FAIL)
    if orphans:
        study.set_user_attr(ORPHANED, [t.number for t in orphans])
    return len(orphans)


def param_importance(
    study: optuna.Study, seed: int = 0, plot_path: Path | None = None
) -> tuple[pd.DataFrame, str]:
    """Hyperparameter importances by fANOVA over the study's trials at a common budget.

    With ASHA most trials stop early, and Optuna's importance looks at COMPLETE trials only; so
    every trial that reported is valued at the last epoch all of them reached (the first
    rung), their values there compared like for like. Parameters present in every such trial
    are assessed (conditional ones only where their condition always held).

    Args:
        study: the search's study (values reported per epoch by ``StudySearcher``).
        seed: the seed of fANOVA's random forest.
        plot_path: where to save Optuna's importance bar chart (PNG), if computed.

    Returns:
        ``(table, note)``: columns parameter, importance (summing to 1), rank; and a sentence
        saying what was evaluated. The table is empty, with the note saying why, when fewer than
        ``MIN_IMPORTANCE_TRIALS`` trials reported or their values do not vary.
    """
    columns = ["parameter", "importance", "rank"]
    trials = [t for t in study.get_trials(deepcopy=False,
                                           states=(TrialState.COMPLETE, TrialState.PRUNED))
              if t.intermediate_values and t.params]
    if len(trials) < MIN_IMPORTANCE_TRIALS:
        return (pd.DataFrame(columns=columns),
                f"not computed: {len(trials)} trials reported a value "
                f"(at least {MIN_IMPORTANCE_TRIALS} needed)")
    step = min(max(t.intermediate_values) for t in trials)
    view = rung_study(trials, step, study.direction)
    values = [t.value for t in view.trials]
    if max(values) == min(values):
        return pd.DataFrame(columns=columns), "not computed: every trial scored the same"
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    importances = optuna.importance.get_param_importances(view, evaluator=evaluator)
    table = pd.DataFrame({"parameter": list(importances), "importance": list(importances.values())})
    table["rank"] = range(1, len(table) + 1)
    if plot_path is not None:
        _plot(view, evaluator, plot_path)
    note = (f"fANOVA (Optuna's FanovaImportanceEvaluator, seed {seed}) over {len(view.trials)} "
            f"trials, each valued at epoch {step}, the last epoch every trial reached")
    return table, note


def rung_study(trials: list, step: int, direction) -> optuna.Study:
    """An in-memory study of ``trials`` as COMPLETE trials valued at epoch ``step``.

    Args:
        trials: frozen trials with intermediate values up to at least ``step``.
        step: the epoch to value each trial at (its last reported value up to it).
        direction: the original study's direction.
    """
    view = optuna.create_study(direction=direction)
    for trial in trials:
        reached = [s for s in trial.intermediate_values if s <= step]
        value = trial.intermediate_values[max(reached)]
        view.add_trial(optuna.trial.create_trial(params=trial.params,
                                                 distributions=trial.distributions, value=value))
    return view




def _plot(view: optuna.Study, evaluator, path: Path) -> None:
    """Optuna's importance chart of ``view`` (the same seeded evaluator, so the same numbers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_param_importances

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = plot_param_importances(view, evaluator=evaluator)
    ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=100)
    plt.close(ax.figure)
