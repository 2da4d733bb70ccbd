"""Data layer: CORE atomic benchmark files, raw-log preprocessing and synthetic sessions."""

from data.dataset import MAX_SEQ_LENGTH, SessionDataset, Split
from data.errors import AtomicFormatError, DataError, DatasetNotFoundError
from data.items import ItemTable
from data.resolve import load_dataset, resolve_data_dir
from data.source import DatasetSource

__all__ = [
    "MAX_SEQ_LENGTH",
    "AtomicFormatError",
    "DataError",
    "DatasetSource",
    "DatasetNotFoundError",
    "ItemTable",
    "SessionDataset",
    "Split",
    "load_dataset",
    "resolve_data_dir",
]
