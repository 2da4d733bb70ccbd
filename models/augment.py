"""CL4SRec's session augmentations, for the contrastive views of ``contrastive`` (CORE-trm-
contrastive). Each works on a batch of right-padded item ids [B, L] (0 = padding, a session's n
real items at positions 0..n-1, as the trainer's prefixes are) and returns a view of the same
shape, drawing from torch's global RNG (seeded and checkpointed by the trainer):

* ``crop`` (ratio eta): a random contiguous span of max(1, floor(eta n)) items, which becomes
  the view (moved to position 0, the rest padding): a shorter session.
* ``mask`` (ratio gamma), in one of two forms (``MASK_MODES``, the config key ``cl_mask``):
  ``guide`` (the enhancements guide's "random item masking" as the SPEC states it, the default):
  each real item except the session's last is replaced by the padding id 0 independently with
  probability gamma, so a masked position becomes a hole the encoder skips (no key, no weight)
  while every other item keeps its position, and the last item, which CORE's recent-intent
  attention and the next-item target hinge on, is never masked (``mask_to_padding``);
  ``cl4srec`` (CL4SRec's own): exactly floor(gamma n) random items, the last one included, are
  replaced by the mask token ``mask_id``, which the model gives a learned embedding (``mask``).
* ``reorder`` (ratio beta): a random contiguous span of floor(beta n) items shuffled in place,
  the items outside it unchanged.

``augment`` draws one of the chosen augmentations per session, as CL4SRec does for each view
(floor as in CL4SRec's ``int(ratio * len(sequence))``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from models.encoders import PAD

AUGMENTATIONS = ("crop", "mask", "reorder")
# The two forms of the mask augmentation: the guide's (to padding, never the last item) and
# CL4SRec's (a learned mask token, any item).
MASK_MODES = ("guide", "cl4srec")


def parse_augmentations(value: str | Iterable[str]) -> tuple[str, ...]:
    """The augmentations a config value names, in ``AUGMENTATIONS`` order.

    Args:
        value: a comma-separated string (``"crop,mask,reorder"``, as ``--set`` gives it) or a
            list of names; spaces around names are ignored, repetitions count once.

    Returns:
        The distinct names, ordered as ``AUGMENTATIONS`` (so equal sets give equal configs).

    Raises:
        ValueError: no name, or a name not in ``AUGMENTATIONS``.
    """
    if isinstance(value, str):
        names = value.split(",")
    elif isinstance(value, Iterable):
        names = list(value)
    else:
        raise ValueError(f"expected a list or a comma-separated string, got {value!r}")
    if not all(isinstance(name, str) for name in names):
        raise ValueError(f"augmentation names must be strings, got {value!r}")
    names = {name.strip() for name in names} - {""}
    unknown = sorted(names - set(AUGMENTATIONS))
    if unknown or not names:
        raise ValueError(
            f"expected a non-empty set of {AUGMENTATIONS}, got {value!r}"
            + (f" (unknown: {unknown})" if unknown else "")
        )
    return tuple(name for name in AUGMENTATIONS if name in names)


def _lengths(items: Tensor) -> Tensor:
    return (items != PAD).sum(dim=1)


def _count(ratio: float, lengths: Tensor) -> Tensor:
    """floor(ratio * n) per row, in float64 as Python's ``int(ratio * n)``."""
    return (ratio * lengths.double()).floor().long()


def _span_start(lengths: Tensor, span: Tensor) -> Tensor:
    """A uniform start in [0, n - span] per row."""
    room = (lengths - span + 1).clamp(min=1)
    return (torch.rand(len(lengths), device=lengths.device, dtype=torch.float64) * room).long()


def crop(items: Tensor, ratio: float) -> Tensor:
    """CL4SRec's item crop: each session's view is a random contiguous span of its items.

    Args:
        items: right-padded item ids [B, L].
        ratio: eta in (0, 1], the share of the session kept (at least one item).

    Returns:
        [B, L]: row b holds items[b, s:s + k] at positions 0..k-1, then padding, with
        k = max(1, floor(eta n_b)) and s uniform in [0, n_b - k].
    """
    lengths = _lengths(items)
    keep = _count(ratio, lengths).clamp(min=1).minimum(lengths)
    start = _span_start(lengths, keep)
    columns = torch.arange(items.shape[1], device=items.device)
    source = (start[:, None] + columns).clamp(max=items.shape[1] - 1)
    return items.gather(1, source).masked_fill(columns >= keep[:, None], PAD)


