"""Heterogeneous Deep Graph Infomax (HDGI, Ren et al. 2019) over the users' metapath graphs, and
``train_personas``: the cached persona stage of the ``persona`` variant.

Inputs. Users have no content of their own, so a user's input vector is its *profile*: the mean
of the (unit) semantic text vectors of its training items, re-normalised (the U-I step every
metapath starts with), followed by one-hot user attributes from ``<name>.user`` when the dataset
has them (categorical fields only; the block scaled to unit norm). Genre, year and entity nodes
enter through the metapaths, i.e. as one-hot structure.

Encoder. One GCN layer per metapath Phi, h^Phi = PReLU(A^Phi X W^Phi + b^Phi) with
A^Phi = D^-1/2 (A + I) D^-1/2 of the metapath adjacency (``graph.metapath_adjacency``), then
semantic-level attention (HAN): w_Phi = mean_users q^T tanh(V h^Phi_u + c), beta = softmax(w),
H = sum_Phi beta_Phi h^Phi.

Objective (DGI). The corrupted graph keeps every adjacency and shuffles the rows of X; the summary
s = sigmoid(mean_u H_u); a bilinear discriminator D(h, s) = h^T M s + b scores real users as 1 and
corrupted ones as 0 (binary cross-entropy over both sets). Full batch Adam; the weights of the
lowest loss are kept, stopping after ``patience`` epochs without improvement (as DGI does).

Plain PyTorch: a few hundred to a few thousand users with <= 2 * max_neighbors neighbours per
metapath is one sparse-dense product per metapath and epoch; a graph library would add a
dependency and nothing this needs.

Cache. ``train_personas`` keys the result on the content of everything it reads (training rows
and users, item vectors, item table, graph side files), the graph and HDGI settings and the seed;
it keeps results in process and in the project's cache store (``data.cache``, section
``persona``: ``$CORE_CACHE_DIR/persona``, default ``~/.cache/core-hpo/persona``), written
atomically (concurrent trials may race; each rename installs a complete file). Training runs
under its own RNG (``torch.random.fork_rng``), so a model built after it sees the same global
random stream whether the personas were trained or read from the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data.cache import CacheStore
from data.dataset import SessionDataset
from models.persona.graph import (
    GraphSettings,
    HeteroGraph,
    build_graph,
    metapath_adjacency,
    user_metapaths,
)

CACHE_VERSION = 1
CACHE_SECTION = "persona"  # the cache store's folder (data.cache)
# Below this many users an HDGI step is a few milliseconds on one thread: more threads only add
# synchronisation (on a busy 2-core machine a step took 100x longer with two threads).
MANY_USERS = 20_000
MEMORY_ENTRIES = 8
# A user attribute is categorical when it has at most this share of distinct values per user.
MAX_ATTRIBUTE_VALUES_PER_USER = 0.2
logger = logging.getLogger(__name__)

Log = Callable[[str], None]


@dataclass(frozen=True)
class HDGISettings:
    """HDGI training knobs (part of the persona cache key).

    Args:
        size: persona dimension.
        epochs: most training epochs.
        lr: Adam learning rate.
        patience: epochs without a lower loss before stopping.
    """

    size: int = 64
    epochs: int = 200
    lr: float = 1e-3
    patience: int = 20


@dataclass(frozen=True)
class Personas:
    """The persona stage's output for the users of the training split.

    ``user_ids`` int64 [n]: dataset user ids; ``vectors`` float32 [n, size]: their personas;
    ``profiles`` float32 [n, D]: their input profiles (mean item text vectors), used to find the
    nearest users of a session without a known user; ``beta`` the metapath attention weights.
    """

    user_ids: np.ndarray
    vectors: np.ndarray
    profiles: np.ndarray
    metapaths: tuple[str, ...]
    beta: np.ndarray
    losses: np.ndarray
    graph_summary: tuple[str, ...]
    source: str = "trained"  # "trained", "memory" or the cache file read

    def table(self, n_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Personas indexed by dataset user id [n_rows, size] (zero rows for users without
        one) and the boolean mask of users that have one (never row 0).

        Args:
            n_rows: rows of the table (default: max user id + 1); larger ids are dropped.
        """
        n_rows = int(self.user_ids.max(initial=0)) + 1 if n_rows is None else n_rows
        table = np.zeros((n_rows, self.vectors.shape[1]), dtype=np.float32)
        known = np.zeros(n_rows, dtype=bool)
        inside = self.user_ids < n_rows
        table[self.user_ids[inside]] = self.vectors[inside]
        known[self.user_ids[inside]] = True
        known[0] = False
        return table, known


