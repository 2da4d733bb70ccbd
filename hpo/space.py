"""Search-space YAML files: parsing, validation before Ray starts, the define-by-run sampler.

A space file looks like::

    name: dahn                    # optional, defaults to the file stem
    model: dahn                   # a variant of models.registry.VARIANTS
    description: ...
    fixed: {n_layers: 2}          # config keys set for every trial
    about: [pos_encoding]         # shared config keys this arm is about (hpo.fairness)
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

Values are checked when the file is read, against the variant's config (``resolve_config``:
each key's type and range, and cross-key rules such as ``n_heads`` dividing ``embedding_size``),
so a space no trial could run fails before Ray starts (``check_values``).
"""

from __future__ import annotations

import difflib
import itertools
import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from hpo.options import METRICS, SPACES_DIR
from models.registry import VARIANTS, config_keys, default_config, resolve_config

DISTRIBUTIONS = {
    "uniform": {"low", "high", "step"},
    "loguniform": {"low", "high"},
    "int": {"low", "high", "log", "step"},
    "categorical": {"choices"},
}
COMMON_SPEC_KEYS = {"type", "condition"}
TOP_LEVEL_KEYS = {
    "name", "model", "description", "fixed", "about", "budget", "dataset_budgets", "parameters"
}
# Keys the search owns: a space may not fix or sample them, the CLI sets them.
RESERVED_KEYS = {"model", "seed", "epochs"}
# Parse-time value checks (``check_values``): an int range of up to GRID_LIMIT values is checked
# value by value; up to COMBINATION_LIMIT combinations of parameter values are checked together.
GRID_LIMIT = 1024
COMBINATION_LIMIT = 2048


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
        """Whether the parameter is sampled, given those ``sampled`` so far: every parameter
        its condition names has one of the listed values.

        Args:
            sampled: parameter name -> value sampled so far.
        """
        return all(
            name in sampled and sampled[name] in values for name, values in self.condition.items()
        )

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one this parameter can take (a choice, or in [low, high] on the
        step grid; bools are never numbers here).

        Args:
            value: a candidate value, e.g. the variant's published default.
        """
        if self.type == "categorical":
            return any(value == c and type(value) is type(c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.type == "int" and value != int(value):
            return False
        if not self.low <= value <= self.high:
            return False
        if self.step:
            steps = (value - self.low) / self.step
            return math.isclose(steps, round(steps), abs_tol=1e-9)
        return True

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
    # Config keys every variant has (dropouts, lr, positions, ...) that this arm is about, so
    # it may search or fix them unlike the other arms of a comparison (``hpo.fairness``).
    about: frozenset[str] = frozenset()

    def parameter(self, name: str) -> Parameter | None:
        """The searched parameter ``name``, or None when the space does not search it."""
        return next((p for p in self.parameters if p.name == name), None)

    def budget_for(self, dataset: str) -> Budget:
        """The budget for ``dataset``: its own from the file's per-dataset budgets, else the
        default one."""
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
    """Read and check a space file.

    Args:
        name_or_path: a file in ``search_spaces/`` by name (``dahn.yaml``) or a path.

    Raises:
        SpaceError: the file is missing, not YAML, or not a valid space (the message names the
            file and the problem).
    """
    path = resolve_space_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpaceError(f"{path}: not valid YAML: {exc}") from exc
    return parse_space(raw, path)


def parse_space(raw: Any, path: Path) -> SearchSpace:
    """Check a parsed space file and build its ``SearchSpace``: the model, its fixed keys and
    searched parameters (each range checked against the variant's spec), the budget and the
    per-dataset budgets.

    Args:
        raw: the file's YAML content.
        path: the file, named in errors and recorded in the space.

    Raises:
        SpaceError: the first problem found, naming the file.
    """
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

    budget = parse_budget(raw.get("budget") or {}, Budget(), fail)
    per_dataset = raw.get("dataset_budgets") or {}
    if not isinstance(per_dataset, dict):
        raise fail("'dataset_budgets' must map dataset names to budget changes")
    dataset_budgets = {
        str(name): parse_budget(changes or {}, budget, fail, f"dataset_budgets.{name}")
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
    check_values(model, fixed, parameters, fail)
    about = raw.get("about") or []
    if not isinstance(about, list) or not all(isinstance(key, str) for key in about):
        raise fail("'about' must be a list of config keys")
    for key in about:
        _check_config_key(key, allowed, model, "'about' key", fail)

    return SearchSpace(
        name=str(raw.get("name") or path.stem),
        model=model,
        path=path,
        description=str(raw.get("description") or ""),
        fixed=dict(fixed),
        budget=budget,
        parameters=tuple(parameters),
        dataset_budgets=dataset_budgets,
        about=frozenset(about),
    )


def parse_budget(raw: Any, base: Budget, fail, where: str = "budget") -> Budget:
    """A budget from a mapping of some of its fields (the rest from ``base``), checked.

    Args:
        raw: the mapping (a space file's ``budget``, a study's per-dataset budget).
        base: the budget the fields change.
        fail: makes the exception to raise from a message.
        where: the mapping's name in messages.
    """
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


def check_values(model: str, fixed: dict[str, Any], parameters, fail=SpaceError) -> None:
    """Reject a space whose trials could get an invalid config, before any trial runs.

    Every config a trial can get is ``resolve_config`` of the variant's defaults, the fixed keys
    and the active parameters' values, so that is what is checked, on the values that decide
    validity: each categorical choice, each value of an int range (its bounds when it has more
    than ``GRID_LIMIT`` values), both bounds of a float range (the ranges the registry checks are
    intervals) and any value a ``condition`` tests. The combinations of these values that the
    conditions allow are checked together (cross-key rules) when there are at most
    ``COMBINATION_LIMIT`` of them; otherwise float parameters are held at their low bound, then
    int parameters at their bounds, then a seeded sample of the combinations is checked. Every
    value is also checked in at least one combination. A conditional parameter is only checked
    in combinations where its condition holds, i.e. with the values trials that sample it have.

    Args:
        model: the variant (``models.registry.VARIANTS``).
        fixed: the space's fixed config keys.
        parameters: the parsed parameters, in file order.
        fail: makes the exception to raise from a message (e.g. prefixing the file's path).

    Raises:
        SpaceError: (from ``fail``) naming the fixed keys and parameter values that make an
            invalid config, with the registry's reason.
    """
    parameters = tuple(parameters)
    full = _candidate_values(parameters, detail=2)
    combinations: list[dict[str, Any]] = []
    for detail in (2, 1, 0):
        values = _candidate_values(parameters, detail)
        found = _combinations(parameters, values)
        combinations = list(itertools.islice(found, COMBINATION_LIMIT + 1))
        if len(combinations) <= COMBINATION_LIMIT:
            break
    else:
        rng = random.Random(0)
        combinations = [_random_combination(parameters, values, rng)
                        for _ in range(COMBINATION_LIMIT)]
    seen = {(name, repr(value)) for sampled in combinations for name, value in sampled.items()}
    for parameter in parameters:  # every value at least once, where its parameter is active
        base = next((c for c in combinations if parameter.name in c), None)
        if base is None:
            continue
        for value in full[parameter.name]:
            if (parameter.name, repr(value)) not in seen:
                seen.add((parameter.name, repr(value)))
                combinations.append(_with_value(parameters, base, parameter.name, value, full))
    for sampled in combinations:
        problem = _config_problem(model, fixed, sampled)
        if problem is not None:
            raise fail(_describe_invalid(model, fixed, sampled, full, problem))


def _candidate_values(parameters: tuple[Parameter, ...], detail: int) -> dict[str, list]:
    """The values of each parameter to check: detail 2 = every int value (up to GRID_LIMIT) and
    both float bounds; 1 = floats at their low bound; 0 = ints at their bounds too. Values a
    ``condition`` tests are always included, so conditional parameters get activated."""
    tested: dict[str, list] = {}
    for parameter in parameters:
        for name, values in parameter.condition.items():
            tested.setdefault(name, []).extend(values)
    out = {}
    for p in parameters:
        if p.type == "categorical":
            out[p.name] = list(p.choices)
            continue
        if p.type == "int":
            grid = range(int(p.low), int(p.high) + 1, int(p.step or 1))
            values = list(grid) if detail >= 1 and len(grid) <= GRID_LIMIT else [grid[0], grid[-1]]
        else:
            top = p.high
            if p.step:  # Optuna never goes past the last point of the step grid
                top = p.low + math.floor((p.high - p.low) / p.step + 1e-9) * p.step
            values = [p.low, top] if detail >= 2 else [p.low]
        values += [v for v in tested.get(p.name, ()) if _is_number(v) and p.low <= v <= p.high]
        out[p.name] = list({repr(v): v for v in values}.values())
    return out


def _combinations(parameters: tuple[Parameter, ...], values: dict[str, list]) -> Iterator[dict]:
    """Every assignment the conditions allow (inactive parameters left out), as a trial's."""

    def walk(index: int, sampled: dict) -> Iterator[dict]:
        if index == len(parameters):
            yield dict(sampled)
            return
        parameter = parameters[index]
        if not parameter.active(sampled):
            yield from walk(index + 1, sampled)
            return
        for value in values[parameter.name]:
            sampled[parameter.name] = value
            yield from walk(index + 1, sampled)
        del sampled[parameter.name]

    return walk(0, {})


def _random_combination(parameters, values: dict[str, list], rng: random.Random) -> dict:
    sampled: dict[str, Any] = {}
    for parameter in parameters:
        if parameter.active(sampled):
            sampled[parameter.name] = rng.choice(values[parameter.name])
    return sampled


def _with_value(parameters, base: dict, name: str, value: Any, values: dict[str, list]) -> dict:
    """``base`` with parameter ``name`` set to ``value`` (conditions re-applied)."""
    sampled: dict[str, Any] = {}
    for parameter in parameters:
        if parameter.active(sampled):
            other = base.get(parameter.name, values[parameter.name][0])
            sampled[parameter.name] = value if parameter.name == name else other
    return sampled


def _config_problem(model: str, fixed: dict, sampled: dict) -> str | None:
    try:
        resolve_config({**fixed, **sampled, "model": model})
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


def _describe_invalid(model: str, fixed: dict, sampled: dict, values: dict, problem: str) -> str:
    """Names the fixed keys and parameter values responsible for ``problem``: those for which
    another value (another candidate, or the default) makes the config valid."""

    def fixes(key: str, source: dict, alternatives: list) -> bool:
        for alternative in alternatives:
            changed = {k: v for k, v in source.items() if k != key}
            if alternative is not _DEFAULT:
                changed[key] = alternative
            rest = (fixed, changed) if source is sampled else (changed, sampled)
            if _config_problem(model, *rest) is None:
                return True
        return False

    blamed = [
        f"parameter {key!r} = {value!r}" for key, value in sampled.items()
        if fixes(key, sampled, [v for v in values[key] if repr(v) != repr(value)][:8] + [_DEFAULT])
    ]
    blamed += [f"fixed key {key!r} = {value!r}" for key, value in fixed.items()
               if fixes(key, fixed, [_DEFAULT])]
    if not blamed:
        blamed = [f"parameter {key!r} = {value!r}" for key, value in sampled.items()]
    defaults = default_config(model)
    named = [key for key in dict.fromkeys(re.findall(r"\w+", problem))
             if key in defaults and key != "model" and f"{key!r} =" not in " ".join(blamed)]
    note = "".join(
        f"; {key} = {fixed[key]!r} (fixed)" if key in fixed
        else f"; {key} = {sampled[key]!r} (parameter)" if key in sampled
        else f"; {key} = {defaults[key]!r} (the default)"
        for key in named
    )
    return f"a trial can get {', '.join(blamed)}, which is invalid: {problem}{note}"


_DEFAULT = object()  # "leave the key at its default", in _describe_invalid


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