def mask(items: Tensor, ratio: float, mask_id: int) -> Tensor:
    """CL4SRec's item mask: random items of each session (the last one included) become the
    mask token.

    Args:
        items: right-padded item ids [B, L].
        ratio: gamma in [0, 1), the share of each session's items masked (floor(gamma n)).
        mask_id: the id that stands for the mask token.

    Returns:
        [B, L]: ``items`` with floor(gamma n_b) distinct real positions of row b set to
        ``mask_id``; positions and padding unchanged.
    """
    real = items != PAD
    count = _count(ratio, real.sum(dim=1))
    noise = torch.rand(items.shape, device=items.device).masked_fill_(~real, 2.0)
    rank = noise.argsort(dim=1).argsort(dim=1)  # padding ranks after every real item
    return items.masked_fill(rank < count[:, None], mask_id)


def mask_to_padding(items: Tensor, ratio: float) -> Tensor:
    """The guide's item mask (as the SPEC states it): each real item except the session's last
    is set to the padding id 0 independently with probability ``ratio``.

    Args:
        items: right-padded item ids [B, L].
        ratio: gamma in [0, 1), the probability that an item other than the last is masked.

    Returns:
        [B, L]: ``items`` with the masked positions set to 0 (holes: positions unchanged), the
        last real item of every row kept.
    """
    real = items != PAD
    positions = torch.arange(1, items.shape[1] + 1, device=items.device)
    last = (real * positions).argmax(dim=1, keepdim=True)  # the last real position of each row
    maskable = real & (positions[None] - 1 != last)
    hit = torch.rand(items.shape, device=items.device) < ratio
    return items.masked_fill(maskable & hit, PAD)


def reorder(items: Tensor, ratio: float) -> Tensor:
    """CL4SRec's item reorder: a random contiguous span of each session is shuffled.

    Args:
        items: right-padded item ids [B, L].
        ratio: beta in [0, 1], the share of the session in the span (floor(beta n)).

    Returns:
        [B, L]: row b with positions s..s+k-1 permuted at random (k = floor(beta n_b), s uniform
        in [0, n_b - k]); every other position unchanged.
    """
    lengths = _lengths(items)
    span = _count(ratio, lengths)
    start = _span_start(lengths, span)
    positions = torch.arange(items.shape[1], device=items.device)
    inside = (positions >= start[:, None]) & (positions < (start + span)[:, None])
    # Sort keys: a position outside the span keeps its index; inside, start + U[0, 1) sorts
    # after start - 1, before start + span, and randomly among the span.
    noise = torch.rand(items.shape, device=items.device, dtype=torch.float64)
    keys = torch.where(inside, start[:, None] + noise, positions.double())
    return items.gather(1, keys.argsort(dim=1))


def augment(
    items: Tensor,
    augmentations: tuple[str, ...],
    *,
    crop_ratio: float,
    mask_ratio: float,
    reorder_ratio: float,
    mask_id: int,
    mask_mode: str = "guide",
) -> Tensor:
    """One contrastive view: each session through one of ``augmentations``, drawn uniformly
    and independently per session (call twice for CL4SRec's two views).

    Args:
        items: right-padded item ids [B, L].
        augmentations: names from ``AUGMENTATIONS`` (see ``parse_augmentations``).
        crop_ratio: eta of ``crop``.
        mask_ratio: gamma of ``mask``.
        reorder_ratio: beta of ``reorder``.
        mask_id: the mask token's id (``mask`` in the ``cl4srec`` form).
        mask_mode: the form of ``mask``, one of ``MASK_MODES``: ``guide`` (``mask_to_padding``)
            or ``cl4srec`` (``mask``, to ``mask_id``).

    Returns:
        The view [B, L].
    """
    unknown = sorted(set(augmentations) - set(AUGMENTATIONS))
    if unknown or not augmentations:
        raise ValueError(f"expected augmentations among {AUGMENTATIONS}, got {augmentations!r}")
    if mask_mode not in MASK_MODES:
        raise ValueError(f"mask mode must be one of {MASK_MODES}, got {mask_mode!r}")
    make = {
        "crop": lambda: crop(items, crop_ratio),
        "mask": lambda: (mask(items, mask_ratio, mask_id) if mask_mode == "cl4srec"
                         else mask_to_padding(items, mask_ratio)),
        "reorder": lambda: reorder(items, reorder_ratio),
    }
    if len(augmentations) == 1:
        return make[augmentations[0]]()
    choice = torch.randint(len(augmentations), (len(items), 1), device=items.device)
    view = items
    for index, name in enumerate(augmentations):
        view = torch.where(choice == index, make[name](), view)
    return view
