"""Deterministic synthetic session logs with structure a sequence model can learn.

Why: tests, CI and quick HPO smoke runs need data that is small, reproducible and not trivially
solved by popularity. Items have Zipf popularity and belong to latent clusters; each item has a
few likely successors in its cluster (first-order structure), some sessions switch cluster
mid-way (a recent-intent shift), and lengths are log-normal (>= 2). The sessions go through the
same protocol as real logs (``data.pipeline.build_dataset``), so filtering, temporal split,
numbering and expansion are exactly the benchmarks'.

Item text (so the semantic variants run offline): each cluster belongs to a theme (``category``,
e.g. ``Kitchen``) and draws three topic words from that theme's word list; an item's ``title`` is
a random adjective, two of its cluster's topic words (one of them, with probability 0.2, from a
random theme instead) and a model number, e.g. ``"Vintage kettle whisk 417"``. So items of one
cluster share words, clusters of one theme share a vocabulary, and text similarity tracks the
clusters without identifying them.

Users (for persona models): ``n_sessions // 8`` users, each preferring two clusters (drawn by
cluster popularity). A session started in cluster c belongs, with probability 0.8, to a random
user who prefers c (when there is one), else to any user. Users and text use their own random
streams, so the click log is the same as without them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from data.atomic import write_dataset
from data.dataset import SessionDataset
from data.errors import DataError
from data.locations import SYNTHETIC
from data.pipeline import Log, build_dataset

# Bump when the generator's output changes, so datasets generated on disk are rebuilt.
GENERATOR_VERSION = 2  # 2: item text (.item) and users (user_id column)
ITEM_TYPES = {"title": "token_seq", "category": "token"}
SESSIONS_PER_USER = 8
USER_CLUSTERS = 2  # preferred clusters per user
P_PREFERRED_USER = 0.8  # a session goes to a user preferring its cluster
P_OFF_TOPIC_WORD = 0.2  # a title's second topic word comes from a random theme
THEMES: dict[str, tuple[str, ...]] = {
    "Kitchen": ("kettle", "skillet", "ladle", "whisk", "teapot", "colander", "grater",
                "saucepan", "cleaver", "platter", "mug", "spatula"),
    "Garden": ("trowel", "planter", "hose", "rake", "seedling", "shears", "birdhouse",
               "trellis", "compost", "sprinkler", "wheelbarrow", "fern"),
    "Outdoors": ("tent", "backpack", "compass", "canteen", "hammock", "headlamp", "carabiner",
                 "tarp", "stove", "kayak", "paddle", "binoculars"),
    "Music": ("guitar", "violin", "drum", "piano", "ukulele", "trumpet", "flute", "cello",
              "harmonica", "metronome", "amplifier", "tambourine"),
    "Office": ("stapler", "notebook", "binder", "pen", "pencil", "envelope", "calendar",
               "folder", "marker", "clipboard", "desk", "paperclip"),
    "Toys": ("puzzle", "kite", "robot", "doll", "yoyo", "marbles", "blocks", "teddy", "train",
             "rocket", "dinosaur", "spinner"),
    "Sports": ("football", "racket", "helmet", "skates", "jersey", "dumbbell", "treadmill",
               "goggles", "whistle", "glove", "net", "skateboard"),
    "Beauty": ("lipstick", "perfume", "lotion", "shampoo", "mascara", "serum", "hairbrush",
               "mirror", "soap", "nailpolish", "balm", "cologne"),
    "Electronics": ("headphones", "charger", "speaker", "camera", "tablet", "keyboard", "mouse",
                    "monitor", "router", "drone", "cable", "smartwatch"),
    "Books": ("novel", "atlas", "cookbook", "poetry", "biography", "thriller", "fable",
              "almanac", "dictionary", "memoir", "comic", "anthology"),
    "Pets": ("leash", "collar", "aquarium", "catnip", "kennel", "birdcage", "chewtoy", "feeder",
             "litter", "harness", "scratcher", "terrarium"),
    "Home": ("pillow", "blanket", "curtain", "candle", "vase", "rug", "clock", "frame", "basket",
             "cushion", "quilt", "shelf"),
}
ADJECTIVES = ("Red", "Blue", "Green", "Vintage", "Compact", "Deluxe", "Classic", "Mini", "Large",
              "Bright", "Silver", "Golden", "Wooden", "Soft", "Modern", "Rustic", "Smart",
              "Portable", "Sturdy", "Light")


@dataclass(frozen=True)
class SyntheticConfig:
    """Generator knobs; ``n_items`` is the raw catalog (the support filter may drop a few)."""

    n_sessions: int
    n_items: int
    n_clusters: int
    mean_length: float = 6.0  # mean clicks per session before filtering
    length_sigma: float = 0.7  # log-normal spread of session lengths
    max_length: int = 100  # some sessions exceed the 50-item prefix window
    zipf_exponent: float = 0.8
    n_successors: int = 4
    p_successor: float = 0.6  # next click follows the current item's successor list
    p_cluster: float = 0.25  # else a popular item of the current cluster; else global popularity
    shift_prob: float = 0.3  # fraction of sessions whose intent (cluster) switches once
    days: float = 90.0  # time span covered by the log


PRESETS: dict[str, SyntheticConfig] = {
    "tiny": SyntheticConfig(n_sessions=400, n_items=150, n_clusters=8),
    "small": SyntheticConfig(n_sessions=8_000, n_items=1_500, n_clusters=40),
    # Flatter popularity so that, like tmall, ~37k items survive the support filter.
    "tmall": SyntheticConfig(
        n_sessions=93_000,
        n_items=42_000,
        n_clusters=1_500,
        mean_length=5.8,
        zipf_exponent=0.6,
        days=180.0,
    ),
}


def make_dataset(
    preset: str = "tiny",
    seed: int = 0,
    *,
    name: str | None = None,
    log: Log | None = None,
    **overrides: float,
) -> SessionDataset:
    """Generate a preset and process it in memory, with item text and users.

    Args:
        preset: a key of ``PRESETS``.
        seed: random seed; the same seed gives the same dataset.
        name: dataset name (default ``synthetic-<preset>``).
        log: receives the pipeline's stage lines.
        **overrides: ``SyntheticConfig`` fields to change, e.g. ``n_sessions=1000``.

    Returns:
        The dataset.
    """
    events, items = generate(_config(preset, overrides), seed)
    return build_dataset(
        events, name or f"{SYNTHETIC}-{preset}", log=log, items=items, item_types=ITEM_TYPES
    )


def write_atomic(
    out_dir: str | Path,
    name: str = SYNTHETIC,
    preset: str = "small",
    seed: int = 0,
    *,
    log: Log | None = None,
    **overrides: float,
) -> list[Path]:
    """Generate and write ``<out_dir>/<name>.{train,valid,test}.inter`` (with the user column)
    and ``<name>.item``.

    Args:
        out_dir: output folder.
        name: file name prefix.
        preset: a key of ``PRESETS``.
        seed: random seed.
        log: receives the pipeline's stage lines.
        **overrides: ``SyntheticConfig`` fields to change.

    Returns:
        The paths written.
    """
    dataset = make_dataset(preset, seed, name=name, log=log, **overrides)
    return write_dataset(dataset, out_dir)


def describe(preset: str, seed: int) -> dict:
    """Everything that determines a generated preset (stored next to generated files).

    Args:
        preset: a key of ``PRESETS``.
        seed: the generator's seed.

    Returns:
        A JSON-serialisable dict.
    """
    return {"generator_version": GENERATOR_VERSION, "seed": seed, **asdict(_config(preset, {}))}


def generate_events(config: SyntheticConfig, seed: int) -> pd.DataFrame:
    """Raw click log (session, item, time, user); see ``generate``.

    Args:
        config: generator knobs.
        seed: random seed.

    Returns:
        The event frame.
    """
    return generate(config, seed)[0]


def generate(config: SyntheticConfig, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Raw click log (session, item, time, user): one Markov walk per session, vectorised per
    step; and the item metadata (``title``, ``category``) indexed by raw item id.

    Args:
        config: generator knobs.
        seed: random seed.

    Returns:
        The event frame and the item metadata.
    """
    rng = np.random.default_rng(seed)
    catalog = _Catalog(config, rng)
    n = config.n_sessions
    mu = np.log(max(config.mean_length - 1.5, 0.5)) - config.length_sigma**2 / 2
    lengths = 2 + np.floor(rng.lognormal(mu, config.length_sigma, n)).astype(np.int64)
    lengths = np.minimum(lengths, config.max_length)
    cluster = catalog.sample_clusters(n)
    shifts = rng.random(n) < config.shift_prob
    shift_at = np.where(shifts, rng.integers(1, lengths), -1)  # position of the new intent
    shift_to = catalog.sample_clusters(n)
    users = _session_users(catalog, cluster, np.random.default_rng([seed, 1]))

    walks = np.zeros((n, int(lengths.max())), dtype=np.int64)
    walks[:, 0] = catalog.sample_in_cluster(cluster)
    for step in range(1, walks.shape[1]):
        rows = np.flatnonzero(lengths > step)
        jump = shift_at[rows] == step
        cluster[rows[jump]] = shift_to[rows[jump]]
        walks[rows, step] = catalog.next_items(walks[rows, step - 1], cluster[rows], jump)

    starts = np.sort(rng.uniform(0, config.days * 86_400, n))
    mask = np.arange(walks.shape[1]) < lengths[:, None]
    gaps = np.where(mask, rng.exponential(60.0, walks.shape), 0.0)
    times = starts[:, None] + np.cumsum(gaps, axis=1)
    events = pd.DataFrame(
        {
            "session": np.repeat(np.arange(n), lengths),
            "item": walks[mask],
            "time": times[mask],
            "user": np.repeat(users, lengths),
        }
    )
    return events, _item_text(catalog, np.random.default_rng([seed, 2]))


