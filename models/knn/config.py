"""Hyperparameters of the session-kNN baselines: names, published defaults, allowed values.

The defaults are session-rec's (github.com/rn5l/session-rec, the framework of Ludewig et al.,
"Empirical analysis of session-based recommendation algorithms", UMUAI 2021): the default
arguments of the constructors of ``algorithms/knn/{sknn,vsknn,stan,vstan}.py``, except

- ``k``, which every constructor requires; each docstring gives 100 as its default value;
- SKNN's ``similarity``: the constructor says "jaccard", but the papers define SKNN with the
  cosine of binary session vectors and every configuration session-rec ships (``conf/``, e.g.
  ``conf/save/diginetica/window/window_digi_baselines.yml``) runs it with ``cosine``;
- ``lambda_snh``, which session-rec gives in days (5) and this package in the time unit of
  ``models.knn.sessions`` (the training split spans 1): see ``days_to_time``.

Value types are those of the defaults (int, float, str): ``models.config_types.coerce``
accepts an int for a float.
"""

from __future__ import annotations

import math

from models.config_types import coerce
from models.spec import Keys, counts

KNN_VARIANTS = ("sknn", "vsknn", "stan", "vstan")
# How reports name each variant.
KNN_LABELS = {"sknn": "SKNN", "vsknn": "V-SKNN", "stan": "STAN", "vstan": "VSTAN"}

SAMPLINGS = ("recent", "random")
# Session similarities each variant offers (session-rec's names; its vsknn also names jaccard,
# but calls it with an argument too many, and its vstan accepts the key yet always computes
# cosine: here vstan honours it).
SIMILARITIES = {
    "sknn": ("cosine", "jaccard"),
    "vsknn": ("vec", "cosine"),
    "vstan": ("cosine", "vec"),
}
# V-SKNN's decays (session-rec's names; ``weighting_score`` names its ``<name>_score`` methods).
WEIGHTINGS = ("same", "div", "linear", "log", "quadratic")

# Days a training split is assumed to span when converting session-rec's lambda_snh (days) to
# the normalised time of this package: about the training periods of CORE's benchmarks
# (diginetica ~5 months, retailrocket ~4.5, tmall ~6).
REFERENCE_SPAN_DAYS = 150.0


def days_to_time(days: float, span_days: float = REFERENCE_SPAN_DAYS) -> float:
    """A duration in session-rec's days as a fraction of the training split's time span.

    The training sessions carry no timestamps here; session j of n is at time j / n (see
    ``models.knn.sessions.SessionIndex``), so the split spans 1 time unit, which stands for the
    ``span_days`` its sessions were collected over: d days = d / span_days units (session-rec's
    default lambda_snh of 5 days = 5 / 150 = 1/30; its search grid 2.5 ... 100 days = 1/60 ...
    2/3). A split cut to its last rows (``SessionDataset.with_train_tail``) spans fewer days,
    and the same lambda then decays faster in days: pass its span as ``span_days``. Session
    indices stand for time only as far as sessions arrive at an even rate.

    Args:
        days: the duration in days.
        span_days: the days the training split spans (default ``REFERENCE_SPAN_DAYS``).

    Returns:
        The duration in normalised time units.
    """
    if span_days <= 0:
        raise ValueError(f"span_days must be > 0, got {span_days}")
    return days / span_days


_STAN = {"lambda_spw": 1.02, "lambda_snh": days_to_time(5.0), "lambda_inh": 2.05}

# Per variant: every hyperparameter with session-rec's default (see the module docstring).
# "model" and "seed" (for sampling "random") are not hyperparameters and not listed.
KNN_DEFAULTS: dict[str, dict] = {
    # ContextKNN(k, sample_size=1000, sampling='recent', similarity='jaccard', ...)
    "sknn": {"k": 100, "sample_size": 1000, "sampling": "recent", "similarity": "cosine"},
    # VMContextKNN(k, sample_size=1000, sampling='recent', similarity='vec', weighting='div',
    #              weighting_score='div', idf_weighting=False, ...)
    "vsknn": {"k": 100, "sample_size": 1000, "sampling": "recent", "similarity": "vec",
              "weighting": "div", "weighting_score": "div", "idf_weighting": 0.0},
    # STAN(k, sample_size=5000, sampling='recent', lambda_spw=1.02, lambda_snh=5 (days),
    #      lambda_inh=2.05, ...)
    "stan": {"k": 100, "sample_size": 5000, "sampling": "recent", **_STAN},
    # VSKNN_STAN(k, sample_size=5000, sampling='recent', similarity='cosine', lambda_spw=1.02,
    #            lambda_snh=5 (days), lambda_inh=2.05, lambda_ipw=1.02, lambda_idf=5, ...)
    "vstan": {"k": 100, "sample_size": 5000, "sampling": "recent", "similarity": "cosine",
              **_STAN, "lambda_ipw": 1.02, "lambda_idf": 5.0},
}

