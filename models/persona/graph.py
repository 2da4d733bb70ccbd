"""The heterogeneous graph behind the personas, built from a dataset's TRAINING split only, and
its metapath adjacencies.

Node types: ``user`` (users with at least one training row), ``item`` (node i = item id i, the
padding id 0 isolated), one type per categorical item field (``feature_fields``: ml-100k's
``class`` genres and ``release_year``, synthetic data's ``category``), and ``entity`` (KG
entities other than the films the items link to, kept when they touch >= ``min_entity_items``
items: an entity of one item joins nothing).

Edge types, as ``(source type, name, target type)`` -> sparse [n_source, n_target] matrices:

* ``(user, interacts, item)``: the user has a training session containing the item;
* ``(item, co_occurs, item)``: the two items share >= ``cooc_min`` training sessions;
* ``(item, has_<field>, <field>)``: item metadata;
* ``(item, <KG relation>, entity)``: a triple between the item's linked film and the entity,
  whichever side the film is on (Freebase lists most relations in both directions; the union
  is taken when paths are formed); ``(item, <KG relation>, item)`` for triples between two films
  (sequels). Triples touching no linked item of the dataset are dropped.

Validation and test rows never enter: user-item and co-occurrence edges come from
``dataset.train`` alone; item metadata and KG triples carry no interactions.

Sessions are recovered from the expanded rows: a session of m items expands to rows with prefix
lengths m-1, ..., 1 in that order (``data.pipeline.expand_sessions``), so each session ends at
its row of length 1 (a change of user also ends one).

Metapaths (user -> user; ``user_metapaths``): ``U-I-U``, ``U-I-I-U`` (co-occurrence),
``U-I-<field>-I-U`` per feature field, ``U-I-E-I-U`` (KG). Their adjacency (``metapath_adjacency``)
is the random walk along the path: each step's matrix row-normalised, so that hubs (a genre of
half the catalog, a blockbuster) spread their weight thin, then symmetrised, self-loops dropped
and each row cut to its ``max_neighbors`` strongest neighbours (products through a genre are
otherwise dense). Rows are computed in blocks, so memory stays O(block * n_users).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import reduce

import numpy as np
import scipy.sparse as sp

from data.dataset import SessionDataset, Split
from data.items import ItemTable

USER, ITEM, ENTITY = "user", "item", "entity"
INTERACTS, CO_OCCURS = "interacts", "co_occurs"
METAPATH_FAMILIES = ("ui", "cooc", "feature", "kg")
# A categorical item field has at most one distinct value per two items with a value: genres
# (19 for ~1,150 items) and years (~70) qualify, titles (a word per item or more) do not.
MAX_FEATURE_VALUES_PER_ITEM = 0.5
BLOCK_ROWS = 1024
# Persona groups of evaluation rows (``persona_groups``).
GROUP_KNOWN, GROUP_FEW, GROUP_UNKNOWN = "known", "few", "unknown"
FEW_TRAIN_ROWS = 10

Step = tuple[str, str | None, str]  # (source type, relation name or None = all, target type)


@dataclass(frozen=True)
class GraphSettings:
    """What the graph and its metapaths are built from (part of the persona cache key).

    Args:
        cooc_min: training sessions two items must share for a co-occurrence edge.
        metapaths: enabled families among ``METAPATH_FAMILIES``.
        max_neighbors: strongest neighbours kept per user and metapath.
        min_entity_items: items an entity must touch to be kept.
    """

    cooc_min: int = 2
    metapaths: tuple[str, ...] = METAPATH_FAMILIES
    max_neighbors: int = 64
    min_entity_items: int = 2

    def __post_init__(self) -> None:
        unknown = sorted(set(self.metapaths) - set(METAPATH_FAMILIES))
        if unknown:
            raise ValueError(f"unknown metapath families {unknown}; expected {METAPATH_FAMILIES}")
        if not self.metapaths:
            raise ValueError("at least one metapath family must be enabled")
        if self.cooc_min < 1 or self.max_neighbors < 1 or self.min_entity_items < 1:
            raise ValueError(f"graph settings must be >= 1: {self}")


@dataclass(frozen=True)
class Metapath:
    """A user -> user metapath: its name (``U-I-class-I-U``), family and relation steps."""

    name: str
    family: str
    steps: tuple[Step, ...]


@dataclass
class HeteroGraph:
    """Node counts per type, typed relations and the dataset ids of the user nodes."""

    nodes: dict[str, int]
    relations: dict[tuple[str, str, str], sp.csr_matrix]
    user_ids: np.ndarray  # int64 [n_user_nodes]: dataset user id of each user node
    feature_fields: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    def relation(self, source: str, target: str, name: str | None = None) -> sp.csr_matrix:
        """Binary [n_source, n_target] adjacency of one relation, read in either stored
        direction.

        Args:
            source: source node type.
            target: target node type.
            name: the relation (None: the union of every relation between the two types).
        """
        shape = (self.nodes[source], self.nodes[target])
        total = sp.csr_matrix(shape, dtype=np.float64)
        for (src, rel, dst), matrix in self.relations.items():
            if name is not None and rel != name:
                continue
            if (src, dst) == (source, target):
                total = total + matrix
            elif (dst, src) == (source, target):
                total = total + matrix.T
        total = total.tocsr()
        total.data[:] = 1.0
        total.eliminate_zeros()
        return total

    def summary(self) -> list[str]:
        """Lines with the node count per type and the edge count per relation."""
        nodes = ", ".join(f"{kind} {count:,}" for kind, count in self.nodes.items())
        lines = [f"nodes: {nodes}"]
        for (src, rel, dst), matrix in self.relations.items():
            symmetric = src == dst and rel == CO_OCCURS
            count = matrix.nnz // 2 if symmetric else matrix.nnz
            lines.append(f"edges {src}-{rel}-{dst}: {count:,}" + (" (undirected)" * symmetric))
        return lines + self.notes


# --------------------------------------------------------------------------- building


def session_of_rows(split: Split) -> np.ndarray:
    """Session index (0..) of each row of an expanded split (see the module docstring).

    Args:
        split: rows as ``data.pipeline.expand_sessions`` writes them (a session's rows
            consecutive, longest prefix first), with or without users.

    Returns:
        int64 [n_rows].
    """
    ends = split.lengths == 1
    if split.users is not None and len(split) > 1:
        ends[:-1] |= split.users[1:] != split.users[:-1]
    starts = np.concatenate(([0], np.cumsum(ends[:-1], dtype=np.int64)))
    return starts


def session_items(split: Split, n_items: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """Binary [n_sessions, n_items] incidence of the items of each session (prefixes and
    targets of all its rows) and the user of each session (0 = unknown or no users).

    Args:
        split: an expanded split.
        n_items: catalog size.

    Returns:
        The incidence (CSR) and the users [n_sessions].
    """
    session = session_of_rows(split)
    n_sessions = int(session[-1]) + 1 if len(session) else 0
    real = split.prefixes > 0
    rows = np.concatenate([np.repeat(session, real.sum(axis=1)), session])
    cols = np.concatenate([split.prefixes[real].astype(np.int64), split.targets])
    incidence = sp.csr_matrix(
        (np.ones(len(rows)), (rows, cols)), shape=(n_sessions, n_items)
    )
    incidence.data[:] = 1.0
    users = np.zeros(n_sessions, dtype=np.int64)
    if split.users is not None:
        users[session] = split.users
    return incidence, users


def feature_fields(items: ItemTable | None) -> list[str]:
    """The categorical text fields of an item table (see ``MAX_FEATURE_VALUES_PER_ITEM``).

    Args:
        items: the dataset's item table (None: no fields).

    Returns:
        The field names, in the table's order.
    """
    if items is None:
        return []
    chosen = []
    for name in items.text_fields:
        values = items.fields[name]
        present = values != ""
        tokens = _field_tokens(values[present], items.types[name])
        distinct = len(set(tokens))
        if 2 <= distinct <= max(2, MAX_FEATURE_VALUES_PER_ITEM * present.sum()):
            chosen.append(name)
    return chosen


def _field_tokens(values: np.ndarray, kind: str) -> list[str]:
    if kind == "token_seq":
        return [token for value in values for token in value.split()]
    return list(values)


def _feature_matrix(items: ItemTable, name: str) -> tuple[sp.csr_matrix, int]:
    """Binary [n_items, n_values] item -> value incidence of one field."""
    values = items.fields[name]
    kind = items.types[name]
    rows, tokens = [], []
    for item in np.flatnonzero(values != ""):
        for token in values[item].split() if kind == "token_seq" else [values[item]]:
            rows.append(item)
            tokens.append(token)
    vocabulary = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    cols = [vocabulary[token] for token in tokens]
    matrix = sp.csr_matrix(
        (np.ones(len(rows)), (rows, cols)), shape=(items.n_items, len(vocabulary))
    )
    matrix.data[:] = 1.0
    return matrix, len(vocabulary)


def build_graph(dataset: SessionDataset, settings: GraphSettings | None = None) -> HeteroGraph:
    """The heterogeneous graph of ``dataset`` (training split, item table, graph side files).

    Args:
        dataset: a dataset whose training split carries users.
        settings: co-occurrence threshold and entity pruning (default ``GraphSettings()``).

    Returns:
        The graph (``HeteroGraph``).

    Raises:
        ValueError: the training split has no users.
    """
    settings = settings or GraphSettings()
    train = dataset.train
    if train.users is None or not np.any(train.users > 0):
        raise ValueError(
            f"dataset {dataset.name!r} has no users in its training split: personas need the "
            "user_id:token column"
        )
    n_items = dataset.n_items
    incidence, session_users = session_items(train, n_items)
    user_ids = np.unique(session_users[session_users > 0])
    node_of_user = np.searchsorted(user_ids, session_users)
    known = session_users > 0
    to_users = sp.csr_matrix(
        (np.ones(int(known.sum())), (node_of_user[known], np.flatnonzero(known))),
        shape=(len(user_ids), incidence.shape[0]),
    )
    interacts = (to_users @ incidence).tocsr()
    interacts.data[:] = 1.0
    cooc = (incidence.T @ incidence).tocsr()
    cooc.setdiag(0)
    cooc.data[cooc.data < settings.cooc_min] = 0
    cooc.eliminate_zeros()
    cooc.data[:] = 1.0

    nodes = {USER: len(user_ids), ITEM: n_items}
    relations = {(USER, INTERACTS, ITEM): interacts, (ITEM, CO_OCCURS, ITEM): cooc}
    fields = feature_fields(dataset.items)
    for name in fields:
        matrix, n_values = _feature_matrix(dataset.items, name)
        nodes[name] = n_values
        relations[(ITEM, f"has_{name}", name)] = matrix
    notes = _add_kg(dataset, settings, nodes, relations)
    return HeteroGraph(nodes, relations, user_ids.astype(np.int64), tuple(fields), notes)


def _add_kg(
    dataset: SessionDataset,
    settings: GraphSettings,
    nodes: dict[str, int],
    relations: dict[tuple[str, str, str], sp.csr_matrix],
) -> list[str]:
    """Adds the entity nodes and the KG relations; returns notes on what was dropped."""
    files = dataset.graph_files
    if files is None or not len(files.kg):
        return ["no knowledge graph (no .kg triples): the U-I-E-I-U metapath is off"]
    n_items = dataset.n_items
    item_of_entity = np.full(len(files.entities), -1, dtype=np.int64)
    linked = np.flatnonzero(files.item_entity >= 0)
    item_of_entity[files.item_entity[linked]] = linked
    head, relation, tail = files.kg.T
    head_item, tail_item = item_of_entity[head], item_of_entity[tail]
    forward = (head_item >= 0) & (tail_item < 0)
    backward = (tail_item >= 0) & (head_item < 0)
    films = (head_item >= 0) & (tail_item >= 0)
    item = np.concatenate([head_item[forward], tail_item[backward]])
    other = np.concatenate([tail[forward], head[backward]])
    kind = np.concatenate([relation[forward], relation[backward]])
    # entities touching >= min_entity_items distinct items
    pairs = np.unique(np.stack([other, item]), axis=1)
    touches = np.bincount(pairs[0], minlength=len(files.entities))
    kept = touches >= settings.min_entity_items
    node_of_entity = np.cumsum(kept) - 1
    keep = kept[other]
    n_entities = int(kept.sum())
    nodes[ENTITY] = n_entities
    for r in np.unique(kind[keep]):
        chosen = keep & (kind == r)
        matrix = sp.csr_matrix(
            (np.ones(int(chosen.sum())), (item[chosen], node_of_entity[other[chosen]])),
            shape=(n_items, n_entities),
        )
        matrix.data[:] = 1.0
        relations[(ITEM, str(files.relations[r]), ENTITY)] = matrix
    for r in np.unique(relation[films]):
        chosen = films & (relation == r)
        matrix = sp.csr_matrix(
            (np.ones(int(chosen.sum())), (head_item[chosen], tail_item[chosen])),
            shape=(n_items, n_items),
        )
        matrix.data[:] = 1.0
        relations[(ITEM, str(files.relations[r]), ITEM)] = matrix
    outside = int(np.sum((head_item < 0) & (tail_item < 0)))
    return [
        f"kg: {len(files.kg):,} triples, {outside:,} touching no linked item dropped; "
        f"{n_entities:,} of {int(np.sum(touches > 0)):,} entities touch >= "
        f"{settings.min_entity_items} items; {len(linked):,} items linked"
    ]


# --------------------------------------------------------------------------- metapaths


def user_metapaths(graph: HeteroGraph, settings: GraphSettings) -> list[Metapath]:
    """The enabled user -> user metapaths that have at least one path instance.

    Args:
        graph: the graph.
        settings: which metapath families are enabled.

    Returns:
        The metapaths, in ``METAPATH_FAMILIES`` order.
    """
    ui, iu = (USER, INTERACTS, ITEM), (ITEM, INTERACTS, USER)
    candidates = []
    if "ui" in settings.metapaths:
        candidates.append(Metapath("U-I-U", "ui", (ui, iu)))
    if "cooc" in settings.metapaths:
        candidates.append(Metapath("U-I-I-U", "cooc", (ui, (ITEM, CO_OCCURS, ITEM), iu)))
    if "feature" in settings.metapaths:
        for name in graph.feature_fields:
            steps = (ui, (ITEM, f"has_{name}", name), (name, f"has_{name}", ITEM), iu)
            candidates.append(Metapath(f"U-I-{name}-I-U", "feature", steps))
    if "kg" in settings.metapaths and graph.nodes.get(ENTITY):
        steps = (ui, (ITEM, None, ENTITY), (ENTITY, None, ITEM), iu)
        candidates.append(Metapath("U-I-E-I-U", "kg", steps))
    return [path for path in candidates if all(_step(graph, s).nnz for s in path.steps)]


def _step(graph: HeteroGraph, step: Step) -> sp.csr_matrix:
    source, name, target = step
    return graph.relation(source, target, name)


def metapath_counts(graph: HeteroGraph, steps: tuple[Step, ...]) -> sp.csr_matrix:
    """Number of path instances between every pair of end nodes (unnormalised product).

    Args:
        graph: the graph.
        steps: relation steps (source type, relation name or None for all, target type).

    Returns:
        The counts [n_source, n_target] (CSR).
    """
    return reduce(lambda a, b: (a @ b).tocsr(), [_step(graph, step) for step in steps])


def metapath_adjacency(
    graph: HeteroGraph, steps: tuple[Step, ...], max_neighbors: int | None = None
) -> sp.csr_matrix:
    """Symmetric weighted adjacency of a metapath between nodes of one type (see the module
    docstring): random-walk probability along ``steps``, symmetrised, no self-loops, each row
    cut to its ``max_neighbors`` largest entries (before symmetrising) when given.

    Args:
        graph: the graph.
        steps: relation steps whose first source type is the last target type.
        max_neighbors: strongest neighbours kept per row (None: all).

    Returns:
        The adjacency [n, n] (CSR, float).
    """
    if steps[0][0] != steps[-1][2]:
        raise ValueError(f"a metapath adjacency needs a path back to {steps[0][0]}: {steps}")
    walks = [_row_normalise(_step(graph, step)) for step in steps]
    right = reduce(lambda a, b: (a @ b).tocsr(), walks[1:])
    first = walks[0]
    blocks = []
    for start in range(0, first.shape[0], BLOCK_ROWS):
        block = (first[start : start + BLOCK_ROWS] @ right).tocsr()
        block = _drop_diagonal(block, start)
        if max_neighbors is not None:
            block = top_k_per_row(block, max_neighbors)
        blocks.append(block)
    walk = sp.vstack(blocks).tocsr() if blocks else right
    return ((walk + walk.T) / 2).tocsr()


def _row_normalise(matrix: sp.csr_matrix) -> sp.csr_matrix:
    sums = np.asarray(matrix.sum(axis=1)).ravel()
    scale = np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)
    return sp.diags(scale) @ matrix


def _drop_diagonal(block: sp.csr_matrix, offset: int) -> sp.csr_matrix:
    coo = block.tocoo()
    keep = coo.row + offset != coo.col
    return sp.csr_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=block.shape)


def top_k_per_row(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """``matrix`` with only each row's ``k`` largest entries (ties: lower column first).

    Args:
        matrix: a sparse matrix.
        k: entries kept per row.

    Returns:
        A new CSR matrix of ``matrix``'s shape.
    """
    coo = matrix.tocoo()
    order = np.lexsort((coo.col, -coo.data, coo.row))
    rows = coo.row[order]
    counts = np.bincount(rows, minlength=matrix.shape[0])
    rank = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = order[rank < k]
    return sp.csr_matrix(
        (coo.data[keep], (coo.row[keep], coo.col[keep])), shape=matrix.shape
    )


# --------------------------------------------------------------------------- persona groups


def train_rows_per_user(dataset: SessionDataset) -> np.ndarray:
    """Training rows of each user id (index = user id; index 0 counts rows of unknown users).

    Args:
        dataset: the dataset.

    Returns:
        int64 [max user id + 1].
    """
    users = dataset.train.users
    if users is None:
        return np.zeros(1, dtype=np.int64)
    return np.bincount(users, minlength=1)


def persona_groups(
    dataset: SessionDataset, split: str = "test", few_rows: int = FEW_TRAIN_ROWS
) -> np.ndarray:
    """Group label of every row of ``split``, for reporting persona models by user group.

    ``"unknown"``: no user (id 0, or a split without users) or a user without training rows:
    the persona model falls back to the personas of the training users nearest to the session's
    items. ``"few"``: a user with 1..``few_rows`` training rows (a persona from little data).
    ``"known"``: a user with more.

    Args:
        dataset: the dataset (its training split decides who is known).
        split: "train", "valid" or "test".
        few_rows: most training rows of a "few" user.

    Returns:
        An object array of str [n_rows].
    """
    rows = dataset.split(split)
    labels = np.full(len(rows), GROUP_UNKNOWN, dtype=object)
    if rows.users is None:
        return labels
    counts = train_rows_per_user(dataset)
    users = rows.users
    seen = np.where(users < len(counts), counts[np.minimum(users, len(counts) - 1)], 0)
    seen[users == 0] = 0
    labels[seen > 0] = GROUP_FEW
    labels[seen > few_rows] = GROUP_KNOWN
    return labels
