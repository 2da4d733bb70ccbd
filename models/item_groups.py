"""Which items are popular: the one definition of the head that the diffusion augmentation
(``models.diffusion.stages.popularity_groups``, the groups its DDPM is conditioned on) and the test
report (``verdict.beyond.item_groups``: the beyond-the-mean table, the popularity view and the tests
on tail targets) share. Both import ``HEAD_FRACTION`` and ``head_item_mask`` from here.

An item's popularity is how often it is a training target (``train_popularity``: a count per
item id, padding at 0). The head is defined over the *targeted* items, those with a count > 0:
ranked by count, most popular first (ties to the lower id), the first
max(1, round(HEAD_FRACTION x their number)) are head. Items never targeted are never head (the
report calls them cold; the diffusion stages put them in their tail).

Why the targeted items and not the catalog: a search on the last rows of a large log targets a
small part of its catalog (tmall's last 50,000 training rows target 43% of it), and a head of
20% of the catalog would then hold nearly every targeted item, leaving the diffusion stages
hardly any tail rows to condition on and the report a "tail" that is mostly never-seen items.
On a full training split, where nearly every item is a target, the two definitions almost agree.
"""

from __future__ import annotations

import numpy as np

# The head's share of the targeted items.
HEAD_FRACTION = 0.2


def targeted_by_popularity(train_popularity) -> np.ndarray:
    """The item ids that occur as a training target, most popular first.

    Args:
        train_popularity: training-target count per item id [n_items], padding at 0.

    Returns:
        int64 ids (>= 1) with a count > 0, by count descending, ties to the lower id.

    Raises:
        ValueError: not 1-D, or no item besides padding.
    """
    popularity = np.asarray(train_popularity)
    if popularity.ndim != 1 or len(popularity) < 2:
        raise ValueError("train_popularity must be 1-D with padding at 0 and >= 1 item")
    ids = np.arange(1, len(popularity))
    ranked = ids[np.lexsort((ids, -popularity[1:]))]
    return ranked[popularity[ranked] > 0]


def head_item_mask(train_popularity, head_fraction: float = HEAD_FRACTION) -> np.ndarray:
    """Boolean [n_items]: True for the head, the most popular max(1, round(head_fraction x n))
    of the n items that occur as a training target (none when no item does).

    Args:
        train_popularity: training-target count per item id [n_items], padding at 0.
        head_fraction: the head's share of the targeted items, in (0, 1).

    Returns:
        The mask; ties in popularity go to the lower id; padding and never-targeted items are
        never head.

    Raises:
        ValueError: ``head_fraction`` outside (0, 1), or ``train_popularity`` not 1-D with at
            least one item.
    """
    if not 0.0 < head_fraction < 1.0:
        raise ValueError(f"head_fraction must be in (0, 1), got {head_fraction}")
    targeted = targeted_by_popularity(train_popularity)
    mask = np.zeros(len(np.asarray(train_popularity)), dtype=bool)
    if len(targeted):
        mask[targeted[: max(1, round(head_fraction * len(targeted)))]] = True
    return mask
