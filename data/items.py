"""Item metadata: RecBole's atomic ``<name>.item`` file, read into an ``ItemTable``.

The file sits next to the ``.inter`` files: tab-separated, a header of ``name:type`` fields with
exactly one ``item_id:token``, then one row per item. Its ids are the dataset's item ids (1 ..
n_items - 1; 0 is padding). ``token`` / ``token_seq`` fields are text (a ``token_seq`` is
space-separated tokens, e.g. genres); ``float`` fields are kept as strings but are not text.

Text of an item (``ItemTable.texts``): its non-empty text fields in file order, joined by
``" | "``, e.g. ``"Toy Story | 1995 | Animation Children's Comedy"``. Items without a row (or with
only empty fields) get ``""``; so does the padding id 0.

Why parse every load instead of caching: one pass of ``str.split`` per line reads a 40,000-item
file in well under 0.1 s, and a cache would be one more thing to invalidate.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data.errors import AtomicFormatError, DataError
from data.fileio import write_atomically

ID_FIELD = "item_id"
ID_COLUMN = f"{ID_FIELD}:token"
TEXT_TYPES = ("token", "token_seq")
FIELD_TYPES = (*TEXT_TYPES, "float")
TEXT_SEPARATOR = " | "
_DIGITS = re.compile(r"[0-9]{1,18}")
_FLOAT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_RAW_ID = int(np.iinfo(np.int32).max)  # item ids become int32 prefixes


@dataclass(frozen=True)
class ItemTable:
    """Item metadata indexed by dataset item id.

    ``fields``: field name (no ``:type`` suffix) -> object array of str, length n_items, index =
    item id, ``""`` where an item has no value (always at index 0, the padding id).
    ``types``: field name -> ``"token"``, ``"token_seq"`` or ``"float"``; same keys, file order.
    """

    fields: dict[str, np.ndarray]
    types: dict[str, str]

    def __post_init__(self) -> None:
        if list(self.fields) != list(self.types):
            raise ValueError(f"fields {list(self.fields)} and types {list(self.types)} differ")
        lengths = {len(values) for values in self.fields.values()}
        if len(lengths) > 1:
            raise ValueError(f"item fields have different lengths {sorted(lengths)}")
        for name, kind in self.types.items():
            if kind not in FIELD_TYPES:
                raise ValueError(f"field {name!r} has type {kind!r}; expected one of {FIELD_TYPES}")
            values = self.fields[name]
            if len(values) and values[0] != "":
                raise ValueError(f"field {name!r} has a value for the padding id 0")

    @property
    def n_items(self) -> int:
        """Catalog size (max item id + 1), as ``SessionDataset.n_items``."""
        return len(next(iter(self.fields.values()))) if self.fields else 0

    @property
    def text_fields(self) -> list[str]:
        """The ``token`` / ``token_seq`` fields, in file order."""
        return [name for name, kind in self.types.items() if kind in TEXT_TYPES]

    @property
    def has_text(self) -> bool:
        """Whether any item has a non-empty text field."""
        return any(np.any(self.fields[name] != "") for name in self.text_fields)

    def texts(self, fields: Sequence[str] | None = None) -> list[str]:
        """One text per item id (``n_items`` entries, index 0 = ``""``).

        Args:
            fields: the fields to use, in this order; default: every text field in file order.
                Unknown names raise DataError.

        Returns:
            The item's non-empty values of ``fields`` joined by ``" | "``; ``""`` for an item
            without any.
        """
        names = self.text_fields if fields is None else list(fields)
        unknown = [name for name in names if name not in self.fields]
        if unknown:
            raise DataError(f"unknown item field(s) {unknown}; the table has {list(self.fields)}")
        if not names:
            return [""] * self.n_items
        columns = [self.fields[name].tolist() for name in names]
        rows = zip(*columns, strict=True)
        return [TEXT_SEPARATOR.join(value for value in row if value) for row in rows]

    def items_with_text(self) -> int:
        """How many item ids have a non-empty text (padding excluded)."""
        if not self.text_fields:
            return 0
        return int(np.any([self.fields[name] != "" for name in self.text_fields], axis=0).sum())

    @classmethod
    def from_columns(
        cls,
        n_items: int,
        ids: Sequence[int] | np.ndarray,
        columns: Mapping[str, Sequence[str]],
        types: Mapping[str, str],
    ) -> ItemTable:
        """Build a table from per-row values.

        Args:
            n_items: catalog size (max item id + 1).
            ids: the item id of each row (1 .. n_items - 1, no repeats).
            columns: field name -> one value per row (None / NaN become ``""``).
            types: field name -> field type; every column needs one.
        """
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) and (ids.min() < 1 or ids.max() >= n_items):
            raise ValueError(f"item ids must lie in 1..{n_items - 1}")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("item ids repeat")
        fields = {}
        for name, values in columns.items():
            column = np.full(n_items, "", dtype=object)
            column[ids] = [_clean(value) for value in values]
            fields[name] = column
        return cls(fields, {name: types[name] for name in columns})


def _clean(value: object) -> str:
    if value is None or (isinstance(value, float) and value != value):  # None / NaN
        return ""
    return str(value).strip()


def read_item_file(path: str | Path, n_items: int) -> ItemTable:
    """Parse ``<name>.item`` against a catalog of ``n_items`` ids (max item id + 1).

    Args:
        path: the atomic item file.
        n_items: the dataset's catalog size; ids must lie in 1 .. n_items - 1.

    Returns:
        The ItemTable; items without a row have ``""`` in every field.

    Raises:
        AtomicFormatError: naming the file and 1-based line, for a header without exactly one
            ``item_id:token`` column, with no ``token``/``token_seq`` field besides it, with a
            field lacking a known ``:type``; a row with the wrong number of columns, an id that
            is not an integer, 0, or outside the catalog, a repeated id, a ``float`` field that is
            not a number; or bytes that are not UTF-8.
    """
    ids, values, types = _parse_item_file(Path(path), n_items)
    return ItemTable.from_columns(n_items, ids, values, types)


def read_item_frame(path: str | Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """Parse a raw ``.item`` file (ids not yet numbered by a dataset) with the same checks as
    ``read_item_file``, except that any positive id up to 2**31 - 1 is accepted.

    Args:
        path: the atomic item file.

    Returns:
        (frame indexed by the int64 item id, one str column per field; field -> type).
    """
    ids, values, types = _parse_item_file(Path(path), None)
    return pd.DataFrame(values, index=pd.Index(ids, name=ID_FIELD)), types


def _parse_item_file(
    path: Path, n_items: int | None
) -> tuple[np.ndarray, dict[str, list[str]], dict[str, str]]:
    """(id per row, field -> value per row, field -> type); see ``read_item_file``."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise AtomicFormatError(
            path, line, f"bytes {raw[error.start:error.end + 3]!r} are not UTF-8"
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]  # a byte-order mark is not part of the header
    lines = text.replace("\r\n", "\n").rstrip("\n").split("\n")
    names, types, id_column = _parse_header(path, lines[0])
    n_columns = len(names) + 1
    ids = np.zeros(len(lines) - 1, dtype=np.int64)
    values: list[list[str]] = [[] for _ in names]
    value_columns = [c for c in range(n_columns) if c != id_column]
    limit = _MAX_RAW_ID + 1 if n_items is None else n_items
    first_line: dict[int, int] = {}  # line where each id was seen first
    for row, line in enumerate(lines[1:]):
        number = row + 2
        cells = line.split("\t")
        if len(cells) != n_columns:
            raise AtomicFormatError(
                path, number, f"expected {n_columns} tab-separated columns, found {len(cells)}"
            )
        token = cells[id_column].strip()
        if not _DIGITS.fullmatch(token):
            raise AtomicFormatError(path, number, f"item id {token!r} is not an integer")
        item = int(token)
        if item == 0:
            raise AtomicFormatError(path, number, "item id 0 is reserved for padding")
        if item >= limit:
            problem = (
                f"is not in the dataset's catalog (ids 1..{limit - 1})"
                if n_items is not None else f"is too large (max {limit - 1})"
            )
            raise AtomicFormatError(path, number, f"item id {item} {problem}")
        if item in first_line:
            raise AtomicFormatError(
                path, number, f"duplicate item id {item} (first on line {first_line[item]})"
            )
        first_line[item] = number
        ids[row] = item
        for field, column in enumerate(value_columns):
            value = cells[column].strip()
            if types[field] == "float" and value and not _FLOAT.fullmatch(value):
                raise AtomicFormatError(
                    path, number, f"field {names[field]!r} value {value!r} is not a number"
                )
            values[field].append(value)
    return ids, dict(zip(names, values, strict=True)), dict(zip(names, types, strict=True))