_POSITIVE = (lambda v: v > 0 and math.isfinite(v), "> 0 (finite)")
_NON_NEGATIVE = (lambda v: v >= 0 and math.isfinite(v), ">= 0 (finite; 0 = off)")
_ALL_SIMILARITIES = tuple(dict.fromkeys(s for names in SIMILARITIES.values() for s in names))

# key -> (check(value) -> bool, description), for every key of any variant. The checks assume
# the value already has its default's type (see ``resolve_knn_params``).
KNN_RANGES: dict[str, tuple] = {
    "k": (lambda v: v >= 1, ">= 1"),
    "sample_size": (lambda v: v >= 0, ">= 0 (0 = every session sharing an item)"),
    "sampling": (lambda v: v in SAMPLINGS, f"one of {SAMPLINGS}"),
    "similarity": (
        lambda v: v in _ALL_SIMILARITIES,
        "one of " + ", ".join(f"{variant} {names}" for variant, names in SIMILARITIES.items()),
    ),
    "weighting": (lambda v: v in WEIGHTINGS, f"one of {WEIGHTINGS}"),
    "weighting_score": (lambda v: v in WEIGHTINGS, f"one of {WEIGHTINGS}"),
    "idf_weighting": _NON_NEGATIVE,
    "lambda_spw": _POSITIVE,
    "lambda_snh": _POSITIVE,
    "lambda_inh": _POSITIVE,
    "lambda_ipw": _POSITIVE,
    "lambda_idf": _NON_NEGATIVE,
}


# What a kNN baseline's config has besides its hyperparameters: the seed (of "random" sampling),
# the epoch budget a search or test stage sets (a fit is one pass, so it is unused) and how many
# rows are scored at a time.
KNN_RUN = Keys({"seed": 2020, "epochs": 1, "eval_batch_size": 1024},
               counts("epochs", "eval_batch_size"))


def knn_keys(variant: str) -> Keys:
    """The hyperparameters of ``variant`` as a key group of its spec (``models.spec``): its
    ``KNN_DEFAULTS``, their ``KNN_RANGES`` and the rule of ``check_knn_params``.

    Args:
        variant: one of ``KNN_VARIANTS``.

    Returns:
        The group.
    """
    defaults = KNN_DEFAULTS[variant]
    return Keys(defaults, {key: KNN_RANGES[key] for key in defaults},
                rules=(lambda config: check_knn_params(variant, config),))


def resolve_knn_params(variant: str, config: dict) -> dict:
    """The hyperparameters of ``variant``: its defaults overridden by ``config``'s values,
    type- and range-checked.

    Args:
        variant: one of ``KNN_VARIANTS``.
        config: any mapping; its keys of ``variant`` are used, keys that only other kNN
            variants have are an error, every other key ("model", "seed", trainer keys) is
            ignored.

    Returns:
        A new dict with exactly ``KNN_DEFAULTS[variant]``'s keys.

    Raises:
        ValueError: an unknown variant, another variant's key, or a value out of its range.
        TypeError: a value of the wrong type.
    """
    if variant not in KNN_VARIANTS:
        raise ValueError(f"unknown kNN model {variant!r}; expected one of {KNN_VARIANTS}")
    defaults = KNN_DEFAULTS[variant]
    foreign = sorted(key for key in config if key in KNN_RANGES and key not in defaults)
    if foreign:
        raise ValueError(f"{variant} has no hyperparameter(s) {foreign}; "
                         f"its keys are {sorted(defaults)}")
    params = {key: coerce(key, config.get(key, default), default)
              for key, default in defaults.items()}
    for key, value in params.items():
        check, description = KNN_RANGES[key]
        if not check(value):
            raise ValueError(f"{variant} key {key!r} must be {description}, got {value!r}")
    check_knn_params(variant, params)
    return params


def check_knn_params(variant: str, params: dict) -> None:
    """The rules beyond each key's own range: a similarity the variant offers.

    Args:
        variant: one of ``KNN_VARIANTS``.
        params: its (type-checked) hyperparameters.

    Raises:
        ValueError: naming the key and the allowed values.
    """
    if "similarity" in params and params["similarity"] not in SIMILARITIES[variant]:
        raise ValueError(f"{variant} key 'similarity' must be one of {SIMILARITIES[variant]}, "
                         f"got {params['similarity']!r}")
