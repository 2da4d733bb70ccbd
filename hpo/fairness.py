"""Fair arms: the spaces of one comparison differ only in what is being compared.

Two arms share a config key when both variants have it (``models.registry.config_keys``):
dropouts, temperature, lr and the transformer's knobs for every CORE variant, ``k`` and
``sample_size`` for the kNN models, ``hn_k`` for CORE-HN and CORE-DAHN, ... A shared key must be
searched with the same distribution (type, range, scale, step, choices, condition) in both
spaces, or hold the same value in both (fixed in the space file, or the variant's default).
A variant adds only its own knobs, the keys the other arm does not have. A space may name shared
keys it is *about* (``about:`` in the file: ``enhanced.yaml`` is about relative positions and
the weight average, ``ips.yaml`` about the popularity weighting); those are left out of the check
for every pair the space is in.

The budget is part of fairness too: every arm gets the same number of trials, and the CORE
variants (trained epoch by epoch) the same epoch budget and ASHA settings. A kNN model fits once
per trial, so its epoch budget does not matter.

``launch.py`` refuses unequal arms before Ray starts (``--allow-unequal-spaces`` overrides, and
the report says so); a study file is checked the same way.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hpo.space import RESERVED_KEYS, Budget, Parameter, SearchSpace
from models.registry import NEUTRAL_KEYS, config_keys, default_config, fits_once


@dataclass(frozen=True)
class Difference:
    """One way two arms of a comparison are not searched alike."""

    first: str  # the spaces' names (file stems)
    second: str
    key: str  # the config key, or "budget.<field>"
    detail: str  # what differs, both sides named

    def __str__(self) -> str:
        return f"{self.first} and {self.second} differ in {self.key}: {self.detail}"


def _treatment(space: SearchSpace, key: str) -> tuple[str, Any]:
    """How ``space`` treats ``key``: ("searched", its distribution) or ("fixed", its value)."""
    parameter = space.parameter(key)
    if parameter is not None:
        return "searched", _distribution(parameter)
    if key in space.fixed:
        return "fixed", space.fixed[key]
    return "fixed", default_config(space.model)[key]


def _distribution(parameter: Parameter) -> tuple:
    """What decides the values a parameter can take and how they are sampled."""
    condition = tuple(sorted((name, tuple(map(repr, values)))
                             for name, values in parameter.condition.items()))
    if parameter.type == "categorical":
        return ("categorical", tuple(map(repr, parameter.choices)), condition)
    log = parameter.log or parameter.type == "loguniform"
    return (parameter.type if parameter.type == "int" else "float", parameter.low,
            parameter.high, log, parameter.step, condition)


def describe_treatment(space: SearchSpace, key: str) -> str:
    """``key`` in ``space`` in words, e.g. "searched loguniform [0.0003, 0.003]" or
    "fixed at 'absolute' (the default)".

    Args:
        space: the search space.
        key: one of its variant's config keys.
    """
    parameter = space.parameter(key)
    if parameter is not None:
        if parameter.type == "categorical":
            text = f"searched categorical {list(parameter.choices)}"
        else:
            text = f"searched {parameter.type} [{parameter.low:g}, {parameter.high:g}]"
            text += " log" if parameter.log and parameter.type != "loguniform" else ""
            text += f" step {parameter.step:g}" if parameter.step else ""
        return text + (f" if {parameter.condition}" if parameter.condition else "")
    if key in space.fixed:
        return f"fixed at {space.fixed[key]!r}"
    return f"fixed at {default_config(space.model)[key]!r} (the default)"


def shared_keys(first: SearchSpace, second: SearchSpace) -> list[str]:
    """The config keys the two arms must search alike: those both variants have, less the
    search's own keys (seed, epochs), the keys that do not change results
    (``models.registry.NEUTRAL_KEYS``: the evaluation batch size) and the keys either space
    says it is about.

    Args:
        first, second: two search spaces.
    """
    common = config_keys(first.model) & config_keys(second.model)
    return sorted(common - RESERVED_KEYS - NEUTRAL_KEYS - first.about - second.about)


def space_differences(first: SearchSpace, second: SearchSpace) -> list[Difference]:
    """Every shared key the two spaces treat differently.

    Args:
        first, second: two search spaces.
    """
    out = []
    for key in shared_keys(first, second):
        if _treatment(first, key) != _treatment(second, key):
            out.append(Difference(
                first.name, second.name, key,
                f"{describe_treatment(first, key)} in {first.name} ({first.path.name}), "
                f"{describe_treatment(second, key)} in {second.name} ({second.path.name})"))
    return out


def budget_differences(
    first: SearchSpace, first_budget: Budget, second: SearchSpace, second_budget: Budget
) -> list[Difference]:
    """Budget fields the two arms differ in: trials and metric for every pair, the epoch budget
    and ASHA's settings between models trained epoch by epoch.

    Args:
        first, second: two search spaces.
        first_budget, second_budget: their budgets on the dataset compared.
    """
    fields = ["num_samples", "metric", "mode"]
    if not fits_once(first.model) and not fits_once(second.model):
        fields += ["max_epochs", "grace_period", "reduction_factor"]
    return [
        Difference(first.name, second.name, f"budget.{name}",
                   f"{getattr(first_budget, name)} in {first.name}, "
                   f"{getattr(second_budget, name)} in {second.name}")
        for name in fields
        if getattr(first_budget, name) != getattr(second_budget, name)
    ]


def arm_differences(
    spaces: Sequence[SearchSpace], budgets: Sequence[Budget] | None = None
) -> list[Difference]:
    """Every unfair difference among the arms of one comparison, pair by pair.

    Args:
        spaces: the compared search spaces.
        budgets: their budgets on the dataset compared, in the same order (None: not checked).
    """
    out = []
    indexed = list(enumerate(spaces))
    for (i, first), (j, second) in itertools.combinations(indexed, 2):
        out += space_differences(first, second)
        if budgets is not None:
            out += budget_differences(first, budgets[i], second, budgets[j])
    return out


class UnequalSpacesError(ValueError):
    """The arms of a comparison are not searched alike (``arm_differences``)."""


def check_fair_arms(
    spaces: Sequence[SearchSpace], budgets: Sequence[Budget] | None = None, *,
    allow: bool = False, option: str = "--allow-unequal-spaces",
) -> list[Difference]:
    """Refuse a comparison whose arms are not searched alike, or, with ``allow``, return the
    differences (for the report).

    Args:
        spaces: the compared search spaces.
        budgets: their budgets on the dataset compared, in the same order.
        allow: return the differences instead of raising.
        option: how the user overrides the check, for the message.

    Raises:
        UnequalSpacesError: naming the first difference (spaces, key, both treatments) and how
            many there are, when ``allow`` is False.
    """
    found = arm_differences(spaces, budgets)
    if found and not allow:
        more = f" (and {len(found) - 1} more difference(s))" if len(found) > 1 else ""
        raise UnequalSpacesError(
            f"unfair arms: {found[0]}{more}. Arms of one comparison must search the knobs they "
            f"share alike: align the space files, declare the key under 'about:' in the space "
            f"that is about it, or pass {option} (the report then says so)")
    return found
