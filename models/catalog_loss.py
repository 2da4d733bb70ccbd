"""The full-catalog training loss of CORE: cross-entropy over every item (row 0, the padding
item, included in the softmax as in CORE's training), optionally label-smoothed, and the hybrid
(1 - lambda) CE + lambda BPR over the K hardest negatives, in two implementations:

- ``dense``: one [batch x catalog] fp32 logits buffer (the reference, kept as the test oracle);
- ``chunked`` (the default): the logits are computed a block of batch rows at a time, each block
  spanning the whole catalog, so a row's log-sum-exp is complete within its block and no
  [batch x catalog] tensor is ever held (``BLOCK_BYTES`` per block). The block is laid out
  [catalog, rows] (the layout that oneDNN's bf16 matmul computes fastest on CPU) and lives in the
  matmul dtype: in bf16 (matmuls accumulating in fp32) every pass over it moves half the bytes.
  Logits are bounded by ``max|q| * max|t|`` (1 / tau for CORE's cosine logits), so when that
  bound is small the exp needs no max shift and no extra pass; otherwise each block subtracts
  its rows' exact maxima. In bf16 the queries are scaled by log2(e) before the matmul, so the
  block holds z * log2(e) and ``exp2`` gives exp(z): on CPU a bf16 exp2 is ~2.5x faster than a
  bf16 exp (the rounding of the bf16 logits is the same either way). The row sums of the exp
  are taken in fp32, and so is the log-sum-exp.
  Hard negatives are mined per block (``_top_rows``: group maxima first, exact).

  The loss is a scalar, so its gradients are the saved gradients times the incoming one: the
  chunked forward computes them while it holds each block, and backward only scales them;
  nothing is recomputed. The block's exp becomes its share of the logits' gradient in place:
  the target and hard-negative terms (K + 1 entries a row) are added into it, then one matmul
  with the table gives the queries' gradient and one with the (scaled) queries the table's. The
  label-smoothing term is rank one and is added to both gradients directly.

  Item dropout and the table's normalisation are not done per block (every block needs the same
  dropped table, and they are [N, d] work, not [B, N]); they are fused with each other instead,
  in ``normalized_dropout`` (on tmall about 40 ms per batch on one core, against ~60 ms as two
  autograd ops and ~250 ms for the chunked bf16 loss).

Per-row weights (both implementations): with ``weights`` w the loss is (1 / B) sum_i w_i l_i, l_i
the row's (1 - lambda) CE_i + lambda mean_k BPR_ik: each row's term scaled by its weight and
normalised by the row count, not by sum(w), so all-ones weights give the unweighted loss, a
weight of 2 counts a row twice, and a batch's loss scale follows its weights (as inverse-
propensity estimators do; ``models.weighting`` makes the weights mean 1 over the training rows).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from models.encoders import PAD, autocast_dtype, keep_mask

LOSS_IMPLS = ("dense", "chunked")
# Bytes of one block of logits (the catalog times a block's rows). On CPU just under 32 MiB, the
# trainer's pinned glibc mmap threshold: the block then comes from the heap, reused batch after
# batch instead of memory-mapped and faulted in again (blocks this size no longer fit a core's
# cache, but smaller ones only add ops: 7 to 2 blocks per tmall batch took the same CPU time;
# fewer, larger blocks were faster with other processes on the same 2 cores, each op being a
# parallel region that waits for its slowest thread). Larger on a GPU, where bigger matmuls fill
# the device better.
BLOCK_BYTES = {"cpu": 31 << 20, "cuda": 512 << 20}
MIN_BLOCK_ROWS = 16
# Largest logit bound (max |query| * max |table row|) for which exp(z) needs no shift: exp(60)
# times 10^7 items stays far below fp32's overflow, exp(-60) far above its underflow.
SAFE_LOGIT = 60.0
LOG2E = 1.0 / math.log(2.0)
# Hard-negative mining ranks the maxima of groups of this many items first, then only the members
# of the best groups (recursively; see ``_top_rows``).
NEGATIVE_GROUP = 8


def hard_negatives(scores: Tensor, targets: Tensor, k: int) -> Tensor:
    """The k highest-scoring items of each row, skipping the target and the padding item.

    Args:
        scores: logits [B, N].
        targets: target item ids [B].
        k: negatives per row (at most N - 2).

    Returns:
        Item ids [B, k], best first (at most two of the top k + 2 are skipped, so every row
        keeps exactly k).
    """
    top = scores.topk(k + 2, dim=1).indices
    return _drop_target_and_padding(top, top, targets, k)[0]


def _drop_target_and_padding(
    ids: Tensor, values: Tensor, targets: Tensor, k: int
) -> tuple[Tensor, Tensor]:
    """The first k entries of each row of ``ids`` [B, k + 2] (best first) that are neither the
    row's target nor padding, and their ``values``."""
    dropped = (ids == targets[:, None]) | (ids == PAD)
    # A stable sort moves the dropped entries (at most two) behind the kept ones, in order.
    order = dropped.to(torch.uint8).argsort(dim=1, stable=True)[:, :k]
    return ids.gather(1, order), values.gather(1, order)


