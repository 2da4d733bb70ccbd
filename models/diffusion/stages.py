"""The three computations of the diffusion augmentation, without any cache (``augment`` caches
them). Each takes the training split (``data.dataset.Split``) and the catalog size, never a
dataset: the validation and test splits cannot reach them.

1. ``train_base_vectors``: a base CORE model trained with its default configuration on the
   training rows for a few epochs (no validation, no checkpoint selection: that would read the
   validation split); its item table is the item representation.
2. ``train_denoiser``: a conditional DDPM (``schedule``, ``denoiser``) over training rows encoded
   as item vectors (``row_windows``, ``encode_rows``), conditioned on the target's popularity
   group (``popularity_groups``), the condition dropped with probability ``cond_dropout`` so the
   same network is also the unconditional model (classifier-free guidance).
3. ``sample_rows``: guided ancestral sampling conditioned on the tail group, from pure noise
   (``generate``: synthetic tail rows) or from observed training rows partially noised
   (``counterfactual``, SDEdit: counterfactual versions of real sessions); each generated
   vector is mapped to its nearest training item by cosine, or to an empty slot when it is short
   (``nearest_items``); empty prefix slots are dropped (``compact``), and rows without a target
   or a prefix item (invalid), with a target outside the tail (off-group) or that repeat a
   training row or an earlier sample (duplicate) are dropped (``filter_rows``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from data.arrays import keep_last
from data.dataset import Split
from models.batches import Rows
from models.diffusion.denoiser import Denoiser
from models.diffusion.schedule import Schedule
from models.encoders import PAD
from models.item_groups import HEAD_FRACTION, head_item_mask, targeted_by_popularity

HEAD, MID, TAIL = 0, 1, 2
GROUP_NAMES = ("head", "mid", "tail")
# Where a sample's chain starts: pure noise, or an observed training row (``counterfactual``).
ANCHORS = ("noise", "observed")
# The head (HEAD_FRACTION, head_item_mask) is models.item_groups': the report's head too.
# A generated slot whose vector is shorter than this share of a real item's norm (sqrt(d)) is an
# empty prefix slot: real items sit on the sphere of radius sqrt(d), empty slots at 0.
PAD_NORM_SHARE = 0.5
DENOISER_BATCH = 512
DENOISER_LR = 1e-3
SAMPLE_BATCH = 1024
# Sampling stops after this many times the wanted rows were generated, kept or not.
MAX_OVERSAMPLE = 4

Log = Callable[[str], None]


@dataclass(frozen=True)
class DenoiserSettings:
    """What the diffusion stage depends on besides its inputs (part of its cache key)."""

    steps: int = 50  # T
    schedule: str = "linear"  # schedule.BETA_SCHEDULES
    tail_quantile: float = 0.5  # the least popular share of the catalog that is the tail
    window: int = 5  # prefix slots per generated row
    epochs: int = 10
    hidden: int = 128
    cond_dropout: float = 0.1


# --------------------------------------------------------------------------- stage 1


def train_base_vectors(
    train: Split,
    n_items: int,
    base_config: dict,
    build: Callable[[dict, int], torch.nn.Module],
    *,
    device: torch.device,
    log: Log = print,
) -> np.ndarray:
    """Item representations of a base CORE model trained on the training rows only.

    Adam with the config's lr and weight decay, batches of its batch_size, ``base_config["epochs"]``
    epochs, seeded by its seed; the final weights' item table is returned (nothing is validated).

    Args:
        train: the training split.
        n_items: catalog rows (row 0 is padding).
        base_config: the base variant's resolved config (``resolve_config``).
        build: builds an untrained model from (config, n_items)
            (``models.diffusion.spec.build_base``).
        device: where to train.
        log: receives one line per epoch.

    Returns:
        float32 [n_items, d], the base model's ``item_table()``.
    """
    torch.manual_seed(base_config["seed"])
    rng = np.random.default_rng(base_config["seed"])
    model = build(base_config, n_items).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=base_config["lr"],
                                 weight_decay=base_config["weight_decay"])
    rows = Rows(train, base_config["max_seq_length"], device)
    size = base_config["batch_size"]
    model.train()
    for epoch in range(base_config["epochs"]):
        start, total = time.perf_counter(), 0.0
        order = torch.from_numpy(rng.permutation(len(rows))).to(device)
        for begin in range(0, len(order), size):
            index = order[begin : begin + size]
            loss = model(*rows.batch(index))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            model.update_target()  # an EMA target table's step (a no-op without one)
            total += loss.item() * len(index)
        log(f"  base epoch {epoch + 1}/{base_config['epochs']}: loss "
            f"{total / len(rows):.4f} ({time.perf_counter() - start:.1f} s)")
    model.eval()
    with torch.no_grad():
        return model.item_table().detach().float().cpu().numpy()


# --------------------------------------------------------------------------- stage 2


def popularity_groups(targets: np.ndarray, n_items: int, tail_quantile: float) -> np.ndarray:
    """The popularity group of every item id by its training-target count.

    The items that occur as a training target, ranked by count, most popular first (ties to the
    lower id): the head is ``models.item_groups.head_item_mask`` (the first
    max(1, round(HEAD_FRACTION x their number)), the report's head too), the last
    round(tail_quantile x their number) are ``TAIL``, the rest ``MID``; items that never occur
    as a training target are ``TAIL`` too (the report calls them cold). The quantiles are over
    the targeted items, not the catalog, so that every group has training rows to condition on
    (see ``models.item_groups``).

    Args:
        targets: the training rows' target ids.
        n_items: catalog rows (row 0 is padding).
        tail_quantile: the tail's share of the targeted items, in (0, 1 - HEAD_FRACTION).

    Returns:
        int64 [n_items]: 0 head, 1 mid, 2 tail; -1 for padding.
    """
    if not 0.0 < tail_quantile < 1.0 - HEAD_FRACTION:
        raise ValueError(
            f"tail_quantile must be in (0, {1 - HEAD_FRACTION:g}), got {tail_quantile}"
        )
    counts = np.bincount(np.asarray(targets), minlength=n_items)[:n_items]
    head = head_item_mask(counts)
    targeted = targeted_by_popularity(counts)
    n, n_head = len(targeted), int(head.sum())
    n_tail = min(max(1, round(tail_quantile * n)), n - n_head) if n else 0
    groups = np.full(n_items, TAIL, dtype=np.int64)
    groups[PAD] = -1
    groups[head] = HEAD
    groups[targeted[n_head : n - n_tail]] = MID
    return groups


def row_windows(train: Split, window: int) -> np.ndarray:
    """Each training row as ``window`` prefix slots (its last items, left-padded with 0) and the
    target.

    Args:
        train: the training split.
        window: prefix slots.

    Returns:
        int64 [rows, window + 1].
    """
    lengths = np.asarray(train.lengths, dtype=np.int64)
    columns = lengths[:, None] - window + np.arange(window)
    inside = columns >= 0
    values = np.take_along_axis(np.asarray(train.prefixes), np.clip(columns, 0, None), axis=1)
    prefix = np.where(inside, values, PAD).astype(np.int64)
    return np.concatenate([prefix, np.asarray(train.targets, dtype=np.int64)[:, None]], axis=1)


def scaled_vectors(vectors: np.ndarray) -> Tensor:
    """Item vectors as the diffusion's data: unit rows times sqrt(d) (about unit variance per
    coordinate, the scale DDPM's schedules assume); row 0 (an empty slot) is all zeros.

    Args:
        vectors: item representations [n_items, d].

    Returns:
        float32 [n_items, d].
    """
    table = F.normalize(torch.as_tensor(vectors, dtype=torch.float32), dim=-1)
    table = table * math.sqrt(table.shape[1])
    table[PAD] = 0.0
    return table


def train_denoiser(
    windows: np.ndarray,
    classes: np.ndarray,
    table: Tensor,
    settings: DenoiserSettings,
    *,
    seed: int,
    device: torch.device,
    log: Log = print,
) -> tuple[Denoiser, list[float]]:
    """Trains eps_theta on the rows with DDPM's simple loss ||eps - eps_theta(x_t, t, c)||^2,
    t uniform, the condition replaced by the null class with probability ``cond_dropout``.

    Args:
        windows: the training rows as item ids [rows, window + 1] (``row_windows``).
        classes: each row's condition (its target's popularity group) [rows].
        table: the data's item vectors (``scaled_vectors``).
        settings: the stage's settings.
        seed: seeds the initialisation, batches, timesteps and noise.
        device: where to train.
        log: receives one line per epoch.

    Returns:
        The trained network (eval mode) and the mean loss of each epoch.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    schedule = Schedule.create(settings.schedule, settings.steps).to(device)
    model = Denoiser(table.shape[1], settings.window, len(GROUP_NAMES), settings.hidden).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=DENOISER_LR)
    table = table.to(device)
    ids = torch.from_numpy(windows)
    labels = torch.from_numpy(np.asarray(classes, dtype=np.int64))
    losses = []
    model.train()
    for epoch in range(settings.epochs):
        start, total = time.perf_counter(), 0.0
        order = torch.from_numpy(rng.permutation(len(ids)))
        for begin in range(0, len(order), DENOISER_BATCH):
            rows = order[begin : begin + DENOISER_BATCH]
            x0 = table[ids[rows].to(device)]
            c = labels[rows].to(device)
            dropped = torch.rand(len(rows), device=device) < settings.cond_dropout
            c = torch.where(dropped, torch.full_like(c, model.null_class), c)
            t = torch.randint(0, settings.steps, (len(rows),), device=device)
            noise = torch.randn_like(x0)
            loss = F.mse_loss(model(schedule.q_sample(x0, t, noise), t, c), noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
        losses.append(total / len(ids))
        log(f"  diffusion epoch {epoch + 1}/{settings.epochs}: loss {losses[-1]:.4f} "
            f"({time.perf_counter() - start:.1f} s)")
    model.eval()
    return model, losses


# --------------------------------------------------------------------------- stage 3


def nearest_items(x: Tensor, table: Tensor, candidates: Tensor) -> Tensor:
    """Each generated slot vector as an item id: 0 (empty slot) when its norm is under
    ``PAD_NORM_SHARE`` x sqrt(d), else the candidate item of highest cosine similarity.

    Args:
        x: generated vectors [..., d].
        table: the data's item vectors (``scaled_vectors``), [n_items, d].
        candidates: the item ids a slot may map to (ids >= 1), [n_candidates].

    Returns:
        int64 ids shaped like ``x`` without its last dimension.
    """
    flat = x.reshape(-1, x.shape[-1])
    similarity = F.normalize(flat, dim=-1) @ F.normalize(table[candidates], dim=-1).t()
    ids = candidates[similarity.argmax(dim=1)]
    empty = flat.norm(dim=-1) < PAD_NORM_SHARE * math.sqrt(x.shape[-1])
    return torch.where(empty, torch.zeros_like(ids), ids).view(x.shape[:-1])


def compact(windows: np.ndarray) -> np.ndarray:
    """Generated rows with their prefix items moved to the end of the prefix slots, in order
    (the left-padded form ``row_windows`` makes): an empty slot between two items is read as no
    item there, not as a malformed row.

    Args:
        windows: item ids [rows, window + 1], 0 = empty slot.

    Returns:
        The rows, same shape, each prefix's empty slots first.
    """
    prefix = windows[:, :-1]
    order = np.argsort(prefix != PAD, axis=1, kind="stable")  # empty slots first, items in order
    return np.concatenate([np.take_along_axis(prefix, order, axis=1), windows[:, -1:]], axis=1)


def valid_rows(windows: np.ndarray) -> np.ndarray:
    """Which generated rows make a training row: a target and at least one prefix item.

    Args:
        windows: item ids [rows, window + 1], 0 = empty slot.

    Returns:
        bool [rows].
    """
    return (windows[:, -1] != PAD) & (windows[:, :-1] != PAD).any(axis=1)


def filter_rows(
    windows: np.ndarray, groups: np.ndarray, group: int, known: set[bytes]
) -> tuple[np.ndarray, dict[str, int]]:
    """The generated rows worth adding: valid (``valid_rows``), with a target in ``group``, and
    new (not a training row's window nor an earlier generated row, compared in ``compact``
    form); ``known`` is updated with the rows kept.

    Args:
        windows: generated rows as item ids [rows, window + 1] (int64).
        groups: popularity group per item id (``popularity_groups``).
        group: the group the rows were conditioned on.
        known: byte strings of the windows seen so far (training rows and kept rows).

    Returns:
        (the kept rows, compacted, counts ``invalid`` / ``off_group`` / ``duplicate`` /
        ``kept``).
    """
    windows = compact(windows)
    valid = valid_rows(windows)
    in_group = valid & (groups[windows[:, -1]] == group)
    keep = np.zeros(len(windows), dtype=bool)
    duplicate = 0
    for i in np.flatnonzero(in_group):
        key = windows[i].tobytes()
        if key in known:
            duplicate += 1
            continue
        known.add(key)
        keep[i] = True
    counts = {
        "invalid": int((~valid).sum()),
        "off_group": int((valid & ~in_group).sum()),
        "duplicate": duplicate,
        "kept": int(keep.sum()),
    }
    return windows[keep], counts


@torch.no_grad()
def generate(
    model: Denoiser, schedule: Schedule, n: int, *, group: int, guidance_scale: float,
    device: torch.device,
) -> Tensor:
    """n rows of vectors by guided ancestral sampling from x_T ~ N(0, I), conditioned on
    ``group``.

    Args:
        model: the trained network.
        schedule: its schedule, or a respaced one (``Schedule.respaced``).
        n: rows to generate.
        group: the condition class.
        guidance_scale: w of classifier-free guidance.
        device: where to sample.

    Returns:
        float32 [n, window + 1, d] (x_0 of the chain).
    """
    schedule = schedule.to(device)
    x = torch.randn(n, model.window + 1, model.dim, device=device)
    c = torch.full((n,), group, dtype=torch.long, device=device)
    for step in reversed(range(schedule.steps)):
        t = schedule.timesteps[step].expand(n)
        eps = model.guided(x, t, c, guidance_scale)
        x = schedule.p_step(x, step, eps, torch.randn_like(x) if step else None)
    return x


@torch.no_grad()
def counterfactual(
    model: Denoiser, schedule: Schedule, x0: Tensor, *, t0: float, group: int,
    guidance_scale: float, device: torch.device,
) -> Tensor:
    """Counterfactual rows anchored to observed ones (SDEdit, Meng et al. 2022, "SDEdit: Guided
    Image Synthesis and Editing with Stochastic Differential Equations", with DDPM's ancestral
    sampler): each observed row x_0 is noised to step s of the chain in closed form,
    x_s = sqrt(abar_s) x_0 + sqrt(1 - abar_s) eps, then denoised from s to 0 conditioned on
    ``group`` with classifier-free guidance. s is the step at the share ``t0`` of the chain
    (the first max(1, round(t0 K)) of its K steps), so a small t0 keeps the row's context (its
    prefix items, its length) and lets guidance change what the condition needs (the target's
    popularity group), and t0 = 1 is nearly sampling from noise.

    This project's reading of "counterfactual session data" (the second related abstract gives
    no procedure): what the observed session would have looked like had it ended on a tail
    item. The whole row is regenerated (prefix slots included), not only its target slot: the
    denoiser models rows jointly, and a prefix held fixed would make the partially noised
    target disagree with its context at every step.

    Args:
        model: the trained network.
        schedule: its schedule, or a respaced one (``Schedule.respaced``).
        x0: observed rows as item vectors [n, window + 1, d] (``scaled_vectors`` of their ids).
        t0: the share of the chain the rows are noised to, in (0, 1].
        group: the condition class.
        guidance_scale: w of classifier-free guidance.
        device: where to sample.

    Returns:
        float32 [n, window + 1, d] (x_0 of the chain).
    """
    if not 0.0 < t0 <= 1.0:
        raise ValueError(f"anchor t0 must be in (0, 1], got {t0}")
    schedule = schedule.to(device)
    start = max(1, round(t0 * schedule.steps)) - 1
    x0 = x0.to(device)
    n = len(x0)
    x = schedule.q_sample(x0, torch.full((n,), start, dtype=torch.long, device=device),
                          torch.randn_like(x0))
    c = torch.full((n,), group, dtype=torch.long, device=device)
    for step in reversed(range(start + 1)):
        t = schedule.timesteps[step].expand(n)
        eps = model.guided(x, t, c, guidance_scale)
        x = schedule.p_step(x, step, eps, torch.randn_like(x) if step else None)
    return x


def anchor_rows(windows: np.ndarray, groups: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The observed rows counterfactuals start from: the training rows whose target is not in
    the tail (a row that already ends on a tail item has no tail counterfactual to ask for); all
    rows when every target is in the tail.

    Args:
        windows: the training rows as windows (``row_windows``) [rows, window + 1].
        groups: popularity group per item id (``popularity_groups``).
        targets: the training rows' targets [rows].

    Returns:
        The anchor windows [anchors, window + 1] (int64).
    """
    outside = groups[np.asarray(targets)] != TAIL
    return windows[outside] if outside.any() else windows


def sample_rows(
    model: Denoiser,
    settings: DenoiserSettings,
    table: Tensor,
    *,
    candidates: np.ndarray,
    groups: np.ndarray,
    real_windows: np.ndarray,
    n_wanted: int,
    guidance_scale: float,
    seed: int,
    device: torch.device,
    log: Log | None = None,
    sample_steps: int | None = None,
    anchors: np.ndarray | None = None,
    anchor_t0: float = 0.3,
) -> tuple[np.ndarray, dict[str, int]]:
    """Counterfactual rows conditioned on the tail group, mapped to items and filtered, until
    ``n_wanted`` are kept or ``MAX_OVERSAMPLE`` x n_wanted were generated.

    Args:
        model: the trained network.
        settings: the diffusion stage's settings (steps, schedule).
        table: the data's item vectors (``scaled_vectors``).
        candidates: item ids a generated slot may map to (the items of the training split).
        groups: popularity group per item id.
        real_windows: the training rows as windows (``row_windows``): never generated again.
        n_wanted: rows wanted.
        guidance_scale: w of classifier-free guidance.
        seed: seeds the sampling noise (and the draw of anchors).
        device: where to sample.
        log: receives a progress line per batch of ``SAMPLE_BATCH`` rows.
        sample_steps: denoising steps per row, evenly spaced over the chain
            (``Schedule.respaced``); None or at least ``settings.steps``: the whole chain.
        anchors: None: every row is sampled from pure noise (``generate``); else observed
            training rows as windows (``anchor_rows``), each generated row the ``counterfactual``
            of one drawn uniformly with replacement.
        anchor_t0: the share of the chain an anchor is noised to (``counterfactual``).

    Returns:
        (at most ``n_wanted`` rows [rows, window + 1], counts ``generated`` / ``invalid`` /
        ``off_group`` / ``duplicate`` / ``kept``: ``kept`` may exceed the rows returned).
    """
    torch.manual_seed(seed)
    draw = np.random.default_rng(seed)
    schedule = Schedule.respaced(settings.schedule, settings.steps,
                                 sample_steps or settings.steps)
    table, ids = table.to(device), torch.as_tensor(candidates, dtype=torch.long, device=device)
    if anchors is not None and not len(anchors):
        raise ValueError("anchored sampling needs at least one anchor row")
    known = {row.tobytes() for row in real_windows}
    counts = dict.fromkeys(("generated", "invalid", "off_group", "duplicate", "kept"), 0)
    kept = []
    while counts["kept"] < n_wanted and counts["generated"] < MAX_OVERSAMPLE * n_wanted:
        n = min(SAMPLE_BATCH, MAX_OVERSAMPLE * n_wanted - counts["generated"])
        start = time.perf_counter()
        if anchors is None:
            x = generate(model, schedule, n, group=TAIL, guidance_scale=guidance_scale,
                         device=device)
        else:
            rows = torch.from_numpy(anchors[draw.integers(len(anchors), size=n)]).to(device)
            x = counterfactual(model, schedule, table[rows], t0=anchor_t0, group=TAIL,
                               guidance_scale=guidance_scale, device=device)
        windows = nearest_items(x, table, ids).cpu().numpy()
        rows, batch_counts = filter_rows(windows, groups, TAIL, known)
        counts["generated"] += n
        for name, value in batch_counts.items():
            counts[name] += value
        kept.append(rows)
        if log is not None:
            log(f"  sampled {counts['generated']:,} rows, kept {counts['kept']:,} of "
                f"{n_wanted:,} wanted ({time.perf_counter() - start:.1f} s)")
    window = settings.window + 1
    rows = np.concatenate(kept) if kept else np.zeros((0, window), dtype=np.int64)
    return rows[:n_wanted], counts


def windows_to_split(windows: np.ndarray, max_len: int) -> Split:
    """Generated rows (left-padded windows and targets) as a right-padded ``Split``.

    Args:
        windows: item ids [rows, window + 1], valid (``valid_rows``) and compacted (``compact``).
        max_len: the prefix width of the split they join.

    Returns:
        The rows as a split (int32 prefixes and lengths, int64 targets).
    """
    prefix = windows[:, :-1]
    lengths = (prefix != PAD).sum(axis=1).astype(np.int32)
    width = prefix.shape[1]
    # Row r's real items start at column width - lengths[r]: shift them to the left.
    columns = (width - lengths)[:, None] + np.arange(width)
    shifted = np.take_along_axis(prefix, np.minimum(columns, width - 1), axis=1)
    shifted[np.arange(width) >= lengths[:, None]] = PAD
    shifted, lengths = keep_last(shifted, lengths, max_len)
    out = np.zeros((len(windows), max_len), dtype=np.int32)
    out[:, : shifted.shape[1]] = shifted
    return Split(out, lengths.astype(np.int32), windows[:, -1].astype(np.int64))
