"""Where datasets live and which are there, without loading any (import-light: the command
line's ``--help`` lists them)."""

from __future__ import annotations

import os
from pathlib import Path

SYNTHETIC = "synthetic"  # dataset name (prefix) that means "generate, do not look for files"
DATA_DIR_ENV = "CORE_DATA_DIR"
DEFAULT_DATA_DIR = "datasets"


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The argument, else ``$CORE_DATA_DIR``, else ``./datasets``.

    Args:
        data_dir: a data directory given on the command line, or None.

    Returns:
        The data directory (not checked).
    """
    return Path(data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def list_datasets(data_dir: str | Path | None = None) -> list[str]:
    """Names of the datasets in the data directory (folders ``<name>/`` holding
    ``<name>.train.inter``), sorted, after ``synthetic`` (always available: generated on use).

    Args:
        data_dir: the data directory (None: see ``resolve_data_dir``).

    Returns:
        The names.
    """
    root = resolve_data_dir(data_dir)
    found = set()
    if root.is_dir():
        found = {p.parent.name for p in root.glob("*/*.train.inter")
                 if p.name == f"{p.parent.name}.train.inter"}
    found = {name for name in found if not name.startswith(SYNTHETIC)}  # generated copies
    return [SYNTHETIC, *sorted(found)]