def _top_rows(block: Tensor, m: int) -> Tensor:
    """Row ids [n, m], in no particular order, of the m largest entries of each column of
    ``block`` [M, n].

    A plain top-k over a 37k-item column costs several times the block's exp. Instead the
    maxima of groups of ``NEGATIVE_GROUP`` rows (rows j, j + G, j + 2G, ...: a reduction over
    the outer dim, which vectorises) are ranked first, recursively: the m largest entries lie in
    the m groups with the largest maxima (a group outside them has m group maxima at least as
    large above its best member), so only those groups' members, and the rows past the last
    whole group, are ranked."""
    size, n = block.shape
    group = NEGATIVE_GROUP
    if 2 * m * group > size:
        return block.t().topk(m, dim=1, sorted=False).indices
    n_groups = size // group
    maxima = block[: n_groups * group].view(group, n_groups, n).amax(dim=0)
    best_groups = _top_rows(maxima, m)  # [n, m]
    offsets = torch.arange(group, device=block.device) * n_groups
    candidates = (best_groups[:, :, None] + offsets).view(n, m * group)
    if n_groups * group < size:
        tail = torch.arange(n_groups * group, size, device=block.device)
        candidates = torch.cat([candidates, tail.expand(n, -1)], dim=1)
    best = block.t().gather(1, candidates).topk(m, dim=1, sorted=False).indices
    return candidates.gather(1, best)


