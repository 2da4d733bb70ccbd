"""Training objectives, as composable pieces: the full-catalog cross-entropy of robust distance
measuring with the optional hard-negative BPR hybrid (in ``models.catalog_loss``, re-exported
here), the in-batch session term, and NT-Xent between two augmented views (the augmentations
are in ``models.augment``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# The full-catalog loss lives in models.catalog_loss (dense reference and chunked default).
from models.catalog_loss import catalog_loss as catalog_loss
from models.catalog_loss import hard_negatives as hard_negatives


def in_batch_session_loss(h: Tensor, temperature: float) -> Tensor:
    """mean_b logsumexp_{b' != b} (h_b . h_b' / tau): pushes the batch's sessions apart.

    Args:
        h: normalised session vectors [B, d].
        temperature: tau.

    Returns:
        The loss (a scalar).
    """
    if len(h) < 2:
        return h.new_zeros(())
    similarity = (h @ h.t()) / temperature
    eye = torch.eye(len(h), dtype=torch.bool, device=h.device)
    return torch.logsumexp(similarity.masked_fill(eye, float("-inf")), dim=1).mean()


def nt_xent(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """NT-Xent (SimCLR; CL4SRec's contrastive loss) of two views of N sessions: each of the 2N
    vectors must pick its counterpart among the other 2N - 1, i.e. one positive against 2N - 2
    negatives (both views of every other session).

    Args:
        a: the first view's session vectors [N, d] (normalised: logits are cosines / tau).
        b: the second view's [N, d], row i a view of the same session as ``a[i]``.
        temperature: tau.

    Returns:
        The mean cross-entropy over the 2N rows (a scalar).
    """
    z = torch.cat([a, b])
    logits = (z @ z.t()) / temperature
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, float("-inf"))
    n = len(a)
    rows = torch.arange(n, device=z.device)
    return F.cross_entropy(logits, torch.cat([rows + n, rows]))
