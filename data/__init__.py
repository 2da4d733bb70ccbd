"""Data layer: CORE atomic benchmark files, raw-log preprocessing and synthetic sessions.

The names below are imported on first use (PEP 562), so light modules of the package
(``data.locations``) load without numpy and pandas.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "MAX_SEQ_LENGTH": "data.dataset",
    "SessionDataset": "data.dataset",
    "Split": "data.dataset",
    "AtomicFormatError": "data.errors",
    "DataError": "data.errors",
    "DatasetNotFoundError": "data.errors",
    "ItemTable": "data.items",
    "load_dataset": "data.resolve",
    "resolve_data_dir": "data.locations",
    "DatasetSource": "data.source",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
