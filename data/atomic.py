"""CORE / RecBole atomic ``.inter`` files: vectorised parsing, validation and writing.

The parser works on the raw bytes with numpy (no per-row Python), so a benchmark loads in about a
second, and every validation failure still names the file and the 1-based line (row index + 2).
Parsed arrays are cached (``data.cache.load_or_build``) so later loads skip the text entirely.

A file has CORE's three columns (``HEADER``) or, when the source knows who the sessions belong
to, a fourth ``user_id:token`` column (``USER_HEADER``: non-negative integers, 0 = unknown) that
becomes ``Split.users``; the three splits of a dataset must agree on which. Item metadata comes
from ``<name>.item`` beside the splits when it exists (``data.items``; parsed on every load).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data import cache
from data.arrays import pad_rows, segment_starts, unpad_rows
from data.dataset import MAX_SEQ_LENGTH, SPLITS, SessionDataset, Split
from data.errors import AtomicFormatError
from data.fileio import write_atomically
from data.items import read_item_file, write_item_file

HEADER = "session_id:token\titem_id_list:token_seq\titem_id:token"
USER_COLUMN = "user_id:token"
USER_HEADER = f"{HEADER}\t{USER_COLUMN}"
FORMAT_VERSION = 2  # of the cached arrays; bump when the parse result changes (2: users)
_MAX_DIGITS = 18  # fits int64
_MAX_ID = int(np.iinfo(np.int32).max)  # prefixes are int32
_TAB, _NEWLINE, _SPACE, _MINUS, _ZERO, _NINE = 9, 10, 32, 45, 48, 57


def split_paths(directory: str | Path, name: str) -> dict[str, Path]:
    """Where a dataset's split files are: ``<directory>/<name>.<split>.inter``.

    Args:
        directory: the dataset's folder.
        name: the files' prefix.

    Returns:
        split name -> path, in ``SPLITS`` order.
    """
    return {split: Path(directory) / f"{name}.{split}.inter" for split in SPLITS}


def item_path(directory: str | Path, name: str) -> Path:
    """Where a dataset's optional item metadata lives: ``<directory>/<name>.item``.

    Args:
        directory: the dataset's folder.
        name: the files' prefix.

    Returns:
        The path (the file may not exist).
    """
    return Path(directory) / f"{name}.item"


def load_atomic(
    directory: str | Path, name: str, *, max_len: int = MAX_SEQ_LENGTH, use_cache: bool = True
) -> SessionDataset:
    """Load ``<directory>/<name>.{train,valid,test}.inter``, through the cache, plus
    ``<name>.item`` as ``SessionDataset.items`` when that file exists (None otherwise).

    Args:
        directory: folder holding the files.
        name: file name prefix.
        max_len: prefix window; longer prefixes keep their last ``max_len`` items.
        use_cache: read/write the cache of the parsed ``.inter`` arrays (``data.cache``).

    Returns:
        The dataset, named ``name``.
    """
    paths = split_paths(directory, name)
    for path in paths.values():
        if not path.is_file():
            raise AtomicFormatError(path, None, "split file is missing")
    sources = list(paths.values())
    if use_cache:
        arrays = cache.load_or_build(sources, name, FORMAT_VERSION, parse_splits)
    else:
        arrays = parse_splits(sources)
    splits = {
        split: Split(
            *pad_rows(arrays[f"{split}_flat"], arrays[f"{split}_counts"], max_len),
            arrays[f"{split}_targets"],
            arrays.get(f"{split}_users"),
        )
        for split in SPLITS
    }
    n_items = int(arrays["n_items"])
    items_file = item_path(directory, name)
    items = read_item_file(items_file, n_items) if items_file.is_file() else None
    return SessionDataset(name, n_items, **splits, items=items)


def parse_splits(paths: list[Path]) -> dict[str, np.ndarray]:
    """Parse train/valid/test (in that order) into ragged arrays and check them against each
    other: valid/test may only use items that occur in train (prefixes or targets), and have a
    user column exactly when train has one.

    Args:
        paths: the train, valid and test files.

    Returns:
        ``<split>_flat``, ``_counts``, ``_targets`` (and ``_users``) arrays per split.
    """
    arrays: dict[str, np.ndarray] = {}
    with_users = None  # decided by the train file's header
    for split, path in zip(SPLITS, paths, strict=True):
        flat, counts, targets, users = parse_file(path, with_users, like=paths[0])
        arrays |= {f"{split}_flat": flat, f"{split}_counts": counts, f"{split}_targets": targets}
        if users is not None:
            arrays[f"{split}_users"] = users
        with_users = users is not None
    train_ids = np.concatenate([arrays["train_flat"], arrays["train_targets"]])
    catalog = np.zeros(int(train_ids.max()) + 1, dtype=bool)
    catalog[train_ids] = True
    for split, path in zip(SPLITS[1:], paths[1:], strict=True):
        counts = arrays[f"{split}_counts"]
        rows = np.concatenate([np.repeat(np.arange(len(counts)), counts), np.arange(len(counts))])
        ids = np.concatenate([arrays[f"{split}_flat"], arrays[f"{split}_targets"]])
        unknown = (ids >= len(catalog)) | ~catalog[np.minimum(ids, len(catalog) - 1)]
        if unknown.any():
            row = int(rows[unknown].min())
            bad = ids[unknown & (rows == row)][0]
            raise AtomicFormatError(
                path, row + 2, f"item id {bad} does not occur in the training split {paths[0]}"
            )
    arrays["n_items"] = np.int64(len(catalog))  # max id + 1: valid/test ids are train ids
    for split in SPLITS:  # compact: the cache stores these as they are
        for key in (f"{split}_flat", f"{split}_counts"):
            arrays[key] = arrays[key].astype(np.int32)
    return arrays


def parse_file(
    path: Path, with_users: bool | None = None, *, like: Path | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """One file -> (all prefix ids concatenated, prefix length per row, target per row, user per
    row or None when the file has no ``user_id:token`` column).

    Args:
        path: the ``.inter`` file.
        with_users: require (True) or forbid (False) the user column; None accepts either.
        like: the file that decided ``with_users``, named in the error when the headers differ.

    Returns:
        The flat prefix ids, the prefix lengths, the targets and the users (or None).

    Raises:
        AtomicFormatError: for the earliest offending line.
    """
    data = path.read_bytes().replace(b"\r\n", b"\n")
    header, _, body = data.partition(b"\n")
    header_text = header.decode("utf-8", errors="replace")
    if header_text not in (HEADER, USER_HEADER):
        raise AtomicFormatError(
            path, 1, f"wrong header {header[:200]!r}; expected {HEADER!r} (optionally followed "
            f"by '\\t{USER_COLUMN}')"
        )
    has_users = header_text == USER_HEADER
    if with_users is not None and has_users != with_users:
        has, lacks = ("has", "lacks") if has_users else ("lacks", "has")
        raise AtomicFormatError(
            path, 1, f"header {has} the {USER_COLUMN} column but {like or 'the train split'} "
            f"{lacks} it; all splits must agree"
        )
    n_columns = 4 if has_users else 3
    body = body.rstrip(b"\n")
    if not body:
        raise AtomicFormatError(path, None, "no data rows after the header")
    buf = np.frombuffer(body + b"\n", dtype=np.uint8)

    newlines = np.flatnonzero(buf == _NEWLINE)
    line_starts = np.concatenate(([0], newlines[:-1] + 1))
    is_tab = buf == _TAB
    tabs_per_line = np.add.reduceat(is_tab, line_starts, dtype=np.int64)
    bad_columns = np.flatnonzero(tabs_per_line != n_columns - 1)
    if len(bad_columns):  # parse only the lines before it, so an earlier error wins
        first_bad = int(bad_columns[0])
        if first_bad > 0:
            end = line_starts[first_bad]
            _parse_lines(path, buf[:end], is_tab[:end], has_users)
        raise AtomicFormatError(
            path,
            first_bad + 2,
            f"expected {n_columns} tab-separated columns, found {tabs_per_line[first_bad] + 1}",
        )
    return _parse_lines(path, buf, is_tab, has_users)


def _parse_lines(
    path: Path, buf: np.ndarray, is_tab: np.ndarray, has_users: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Tokenise well-formed lines of 3 (or 4, with users) columns (``buf`` ends with a newline)
    and validate the ids."""
    is_newline = buf == _NEWLINE
    n_lines = int(is_newline.sum())
    separator = is_newline | is_tab | (buf == _SPACE)
    is_start = ~separator & np.concatenate(([True], separator[:-1]))
    starts = np.flatnonzero(is_start)
    ends = np.flatnonzero(~separator & np.concatenate((separator[1:], [True]))) + 1
    token_of_byte = np.cumsum(is_start, dtype=np.int32) - 1  # last token started at/before byte
    line_of_byte = np.cumsum(is_newline, dtype=np.int32) - is_newline
    tabs_before = np.cumsum(is_tab, dtype=np.int32) - is_tab
    line_first_byte = np.concatenate(([0], np.flatnonzero(is_newline)[:-1] + 1))
    lines = line_of_byte[starts]
    fields = tabs_before[starts] - tabs_before[line_first_byte][lines]

    digit = (buf >= _ZERO) & (buf <= _NINE)
    non_digits = np.bincount(token_of_byte[~separator & ~digit], minlength=len(starts))
    values = _token_values(buf, digit, starts, ends, token_of_byte)

    keep = fields > 0  # column 0 is the session token: any text is accepted there
    starts, ends, lines, fields = starts[keep], ends[keep], lines[keep], fields[keep]
    non_digits, values, width = non_digits[keep], values[keep], ends - starts
    negative = (buf[starts] == _MINUS) & (non_digits == 1) & (width > 1)
    prefix_counts = np.bincount(lines[fields == 1], minlength=n_lines)
    target_counts = np.bincount(lines[fields == 2], minlength=n_lines)
    is_item = fields < 3  # column 3 holds the user

    def text(token: int) -> str:
        return buf[starts[token] : ends[token]].tobytes().decode("utf-8", errors="replace")

    problems: list[tuple[int, str]] = []  # (row, message); the earliest row is reported

    def first_token(mask: np.ndarray, message) -> None:
        hits = np.flatnonzero(mask)
        if len(hits):
            problems.append((int(lines[hits[0]]), message(int(hits[0]))))

    def first_line(mask: np.ndarray, message) -> None:
        hits = np.flatnonzero(mask)
        if len(hits):
            problems.append((int(hits[0]), message(int(hits[0]))))

    for kind, mask in (("item", is_item), ("user", ~is_item)):
        first_token(mask & negative, lambda t, kind=kind: f"negative {kind} id {text(t)!r}")
        first_token(
            mask & (non_digits > 0) & ~negative,
            lambda t, kind=kind: f"{kind} id {text(t)!r} is not an integer",
        )
    first_token(
        is_item & (non_digits == 0) & ((width > _MAX_DIGITS) | (values > _MAX_ID)),
        lambda t: f"item id {text(t)!r} is too large (max {_MAX_ID})",
    )
    first_token(
        ~is_item & (non_digits == 0) & (width > _MAX_DIGITS),
        lambda t: f"user id {text(t)!r} is too large (max {_MAX_DIGITS} digits)",
    )
    first_token(
        is_item & (non_digits == 0) & (values == 0),
        lambda t: "item id 0 is reserved for padding and cannot be an item",
    )
    first_line(prefix_counts == 0, lambda r: "empty prefix (item_id_list)")
    first_line(
        target_counts != 1, lambda r: f"item_id must be one id, found {target_counts[r]} tokens"
    )
    users = None
    if has_users:
        user_counts = np.bincount(lines[fields == 3], minlength=n_lines)
        first_line(
            user_counts != 1, lambda r: f"user_id must be one id, found {user_counts[r]} tokens"
        )
        users = values[fields == 3]
    if problems:
        row, message = min(problems, key=lambda problem: problem[0])
        raise AtomicFormatError(path, row + 2, message)
    return values[fields == 1], prefix_counts, values[fields == 2], users


