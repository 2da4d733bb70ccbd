"""Ablation arms of the test stage: a selected configuration retrained with one change.

``--ablate KEY=VALUE [KEY=VALUE ...]`` names one arm (several assignments make one arm that
changes them together). An arm applies to every compared variant that has all its keys; the
value is parsed as YAML (``false``, ``0``, ``0.5``, ``linear``), as ``models.train --set`` does,
and checked against each such variant with ``models.registry.resolve_config`` before anything
runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from models.registry import config_keys, resolve_config

# Keys an arm may not change: the variant itself, the seed (arms are paired with the full model
# by seed) and the epoch budget (the search's, the same for every arm).
RESERVED_KEYS = ("model", "seed", "epochs")


class AblationError(ValueError):
    """An --ablate arm that cannot run; the message names the arm, key and value."""


@dataclass(frozen=True)
class Arm:
    """One ablation arm: config changes applied together to a selected configuration."""

    changes: tuple[tuple[str, Any], ...]  # (key, value parsed as YAML), in the order given

    @property
    def name(self) -> str:
        """The arm's name in tables and MLflow tags, e.g. ``da_gating=false``."""
        return ",".join(f"{key}={value_text(value)}" for key, value in self.changes)

    @property
    def keys(self) -> tuple[str, ...]:
        """The config keys the arm changes."""
        return tuple(key for key, _ in self.changes)

    def applies_to(self, variant: str) -> bool:
        """Whether ``variant`` has every key the arm changes.

        Args:
            variant: a variant name of ``models.registry``.
        """
        return set(self.keys) <= config_keys(variant)

    def apply(self, config: dict) -> dict:
        """``config`` with the arm's changes.

        Args:
            config: a (selected) configuration.
        """
        return {**config, **dict(self.changes)}


def value_text(value: Any) -> str:
    """A config value as YAML writes it (``false``, ``0.5``, ``linear``).

    Args:
        value: the parsed value.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_arm(assignments: Sequence[str]) -> Arm:
    """One arm from its ``KEY=VALUE`` assignments (values parsed as YAML).

    Args:
        assignments: the words given after one ``--ablate``.

    Raises:
        AblationError: an assignment is not KEY=VALUE, a key is reserved or given twice.
    """
    text = " ".join(assignments)
    changes = []
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        key = key.strip()
        if not sep or not key:
            raise AblationError(f"--ablate {text}: expected KEY=VALUE, got {assignment!r}")
        if key in RESERVED_KEYS:
            raise AblationError(f"--ablate {text}: {key!r} cannot be ablated (reserved keys: "
                                f"{', '.join(RESERVED_KEYS)})")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise AblationError(f"--ablate {text}: value {value!r} is not YAML: {exc}") from exc
        changes.append((key, parsed))
    keys = [key for key, _ in changes]
    if not changes or len(set(keys)) != len(keys):
        raise AblationError(f"--ablate {text}: give each key once, at least one")
    return Arm(tuple(changes))


def parse_arms(groups: Iterable[Sequence[str]] | None) -> tuple[Arm, ...]:
    """Every ``--ablate`` occurrence as an arm, in order.

    Args:
        groups: argparse's list of assignment lists (None: no arm).

    Raises:
        AblationError: see ``parse_arm``; or the same arm given twice.
    """
    arms = tuple(parse_arm(group) for group in groups or ())
    names = [arm.name for arm in arms]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise AblationError(f"--ablate {twice[0]} is given more than once")
    return arms


def validate_arms(arms: Sequence[Arm], variants: Sequence[str]) -> None:
    """Check, before anything runs, that each arm applies to at least one compared variant and
    that its values are valid for every variant it applies to.

    Args:
        arms: the parsed arms.
        variants: the compared variants (the spaces' models).

    Raises:
        AblationError: naming the arm, the key and the value.
    """
    compared = ", ".join(dict.fromkeys(variants))
    for arm in arms:
        takers = [v for v in dict.fromkeys(variants) if arm.applies_to(v)]
        if not takers:
            missing = [key for key in arm.keys
                       if not any(key in config_keys(v) for v in variants)]
            which = (f"config key {missing[0]!r}" if missing
                     else f"all of the config keys {list(arm.keys)}")
            raise AblationError(
                f"--ablate {arm.name}: no compared variant has {which} "
                f"(compared: {compared}); see each variant's spec (models/registry.py) for its keys"
            )
        for variant in takers:
            _check(arm, {"model": variant}, variant)


def arm_jobs(arms: Sequence[Arm], selections: Sequence) -> tuple[list[tuple], dict]:
    """The (selection, arm) pairs to retrain, and the arms a selection already is.

    Args:
        arms: the parsed arms.
        selections: ``hpo.selection.Selection`` of each compared space.

    Returns:
        ([(selection, arm, config), ...] for every arm that changes a selection it applies to,
        {(dataset, space, arm name): why not retrained}).

    Raises:
        AblationError: an arm's value is invalid with a selected configuration (e.g. n_heads
            that does not divide the selected embedding_size).
    """
    jobs, skipped = [], {}
    for selection in selections:
        for arm in arms:
            if not arm.applies_to(selection.variant):
                continue
            config = arm.apply(selection.config)
            _check(arm, config, f"{selection.space}'s selected configuration")
            if resolve_config(config) == resolve_config(selection.config):  # defaults included
                skipped[(selection.dataset, selection.space, arm.name)] = (
                    f"the selected configuration already has {arm.name}, so this arm is the "
                    "full model")
                continue
            jobs.append((selection, arm, config))
    return jobs, skipped


def _check(arm: Arm, config: dict, where: str) -> None:
    try:
        resolve_config(arm.apply(config))
    except (TypeError, ValueError) as exc:
        raise AblationError(f"--ablate {arm.name}: invalid for {where}: {exc}") from exc