# --------------------------------------------------------------------------- features


def user_profiles(graph: HeteroGraph, item_vectors: np.ndarray) -> np.ndarray:
    """Unit mean of the unit item vectors of each user node's training items [n_users, D]
    (zero for a user whose items have no text).

    Args:
        graph: the graph (its user -> item relation).
        item_vectors: item text vectors [n_items, D].

    Returns:
        float32 [n_users, D].
    """
    vectors = _unit_rows(np.asarray(item_vectors, dtype=np.float64))
    interacts = graph.relation("user", "item")
    counts = np.asarray(interacts.sum(axis=1)).ravel()
    mean = (interacts @ vectors) / np.maximum(counts, 1)[:, None]
    return _unit_rows(mean).astype(np.float32)


def user_attributes(dataset: SessionDataset, user_ids: np.ndarray) -> np.ndarray:
    """One-hot categorical user attributes [n_users, n_values] from the ``.user`` file (no
    columns when there is none), scaled so that each user's block has unit norm.

    Args:
        dataset: the dataset (its ``graph_files.user_fields``).
        user_ids: dataset user ids of the rows wanted.

    Returns:
        float32 [len(user_ids), n_values].
    """
    files = dataset.graph_files
    if files is None or not files.user_fields:
        return np.zeros((len(user_ids), 0), dtype=np.float32)
    blocks = []
    for values in files.user_fields.values():
        mine = np.full(len(user_ids), "", dtype=object)
        inside = user_ids < len(values)
        mine[inside] = values[user_ids[inside]]
        present = mine != ""
        vocabulary = sorted(set(mine[present]))
        if not 2 <= len(vocabulary) <= max(2, MAX_ATTRIBUTE_VALUES_PER_USER * present.sum()):
            continue  # constant or identifying (e.g. a zip code): no shared signal
        index = {value: i for i, value in enumerate(vocabulary)}
        block = np.zeros((len(user_ids), len(vocabulary)), dtype=np.float64)
        rows = np.flatnonzero(present)
        block[rows, [index[v] for v in mine[present]]] = 1.0
        blocks.append(block)
    if not blocks:
        return np.zeros((len(user_ids), 0), dtype=np.float32)
    attributes = np.concatenate(blocks, axis=1)
    return _unit_rows(attributes).astype(np.float32)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


class Propagation(NamedTuple):
    """A normalised adjacency as torch CSR tensors: the matrix and its transpose."""

    matrix: Tensor
    transpose: Tensor


def gcn_normalise(adjacency: sp.spmatrix) -> Propagation:
    """D^-1/2 (A + I) D^-1/2 (float32, CSR) and its transpose.

    Args:
        adjacency: a square non-negative [n, n] adjacency (row sums are the degrees).

    Returns:
        The normalised matrix and its transpose (``Propagation``).
    """
    a = sp.csr_matrix(adjacency, dtype=np.float64) + sp.identity(adjacency.shape[0], format="csr")
    degree = np.asarray(a.sum(axis=1)).ravel()
    scale = sp.diags(1.0 / np.sqrt(degree))
    a = (scale @ a @ scale).astype(np.float32).tocsr()
    return Propagation(_torch_csr(a), _torch_csr(a.T.tocsr()))


def _torch_csr(matrix: sp.csr_matrix) -> Tensor:
    matrix.sort_indices()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        return torch.sparse_csr_tensor(
            torch.from_numpy(matrix.indptr.astype(np.int64)),
            torch.from_numpy(matrix.indices.astype(np.int64)),
            torch.from_numpy(matrix.data),
            matrix.shape,
            check_invariants=False,
        )


class _SparseProduct(torch.autograd.Function):
    """A @ h with a constant sparse A; the gradient A^T @ g (torch's own backward for sparse
    products handles a possibly trainable A and was ~4x slower here)."""

    @staticmethod
    def forward(ctx, matrix: Tensor, transpose: Tensor, h: Tensor) -> Tensor:
        ctx.transpose = transpose
        return matrix @ h

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, None, Tensor]:
        return None, None, ctx.transpose @ grad