def _session_users(
    catalog: _Catalog, clusters: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """A user per session, most often one who prefers the session's (first) cluster."""
    n_users = max(2, len(clusters) // SESSIONS_PER_USER)
    p = catalog.cluster_mass / catalog.cluster_mass.sum()
    preferred = rng.choice(len(p), size=n_users * USER_CLUSTERS, p=p)
    fans = np.repeat(np.arange(n_users), USER_CLUSTERS)[np.argsort(preferred, kind="stable")]
    count = np.bincount(preferred, minlength=len(p))
    first = np.cumsum(count) - count
    users = rng.integers(0, n_users, size=len(clusters))
    pick = (rng.random(len(clusters)) < P_PREFERRED_USER) & (count[clusters] > 0)
    offset = (rng.random(len(clusters)) * count[clusters]).astype(np.int64)
    users[pick] = fans[(first[clusters] + offset)[pick]]
    return users


def _item_text(catalog: _Catalog, rng: np.random.Generator) -> pd.DataFrame:
    """Title and category of every raw item (see the module docstring)."""
    themes = list(THEMES)
    n_clusters, n_items = catalog.config.n_clusters, len(catalog.cluster_of)
    theme_of_cluster = rng.permutation(n_clusters) % len(themes)
    words = np.array([THEMES[theme] for theme in themes], dtype=object)  # [themes, 12]
    topic = np.argsort(rng.random((n_clusters, words.shape[1])), axis=1)[:, :3]
    cluster = catalog.cluster_of
    theme = theme_of_cluster[cluster]
    slots = np.argsort(rng.random((n_items, 3)), axis=1)[:, :2]  # two of the three topic words
    first = words[theme, topic[cluster, slots[:, 0]]]
    second = words[theme, topic[cluster, slots[:, 1]]]
    off = rng.random(n_items) < P_OFF_TOPIC_WORD
    second[off] = words[rng.integers(0, len(themes), off.sum()),
                        rng.integers(0, words.shape[1], off.sum())]
    adjective = np.array(ADJECTIVES, dtype=object)[rng.integers(0, len(ADJECTIVES), n_items)]
    number = rng.integers(100, 1000, n_items).astype(str).astype(object)
    title = adjective + " " + first + " " + second + " " + number
    category = np.array(themes, dtype=object)[theme]
    return pd.DataFrame({"title": title, "category": category}, index=np.arange(n_items))


class _Catalog:
    """Item popularity, cluster membership and successor lists, with vectorised samplers."""

    def __init__(self, config: SyntheticConfig, rng: np.random.Generator) -> None:
        self.config = config
        self.rng = rng
        n_items = config.n_items
        popularity = 1.0 / np.arange(1, n_items + 1) ** config.zipf_exponent
        self.popularity = popularity[rng.permutation(n_items)]
        self.cluster_of = rng.permutation(n_items) % config.n_clusters
        # Items grouped by cluster, so a cluster is a contiguous range of the cumulative mass.
        self.by_cluster = np.argsort(self.cluster_of, kind="stable")
        self.cumulative = np.cumsum(self.popularity[self.by_cluster])
        self.cluster_mass = np.bincount(
            self.cluster_of, weights=self.popularity, minlength=config.n_clusters
        )
        self.cluster_offset = np.cumsum(self.cluster_mass) - self.cluster_mass
        # Successors are drawn uniformly inside the cluster, so tail items get traffic too.
        sizes = np.bincount(self.cluster_of, minlength=config.n_clusters)
        first = np.cumsum(sizes) - sizes
        members = np.repeat(self.cluster_of, config.n_successors)
        picks = first[members] + (rng.random(len(members)) * sizes[members]).astype(np.int64)
        self.successors = self.by_cluster[picks].reshape(n_items, config.n_successors)
        weights = 0.5 ** np.arange(config.n_successors)
        self.successor_weights = weights / weights.sum()

    def sample_clusters(self, size: int) -> np.ndarray:
        p = self.cluster_mass / self.cluster_mass.sum()
        return self.rng.choice(self.config.n_clusters, size=size, p=p)

    def sample_in_cluster(self, clusters: np.ndarray) -> np.ndarray:
        mass = (
            self.cluster_offset[clusters]
            + self.rng.random(len(clusters)) * self.cluster_mass[clusters]
        )
        return self._item_at(mass)

    def sample_popular(self, size: int) -> np.ndarray:
        return self._item_at(self.rng.random(size) * self.cumulative[-1])

    def next_items(
        self, previous: np.ndarray, clusters: np.ndarray, jump: np.ndarray
    ) -> np.ndarray:
        """Successor of ``previous`` w.p. p_successor, else cluster / global popularity; sessions
        whose intent just switched (``jump``) restart from a popular item of the new cluster."""
        cfg = self.config
        slot = self.rng.choice(cfg.n_successors, size=len(previous), p=self.successor_weights)
        u = self.rng.random(len(previous))
        result = self.successors[previous, slot]
        in_cluster = jump | ((u >= cfg.p_successor) & (u < cfg.p_successor + cfg.p_cluster))
        result[in_cluster] = self.sample_in_cluster(clusters[in_cluster])
        anywhere = ~jump & (u >= cfg.p_successor + cfg.p_cluster)
        result[anywhere] = self.sample_popular(int(anywhere.sum()))
        return result

    def _item_at(self, mass: np.ndarray) -> np.ndarray:
        index = np.searchsorted(self.cumulative, mass, side="right")
        return self.by_cluster[np.minimum(index, len(self.by_cluster) - 1)]


def _config(preset: str, overrides: dict) -> SyntheticConfig:
    if preset not in PRESETS:
        raise DataError(f"unknown synthetic preset {preset!r}; expected one of {sorted(PRESETS)}")
    unknown = set(overrides) - set(asdict(PRESETS[preset]))
    if unknown:
        raise DataError(f"unknown synthetic parameter(s) {sorted(unknown)}")
    return replace(PRESETS[preset], **overrides)
