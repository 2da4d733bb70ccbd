"""Dataset name -> SessionDataset: where atomic files are looked up, and synthetic data made.

Why one place: the trainer, the search workers and the CLI must all agree on which files a name
means, and a missing benchmark must say exactly where we looked and how to get it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

from data import synthetic
from data.atomic import load_atomic, split_paths
from data.dataset import SessionDataset
from data.errors import DataError, DatasetNotFoundError
from data.fileio import writable_dir
from data.locations import SYNTHETIC, resolve_data_dir
from data.raw import RAW_FOLDERS, RAW_READERS

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SYNTHETIC_NAME = re.compile(rf"{SYNTHETIC}(?:-(?P<preset>[a-z]+))?(?:-seed(?P<seed>\d+))?")
_MARKER = "synthetic.json"


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    synthetic_preset: str = "small",
    seed: int = 0,
    use_cache: bool = True,
) -> SessionDataset:
    """Load ``<data_dir>/<name>/<name>.{train,valid,test}.inter`` (or the same files directly in
    ``<data_dir>``). ``synthetic`` (preset ``synthetic_preset``), ``synthetic-<preset>`` and
    ``synthetic-<preset>-seed<n>`` (the names such datasets carry) are generated into
    ``<data_dir>/synthetic-<preset>[-seed<n>]/`` on first use; ``seed`` only matters for
    synthetic data. ``use_cache=False`` parses the text even if a cache exists.

    Args:
        name: the dataset's name.
        data_dir: the data directory (None: ``$CORE_DATA_DIR``, else ``./datasets``).
        synthetic_preset: the preset of the name ``synthetic``.
        seed: the generator's seed (synthetic data only).
        use_cache: read and write the cache of the parsed files.

    Returns:
        The dataset.
    """
    root = resolve_data_dir(data_dir)
    generated = _generated_name(name)
    if generated:
        preset = generated["preset"] or synthetic_preset
        seed = int(generated["seed"]) if generated["seed"] else seed
        return _load_synthetic(root, preset, seed, use_cache)
    return load_atomic(atomic_folder(name, root), name, use_cache=use_cache)


def _generated_name(name: str) -> re.Match | None:
    """Refuses an invalid name; the match (preset, seed) when ``name`` is generated data."""
    if not _NAME.fullmatch(name):
        raise DataError(f"invalid dataset name {name!r}: use letters, digits, '.', '_', '-'")
    return _SYNTHETIC_NAME.fullmatch(name)


def atomic_folder(name: str, root: Path) -> Path:
    """The folder holding ``name``'s atomic files: ``<root>/<name>/`` or ``<root>`` itself.

    Args:
        name: the dataset's name.
        root: the data directory.

    Returns:
        The folder.

    Raises:
        DatasetNotFoundError: neither holds them (the message says where to get them).
    """
    folders = [root / name, root]
    for folder in folders:
        if any(path.exists() for path in split_paths(folder, name).values()):
            return folder
    raise DatasetNotFoundError(_not_found_message(name, folders))


def _load_synthetic(root: Path, preset: str, seed: int, use_cache: bool) -> SessionDataset:
    """Generated files are reused while their marker matches the generator and its parameters;
    they are built in a temporary folder and renamed, so concurrent first uses are safe."""
    name = f"{SYNTHETIC}-{preset}" + (f"-seed{seed}" if seed else "")
    folder = root / name
    wanted = synthetic.describe(preset, seed)
    if _marker(folder) != wanted:
        if not writable_dir(root):
            warnings.warn(f"{root} is not writable; generating {name} in memory", stacklevel=3)
            return synthetic.make_dataset(preset, seed, name=name)
        _generate(folder, name, preset, seed, wanted)
    return load_atomic(folder, name, use_cache=use_cache)


def _generate(folder: Path, name: str, preset: str, seed: int, description: dict) -> None:
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{name}."))
    try:
        synthetic.write_atomic(staging, name, preset, seed)
        (staging / _MARKER).write_text(json.dumps(description, indent=1))
        staging.chmod(0o755)  # mkdtemp makes it private
        if folder.exists() and _marker(folder) != description:
            shutil.rmtree(folder)  # stale: older generator or edited by hand
        try:
            os.replace(staging, folder)
        except OSError:
            if _marker(folder) != description:  # fine if a concurrent process just wrote it
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / _MARKER).read_text())
    except (OSError, ValueError):
        return None


def _not_found_message(name: str, folders: list[Path]) -> str:
    looked = ", ".join(str(split_paths(folder, name)["train"]) for folder in folders)
    how = (
        f"Get CORE's processed atomic files {name}.{{train,valid,test}}.inter and put them in "
        f"{folders[0]}/"
    )
    if name in RAW_READERS:
        raw_file = RAW_READERS[name][0]
        how += (
            f", or build them from the raw log: python -m data.prepare --dataset {name} "
            f"--raw path/to/{raw_file} --out {folders[0]}"
        )
    elif name in RAW_FOLDERS:
        how += (
            f", or build them from the raw folder ({RAW_FOLDERS[name]}): python -m data.prepare "
            f"--dataset {name} --raw path/to/{name} --out {folders[0]}"
        )
    else:
        known = ", ".join(sorted([*RAW_READERS, *RAW_FOLDERS]))
        how += f" (raw-log preprocessors exist for {known})"
    return (
        f"dataset {name!r} not found: looked for {looked}. {how}. "
        f"The data directory is {folders[1]} (argument, else $CORE_DATA_DIR, else ./datasets); "
        f"'{SYNTHETIC}' needs no files."
    )
