"""Training objectives, as composable pieces: the full-catalog cross-entropy of robust distance
measuring with the optional hard-negative BPR hybrid (one fused op), the in-batch session term,
and InfoNCE between two augmented views (with the item-masking augmentation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from models.encoders import PAD


def hard_negatives(scores: Tensor, targets: Tensor, k: int) -> Tensor:
    """Indices [B, k] of the k highest-scoring items of each row, skipping the target and the
    padding item (at most two of the top k + 2 are skipped, so every row keeps exactly k)."""
    top = scores.topk(k + 2, dim=1).indices
    keep = (top != targets[:, None]) & (top != PAD)
    keep &= keep.cumsum(dim=1) <= k
    return top[keep].view(-1, k)


class _CatalogLoss(torch.autograd.Function):
    """(1 - lam) CE(z) + lam BPR(z) with z = query @ table^T, over the whole catalog.

    Written as one op because the [B, N] logits dominate an epoch: autograd's cross-entropy
    keeps three [B, N] buffers and makes several passes over them; here one fp32 buffer holds
    z, becomes the softmax in place and then the logits' gradient in place. With a lower
    ``dtype`` (bf16 autocast) only the two matmuls' operands are converted (plain conversions:
    mixed-dtype elementwise ops are several times slower on CPU).
    """

    @staticmethod
    def forward(
        ctx, query: Tensor, table: Tensor, targets: Tensor, k: int, lam: float, dtype: torch.dtype
    ) -> Tensor:
        query_, table_ = query.to(dtype), table.to(dtype)
        # z as the transpose of a contiguous [N, B] product makes a CPU step ~5-10% faster;
        # every op below is layout-agnostic except top-k mining, which wants contiguous rows.
        z = torch.mm(query_, table_.t()) if lam > 0 else torch.mm(table_, query_.t()).t()
        z = z.float()
        rows = torch.arange(len(targets), device=z.device)
        positive = z[rows, targets]
        loss = z.new_zeros(())
        negatives = margin = None
        if lam > 0:
            negatives = hard_negatives(z, targets, k)
            margin = z.gather(1, negatives) - positive[:, None]
            loss = lam * F.softplus(margin).mean()
        top = z.amax(dim=1, keepdim=True)
        probs = z.sub_(top).exp_()
        total = probs.sum(dim=1, keepdim=True)
        ce = (total.log() + top).squeeze(1).sub(positive).mean()
        ctx.save_for_backward(query, table, targets, probs, total, negatives, margin)
        ctx.lam, ctx.dtype = lam, dtype
        return loss + (1 - lam) * ce

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        query, table, targets, probs, total, negatives, margin = ctx.saved_tensors
        lam, dtype = ctx.lam, ctx.dtype
        rows = torch.arange(len(targets), device=probs.device)
        scale = grad / len(targets)
        dz = probs.mul_((1 - lam) * scale / total)
        dz[rows, targets] -= (1 - lam) * scale
        if negatives is not None:
            pull = torch.sigmoid(margin) * (lam * scale / negatives.shape[1])
            dz.scatter_add_(1, negatives, pull)
            dz[rows, targets] -= pull.sum(dim=1)
        dz = dz.to(dtype)
        grad_query = torch.mm(dz, table.to(dtype)).to(query.dtype)
        grad_table = torch.mm(dz.t(), query.to(dtype)).to(table.dtype)
        return grad_query, grad_table, None, None, None, None


def catalog_loss(
    query: Tensor, table: Tensor, targets: Tensor, hn_k: int = 0, hn_lambda: float = 0.0
) -> Tensor:
    """Mean next-item loss of logits ``query @ table.T`` over the full catalog (row 0 included,
    as in CORE's training): cross-entropy, or with ``hn_lambda > 0`` the hybrid
    (1 - lambda) CE + lambda mean softplus(z_neg - z_pos) over the ``hn_k`` hardest negatives.

    Under autocast the two big matmuls run in the autocast dtype; softmax, loss and the
    gradient of the logits stay in fp32.
    """
    if not 0.0 <= hn_lambda <= 1.0:
        raise ValueError(f"hn_lambda must be in [0, 1], got {hn_lambda}")
    device = query.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else query.dtype
    k = min(hn_k, table.shape[0] - 2)
    if hn_lambda > 0 and k < 1:
        raise ValueError(f"hard negatives need hn_k >= 1 and >= 3 catalog rows, got hn_k={hn_k}")
    return _CatalogLoss.apply(query, table, targets, k, hn_lambda, dtype)


def in_batch_session_loss(h: Tensor, temperature: float) -> Tensor:
    """mean_b logsumexp_{b' != b} (h_b . h_b' / tau): pushes the batch's sessions apart."""
    if len(h) < 2:
        return h.new_zeros(())
    similarity = (h @ h.t()) / temperature
    eye = torch.eye(len(h), dtype=torch.bool, device=h.device)
    return torch.logsumexp(similarity.masked_fill(eye, float("-inf")), dim=1).mean()


def info_nce(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE: view a_i must pick b_i among the batch's b, and vice versa."""
    logits = (a @ b.t()) / temperature
    labels = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def mask_items(items: Tensor, p: float) -> Tensor:
    """Contrastive view of right-padded sessions: each real item except the last becomes padding
    with probability p (the encoders then ignore it)."""
    real = items != PAD
    last = real & ~F.pad(real[:, 1:], (0, 1), value=False)
    drop = (torch.rand(items.shape, device=items.device) < p) & real & ~last
    return items.masked_fill(drop, PAD)