def _parse_header(path: Path, header: str) -> tuple[list[str], list[str], int]:
    """(field names, field types) without the id column, and the id column's position."""
    columns = header.split("\t")
    ids = [c for c, column in enumerate(columns) if column.strip() == ID_COLUMN]
    if len(ids) != 1:
        found = "no" if not ids else f"{len(ids)}"
        raise AtomicFormatError(
            path, 1, f"header has {found} {ID_COLUMN!r} column(s), expected one: {header[:200]!r}"
        )
    names, types = [], []
    for c, column in enumerate(columns):
        if c == ids[0]:
            continue
        name, colon, kind = column.strip().partition(":")
        if not colon or not _FIELD_NAME.fullmatch(name):
            raise AtomicFormatError(
                path, 1, f"header column {column!r} is not 'name:type' (e.g. 'title:token_seq')"
            )
        if kind not in FIELD_TYPES:
            raise AtomicFormatError(
                path, 1, f"header column {column!r}: type {kind!r} is not one of {FIELD_TYPES}"
            )
        if name == ID_FIELD or name in names:
            raise AtomicFormatError(path, 1, f"header repeats the field {name!r}")
        names.append(name)
        types.append(kind)
    if not any(kind in TEXT_TYPES for kind in types):
        raise AtomicFormatError(
            path, 1, f"no text column: the header has no token/token_seq field besides {ID_COLUMN}"
        )
    return names, types, ids[0]


def write_item_file(path: str | Path, table: ItemTable) -> Path:
    """Write ``table`` as an atomic ``.item`` file (temp file + rename), one row per item id
    with any non-empty field, in id order.

    Args:
        path: where to write.
        table: the metadata; values must not contain tabs or line breaks.

    Returns:
        ``path``.
    """
    path = Path(path)
    names = list(table.fields)
    if not any(kind in TEXT_TYPES for kind in table.types.values()):
        raise DataError(f"{path}: an item table needs a token/token_seq field to be written")
    columns = [table.fields[name] for name in names]
    for name, column in zip(names, columns, strict=True):
        bad = [i for i, value in enumerate(column) if any(c in value for c in "\t\n\r")]
        if bad:
            raise DataError(f"item {bad[0]}: field {name!r} contains a tab or line break")
    present = np.flatnonzero(np.any([column != "" for column in columns], axis=0))
    header = "\t".join([ID_COLUMN, *(f"{name}:{table.types[name]}" for name in names)])
    body = "".join(
        "\t".join([str(item), *(column[item] for column in columns)]) + "\n" for item in present
    )
    text = (header + "\n" + body).encode("utf-8")
    write_atomically(path, lambda file: file.write(text))
    return path
