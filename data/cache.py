"""One keyed store for everything the project caches: parsed datasets (``load_or_build``), text
vectors (``data.text``), personas (``models.persona.hdgi``), the diffaug stages
(``models.diffusion.augment``), and small JSON records: the loss implementation chosen per
machine (``models.precision``) and epoch timings (``hpo.cost``).

Where: one root, ``$CORE_CACHE_DIR`` (default ``~/.cache/core-hpo``), a folder per kind of
result (``CacheStore(section)``). What: each entry is one file that carries its key, so a file of
another key, or a damaged one, reads as missing and is recomputed: an ``.npz`` of arrays (the key
in its ``key`` entry), a torch file of tensors (a dict with a ``"key"``), or a JSON file of
records (key -> value). How: every write goes to a temporary sibling renamed over the file
(``data.fileio.write_atomically``), so concurrent readers (Ray workers) never see a partial file
and a failed write leaves nothing behind; loading never unpickles (``np.load`` with
``allow_pickle=False``, ``torch.load`` with ``weights_only=True``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.lib.npyio import NpzFile

from data.fileio import writable_dir, write_atomically

CACHE_DIR_ENV = "CORE_CACHE_DIR"
KEY = "key"  # the entry, in a cached file, that holds its key
_UNREADABLE = (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile)


def cache_root() -> Path:
    """The project's cache folder: ``$CORE_CACHE_DIR``, default ``~/.cache/core-hpo``.

    Returns:
        The folder (not created here).

    Raises:
        RuntimeError: no ``$CORE_CACHE_DIR`` and no home directory.
    """
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "core-hpo")


def folder_tag(folder: Path) -> str:
    """A short tag of a folder's resolved path: entries that belong to a folder (a dataset's
    files) carry it in their name, so equal names in other folders are other entries.

    Args:
        folder: the folder.

    Returns:
        16 hex digits.
    """
    return hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:16]


class CacheStore:
    """The cached results of one kind: files in ``cache_root() / section`` (or ``folder``),
    each holding its key (module docstring).

    Args:
        section: the kind's folder under the root ("" for the root itself).
        folder: another folder instead (tests, and callers told where to cache).
    """

    def __init__(self, section: str = "", *, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else cache_root() / section

    def path(self, name: str) -> Path:
        """The file of entry ``name`` (its file name, extension included).

        Args:
            name: the entry's file name.

        Returns:
            The path (the file may not exist).
        """
        return self.folder / name

    def read_arrays(self, name: str, key: str) -> dict[str, np.ndarray] | None:
        """The arrays of the ``.npz`` entry ``name``.

        Args:
            name: the entry's file name.
            key: the key the entry must hold.

        Returns:
            Its arrays but the key; None when it is missing, holds another key or is unreadable.
        """
        return self._read(name, key, _npz_entries)

    def write_arrays(self, name: str, key: str, arrays: dict[str, np.ndarray]) -> Path | None:
        """Stores ``arrays`` with ``key`` as entry ``name``, atomically.

        Args:
            name: the entry's file name (``.npz``).
            key: its key.
            arrays: name -> array (no object arrays; none named ``KEY``).

        Returns:
            The file, or None where it could not be written.
        """
        return self._write(name, lambda file: np.savez(file, **arrays, **{KEY: np.asarray(key)}))

    def read_tensors(self, name: str, key: str) -> dict | None:
        """What the torch entry ``name`` holds (tensors, numbers, strings, lists), as
        ``read_arrays`` does for arrays.

        Args:
            name: the entry's file name (``.pt``).
            key: the key the entry must hold.

        Returns:
            Its dict but the key, or None.
        """
        return self._read(name, key, _torch_entries)

    def write_tensors(self, name: str, key: str, tensors: dict) -> Path | None:
        """Stores ``tensors`` (a dict of tensors, numbers, strings, lists) with ``key`` as entry
        ``name``, atomically.

        Args:
            name: the entry's file name (``.pt``).
            key: its key.
            tensors: what to store (no entry named ``KEY``).

        Returns:
            The file, or None where it could not be written.
        """
        import torch

        return self._write(name, lambda file: torch.save({KEY: key, **tensors}, file))

    def read_records(self, name: str) -> dict:
        """The records of the JSON entry ``name`` (empty when missing or unreadable).

        Args:
            name: the entry's file name (``.json``).

        Returns:
            key -> value.
        """
        try:
            records = json.loads(self.path(name).read_text())
        except (OSError, ValueError):
            return {}
        return records if isinstance(records, dict) else {}

    def write_record(self, name: str, key: str, value: object) -> Path | None:
        """Adds (or replaces) record ``key`` of the JSON entry ``name``, atomically.

        Args:
            name: the entry's file name (``.json``).
            key: the record's key.
            value: its value (JSON-serialisable).

        Returns:
            The file, or None where it could not be written.
        """
        text = json.dumps({**self.read_records(name), key: value}, indent=1)
        return self._write(name, lambda file: file.write(text.encode()))

    def _read(self, name: str, key: str, load: Callable[[Path, str], dict | None]) -> dict | None:
        try:
            return load(self.path(name), key)
        except (*_UNREADABLE, RuntimeError, AttributeError, pickle.UnpicklingError):
            return None  # missing, damaged, or not what the store writes

    def _write(self, name: str, write: Callable) -> Path | None:
        path = self.path(name)
        if not writable_dir(path.parent):
            return None
        try:
            write_atomically(path, write)
        except OSError:
            return None
        return path


def _npz_entries(path: Path, key: str) -> dict[str, np.ndarray] | None:
    stored = np.load(path, allow_pickle=False)  # object arrays raise ValueError when read
    if not isinstance(stored, NpzFile):  # a lone array (.npy): not an entry
        return None
    with stored:
        if str(stored[KEY]) != key:
            return None
        return {entry: stored[entry] for entry in stored.files if entry != KEY}


def _torch_entries(path: Path, key: str) -> dict | None:
    import torch

    stored = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(stored, dict) or stored.get(KEY) != key:
        return None
    return {entry: value for entry, value in stored.items() if entry != KEY}


# --------------------------------------------------------------------------- parsed datasets


def load_or_build(
    sources: list[Path],
    name: str,
    version: int,
    build: Callable[[list[Path]], dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """Arrays parsed from ``sources``: from the ``datasets`` section when cached with the same
    ``fingerprint``, else ``build(sources)``, then cached.

    Args:
        sources: the files parsed (one folder; their names, sizes and mtimes are the key).
        name: the entry's name (the dataset's); the folder's ``folder_tag`` is added to it.
        version: the format version of the arrays (bumped when the parse result changes).
        build: parses the sources into arrays.

    Returns:
        name -> array.
    """
    store = CacheStore("datasets")
    entry = f"{name}.{folder_tag(sources[0].parent)}.npz"
    key = fingerprint(sources, version)
    arrays = store.read_arrays(entry, key)
    if arrays is not None:
        return arrays
    arrays = build(sources)
    if store.write_arrays(entry, key, arrays) is None:
        warnings.warn(f"cannot write the cache folder {store.folder}; set CORE_CACHE_DIR",
                      stacklevel=2)
    return arrays


def fingerprint(sources: list[Path], version: int) -> str:
    """What a cached parse must match: format version plus each source's name, size and mtime.

    Args:
        sources: the source files.
        version: the format version.

    Returns:
        A JSON string.
    """
    entries = []
    for path in sources:
        info = path.stat()
        entries.append([path.name, info.st_size, info.st_mtime_ns])
    return json.dumps({"version": version, "sources": entries})