def _column_top(zt: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """Values [n, m] (fp32) and item ids [n, m] of the m largest logits of each column of a block
    ``zt`` [N, n], best first (see ``_top_rows``)."""
    ids = _top_rows(zt, m)
    values, order = zt.t().gather(1, ids).float().sort(dim=1, descending=True)
    return values, ids.gather(1, order)


class _DenseCatalogLoss(torch.autograd.Function):
    """(1 - lam) CE_eps(z) + lam BPR(z) with z = query @ table^T, over the whole catalog.

    Written as one op because the [B, N] logits dominate an epoch: autograd's cross-entropy
    keeps three [B, N] buffers and makes several passes over them; here one fp32 buffer holds
    z, becomes the softmax in place and then the logits' gradient in place. With a lower
    ``dtype`` (bf16 autocast) only the two matmuls' operands are converted (plain conversions:
    mixed-dtype elementwise ops are several times slower on CPU).
    """

    @staticmethod
    def forward(
        ctx,
        query: Tensor,
        table: Tensor,
        targets: Tensor,
        k: int,
        lam: float,
        eps: float,
        dtype: torch.dtype,
        weights: Tensor | None = None,
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
            loss = lam * _row_mean(F.softplus(margin).mean(dim=1), weights)
        # Label smoothing: the share eps of the target mass is spread over the real items.
        smoothed = eps * z[:, 1:].mean(dim=1) if eps else 0.0
        top = z.amax(dim=1, keepdim=True)
        probs = z.sub_(top).exp_()
        total = probs.sum(dim=1, keepdim=True)
        lse = (total.log() + top).squeeze(1)
        ce = _row_mean(lse - (1 - eps) * positive - smoothed, weights)
        ctx.save_for_backward(query, table, targets, probs, total, negatives, margin, weights)
        ctx.lam, ctx.eps, ctx.dtype = lam, eps, dtype
        return loss + (1 - lam) * ce

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        query, table, targets, probs, total, negatives, margin, weights = ctx.saved_tensors
        lam, eps, dtype = ctx.lam, ctx.eps, ctx.dtype
        rows = torch.arange(len(targets), device=probs.device)
        scale = grad / len(targets)
        if weights is not None:
            scale = (scale * weights.float())[:, None]  # each row's scale, [B, 1]
        dz = probs.mul_((1 - lam) * scale / total)
        dz[rows, targets] -= (1 - lam) * (1 - eps) * scale.view(-1)
        if eps:
            dz[:, 1:] -= (1 - lam) * eps * scale / (dz.shape[1] - 1)
        if negatives is not None:
            pull = torch.sigmoid(margin) * (lam * scale / negatives.shape[1])
            dz.scatter_add_(1, negatives, pull)
            dz[rows, targets] -= pull.sum(dim=1)
        dz = dz.to(dtype)
        grad_query = torch.mm(dz, table.to(dtype)).to(query.dtype)
        grad_table = torch.mm(dz.t(), query.to(dtype)).to(table.dtype)
        return grad_query, grad_table, None, None, None, None, None, None


def _row_mean(values: Tensor, weights: Tensor | None) -> Tensor:
    """(1 / B) sum_i w_i values_i: the mean of the rows' values, each scaled by its weight."""
    return values.mean() if weights is None else (values * weights.float()).mean()


def _column_sums(block: Tensor) -> Tensor:
    """fp32 sums over dim 0 of a block [N, n]. A bf16 block is first summed 32 rows at a time
    (rows i, i + G, ..., i + 31 G: a reduction over the outer dim, which vectorises; each partial
    rounded to bf16, unbiased), the partials then in fp32: a direct fp32-output reduction of bf16
    is several times slower on CPU, and a bf16 total would be off by up to 0.2%."""
    if block.dtype == torch.float32:
        return block.sum(dim=0)
    n_items = block.shape[0]
    whole = n_items // 32 * 32
    sums = block[:whole].view(32, -1, block.shape[1]).sum(dim=0).float().sum(dim=0)
    return sums + block[whole:].float().sum(dim=0)


class _ChunkedCatalogLoss(torch.autograd.Function):
    """The dense op's loss and gradients, a block of ``rows`` batch rows at a time (see the
    module docstring); forward computes the gradients, backward scales them."""

    @staticmethod
    def forward(
        ctx,
        query: Tensor,
        table: Tensor,
        targets: Tensor,
        k: int,
        lam: float,
        eps: float,
        dtype: torch.dtype,
        rows: int,
        weights: Tensor | None = None,
    ) -> Tensor:
        need_grad = any(ctx.needs_input_grad[:2])
        n_rows, n_items = len(targets), table.shape[0]
        q32, t32 = query.detach().float(), table.detach().float()
        # In bf16 the block holds z * log2(e) and takes exp2 (the log2(e) folded into the
        # queries before the matmul): on CPU a bf16 exp2 runs ~2.5x faster than a bf16 exp.
        scale = LOG2E if dtype == torch.bfloat16 else 1.0
        q_op, t_op = (q32 * scale if scale != 1.0 else q32).to(dtype), t32.to(dtype)
        t_op_t = t_op.t().contiguous()  # [d, N]: dq^T = t_op^T zt is faster contiguous
        bound = q32.norm(dim=1).max() * t32.norm(dim=1).max()
        shift = bool(bound > SAFE_LOGIT)
        n_blocks = -(-n_rows // rows)
        rows = -(-n_rows // n_blocks)  # balanced blocks: no small, slow last one
        buffer = t_op.new_empty(n_items * rows)
        lse = q32.new_empty(n_rows)
        positive = q32.new_empty(n_rows)
        negatives = margin = None
        if lam > 0:
            negatives = targets.new_empty(n_rows, k)
            margin = q32.new_empty(n_rows, k)
        grad_query = q32.new_empty(q32.shape) if need_grad else None
        grad_table = torch.zeros_like(t32) if need_grad else None
        if need_grad and dtype != torch.float32:
            # Each block's table gradient is a [N, d] product in the matmul dtype, summed into
            # the fp32 gradient through two buffers made once: a mixed-dtype add_ makes a new
            # fp32 copy of its operand every block, which costs more than the product itself.
            product, widened = t_op.new_empty(t32.shape), torch.empty_like(t32)
        w = None if weights is None else weights.detach().float()
        for start in range(0, n_rows, rows):
            cut = slice(start, min(start + rows, n_rows))
            n = cut.stop - start
            # zt[i, b] = z[b, i]: the block's logits, catalog-major.
            zt = torch.mm(t_op, q_op[cut].t(), out=buffer[: n_items * n].view(n_items, n))
            y = targets[cut]
            positive[cut] = zt.gather(0, y[None]).float()[0] / scale
            if lam > 0:
                values, ids = _column_top(zt, k + 2)
                ids, values = _drop_target_and_padding(ids, values, y, k)
                negatives[cut], margin[cut] = ids, values / scale - positive[cut, None]
            top = zt.amax(dim=0) if shift else None  # exact: one of the block's values
            if shift:
                zt.sub_(top)
            sums = _column_sums(zt.exp2_() if scale != 1.0 else zt.exp_())
            lse[cut] = sums.log() if top is None else sums.log() + top.float() / scale
            if need_grad:
                # The block's gradient of the logits is alpha * zt once the target and
                # hard-negative terms are added into zt (over alpha; row weights then only
                # scale alpha): no gather of table rows, the two matmuls take them along.
                if lam < 1:
                    alpha = (1 - lam) / (n_rows * sums)
                else:
                    alpha = sums.new_full((n,), 1 / n_rows)
                    zt.zero_()
                ids = y[:, None]
                pull = sums.new_full((n, 1), -(1 - lam) * (1 - eps) / n_rows)
                if lam > 0:
                    weight = torch.sigmoid(margin[cut]) * (lam / (n_rows * k))
                    ids = torch.cat([ids, negatives[cut]], dim=1)
                    pull = torch.cat([pull - weight.sum(dim=1, keepdim=True), weight], dim=1)
                # (index_put_ on the flat block: a bf16 scatter_add_ copies the block twice)
                flat = ids * n + torch.arange(n, device=ids.device)[:, None]
                zt.view(-1).index_put_(
                    (flat.view(-1),), (pull / alpha[:, None]).to(dtype).view(-1), accumulate=True
                )
                if w is not None:
                    alpha = alpha * w[cut]
                grad_query[cut] = torch.mm(t_op_t, zt).t().float().mul_(alpha[:, None])
                scaled = (q32[cut] * alpha[:, None]).to(dtype)
                if dtype == torch.float32:
                    grad_table.addmm_(zt, scaled)
                else:
                    torch.mm(zt, scaled, out=product)
                    grad_table.add_(widened.copy_(product))
        # The real items' mean logit, for label smoothing (rank one: no pass over the block).
        mean_item = t32[1:].mean(dim=0) if eps else None
        ce = lse - (1 - eps) * positive
        if eps:
            ce = ce - eps * (q32 @ mean_item)
        loss = (1 - lam) * _row_mean(ce, w)
        if lam > 0:
            loss = loss + lam * _row_mean(F.softplus(margin).mean(dim=1), w)
        if need_grad:
            if eps:
                share = (1 - lam) * eps / n_rows
                if w is None:
                    grad_query.sub_(mean_item, alpha=share)
                    grad_table[1:] -= q32.sum(dim=0) * (share / (n_items - 1))
                else:
                    grad_query.sub_(share * w[:, None] * mean_item)
                    grad_table[1:] -= (w @ q32) * (share / (n_items - 1))
            ctx.save_for_backward(grad_query, grad_table)
        ctx.dtypes = (query.dtype, table.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        grad_query, grad_table = ctx.saved_tensors
        query_dtype, table_dtype = ctx.dtypes
        return (
            (grad_query * grad).to(query_dtype),
            (grad_table * grad).to(table_dtype),
            None, None, None, None, None, None, None,
        )


class _NormalizedDropout(torch.autograd.Function):
    """Rows of the table with dropped entries zeroed, scaled to unit norm: item dropout then
    cosine normalisation as one op. Dropout's 1 / (1 - p) scale cancels in the normalisation,
    so it is never applied; autograd's version of the pair makes about ten passes over the
    [N, d] table (with its temporaries), this one three forward and four backward."""

    @staticmethod
    def forward(ctx, table: Tensor, p: float) -> Tensor:
        keep = None
        if p > 0:  # models.encoders.dropout's mask: the same mask for the same seed
            keep = keep_mask(table.shape, p, table.device, table.dtype)
        x = table * keep if keep is not None else table
        inverse = torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_(min=1e-12)
        inverse = inverse.reciprocal_()
        out = x.mul_(inverse) if keep is not None else x * inverse
        ctx.save_for_backward(out, inverse, keep)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None]:
        out, inverse, keep = ctx.saved_tensors
        # d out / d x = (I - out out^T) / |x| per row (below the 1e-12 clamp: I / 1e-12).
        along = torch.bmm(out[:, None, :], grad[:, :, None]).view(-1, 1)
        along = along.masked_fill_(inverse >= 1e12, 0.0).mul_(inverse)
        grad_x = torch.addcmul(grad * inverse, out, along, value=-1.0)
        return (grad_x.mul_(keep) if keep is not None else grad_x), None


def normalized_dropout(table: Tensor, p: float, training: bool) -> Tensor:
    """``F.normalize(dropout(table, p, training), dim=-1)`` as one op: CORE's item dropout of
    the table (each entry kept with probability 1 - p) followed by its row normalisation.

    Args:
        table: item table [N, d].
        p: item dropout probability, in [0, 1).
        training: whether to drop (otherwise only normalises).

    Returns:
        The row-normalised table [N, d] (a row whose kept entries have a norm below 1e-12 is
        divided by 1e-12).
    """
    return _NormalizedDropout.apply(table, p if training else 0.0)


def block_rows(n_items: int, dtype: torch.dtype, device: torch.device) -> int:
    """Batch rows per block of the chunked loss: ``BLOCK_BYTES`` of [n_items, rows] logits in
    ``dtype`` (at least ``MIN_BLOCK_ROWS``).

    Args:
        n_items: catalog rows.
        dtype: the logits' dtype (the matmul dtype).
        device: where the block lives.

    Returns:
        The number of rows.
    """
    budget = BLOCK_BYTES.get(device.type, BLOCK_BYTES["cuda"])
    size = torch.finfo(dtype).bits // 8
    return max(MIN_BLOCK_ROWS, budget // (n_items * size))


def catalog_loss(
    query: Tensor,
    table: Tensor,
    targets: Tensor,
    *,
    hn_k: int = 0,
    hn_lambda: float = 0.0,
    label_smoothing: float = 0.0,
    impl: str = "chunked",
    rows: int | None = None,
    weights: Tensor | None = None,
) -> Tensor:
    """Mean next-item loss of logits ``query @ table.T`` over the full catalog (row 0 included in
    the softmax, as in CORE's training).

    The loss is the cross-entropy, label-smoothed with ``label_smoothing`` = eps (target
    distribution (1 - eps) on the target plus eps / (N - 1) on every real item; the padding
    item gets none), or with ``hn_lambda > 0`` the hybrid (1 - lambda) CE + lambda mean
    softplus(z_neg - z_pos) over the ``hn_k`` hardest negatives (the highest logits other than
    the target and padding). Under autocast the matmuls run in the autocast dtype (bf16) with
    fp32 accumulation, and the logits and their gradient are held in it; the log-sum-exp, the
    loss and the returned gradients are fp32.

    Args:
        query: query vectors [B, d] (CORE: normalised session vectors over the temperature).
        table: item vectors [N, d] (CORE: the row-normalised, item-dropped-out table).
        targets: target item ids [B].
        hn_k: hard negatives per row (used when ``hn_lambda > 0``).
        hn_lambda: weight of the BPR term, in [0, 1].
        label_smoothing: eps in [0, 1).
        impl: "chunked" (blocks of batch rows, see the module docstring) or "dense" (one
            [B, N] buffer: the reference).
        rows: batch rows per block of the chunked implementation (default: ``block_rows``).
        weights: non-negative loss weight per row [B] (None: all 1); the loss is then
            (1 / B) sum_i w_i l_i, normalised by the row count (see the module docstring).

    Returns:
        The loss, an fp32 scalar.
    """
    if not 0.0 <= hn_lambda <= 1.0:
        raise ValueError(f"hn_lambda must be in [0, 1], got {hn_lambda}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if impl not in LOSS_IMPLS:
        raise ValueError(f"impl must be one of {LOSS_IMPLS}, got {impl!r}")
    dtype = autocast_dtype(query.device) or query.dtype
    k = min(hn_k, table.shape[0] - 2)
    if hn_lambda > 0 and k < 1:
        raise ValueError(f"hard negatives need hn_k >= 1 and >= 3 catalog rows, got hn_k={hn_k}")
    if label_smoothing and table.shape[0] < 2:
        raise ValueError("label smoothing needs at least one item besides padding")
    if weights is not None and weights.shape != targets.shape:
        raise ValueError(f"weights must be [B] like targets {tuple(targets.shape)}, "
                         f"got {tuple(weights.shape)}")
    if impl == "dense":
        return _DenseCatalogLoss.apply(
            query, table, targets, k, hn_lambda, label_smoothing, dtype, weights
        )
    # Chunked blocks are bf16 or fp32 (fp16 cannot hold exp of CORE's logits).
    dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
    rows = rows or block_rows(table.shape[0], dtype, query.device)
    return _ChunkedCatalogLoss.apply(
        query, table, targets, k, hn_lambda, label_smoothing, dtype, rows, weights
    )
