"""Search-space YAML files: parsing, validation before Ray starts, the define-by-run sampler.

A space file looks like::

    name: dahn                    # optional, defaults to the file stem
    model: dahn                   # a variant of models.registry.VARIANTS
    description: ...
    fixed: {n_layers: 2}          # config keys set for every trial
    budget: {num_samples: 20, max_epochs: 30, grace_period: 2, reduction_factor: 3,
             metric: valid_mrr_20, mode: max}
    dataset_budgets:              # per-dataset changes to the budget above
      synthetic: {num_samples: 8, max_epochs: 8}
    parameters:                   # sampled in file order
      temperature: {type: loguniform, low: 0.03, high: 0.2}
      hn_k: {type: int, low: 8, high: 256, log: true}
      enh_inbatch: {type: categorical, choices: [true, false]}
      beta: {type: uniform, low: 0.1, high: 1.0, condition: {enh_inbatch: true}}

A parameter with ``condition`` is sampled only when every named earlier parameter took one of the
given values (a scalar or a list); otherwise it is left out of the trial's config, so the variant's
default applies and Optuna's TPE sees a conditional parameter.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from models.metrics import METRIC_NAMES
from models.registry import VARIANTS, config_keys

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"

DISTRIBUTIONS = {
    "uniform": {"low", "high", "step"},
    "loguniform": {"low", "high"},
    "int": {"low", "high", "log", "step"},
    "categorical": {"choices"},
}
COMMON_SPEC_KEYS = {"type", "condition"}
TOP_LEVEL_KEYS = {
    "name", "model", "description", "fixed", "budget", "dataset_budgets", "parameters"
}
METRICS = tuple(f"valid_{name}" for name in METRIC_NAMES)  # what a search may optimise
# Keys the search owns: a space may not fix or sample them, the CLI sets them.
RESERVED_KEYS = {"model", "seed", "epochs"}


@dataclass(frozen=True)
class Budget:
    """How much a search may spend; every field can be overridden from the command line."""

    num_samples: int = 20
    max_epochs: int = 30
    grace_period: int = 2
    reduction_factor: int = 3
    metric: str = "valid_mrr_20"
    mode: str = "max"

    def with_overrides(self, **overrides) -> Budget:
        """Command-line values win over the file's; None means 'not given'."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()
    condition: dict[str, tuple] = field(default_factory=dict)

    def active(self, sampled: dict[str, Any]) -> bool:
        return all(
            name in sampled and sampled[name] in values for name, values in self.condition.items()
        )

    def suggest(self, trial) -> Any:
        """Ask an Optuna trial (or Ray's captor of one) for this parameter's value."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(
            self.name, self.low, self.high, step=self.step, log=self.type == "loguniform"
        )


@dataclass(frozen=True)
class SearchSpace:
    name: str
    model: str
    path: Path
    description: str
    fixed: dict[str, Any]
    budget: Budget
    parameters: tuple[Parameter, ...]
    dataset_budgets: dict[str, Budget] = field(default_factory=dict)

    def budget_for(self, dataset: str) -> Budget:
        return self.dataset_budgets.get(dataset, self.budget)


class SpaceError(ValueError):
    """An invalid search-space file; the message names the file, the parameter and the problem."""


class ConfigSampler:
    """Define-by-run function for OptunaSearch: samples the active parameters, adds fixed keys.

    A picklable object rather than a closure so Tune can checkpoint the searcher and restore it.
    """

    def __init__(self, space: SearchSpace, constants: dict[str, Any]):
        self.parameters = space.parameters
        self.constants = {**space.fixed, **constants, "model": space.model}

    def __call__(self, trial) -> dict[str, Any]:
        sampled: dict[str, Any] = {}
        for parameter in self.parameters:
            if parameter.active(sampled):
                sampled[parameter.name] = parameter.suggest(trial)
        return dict(self.constants)


def resolve_space_path(name_or_path: str | Path) -> Path:
    """`dahn.yaml`, `dahn` or a path: a bare name is looked up in search_spaces/."""
    candidate = Path(name_or_path)
    if candidate.is_file():
        return candidate.resolve()
    for stem in (candidate.name, f"{candidate.name}.yaml"):
        bundled = SPACES_DIR / stem
        if bundled.is_file():
            return bundled
    available = ", ".join(sorted(p.name for p in SPACES_DIR.glob("*.yaml")))
    raise SpaceError(
        f"search space {str(name_or_path)!r} not found: not a file, and not in {SPACES_DIR} "
        f"(available: {available})"
    )


def load_space(name_or_path: str | Path) -> SearchSpace:
    path = resolve_space_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpaceError(f"{path}: not valid YAML: {exc}") from exc
    return parse_space(raw, path)


def parse_space(raw: Any, path: Path) -> SearchSpace:
    def fail(problem: str) -> SpaceError:
        return SpaceError(f"{path}: {problem}")

    if not isinstance(raw, dict):
        raise fail("expected a mapping at the top level")
    _reject_unknown(raw, TOP_LEVEL_KEYS, "top-level key", fail)
    model = raw.get("model")
    if model not in VARIANTS:
        raise fail(f"'model' must be one of {', '.join(VARIANTS)}; got {model!r}")
    allowed = config_keys(model) - RESERVED_KEYS

    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise fail("'fixed' must be a mapping of config keys to values")
    for key in fixed:
        _check_config_key(key, allowed, model, "fixed key", fail)

    budget = _parse_budget(raw.get("budget") or {}, Budget(), fail)
    per_dataset = raw.get("dataset_budgets") or {}
    if not isinstance(per_dataset, dict):
        raise fail("'dataset_budgets' must map dataset names to budget changes")
    dataset_budgets = {
        str(name): _parse_budget(changes or {}, budget, fail, f"dataset_budgets.{name}")
        for name, changes in per_dataset.items()
    }

    specs = raw.get("parameters")
    if not isinstance(specs, dict) or not specs:
        raise fail("'parameters' must be a non-empty mapping of parameter name to distribution")
    parameters: list[Parameter] = []
    for name, spec in specs.items():
        _check_config_key(name, allowed, model, "parameter", fail)
        if name in fixed:
            raise fail(f"parameter {name!r} is both fixed and searched")
        parameters.append(_parse_parameter(name, spec, parameters, fail))

    return SearchSpace(
        name=str(raw.get("name") or path.stem),
        model=model,
        path=path,
        description=str(raw.get("description") or ""),
        fixed=dict(fixed),
        budget=budget,
        parameters=tuple(parameters),
        dataset_budgets=dataset_budgets,
    )


def _parse_budget(raw: Any, base: Budget, fail, where: str = "budget") -> Budget:
    if not isinstance(raw, dict):
        raise fail(f"'{where}' must be a mapping")
    _reject_unknown(raw, set(Budget.__dataclass_fields__), f"{where} key", fail)
    for key in ("num_samples", "max_epochs", "grace_period", "reduction_factor"):
        value = raw.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise fail(f"{where} {key!r} must be a positive integer; got {value!r}")
    budget = replace(base, **raw)
    validate_budget(budget, lambda problem: fail(f"{where}: {problem}"))
    return budget


def validate_budget(budget: Budget, fail=SpaceError) -> None:
    """Checks shared by the space file and the command-line overrides."""
    if budget.metric not in METRICS:
        raise fail(f"metric {budget.metric!r} is not one of {', '.join(METRICS)}")
    if budget.mode not in ("max", "min"):
        raise fail(f"mode must be 'max' or 'min'; got {budget.mode!r}")
    if budget.reduction_factor < 2:
        raise fail(f"reduction_factor must be >= 2; got {budget.reduction_factor}")
    if budget.grace_period > budget.max_epochs:
        raise fail(
            f"grace_period ({budget.grace_period}) exceeds max_epochs ({budget.max_epochs})"
        )


def _parse_parameter(name: str, spec: Any, earlier: list[Parameter], fail) -> Parameter:
    def bad(problem: str) -> SpaceError:
        return fail(f"parameter {name!r}: {problem}")

    if not isinstance(spec, dict) or "type" not in spec:
        raise bad("expected a mapping with a 'type' (" + ", ".join(DISTRIBUTIONS) + ")")
    kind = spec["type"]
    if kind not in DISTRIBUTIONS:
        close = difflib.get_close_matches(str(kind), DISTRIBUTIONS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        known = ", ".join(DISTRIBUTIONS)
        raise bad(f"unknown distribution type {kind!r}{hint}; use one of {known}")
    _reject_unknown(spec, DISTRIBUTIONS[kind] | COMMON_SPEC_KEYS, f"{kind} option", bad)
    condition = _parse_condition(spec.get("condition"), earlier, bad)

    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise bad("'choices' must be a non-empty list")
        if len(set(map(repr, choices))) != len(choices):
            raise bad(f"'choices' has duplicates: {choices}")
        return Parameter(name, kind, choices=tuple(choices), condition=condition)

    low, high = spec.get("low"), spec.get("high")
    for bound_name, bound in (("low", low), ("high", high)):
        if not _is_number(bound):
            raise bad(f"'{bound_name}' must be a number; got {bound!r}")
    if low >= high:
        raise bad(f"low ({low}) must be < high ({high})")
    log = kind == "loguniform" or bool(spec.get("log", False))
    if log and low <= 0:
        raise bad(f"a log-scale range must be > 0; got low = {low}")
    step = spec.get("step")
    if step is not None and (not _is_number(step) or step <= 0):
        raise bad(f"'step' must be a positive number; got {step!r}")
    if kind == "int":
        if not all(isinstance(v, int) for v in (low, high)):
            raise bad(f"int bounds must be integers; got low = {low!r}, high = {high!r}")
        if log and step not in (None, 1):
            raise bad("an int parameter cannot have both log = true and a step other than 1")
    return Parameter(name, kind, float(low), float(high), log, step, condition=condition)


def _parse_condition(raw: Any, earlier: list[Parameter], bad) -> dict[str, tuple]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise bad("'condition' must map earlier parameter names to a value or a list of values")
    by_name = {p.name: p for p in earlier}
    condition = {}
    for other, values in raw.items():
        if other not in by_name:
            raise bad(f"condition refers to {other!r}, which is not a parameter defined above it")
        values = tuple(values) if isinstance(values, list) else (values,)
        parent = by_name[other]
        if parent.type == "categorical":
            missing = [v for v in values if v not in parent.choices]
            if missing:
                raise bad(f"condition value(s) {missing} are not among {other!r}'s choices")
        condition[other] = values
    return condition


def _check_config_key(key: str, allowed: frozenset, model: str, what: str, fail) -> None:
    if key in RESERVED_KEYS:
        raise fail(f"{what} {key!r} is set by the search itself (use the command line options)")
    if key not in allowed:
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise fail(f"{what} {key!r} is not a config key of variant {model!r}{hint}")


def _reject_unknown(mapping: dict, known: set, what: str, fail) -> None:
    unknown = sorted(set(mapping) - known)
    if unknown:
        raise fail(f"unknown {what}(s) {unknown}; expected some of {sorted(known)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