def _token_values(
    buf: np.ndarray, digit: np.ndarray, starts: np.ndarray, ends: np.ndarray, token_of_byte
) -> np.ndarray:
    """Decimal value of every token: each digit times 10**(digits after it), summed per token
    (non-digit bytes count as 0; such tokens are rejected anyway)."""
    if not len(starts):
        return np.zeros(0, dtype=np.int64)
    exponent = ends[token_of_byte] - np.arange(len(buf), dtype=np.int64) - 1
    powers = 10 ** np.arange(_MAX_DIGITS + 1, dtype=np.int64)
    contribution = np.where(digit, buf - _ZERO, 0) * powers[np.clip(exponent, 0, _MAX_DIGITS)]
    return np.add.reduceat(contribution, starts)


def write_dataset(dataset: SessionDataset, out_dir: str | Path) -> list[Path]:
    """Write the three splits as atomic files, plus ``<name>.item`` when the dataset has items.

    Session ids number the rows from 1 across splits, as in CORE's files; the ``user_id:token``
    column is written when the splits carry users (all three or none). Each file appears
    atomically (temp file + rename). A ``<name>.item`` left from an earlier dataset of the same
    name is removed when this one has no items, so it cannot be attached to the wrong ids.

    Args:
        dataset: the dataset (with its test split).
        out_dir: folder to write into (created if needed).

    Returns:
        The paths written: train, valid, test, then the item file if any.
    """
    out_dir = Path(out_dir)
    splits = {name: dataset.split(name) for name in SPLITS}
    with_users = {name for name, split in splits.items() if split.users is not None}
    if with_users and len(with_users) != len(SPLITS):
        raise ValueError(f"only the {sorted(with_users)} split(s) carry users: all or none must")
    out_dir.mkdir(parents=True, exist_ok=True)
    written, first_id = [], 1
    for split_name, path in split_paths(out_dir, dataset.name).items():
        split = splits[split_name]
        text = format_split(split, first_id).encode()
        write_atomically(path, lambda file, text=text: file.write(text))
        written.append(path)
        first_id += len(split)
    items_file = item_path(out_dir, dataset.name)
    if dataset.items is not None:
        written.append(write_item_file(items_file, dataset.items))
    else:
        items_file.unlink(missing_ok=True)
    return written


