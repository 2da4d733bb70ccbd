"""The ``persona`` variant: user personas learned by HDGI on a heterogeneous knowledge graph of
the training split (``graph``, ``hdgi``), conditioning a CORE-trm candidate model whose
candidates a jointly trained CORE-trm re-ranks (``model``); its keys, settings and builders are its
spec (``spec``)."""

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

__all__ = [
    "FEW_TRAIN_ROWS",
    "GROUP_FEW",
    "GROUP_KNOWN",
    "GROUP_UNKNOWN",
    "METAPATH_FAMILIES",
    "GraphSettings",
    "HDGISettings",
    "Personas",
    "persona_groups",
    "train_personas",
]
