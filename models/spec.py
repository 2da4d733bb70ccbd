"""What a variant is, as data: its config keys with their spec defaults and allowed values, its
builder and its label (``VariantSpec``), made of key groups (``Keys``) that live beside the code
that reads them (``models.core_variants``, ``models.semantic``, ``models.persona.spec``,
``models.diffusion.spec``, ``models.knn``). ``models.registry`` is the table of the specs.

A config is resolved once (``VariantSpec.resolve``): the defaults merged with the overrides, each
value coerced to its default's type, each range checked, then the rules across keys. Builders take
a resolved config and check nothing again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from models.config_types import coerce

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from data.dataset import SessionDataset

# A value constraint beyond the type of the default: (check(value) -> bool, description); the
# check may assume the value already has its default's type.
Check = tuple[Callable[[Any], bool], str]
# (resolved config, catalog rows, semantic item vectors or None) -> an untrained model.
Builder = Callable[[dict, int, "np.ndarray | None"], "nn.Module"]
# (resolved config, dataset) -> an untrained model, for variants built from the whole dataset.
DatasetBuilder = Callable[[dict, "SessionDataset"], "nn.Module"]

FRACTION: Check = (lambda v: 0.0 <= v < 1.0, "in [0, 1)")
UNIT_INTERVAL: Check = (lambda v: 0.0 <= v <= 1.0, "in [0, 1]")
OPEN_UNIT: Check = (lambda v: 0.0 < v <= 1.0, "in (0, 1]")
POSITIVE: Check = (lambda v: v > 0, "> 0")
NON_NEGATIVE: Check = (lambda v: v >= 0, ">= 0")
COUNT: Check = (lambda v: v >= 1, ">= 1")


def one_of(choices: tuple) -> Check:
    """The check of a key whose value is one of ``choices``.

    Args:
        choices: the allowed values.

    Returns:
        The check, described as "one of <choices>".
    """
    return (lambda v: v in choices, f"one of {choices}")


def counts(*keys: str) -> dict[str, Check]:
    """``COUNT`` (>= 1) for each of ``keys``.

    Args:
        *keys: config keys whose values count something.

    Returns:
        key -> ``COUNT``.
    """
    return dict.fromkeys(keys, COUNT)


def _frozen(mapping: Mapping | None) -> Mapping:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Keys:
    """A group of config keys that one part of a model reads.

    Args:
        defaults: every key of the group with its spec default (bool, int, float or str; the
            type a value is coerced to).
        ranges: key -> ``Check`` for the keys whose values are constrained beyond their type.
        sets: key -> parser of a key whose value names a set (a list, or a comma-separated
            string): the parsed names are stored as the canonical comma-separated string.
        rules: checks across the group's keys, each raising ``ValueError`` on a resolved config.
    """

    defaults: Mapping[str, object]
    ranges: Mapping[str, Check] = field(default_factory=dict)
    sets: Mapping[str, Callable[[object], tuple[str, ...]]] = field(default_factory=dict)
    rules: tuple[Callable[[dict], None], ...] = ()

    def __post_init__(self) -> None:
        for name in ("defaults", "ranges", "sets"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        stray = sorted((set(self.ranges) | set(self.sets)) - set(self.defaults))
        if stray:
            raise ValueError(f"ranges or sets of keys without a default: {stray}")


@dataclass(frozen=True)
class VariantSpec:
    """Everything the registry knows about one variant.

    Args:
        name: the variant's name (a config's "model").
        label: how reports name it.
        keys: its key groups, in the order of its default config.
        build: its builder from a resolved config (``Builder``); None where it is built from
            the dataset (``build_for``) or is not a torch model.
        build_for: its builder from the dataset (``DatasetBuilder``), for variants that need
            users, the item table and graph side files.
        needs_item_text: whether it needs semantic item vectors made from item text.
        fits_once: whether it is fitted in one pass (the kNN baselines), not trained by epochs.
    """

    name: str
    label: str
    keys: tuple[Keys, ...]
    build: Builder | None = None
    build_for: DatasetBuilder | None = None
    needs_item_text: bool = False
    fits_once: bool = False

    def default_config(self) -> dict:
        """Every key with its spec default, "model" first.

        Returns:
            A new dict.
        """
        config = {"model": self.name}
        for group in self.keys:
            config.update(group.defaults)
        return config

    def resolve(self, overrides: Mapping) -> dict:
        """The complete config: the defaults merged with ``overrides``, type- and range-checked.

        Args:
            overrides: any of the variant's keys ("model" included).

        Returns:
            A new dict with every key of ``default_config``.

        Raises:
            ValueError: unknown keys (named), a value out of its range, a rule broken.
            TypeError: a value of the wrong type.
        """
        config = self.default_config()
        unknown = sorted(set(overrides) - set(config))
        if unknown:
            raise ValueError(f"unknown config key(s) for model {self.name!r}: {unknown}")
        sets = {key: parse for group in self.keys for key, parse in group.sets.items()}
        for key, value in overrides.items():
            if key in sets:
                value = _canonical_set(key, value, sets[key])
            config[key] = coerce(key, value, config[key])
        for group in self.keys:
            for key, (check, description) in group.ranges.items():
                if not check(config[key]):
                    raise ValueError(
                        f"config key {key!r} must be {description}, got {config[key]!r}")
        for rule in _unique(rule for group in self.keys for rule in group.rules):
            rule(config)
        return config


def _canonical_set(key: str, value: object, parse: Callable) -> object:
    """A set-valued key's value as its canonical comma-separated string (other types are left
    to ``coerce``'s type error)."""
    if not isinstance(value, str | list | tuple):
        return value
    try:
        return ",".join(parse(value))
    except ValueError as exc:
        raise ValueError(f"config key {key!r}: {exc}") from None


def _unique(items: Iterable) -> list:
    return list(dict.fromkeys(items))
