"""``.npz`` cache of parsed arrays, keyed on the source files' size and mtime.

Why: parsing text is the slow part of loading and every trial of a search loads the same data.
The cache sits next to the sources when that directory is writable, else in a per-directory
folder under ``$CORE_CACHE_DIR`` (default ``~/.cache/core-hpo``). It is written to a temporary
file and renamed, so readers (possibly concurrent Ray workers) never see a partial cache, and a
failed build leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from data.fileio import writable_dir, write_atomically

_META_KEY = "__meta__"


def load_or_build(
    sources: list[Path],
    cache_name: str,
    version: int,
    build: Callable[[list[Path]], dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """Arrays from a valid cache, else ``build(sources)`` (then cached where we may write)."""
    meta = fingerprint(sources, version)
    candidates = [folder / cache_name for folder in cache_dirs(sources[0].parent)]
    for path in candidates:
        arrays = _read(path, meta)
        if arrays is not None:
            return arrays
    arrays = build(sources)
    for path in candidates:
        if writable_dir(path.parent) and _write(path, arrays, meta):
            break
    else:
        warnings.warn(
            f"no writable cache folder for {sources[0].parent}; set CORE_CACHE_DIR", stacklevel=2
        )
    return arrays


def fingerprint(sources: list[Path], version: int) -> str:
    """What the cache must match: format version plus each source's name, size and mtime."""
    entries = []
    for path in sources:
        info = path.stat()
        entries.append([path.name, info.st_size, info.st_mtime_ns])
    return json.dumps({"version": version, "sources": entries})


def cache_root() -> Path:
    """The project's cache folder: ``$CORE_CACHE_DIR``, default ``~/.cache/core-hpo``."""
    return Path(os.environ.get("CORE_CACHE_DIR") or Path.home() / ".cache" / "core-hpo")


def cache_dirs(data_dir: Path) -> list[Path]:
    """Next to the data first, then the fallback folder for read-only data directories."""
    root = cache_root()
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
    return [data_dir, root / digest]


def _read(path: Path, meta: str) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as stored:
            if str(stored[_META_KEY]) != meta:
                return None
            return {key: stored[key] for key in stored.files if key != _META_KEY}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None  # missing, stale format or damaged: rebuild


def _write(path: Path, arrays: dict[str, np.ndarray], meta: str) -> bool:
    try:
        write_atomically(path, lambda file: np.savez(file, **arrays, **{_META_KEY: np.array(meta)}))
    except OSError:
        return False
    return True