# --------------------------------------------------------------------------- model


class HDGI(nn.Module):
    """Metapath GCNs + semantic attention, trained with the DGI discriminator (see the module
    docstring)."""

    def __init__(self, n_features: int, size: int, n_metapaths: int) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(nn.Linear(n_features, size) for _ in range(n_metapaths))
        self.activations = nn.ModuleList(nn.PReLU() for _ in range(n_metapaths))
        self.attention_proj = nn.Linear(size, size)
        self.attention_query = nn.Linear(size, 1, bias=False)
        self.discriminator = nn.Bilinear(size, size, 1)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Bilinear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def per_path(
        self, x: Tensor, adjacencies: list[Propagation], permutation: Tensor | None = None
    ) -> list[Tensor]:
        """Metapath embeddings h^Phi [M, n, size] of the features ``x``; with a permutation,
        also those of the corrupted features ``x[permutation]`` (each product then serves both:
        (x W)[permutation] is x[permutation] W).

        Args:
            x: user features [n, F].
            adjacencies: one normalised adjacency per metapath.
            permutation: the corruption's row order, or None.
        """
        outputs = []
        for encoder, act, adjacency in zip(
            self.encoders, self.activations, adjacencies, strict=True
        ):
            z = encoder(x)
            if permutation is not None:
                z = torch.cat([z, z[permutation]], dim=1)
            outputs.append(act(_SparseProduct.apply(*adjacency, z)))
        stacked = torch.stack(outputs)  # [M, n, size or 2 * size]
        return list(stacked.chunk(2, dim=2)) if permutation is not None else [stacked]

    def attend(self, per_path: Tensor) -> tuple[Tensor, Tensor]:
        """Semantic attention over metapaths: H [n, size] and beta [M].

        Args:
            per_path: metapath embeddings [M, n, size].
        """
        scores = self.attention_query(torch.tanh(self.attention_proj(per_path))).mean(dim=(1, 2))
        beta = torch.softmax(scores, dim=0)
        return torch.einsum("m,mns->ns", beta, per_path), beta

    def embed(self, x: Tensor, adjacencies: list[Propagation]) -> tuple[Tensor, Tensor]:
        """User embeddings [n, size] and metapath attention weights beta [n_metapaths].

        Args:
            x: user features [n, F].
            adjacencies: one normalised adjacency per metapath.
        """
        return self.attend(self.per_path(x, adjacencies)[0])

    def loss(self, x: Tensor, adjacencies: list[Propagation], permutation: Tensor) -> Tensor:
        """DGI binary cross-entropy: real users vs users of the row-shuffled features.

        Args:
            x: user features [n, F].
            adjacencies: one normalised adjacency per metapath.
            permutation: the corruption's row order [n].
        """
        real_paths, fake_paths = self.per_path(x, adjacencies, permutation)
        real, _ = self.attend(real_paths)
        fake, _ = self.attend(fake_paths)
        summary = torch.sigmoid(real.mean(dim=0, keepdim=True)).expand_as(real)
        logits = torch.cat(
            [self.discriminator(real, summary), self.discriminator(fake, summary)]
        ).squeeze(1)
        labels = torch.cat([torch.ones(len(real)), torch.zeros(len(fake))])
        return F.binary_cross_entropy_with_logits(logits, labels)


