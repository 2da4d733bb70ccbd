"""The ``persona`` variant: user personas learned by HDGI on a heterogeneous knowledge graph of
the training split (``graph``, ``hdgi``), conditioning a CORE-trm candidate model whose
candidates a jointly trained CORE-trm re-ranks (``model``)."""

from __future__ import annotations

from models.persona.graph import (
    FEW_TRAIN_ROWS,
    GROUP_FEW,
    GROUP_KNOWN,
    GROUP_UNKNOWN,
    METAPATH_FAMILIES,
    GraphSettings,
    persona_groups,
)
from models.persona.hdgi import HDGISettings, Personas, train_personas

# Config key of each metapath family's on/off switch.
METAPATH_KEYS = {"ui": "mp_ui", "cooc": "mp_cooc", "feature": "mp_feature", "kg": "mp_kg"}


def settings_from_config(config: dict) -> tuple[GraphSettings, HDGISettings]:
    """The graph and HDGI settings a resolved ``persona`` config describes.

    Args:
        config: a resolved config of the ``persona`` variant.
    """
    families = tuple(family for family, key in METAPATH_KEYS.items() if config[key])
    graph = GraphSettings(cooc_min=config["cooc_min"], metapaths=families)
    hdgi = HDGISettings(size=config["persona_size"], epochs=config["hdgi_epochs"],
                        lr=config["hdgi_lr"])
    return graph, hdgi


__all__ = [
    "FEW_TRAIN_ROWS",
    "GROUP_FEW",
    "GROUP_KNOWN",
    "GROUP_UNKNOWN",
    "METAPATH_FAMILIES",
    "METAPATH_KEYS",
    "GraphSettings",
    "HDGISettings",
    "Personas",
    "persona_groups",
    "settings_from_config",
    "train_personas",
]