def format_split(split: Split, first_id: int = 1) -> str:
    """Atomic-file text of one split, built with array operations (no per-row formatting); with
    a ``user_id:token`` column when the split carries users.

    Args:
        split: the split.
        first_id: the session id of its first row.

    Returns:
        The file's text, header included.
    """
    lengths = split.lengths.astype(np.int64)
    n_rows = len(lengths)
    flat = unpad_rows(split.prefixes, lengths)
    separators = np.full(len(flat), " ", dtype=object)
    separators[segment_starts(lengths) + lengths - 1] = "\t"
    # Row r is "<id>\t", then its items each followed by a separator, then "<target>\n".
    row_start = segment_starts(lengths + 2)
    row_end = row_start + lengths + 1
    tokens = np.empty(len(flat) + 2 * n_rows, dtype=object)
    tokens[row_start] = _text(np.arange(first_id, first_id + n_rows)) + "\t"
    if split.users is None:
        tokens[row_end] = _text(split.targets) + "\n"
    else:
        tokens[row_end] = _text(split.targets) + "\t" + _text(split.users) + "\n"
    is_item = np.ones(len(tokens), dtype=bool)
    is_item[row_start] = is_item[row_end] = False
    tokens[is_item] = _text(flat) + separators
    header = HEADER if split.users is None else USER_HEADER
    return header + "\n" + "".join(tokens.tolist())


def _text(values: np.ndarray) -> np.ndarray:
    return values.astype(str).astype(object)