def train_hdgi(
    features: np.ndarray,
    adjacencies: list[sp.spmatrix],
    settings: HDGISettings,
    *,
    seed: int,
    log: Log | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train HDGI and return (embeddings [n, size], beta [M], loss per epoch).

    Args:
        features: input features [n, F].
        adjacencies: one [n, n] metapath adjacency per metapath (normalised here).
        settings: size, epochs, learning rate, patience.
        seed: seeds the weights and the corruptions (global RNG state is left untouched).
        log: receives a loss line every tenth of the epochs.

    Returns:
        The embeddings of the lowest loss, the metapath attention and the loss per epoch.
    """
    say = log or logger.info
    x = torch.from_numpy(np.asarray(features, dtype=np.float32))
    adjs = [gcn_normalise(adjacency) for adjacency in adjacencies]
    with torch.random.fork_rng(devices=[]), _threads(1 if len(x) < MANY_USERS else None):
        torch.manual_seed(seed)
        model = HDGI(x.shape[1], settings.size, len(adjs))
        optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
        generator = torch.Generator().manual_seed(seed)
        losses: list[float] = []
        best, best_state, bad = float("inf"), None, 0
        every = max(1, settings.epochs // 10)
        for epoch in range(1, settings.epochs + 1):
            model.train()
            permutation = torch.randperm(len(x), generator=generator)
            loss = model.loss(x, adjs, permutation)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            value = loss.item()
            losses.append(value)
            if value < best:
                best, bad = value, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
            stop = bad >= settings.patience
            if epoch == 1 or epoch % every == 0 or stop or epoch == settings.epochs:
                say(f"HDGI epoch {epoch:4d} loss {value:.4f} (best {best:.4f})")
            if stop:
                say(f"HDGI stopped at epoch {epoch}: no lower loss for {settings.patience}")
                break
        model.load_state_dict(best_state)
        model.eval()
        with torch.no_grad():
            embeddings, beta = model.embed(x, adjs)
    return embeddings.numpy(), beta.numpy(), np.asarray(losses, dtype=np.float32)


@contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """Runs the block with ``count`` torch threads (None: unchanged), then restores them."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- persona stage

_MEMORY: dict[str, Personas] = {}


def train_personas(
    dataset: SessionDataset,
    graph_settings: GraphSettings | None = None,
    hdgi_settings: HDGISettings | None = None,
    seed: int = 2020,
    *,
    log: Log | None = None,
    use_cache: bool = True,
) -> Personas:
    """The personas of ``dataset``'s training users: from the in-process or disk cache when
    the same inputs were seen, else graph -> metapaths -> HDGI (then cached).

    Args:
        dataset: a dataset with users in its training split and ``item_vectors``.
        graph_settings: graph and metapath settings (default ``GraphSettings()``).
        hdgi_settings: HDGI settings (default ``HDGISettings()``).
        seed: HDGI seed.
        log: receives progress lines (graph counts, losses; default: this module's logger).
        use_cache: read and write the caches.

    Returns:
        The personas (``Personas``; ``source`` says where they came from).

    Raises:
        ValueError: no users, no item vectors, or no metapath with any path instance.
    """
    say = log or logger.info
    graph_settings = graph_settings or GraphSettings()
    hdgi_settings = hdgi_settings or HDGISettings()
    if dataset.item_vectors is None:
        raise ValueError(
            "personas need semantic item vectors (item text); attach them with "
            "data.text.attach_item_vectors"
        )
    key = cache_key(dataset, graph_settings, hdgi_settings, seed)
    store = CacheStore(CACHE_SECTION)
    name = f"{dataset.name}.{key[:24]}.personas.npz"
    path = store.path(name)
    if use_cache:
        if key in _MEMORY:
            found = _MEMORY[key]
            say(f"personas: reused from this process ({len(found.user_ids):,} users)")
            return _with_source(found, "memory")
        found = _read(store, name, key)
        if found is not None:
            say(f"personas: reused cache {path} ({len(found.user_ids):,} users, "
                f"{len(found.losses)} HDGI epochs, final loss {found.losses[-1]:.4f})")
            for line in found.graph_summary:
                say(f"  {line}")
            _remember(key, found)
            return found
    personas = compute_personas(dataset, graph_settings, hdgi_settings, seed, log=say)
    if use_cache:
        _remember(key, personas)
        if _write(store, name, key, personas):
            say(f"personas: cached in {path}")
        else:
            say(f"personas: could not write {path}; set CORE_CACHE_DIR to a writable folder")
    return personas


def compute_personas(
    dataset: SessionDataset,
    graph_settings: GraphSettings,
    hdgi_settings: HDGISettings,
    seed: int,
    *,
    log: Log | None = None,
) -> Personas:
    """Graph -> metapath adjacencies -> HDGI, without any cache (see ``train_personas``).

    Args:
        dataset: as ``train_personas``.
        graph_settings: graph and metapath settings.
        hdgi_settings: HDGI settings.
        seed: HDGI seed.
        log: receives progress lines.

    Returns:
        The personas (``Personas``).
    """
    say = log or logger.info
    start = time.perf_counter()
    graph = build_graph(dataset, graph_settings)
    summary = [f"graph of the training split ({time.perf_counter() - start:.1f} s)"]
    summary += graph.summary()
    metapaths = user_metapaths(graph, graph_settings)
    if not metapaths:
        raise ValueError(
            f"no enabled metapath ({graph_settings.metapaths}) has a path instance in "
            f"dataset {dataset.name!r}"
        )
    adjacencies = []
    for path in metapaths:
        adjacency = metapath_adjacency(graph, path.steps, graph_settings.max_neighbors)
        adjacencies.append(adjacency)
        summary.append(f"metapath {path.name}: {adjacency.nnz:,} user-user weights")
    for line in summary:
        say(line)
    profiles = user_profiles(graph, dataset.item_vectors)
    attributes = user_attributes(dataset, graph.user_ids)
    features = np.concatenate([profiles, attributes], axis=1)
    say(f"HDGI: {len(features):,} users, {features.shape[1]} input features "
        f"({attributes.shape[1]} from user attributes), {len(metapaths)} metapaths, "
        f"persona size {hdgi_settings.size}")
    start = time.perf_counter()
    vectors, beta, losses = train_hdgi(features, adjacencies, hdgi_settings, seed=seed, log=say)
    weights = ", ".join(f"{p.name} {b:.2f}" for p, b in zip(metapaths, beta, strict=True))
    say(f"HDGI: {len(losses)} epochs in {time.perf_counter() - start:.1f} s; "
        f"metapath attention {weights}")
    return Personas(
        user_ids=graph.user_ids,
        vectors=vectors.astype(np.float32),
        profiles=profiles,
        metapaths=tuple(p.name for p in metapaths),
        beta=beta.astype(np.float32),
        losses=losses,
        graph_summary=tuple(summary),
    )


def cache_key(
    dataset: SessionDataset, graph_settings: GraphSettings, hdgi_settings: HDGISettings, seed: int
) -> str:
    """SHA-256 of everything the personas depend on (content, not names or paths).

    Args:
        dataset: the dataset (training split, item vectors, item table, graph files).
        graph_settings: graph settings.
        hdgi_settings: HDGI settings.
        seed: HDGI seed.

    Returns:
        A hex digest.
    """
    digest = hashlib.sha256()
    settings = {
        "version": CACHE_VERSION,
        "graph": asdict(graph_settings),
        "hdgi": asdict(hdgi_settings),
        "seed": seed,
        "n_items": dataset.n_items,
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    train = dataset.train
    for array in (train.prefixes, train.lengths, train.targets, train.users, dataset.item_vectors):
        if array is not None:
            digest.update(str((array.dtype, array.shape)).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    if dataset.items is not None:
        for name, values in dataset.items.fields.items():
            digest.update(f"{name}:{dataset.items.types[name]}=".encode())
            digest.update("\x1f".join(values.tolist()).encode())
    if dataset.graph_files is not None:
        for part in dataset.graph_files.digest_parts():
            digest.update(part)
    return digest.hexdigest()


def _with_source(personas: Personas, source: str) -> Personas:
    return Personas(**{**personas.__dict__, "source": source})


def _remember(key: str, personas: Personas) -> None:
    if len(_MEMORY) >= MEMORY_ENTRIES:
        _MEMORY.pop(next(iter(_MEMORY)))
    _MEMORY[key] = personas


_ARRAYS = ("user_ids", "vectors", "profiles", "beta", "losses")


def _read(store: CacheStore, name: str, key: str) -> Personas | None:
    stored = store.read_arrays(name, key)
    try:
        return None if stored is None else Personas(
            **{array: stored[array] for array in _ARRAYS},
            metapaths=tuple(stored["metapaths"].tolist()),
            graph_summary=tuple(stored["graph_summary"].tolist()),
            source=str(store.path(name)),
        )
    except KeyError:
        return None  # another layout: recompute


def _write(store: CacheStore, name: str, key: str, personas: Personas) -> bool:
    arrays = {array: getattr(personas, array) for array in _ARRAYS}
    arrays["metapaths"] = np.asarray(personas.metapaths, dtype=str)
    arrays["graph_summary"] = np.asarray(personas.graph_summary, dtype=str)
    return store.write_arrays(name, key, arrays) is not None
