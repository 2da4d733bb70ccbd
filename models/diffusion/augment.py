"""``augment_training``: the cached three-stage pipeline of the ``diffaug`` variant (base item
vectors -> conditional diffusion model -> tail-conditioned counterfactual rows).

Cache. Each stage's result is kept in the project's cache store (``data.cache``, section
``diffaug``: ``$CORE_CACHE_DIR/diffaug``, default ``~/.cache/core-hpo/diffaug``), keyed by a
SHA-256 of its upstream settings and of the training split's content (prefixes, lengths, targets
and the catalog size, never a name or a path):

- base: the data digest and the base model's whole resolved config (variant, epochs, seed, ...);
- diffusion: the base key and ``DenoiserSettings`` and the seed;
- sampling: the diffusion key, the guidance scale, the denoising steps per sample, the number of
  rows wanted (``aug_ratio``) and the seed, and for anchored sampling (``anchor`` "observed")
  the anchor mode and t0 (left out of the key when sampling from noise, so that the caches of
  noise sampling made before anchored sampling existed stay valid).

So trials of a search that differ only downstream (e.g. the guidance scale, or any setting of the
recommender trained on the augmented rows) reuse the upstream stages, and a stage whose result is
cached is not even loaded when the next one's result is cached too. Files are written to a
temporary file and renamed: concurrent first uses may both compute a stage, and each rename
installs a complete file. A file whose stored key differs, or
that cannot be read, is recomputed. The stages run under their own RNG
(``torch.random.fork_rng``), so the recommender trained afterwards draws the same random numbers
whether the stages were computed or read from the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from data.cache import CacheStore
from data.dataset import Split
from models.diffusion import stages
from models.diffusion.denoiser import Denoiser
from models.diffusion.stages import ANCHORS, GROUP_NAMES, DenoiserSettings

# Bumped when a stage's computation changes (so its cached results, and those downstream, are
# stale). diffusion 2: popularity groups over the targeted items, not the catalog.
STAGE_VERSIONS = {"base": 1, "diffusion": 2, "sampling": 1}
STAGES = ("base", "diffusion", "sampling")
CACHE_SECTION = "diffaug"  # the cache store's folder (data.cache)
_TITLES = {"base": "base item vectors", "diffusion": "diffusion model",
           "sampling": "tail-conditioned samples"}
# Config keys added after the base stage's cache keys were first made, with the value that
# computes what the configs without them computed: left out of the base key at that value, so
# the caches made before they existed stay valid (a base config is its variant's defaults, so
# they always hold it today; the base stage's own loop uses neither grad_clip nor grad_accum).
LATER_KEYS = {"grad_clip": 0.0, "grad_accum": 1, "ema_target": 0.0, "aux_length_weight": 0.0,
              "aux_order_weight": 0.0}
COUNTS = ("generated", "invalid", "off_group", "duplicate", "kept", "added")
logger = logging.getLogger(__name__)

Log = Callable[[str], None]


@dataclass(frozen=True)
class AugmentSettings:
    """Everything the augmentation depends on besides the training split and the base config.

    Args:
        denoiser: the diffusion stage's settings.
        guidance_scale: classifier-free guidance's w when sampling.
        aug_ratio: rows wanted, as a share of the training rows.
        sample_steps: denoising steps per sample, evenly spaced over the chain's
            ``denoiser.steps`` (``schedule.Schedule.respaced``; at least that many: the whole
            chain).
        seed: seeds the diffusion and sampling stages (the base stage uses its config's seed).
        anchor: where a sample starts (``stages.ANCHORS``): "noise" (pure noise: synthetic tail
            rows) or "observed" (a training row whose target is not in the tail, noised to
            ``anchor_t0`` of the chain and denoised under tail guidance:
            ``stages.counterfactual``).
        anchor_t0: the share of the chain an anchor is noised to, in (0, 1] ("observed" only).
    """

    denoiser: DenoiserSettings = field(default_factory=DenoiserSettings)
    guidance_scale: float = 3.0
    aug_ratio: float = 0.2
    sample_steps: int = 10
    seed: int = 2020
    anchor: str = "noise"
    anchor_t0: float = 0.3

    def __post_init__(self) -> None:
        if self.anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {ANCHORS}, got {self.anchor!r}")
        if not 0.0 < self.anchor_t0 <= 1.0:
            raise ValueError(f"anchor_t0 must be in (0, 1], got {self.anchor_t0}")

    @property
    def steps_sampled(self) -> int:
        """The denoising steps each sample takes: ``sample_steps``, at most the chain's."""
        return min(self.sample_steps, self.denoiser.steps)


@dataclass(frozen=True)
class Augmentation:
    """The generated rows and how they came about.

    Attributes:
        rows: the rows to add (a right-padded split, prefix width of the training split).
        counts: ``COUNTS``: rows generated, dropped as invalid / off-group / duplicate, kept,
            and added (kept, capped at aug_ratio x training rows).
        seconds: time spent on each stage of ``STAGES`` in this call (reading a cache included).
        status: per stage, "computed", "reused" (read from the cache) or "skipped" (not needed:
            a later stage's result was cached).
        keys: each stage's cache key.
    """

    rows: Split
    counts: dict[str, int]
    seconds: dict[str, float]
    status: dict[str, str]
    keys: dict[str, str]


def data_digest(train: Split, n_items: int) -> str:
    """SHA-256 of the training split's content and the catalog size.

    Args:
        train: the training split.
        n_items: catalog rows.

    Returns:
        A hex digest.
    """
    digest = hashlib.sha256(f"n_items={n_items}".encode())
    for array in (train.prefixes, train.lengths, train.targets):
        array = np.ascontiguousarray(array)
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def stage_keys(
    train: Split, n_items: int, base_config: dict, settings: AugmentSettings
) -> dict[str, str]:
    """The cache key of each stage: a SHA-256 of its upstream key and its own settings.

    Args:
        train: the training split.
        n_items: catalog rows.
        base_config: the base model's resolved config.
        settings: the augmentation's settings.

    Returns:
        ``{stage: hex digest}`` for every stage of ``STAGES``.
    """
    def key(stage: str, **parts) -> str:
        text = json.dumps({"stage": stage, "version": STAGE_VERSIONS[stage], **parts},
                          sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    n_wanted = wanted_rows(len(train), settings.aug_ratio)
    config = {name: value for name, value in base_config.items()
              if name not in LATER_KEYS or value != LATER_KEYS[name]}
    base = key(stage="base", data=data_digest(train, n_items), config=config)
    diffusion = key(stage="diffusion", base=base, settings=asdict(settings.denoiser),
                    seed=settings.seed)
    anchored = ({"anchor": settings.anchor, "anchor_t0": settings.anchor_t0}
                if settings.anchor != "noise" else {})
    sampling = key(stage="sampling", diffusion=diffusion, guidance_scale=settings.guidance_scale,
                   sample_steps=settings.steps_sampled,
                   rows=n_wanted, seed=settings.seed, **anchored)
    return {"base": base, "diffusion": diffusion, "sampling": sampling}


def wanted_rows(n_train: int, aug_ratio: float) -> int:
    """How many generated rows a run adds at most.

    Args:
        n_train: training rows.
        aug_ratio: the share of them to add.

    Returns:
        round(aug_ratio x n_train), at least 1.
    """
    return max(1, round(aug_ratio * n_train))


def augment_training(
    train: Split,
    n_items: int,
    base_config: dict,
    settings: AugmentSettings,
    build: Callable[[dict, int], torch.nn.Module],
    *,
    name: str = "dataset",
    device: torch.device | str | None = None,
    log: Log | None = None,
    use_cache: bool = True,
    cache_dir: Path | None = None,
) -> Augmentation:
    """Counterfactual training rows for the tail items: each stage from the cache when its key
    was seen, else computed (then cached).

    Args:
        train: the training split: the only data any stage sees.
        n_items: catalog rows (row 0 is padding).
        base_config: the base model's resolved config (its default configuration, with the
            augmentation's epochs and seed).
        settings: the augmentation's settings.
        build: builds an untrained model from (config, n_items)
            (``models.diffusion.spec.build_base``).
        name: the dataset's name, for the cache files' names only (not part of any key).
        device: where the stages train and sample (default CPU).
        log: receives the stages' progress lines (default: this module's logger).
        use_cache: read and write the cache.
        cache_dir: the cache folder (default: the cache store's ``CACHE_SECTION``).

    Returns:
        The generated rows, their counts, each stage's time and status, and the keys.
    """
    say = log or logger.info
    device = torch.device(device or "cpu")
    store = CacheStore(CACHE_SECTION, folder=cache_dir) if use_cache else None
    keys = stage_keys(train, n_items, base_config, settings)
    names = {
        "base": f"{name}.base.{keys['base'][:24]}.npz",
        "diffusion": f"{name}.diffusion.{keys['diffusion'][:24]}.pt",
        "sampling": f"{name}.sampling.{keys['sampling'][:24]}.npz",
    }
    cache = _StageCache(store, names, keys, say)
    seconds, status = cache.seconds, cache.status
    n_wanted = wanted_rows(len(train), settings.aug_ratio)
    gpus = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus):
        start = time.perf_counter()
        found = cache.samples()
        if found is not None:
            windows, counts = found
            cache.reused("sampling", start)
            for stage in ("base", "diffusion"):
                say(f"diffaug stage {STAGES.index(stage) + 1}/3 ({stage}): not needed, the "
                    "samples are cached")
        else:
            windows, counts = _compute(train, n_items, base_config, settings, build, device, say,
                                       cache, n_wanted)
    rows = stages.windows_to_split(windows, train.max_len)
    counts = {**counts, "added": len(rows)}
    say(f"diffaug: generated {counts['generated']:,} rows, kept {counts['kept']:,} (dropped: "
        f"invalid {counts['invalid']:,}, off-group {counts['off_group']:,}, duplicate "
        f"{counts['duplicate']:,}), added {counts['added']:,} (wanted {n_wanted:,} = "
        f"{settings.aug_ratio:g} x {len(train):,} training rows); stage times "
        + ", ".join(f"{s} {seconds[s]:.1f} s ({status[s]})" for s in STAGES))
    return Augmentation(rows, counts, seconds, status, keys)


def _compute(train, n_items, base_config, settings, build, device, say, cache, n_wanted):
    """Stages 1 and 2 (each from the cache when possible) and stage 3; the cache records each
    stage's time and status."""
    # Stage 1: base item vectors.
    start = time.perf_counter()
    vectors = cache.base_vectors()
    if vectors is not None:
        cache.reused("base", start)
    else:
        say(f"diffaug stage 1/3 (base item vectors): training {base_config['model']} for "
            f"{base_config['epochs']} epochs on {len(train):,} training rows")
        vectors = stages.train_base_vectors(train, n_items, base_config, build, device=device,
                                                 log=say)
        took = cache.computed("base", start)
        where = cache.store("base", vectors=vectors)
        say(f"diffaug stage 1/3 (base item vectors): computed in {took:.1f} s; {where}")
    table = stages.scaled_vectors(vectors)
    windows = stages.row_windows(train, settings.denoiser.window)
    groups = stages.popularity_groups(train.targets, n_items, settings.denoiser.tail_quantile)

    # Stage 2: the conditional diffusion model.
    start = time.perf_counter()
    model = cache.denoiser(table.shape[1], settings.denoiser)
    if model is not None:
        cache.reused("diffusion", start)
    else:
        d = settings.denoiser
        sizes = np.bincount(groups[train.targets], minlength=len(GROUP_NAMES))
        say(f"diffaug stage 2/3 (diffusion model): {d.schedule} schedule, {d.steps} steps, "
            f"window {d.window}, {d.epochs} epochs on {len(windows):,} rows ("
            + ", ".join(f"{g} {n:,}" for g, n in zip(GROUP_NAMES, sizes, strict=True))
            + f" by target group), condition dropout {d.cond_dropout:g}")
        model, losses = stages.train_denoiser(windows, groups[train.targets], table, d,
                                              seed=settings.seed, device=device, log=say)
        took = cache.computed("diffusion", start)
        state = {name: value.cpu() for name, value in model.state_dict().items()}
        where = cache.store("diffusion", state=state, losses=losses)
        say(f"diffaug stage 2/3 (diffusion model): computed in {took:.1f} s, "
            f"final loss {losses[-1]:.4f}; {where}")

    # Stage 3: tail-conditioned samples, mapped to items and filtered.
    start = time.perf_counter()
    anchors = None
    if settings.anchor == "observed":
        anchors = stages.anchor_rows(windows, groups, train.targets)
        origin = (f"anchored to {len(anchors):,} observed training rows with a non-tail target "
                  f"(noised to t0 = {settings.anchor_t0:g} of the chain)")
    else:
        origin = "from pure noise"
    say(f"diffaug stage 3/3 (tail-conditioned samples): {n_wanted:,} rows wanted, {origin}, "
        f"guidance {settings.guidance_scale:g}, {settings.steps_sampled} "
        f"denoising steps per row (of the chain's {settings.denoiser.steps})")
    candidates = np.unique(np.concatenate([train.prefixes[train.prefixes > 0],
                                           np.asarray(train.targets)]))
    rows, counts = stages.sample_rows(
        model.to(device), settings.denoiser, table, candidates=candidates, groups=groups,
        real_windows=windows, n_wanted=n_wanted, guidance_scale=settings.guidance_scale,
        seed=settings.seed, device=device, log=say, sample_steps=settings.steps_sampled,
        anchors=anchors, anchor_t0=settings.anchor_t0)
    took = cache.computed("sampling", start)
    where = cache.store("sampling", windows=rows, count_names=np.asarray(list(counts)),
                        count_values=np.asarray(list(counts.values())))
    say(f"diffaug stage 3/3 (tail-conditioned samples, guidance {settings.guidance_scale:g}): "
        f"computed in {took:.1f} s; {where}")
    return rows, counts


class _StageCache:
    """The stages' entries in the cache store (``store`` None: the cache is off), and each
    stage's status and seconds in this call."""

    def __init__(self, store: CacheStore | None, names: dict[str, str], keys: dict[str, str],
                 say: Log):
        self._store, self._names, self._keys, self._say = store, names, keys, say
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.status = dict.fromkeys(STAGES, "skipped")

    def path(self, stage: str) -> Path:
        return self._store.path(self._names[stage])

    def reused(self, stage: str, start: float) -> None:
        """Records, and says, that ``stage``'s result was read from the cache since ``start``."""
        self.status[stage] = "reused"
        self.seconds[stage] = time.perf_counter() - start
        self._say(f"diffaug stage {STAGES.index(stage) + 1}/3 ({_TITLES[stage]}): reused cache "
                  f"{self.path(stage)} ({self.seconds[stage]:.2f} s)")

    def computed(self, stage: str, start: float) -> float:
        """Records that ``stage`` was computed since ``start``; returns its seconds."""
        self.status[stage] = "computed"
        self.seconds[stage] = time.perf_counter() - start
        return self.seconds[stage]

    def store(self, stage: str, **values) -> str:
        """Writes a stage's result (arrays, or the denoiser's tensors); says where it went."""
        if self._store is None:
            return "not cached (cache off)"
        name, key = self._names[stage], self._keys[stage]
        if name.endswith(".pt"):
            written = self._store.write_tensors(name, key, values)
        else:
            written = self._store.write_arrays(name, key, values)
        if written is None:
            return f"could not write {self.path(stage)}; set CORE_CACHE_DIR to a writable folder"
        return f"cached in {written}"

    def _arrays(self, stage: str) -> dict[str, np.ndarray] | None:
        if self._store is None:
            return None
        return self._store.read_arrays(self._names[stage], self._keys[stage])

    def base_vectors(self) -> np.ndarray | None:
        """Stage 1's item vectors, when cached."""
        return (self._arrays("base") or {}).get("vectors")

    def samples(self) -> tuple[np.ndarray, dict[str, int]] | None:
        """Stage 3's rows and counts, when cached."""
        stored = self._arrays("sampling")
        if stored is None:
            return None
        try:
            counts = dict(zip(stored["count_names"].tolist(),
                              (int(v) for v in stored["count_values"]), strict=True))
            return stored["windows"].astype(np.int64), counts
        except (KeyError, ValueError):
            return None  # another layout: recompute

    def denoiser(self, dim: int, settings: DenoiserSettings) -> Denoiser | None:
        """Stage 2's model, when cached."""
        if self._store is None:
            return None
        stored = self._store.read_tensors(self._names["diffusion"], self._keys["diffusion"])
        if stored is None:
            return None
        model = Denoiser(dim, settings.window, len(GROUP_NAMES), settings.hidden)
        try:
            model.load_state_dict(stored["state"])
        except (KeyError, RuntimeError, ValueError, AttributeError, TypeError):
            return None
        return model.eval()
