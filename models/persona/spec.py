"""The ``persona`` variant's spec (``models.spec``): its keys, the graph and HDGI settings its
config describes, and its builders (from the dataset, and from the data a trained model carries).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from models.core import CORE
from models.core_variants import CORE_KEYS, TRANSFORMER, core_options, trm_encoder
from models.persona.graph import GraphSettings
from models.persona.hdgi import HDGISettings, train_personas
from models.persona.model import PERSONA_FUSIONS, PersonaCORE
from models.spec import FRACTION, POSITIVE, UNIT_INTERVAL, Keys, VariantSpec, counts, one_of

if TYPE_CHECKING:
    from data.dataset import SessionDataset

# Config key of each metapath family's on/off switch.
METAPATH_KEYS = {"ui": "mp_ui", "cooc": "mp_cooc", "feature": "mp_feature", "kg": "mp_kg"}


def _one_metapath_on(config: dict) -> None:
    if not any(config[key] for key in METAPATH_KEYS.values()):
        switches = sorted(METAPATH_KEYS.values())
        raise ValueError(f"at least one metapath switch {switches} must be on")


# HDGI persona size and training, metapath families on/off and the co-occurrence threshold (the
# graph), persona fusion, candidates and the re-ranker's weight, nearest users averaged for
# sessions without a known user, and the text view of the items.
PERSONA = Keys(
    {
        "persona_size": 64,
        "hdgi_epochs": 200,
        "hdgi_lr": 1e-3,
        "mp_ui": True,
        "mp_cooc": True,
        "mp_feature": True,
        "mp_kg": True,
        "cooc_min": 2,
        "persona_fusion": "gate",
        "n_candidates": 100,
        "rerank_mix": 0.5,
        "fallback_k": 10,
        "sem_size": 128,
        "sem_dropout": 0.2,
    },
    {
        **counts("persona_size", "hdgi_epochs", "cooc_min", "n_candidates", "fallback_k",
                 "sem_size"),
        "hdgi_lr": POSITIVE,
        "persona_fusion": one_of(PERSONA_FUSIONS),
        "rerank_mix": UNIT_INTERVAL,
        "sem_dropout": FRACTION,
    },
    rules=(_one_metapath_on,),
)


def settings_from_config(config: dict) -> tuple[GraphSettings, HDGISettings]:
    """The graph and HDGI settings a resolved ``persona`` config describes.

    Args:
        config: a resolved config of the ``persona`` variant.

    Returns:
        The graph settings and the HDGI settings.
    """
    families = tuple(family for family, key in METAPATH_KEYS.items() if config[key])
    graph = GraphSettings(cooc_min=config["cooc_min"], metapaths=families)
    hdgi = HDGISettings(size=config["persona_size"], epochs=config["hdgi_epochs"],
                        lr=config["hdgi_lr"])
    return graph, hdgi


def build_persona_model(
    config: dict,
    n_items: int,
    *,
    item_vectors: np.ndarray,
    personas: np.ndarray,
    known: np.ndarray,
    profiles: np.ndarray,
    profile_personas: np.ndarray,
) -> PersonaCORE:
    """The ``persona`` model of a resolved config from its data (what ``build_model_for``
    derives from the dataset; ``models.recommend`` passes the copies a trained model carries).

    Args:
        config: a complete ``persona`` config (``resolve_config``).
        n_items: catalog rows (row 0 is padding).
        item_vectors: semantic item vectors [n_items, D].
        personas: persona per user id [n_users, P].
        known: bool [n_users], which user ids have a persona.
        profiles: profiles [n_known, D] of the training users.
        profile_personas: their personas [n_known, P], same order.

    Returns:
        An untrained ``PersonaCORE``.
    """
    d = config["embedding_size"]
    options = core_options(config)
    base = CORE(n_items, d, trm_encoder(config), **options)
    return PersonaCORE(
        n_items, d, trm_encoder(config), base, item_vectors, personas, known,
        profiles, profile_personas, persona_fusion=config["persona_fusion"],
        n_candidates=config["n_candidates"], rerank_mix=config["rerank_mix"],
        fallback_k=config["fallback_k"], sem_size=config["sem_size"],
        sem_dropout=config["sem_dropout"], **options,
    )


def _build_for(config: dict, dataset: SessionDataset) -> PersonaCORE:
    """The personas (trained by HDGI on the training split's graph, or read from their cache)
    and the two-stage model of a resolved config, for ``dataset``."""
    graph_settings, hdgi_settings = settings_from_config(config)
    personas = train_personas(dataset, graph_settings, hdgi_settings, config["seed"])
    n_users = max(
        int(split.users.max(initial=0)) + 1
        for split in (dataset.train, dataset.valid, dataset.test)
        if split is not None and split.users is not None
    )
    table, known = personas.table(max(n_users, int(personas.user_ids.max()) + 1))
    return build_persona_model(config, dataset.n_items, item_vectors=dataset.item_vectors,
                               personas=table, known=known, profiles=personas.profiles,
                               profile_personas=personas.vectors)


SPEC = VariantSpec("persona", "Persona (HDGI + CORE-trm re-rank)",
                   (CORE_KEYS, TRANSFORMER, PERSONA), build_for=_build_for, needs_item_text=True)
