"""Session-kNN baselines: SKNN, V-SKNN, STAN and VSTAN (session-rec's definitions, Ludewig et
al., UMUAI 2021; STAN: Garg et al., SIGIR 2019), fitted on CORE's training rows and scoring
full catalogs in vectorised batches.

    model = build_knn({"model": "stan", "seed": 2020}, dataset.n_items).fit(dataset.train)
    scores = model.scores(split.prefixes[:512], split.lengths[:512])  # float32 [512, n_items]

``KNN_DEFAULTS`` holds each variant's hyperparameters with session-rec's defaults,
``KNN_RANGES`` their allowed values, ``KNN_SPECS`` each variant's spec for ``models.registry``;
``rebuild_sessions`` turns the prefix rows back into the sessions the neighbours come from
(``models.knn.sessions``).
"""

from __future__ import annotations

from models.knn.base import BLOCK_CELLS, Neighbours, SessionKNN
from models.knn.config import (
    KNN_DEFAULTS,
    KNN_LABELS,
    KNN_RANGES,
    KNN_RUN,
    KNN_VARIANTS,
    REFERENCE_SPAN_DAYS,
    SAMPLINGS,
    SIMILARITIES,
    WEIGHTINGS,
    check_knn_params,
    days_to_time,
    knn_keys,
    resolve_knn_params,
)
from models.knn.sessions import SessionIndex, rebuild_sessions
from models.knn.sknn import SKNN
from models.knn.stan import STAN, VSTAN
from models.knn.vsknn import VSKNN
from models.spec import VariantSpec

MODELS: dict[str, type[SessionKNN]] = {"sknn": SKNN, "vsknn": VSKNN, "stan": STAN,
                                       "vstan": VSTAN}

__all__ = [
    "BLOCK_CELLS", "KNN_DEFAULTS", "KNN_LABELS", "KNN_RANGES", "KNN_RUN", "KNN_SPECS",
    "KNN_VARIANTS", "MODELS", "REFERENCE_SPAN_DAYS", "SAMPLINGS", "SIMILARITIES", "SKNN", "STAN",
    "VSKNN", "VSTAN", "WEIGHTINGS", "Neighbours", "SessionIndex", "SessionKNN", "build_knn",
    "check_knn_params", "days_to_time", "knn_keys", "knn_model", "rebuild_sessions",
    "resolve_knn_params",
]


def build_knn(config: dict, n_items: int) -> SessionKNN:
    """An unfitted kNN model of ``config["model"]``.

    Args:
        config: "model" (one of ``KNN_VARIANTS``), "seed" (int; seeds sampling "random";
            0 when absent) and any of the variant's hyperparameters (the others take their
            ``KNN_DEFAULTS``); keys of other kNN variants are an error, other keys are ignored.
        n_items: catalog size (max item id + 1).

    Returns:
        The model; call ``fit(train)`` before ``scores``.

    Raises:
        ValueError: an unknown variant, another variant's key or a value out of range.
        TypeError: a value of the wrong type.
    """
    variant = config.get("model")
    params = resolve_knn_params(variant, config)
    seed = config.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"kNN key 'seed' expects int, got {seed!r}")
    return MODELS[variant](n_items, seed=seed, **params)


def knn_model(config: dict, n_items: int, item_vectors=None) -> SessionKNN:
    """An unfitted kNN model of a resolved config (``models.registry.resolve_config``: its
    values are not checked again), as ``KnnTrainer`` builds it.

    Args:
        config: the resolved config ("model", "seed" and the variant's hyperparameters).
        n_items: catalog size (max item id + 1).
        item_vectors: unused (the builders' signature, ``models.spec.Builder``).

    Returns:
        The model; call ``fit(train)`` before ``scores``.
    """
    variant = config["model"]
    params = {key: config[key] for key in KNN_DEFAULTS[variant]}
    return MODELS[variant](n_items, seed=config["seed"], **params)


KNN_SPECS = {
    variant: VariantSpec(variant, KNN_LABELS[variant], (KNN_RUN, knn_keys(variant)),
                         build=knn_model, fits_once=True)
    for variant in KNN_VARIANTS
}
