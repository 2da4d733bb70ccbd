"""Representation-consistent session encoders (CORE-ave, CORE-trm, dual attention, enhanced).

A batch of item ids [B, L] (0 = padding) is handled as ``Packed`` real tokens: every encoder
maps the session-dropped-out embeddings of the real tokens ``x`` [T, d] to attention weights
``alpha`` [B, L] over positions and returns ``(h, alpha)`` with ``h_b = sum_i alpha_bi x_bi``:
the session vector is a linear combination of the session's item embeddings by construction
(CORE's consistency principle), and padded positions always get ``alpha = 0``. Normalising
``h`` is the model's job (``models.core``).

Working on real tokens only is exact (a real query only ever sees real keys, and padded
positions carry zero weight) and much cheaper: tmall prefixes fill ~8 of 50 positions.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PAD = 0
LAYER_NORM_EPS = 1e-12
INIT_STD = 0.02
# Additive attention mask for hidden keys (as CORE's code): finite, so that a query with no
# visible key (a masked-out first item in a contrastive view) yields no NaN; exp(-1e4) == 0.
MASKED = -10_000.0
# How the transformer sees positions (``Transformer``): absolute embeddings added to the input,
# a learned attention bias per (clipped) query-key distance, or nothing (the causal mask only).
POS_ENCODINGS = ("absolute", "relative", "none")
# Relative positions: distances from this one on share one bias.
RELATIVE_MAX_DISTANCE = 32
# How CORE-trm-enhanced combines its transformer layers (``EnhancedEncoder``).
LAYER_AGGREGATIONS = ("weighted", "uniform", "last")
# How CORE-DA scores a token (``DualAttentionEncoder``): an MLP on [f_i; f_last], or linear on f_i.
DA_SCORERS = ("mlp", "linear")
# bf16 on CPU: token rows rounded up to a multiple of the first number, each attention block's
# rows to one of the second. oneDNN compiles and caches a kernel per product shape, and every
# batch packs a different number of tokens; at a new shape per batch, compiling took ~25% of a
# CORE-trm encoder step on a 2-core AMX Xeon (the same batch repeated: 285 against 385 ms).
SHAPE_BUCKETS = (512, 32)
# Dropout masks (``keep_mask``) draw 15 random bits per entry: the low 15 of a 16-bit lane.
MASK_LANE = 0x7FFF


def keep_mask(
    shape: torch.Size, p: float, device: torch.device, dtype: torch.dtype = torch.float32
) -> Tensor:
    """A 0/1 mask, each entry 1 (kept) with probability 1 - p (p rounded to a multiple of 2^-15),
    independently.

    Each entry compares 15 random bits with round(p * 2^15): the bits come four entries to one
    64-bit draw of torch's generator (a 64-bit ``random_`` word holds 63 random bits; the top
    bit of each 16-bit lane is masked off), about 2x faster on CPU than thresholding uniform
    floats (one draw per entry) and ~4x faster than torch's Bernoulli sampler. The same seed
    gives the same mask.

    Args:
        shape: the mask's shape.
        p: the probability of a 0, in [0, 1].
        device: where to draw it.
        dtype: the mask's dtype (the draws do not depend on it).

    Returns:
        The mask, of ``shape`` and ``dtype``.
    """
    n = math.prod(shape)
    words = torch.empty(-(-n // 4), dtype=torch.int64, device=device).random_()
    bits = words.view(torch.int16)[:n].bitwise_and_(MASK_LANE)
    return bits.ge_(round(p * (MASK_LANE + 1))).view(shape).to(dtype)


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """``F.dropout`` (keep with probability 1 - p, scale by 1 / (1 - p)) with ``keep_mask``.

    Args:
        x: the input.
        p: the probability of dropping an entry.
        training: whether to drop (False: ``x`` itself).

    Returns:
        ``x`` with dropped entries zeroed and the others scaled.
    """
    if not training or p == 0.0:
        return x
    # The mask is made in x's dtype: 1 / (1 - p) rounds to it once either way (a bf16 mask made
    # in fp32 and converted cost two more passes over x's size).
    keep = keep_mask(x.shape, p, x.device, x.dtype).mul_(1.0 / (1.0 - p))
    return x * keep


class _TakeRows(torch.autograd.Function):
    """``source.index_select(0, index)`` for an index without repeats, whose backward copies the
    gradient rows back (``index_copy_``) instead of accumulating them: autograd's backward of
    ``index_select`` is a ``scatter_add_``, which in bf16 on two threads of an AMX Xeon took
    ~13 ms a call on CORE-trm's [~22,000 cells x 100] attention grid (0.4 ms in fp32; its CPU
    path for an index expanded over the rows sorts the index), against ~1 ms for the copy.
    With distinct rows no row receives two gradients, so the copy gives the same values."""

    @staticmethod
    def forward(ctx, source: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.rows = source.shape[0]
        return source.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (index,) = ctx.saved_tensors
        return grad.new_zeros(ctx.rows, *grad.shape[1:]).index_copy_(0, index, grad), None


def take_rows(source: Tensor, index: Tensor) -> Tensor:
    """The rows ``index`` of ``source`` (``index_select`` along dim 0), for an index whose entries
    are distinct (not checked), with a faster backward (``_TakeRows``).

    Args:
        source: a tensor [N, ...].
        index: distinct row ids [T] (int64).

    Returns:
        ``source[index]``, [T, ...].
    """
    if not source.requires_grad:
        return source.index_select(0, index)
    return _TakeRows.apply(source, index)


class Dropout(nn.Dropout):
    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast computes in on ``device`` now (None: autocast is off).

    Args:
        device: a device.

    Returns:
        e.g. ``torch.bfloat16`` inside ``torch.autocast("cpu", dtype=torch.bfloat16)``.
    """
    if not torch.is_autocast_enabled(device.type):
        return None
    return torch.get_autocast_dtype(device.type)


def init_weights(module: nn.Module) -> None:
    """Spec initialisation of the non-item-table weights: Linear/Embedding N(0, 0.02), biases 0,
    LayerNorm 1/0 (apply with ``module.apply``).

    Args:
        module: a module; others than Linear, Embedding and LayerNorm are left alone.
    """
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, std=INIT_STD)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def mlp(n_in: int, n_hidden: int, n_out: int) -> nn.Sequential:
    """Linear -> GELU -> Linear.

    Args:
        n_in: input width.
        n_hidden: hidden width.
        n_out: output width.

    Returns:
        The untrained network.
    """
    return nn.Sequential(nn.Linear(n_in, n_hidden), nn.GELU(), nn.Linear(n_hidden, n_out))


class Block(NamedTuple):
    """One attention block: ``rows`` sessions on a [rows, width] grid, with the additive mask
    ``bias`` [rows, 1, width, width] (key k visible to query j iff k <= j and item k is real)."""

    rows: int
    width: int
    bias: Tensor


class AttentionLayout(NamedTuple):
    """The blocks, stacked flat one after the other, and each token's cell in that stack."""

    blocks: list[Block]
    cell: Tensor  # [T] flat grid index of each token
    cells: int  # total grid cells (sum of rows * width)


class Packed:
    """The real (non-pad) positions of a batch of item ids [B, L], flattened to tokens [T].

    Tokens are ordered by attention block, then row, then position: rows are grouped by width
    (last real position + 1) rounded up to a power of two, so that self-attention runs on a few
    [rows, width, width] blocks instead of one [B, L, L] square that is mostly padding.
    """

    def __init__(self, items: Tensor) -> None:
        self.real = items != PAD
        self.shape = items.shape
        self._layouts: dict[int, AttentionLayout] = {}
        batch, length = items.shape
        positions = torch.arange(1, length + 1, device=items.device)
        width = (self.real * positions).amax(dim=1)
        block_width = torch.exp2(torch.log2(width.clamp(min=1).float()).ceil()).long()
        self._row_block_width = block_width.clamp(max=length)
        flat = self.real.flatten().nonzero().squeeze(1)
        order = torch.argsort(self._row_block_width[flat // length], stable=True)
        self.index = flat[order]
        self.row = self.index // length
        self.position = self.index % length
        tokens = torch.arange(len(self.index), device=items.device)
        # Token index of each row's last real item (position lengths - 1 for right padding).
        self.last = torch.zeros(batch, dtype=torch.long, device=items.device).scatter_reduce_(
            0, self.row, tokens, "amax", include_self=False
        )

    def pack(self, x: Tensor) -> Tensor:
        """[B, L, ...] -> [T, ...]."""
        return take_rows(x.flatten(0, 1), self.index)

    def unpack(self, tokens: Tensor, fill: float) -> Tensor:
        """[T, ...] -> [B, L, ...], padded positions set to ``fill``."""
        batch, length = self.shape
        full = tokens.new_full((batch * length, *tokens.shape[1:]), fill)
        return full.index_copy_(0, self.index, tokens).view(batch, length, *tokens.shape[1:])

    def softmax(self, scores: Tensor) -> Tensor:
        """Token scores [T, 1] -> attention over positions [B, L] in fp32 (padding -inf)."""
        return torch.softmax(self.unpack(scores.squeeze(1).float(), float("-inf")), dim=1)

    def mean_weights(self) -> Tensor:
        """CORE-ave weights: uniform over each row's real positions."""
        weights = self.real.float()
        return weights / weights.sum(dim=1, keepdim=True)

    def weighted_sum(self, alpha: Tensor, x: Tensor) -> Tensor:
        """h_b = sum_i alpha[b, i] x_bi: the only way any encoder forms a session vector."""
        weighted = self.pack(alpha).unsqueeze(1) * x
        return weighted.new_zeros(self.shape[0], x.shape[1]).index_add_(0, self.row, weighted)

    @property
    def attention(self) -> AttentionLayout:
        """Rows grouped by block width (tokens are already in that order); no added rows."""
        return self.attention_layout(1)

    def attention_layout(self, row_bucket: int) -> AttentionLayout:
        """``attention`` with each block's row count rounded up to a multiple of ``row_bucket``:
        the added rows hold no token and see no key (their outputs are never read), so that
        blocks keep the same shapes from batch to batch (see ``SHAPE_BUCKETS``).

        Args:
            row_bucket: the multiple (1: no added rows).

        Returns:
            The layout (cached per ``row_bucket``).
        """
        if row_bucket in self._layouts:
            return self._layouts[row_bucket]
        blocks, cells, start, offset = [], [], 0, 0
        row_width = self._row_block_width
        for width in torch.unique(row_width).tolist():
            rows = (row_width == width).nonzero().squeeze(1)
            local = torch.full_like(row_width, -1).index_copy_(
                0, rows, torch.arange(len(rows), device=rows.device)
            )
            end = start + int(self.real[rows].sum())
            cells.append(offset + local[self.row[start:end]] * width + self.position[start:end])
            real = self.real[rows, :width]
            n_rows = -(-len(rows) // row_bucket) * row_bucket
            if n_rows > len(rows):
                real = torch.cat([real, real.new_zeros(n_rows - len(rows), width)])
            causal = torch.ones(width, width, dtype=torch.bool, device=real.device).tril()
            visible = causal & real[:, None, None, :]
            bias = torch.zeros(visible.shape, device=real.device).masked_fill_(~visible, MASKED)
            blocks.append(Block(n_rows, width, bias))
            start, offset = end, offset + n_rows * width
        layout = AttentionLayout(blocks, torch.cat(cells), offset)
        self._layouts[row_bucket] = layout
        return layout


class TransformerLayer(nn.Module):
    """Post-LN block of CORE-trm: self-attention then feed-forward (exact GELU), each followed by
    dropout, the residual sum and LayerNorm; attention dropout acts on the attention weights."""

    def __init__(
        self, d: int, n_heads: int, inner_size: int, hidden_dropout: float, attn_dropout: float
    ) -> None:
        super().__init__()
        if d % n_heads:
            raise ValueError(f"embedding_size {d} is not a multiple of n_heads {n_heads}")
        self.n_heads = n_heads
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm1 = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.ff_in = nn.Linear(d, inner_size)
        self.ff_out = nn.Linear(inner_size, d)
        self.norm2 = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.dropout = Dropout(hidden_dropout)

    def forward(
        self, tokens: Tensor, layout: AttentionLayout, masks: list[Tensor] | None = None
    ) -> Tensor:
        """One block over the packed tokens [T, d].

        Args:
            tokens: the previous layer's outputs [T', d]: the T real tokens first, then any
                rows added to keep shapes (``SHAPE_BUCKETS``), which attend to nothing.
            layout: the batch's attention blocks (``Packed.attention_layout``).
            masks: additive attention masks, one per attention block, broadcastable to
                [rows, n_heads, width, width]; None: each block's visibility mask.

        Returns:
            The layer's outputs [T', d].
        """
        attention = self._attention(tokens, layout, masks)
        tokens = self.norm1(tokens + self.dropout(self.proj(attention)))
        return self.norm2(tokens + self.dropout(self.ff_out(F.gelu(self.ff_in(tokens)))))

    def _attention(
        self, tokens: Tensor, layout: AttentionLayout, masks: list[Tensor] | None
    ) -> Tensor:
        # One scatter into all blocks' grids and one gather back: per-block slicing of the
        # token tensor would cost a [T, 3d] zero-fill per block in the backward pass.
        d, n_real = tokens.shape[1], len(layout.cell)
        qkv = self.qkv(tokens)[:n_real]
        stacked = qkv.new_zeros(layout.cells, 3 * d).index_copy_(0, layout.cell, qkv)
        grids = torch.split(stacked, [block.rows * block.width for block in layout.blocks])
        contexts = []
        if masks is None:
            masks = [block.bias for block in layout.blocks]
        for block, grid, mask in zip(layout.blocks, grids, masks, strict=True):
            q, k, v = grid.view(block.rows, block.width, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
            # softmax(q k^T / sqrt(d_head) + mask), dropout, times v: what
            # F.scaled_dot_product_attention computes on CPU (its math path), with this module's
            # cheaper dropout mask (its Bernoulli draws were ~5% of a CORE-trm step).
            scores = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)
            weights = torch.softmax(scores.add_(mask.to(scores.dtype)), dim=-1)
            weights = dropout(weights, self.attn_dropout, self.training)
            context = torch.matmul(weights, v)
            contexts.append(context.transpose(1, 2).reshape(block.rows * block.width, d))
        context = take_rows(torch.cat(contexts), layout.cell)
        added = len(tokens) - n_real
        return F.pad(context, (0, 0, 0, added)) if added else context


class RelativePositionBias(nn.Module):
    """A learned attention bias per head and query-key distance j - k (causal attention: k <= j,
    so distances are >= 0), distances from ``max_distance`` on sharing one bias (Shaw et al.'s
    clipping; T5's per-head scalar bias). An ``nn.Embedding``, so ``init_weights`` draws it."""

    def __init__(self, n_heads: int, max_distance: int) -> None:
        super().__init__()
        self.max_distance = max_distance
        self.bias = nn.Embedding(max_distance + 1, n_heads)

    def forward(self, width: int) -> Tensor:
        """The bias of a block of ``width`` positions.

        Args:
            width: positions per row of the attention block.

        Returns:
            [1, n_heads, width, width]: entry [0, h, j, k] is head h's bias of query j on key k,
            a function of min(max(j - k, 0), max_distance) only.
        """
        positions = torch.arange(width, device=self.bias.weight.device)
        distance = (positions[:, None] - positions[None, :]).clamp(0, self.max_distance)
        return self.bias(distance).permute(2, 0, 1).unsqueeze(0)


class Transformer(nn.Module):
    """u_i = Dropout(LayerNorm(x_i + P_i)) through post-LN layers; key k is visible to query j
    only when k <= j and item k is not padding. Returns every layer's outputs [T, d].

    ``pos_encoding``: "absolute" adds the learned position embedding P_i (CORE-trm); "relative"
    drops P_i and adds a learned bias per head and clipped distance j - k to every attention
    logit (``RelativePositionBias``), one table shared by all layers (as T5: the distances mean
    the same at every depth, and a per-layer table would multiply parameters that short sessions
    barely train); "none" drops P_i (order then only reaches the model through the causal mask).
    """

    def __init__(
        self,
        d: int,
        n_layers: int,
        n_heads: int,
        inner_size: int,
        hidden_dropout: float,
        attn_dropout: float,
        max_seq_length: int,
        pos_encoding: str = "absolute",
    ) -> None:
        super().__init__()
        if pos_encoding not in POS_ENCODINGS:
            raise ValueError(
                f"unknown pos_encoding {pos_encoding!r}; expected one of {POS_ENCODINGS}"
            )
        self.d = d
        self.pos_encoding = pos_encoding
        self.position = nn.Embedding(max_seq_length, d) if pos_encoding == "absolute" else None
        self.norm = nn.LayerNorm(d, eps=LAYER_NORM_EPS)
        self.dropout = Dropout(hidden_dropout)
        self.layers = nn.ModuleList(
            TransformerLayer(d, n_heads, inner_size, hidden_dropout, attn_dropout)
            for _ in range(n_layers)
        )
        self.relative = None
        if pos_encoding == "relative":
            max_distance = min(max_seq_length - 1, RELATIVE_MAX_DISTANCE)
            self.relative = RelativePositionBias(n_heads, max_distance)

    def forward(self, packed: Packed, x: Tensor) -> list[Tensor]:
        """Every layer's outputs.

        Args:
            packed: the batch's layout (``Packed``).
            x: the real tokens' item embeddings [T, d].

        Returns:
            One [T, d] tensor per layer, first to last.
        """
        if self.position is not None:
            x = x + self.position(packed.position)
        tokens = self.dropout(self.norm(x))
        n_real, buckets = len(tokens), (1, 1)
        if autocast_dtype(tokens.device) == torch.bfloat16:
            # Under bf16 autocast (bf16_scope all) the whole residual stream is bf16, not only
            # the products: autocast alone would leave every residual sum, layer norm and
            # dropout in fp32 and convert around each product (on a 2-core AMX Xeon the
            # encoder's step took 10-25% longer that way). Layer norm still takes its
            # statistics in fp32 internally; the attention softmax (``Packed.softmax``) and
            # the session vector stay fp32.
            tokens = tokens.to(torch.bfloat16)
            if tokens.device.type == "cpu":
                buckets = SHAPE_BUCKETS
                added = -n_real % buckets[0]
                tokens = F.pad(tokens, (0, 0, 0, added)) if added else tokens
        layout = packed.attention_layout(buckets[1])
        masks = None
        if self.relative is not None:
            masks = [block.bias + self.relative(block.width) for block in layout.blocks]
        outputs = []
        for layer in self.layers:
            tokens = layer(tokens, layout, masks)
            outputs.append(tokens[:n_real])
        return outputs


class AveEncoder(nn.Module):
    """CORE-ave: the mean of the session's item embeddings."""

    def forward(self, packed: Packed, x: Tensor) -> tuple[Tensor, Tensor]:
        alpha = packed.mean_weights()
        return packed.weighted_sum(alpha, x), alpha


class TrmEncoder(nn.Module):
    """CORE-trm: alpha = softmax(w^T f_i + b) over the last transformer layer's outputs."""

    def __init__(self, transformer: Transformer) -> None:
        super().__init__()
        self.transformer = transformer
        self.scorer = nn.Linear(transformer.d, 1)
        self.apply(init_weights)

    def forward(self, packed: Packed, x: Tensor) -> tuple[Tensor, Tensor]:
        alpha = packed.softmax(self.scorer(self.transformer(packed, x)[-1]))
        return packed.weighted_sum(alpha, x), alpha


class DualAttentionEncoder(nn.Module):
    """CORE-DA: global and recent-intent attention, each an MLP (2d -> d -> 1) on [f_i; f_last],
    fused by a softmax gate (MLP 2d -> d -> 2 on [h^g; h^r]), plus the CORE-ave residual.

    Ablations: ``gating=False`` fixes the gate to (1/2, 1/2); ``recent=False`` keeps the global
    branch only; ``residual=False`` drops the mean. ``scorer="linear"`` scores w^T f_i instead of
    the MLPs: with all three switches off this is exactly CORE-trm.
    """

    def __init__(
        self,
        transformer: Transformer,
        *,
        gating: bool = True,
        recent: bool = True,
        residual: bool = True,
        scorer: str = "mlp",
    ) -> None:
        super().__init__()
        if scorer not in DA_SCORERS:
            raise ValueError(f"unknown scorer {scorer!r}; expected 'mlp' or 'linear'")
        self.transformer = transformer
        d = transformer.d
        self.with_last = scorer == "mlp"

        def make_scorer() -> nn.Module:
            return mlp(2 * d, d, 1) if self.with_last else nn.Linear(d, 1)

        self.global_scorer = make_scorer()
        self.recent_scorer = make_scorer() if recent else None
        self.gate = mlp(2 * d, d, 2) if gating and recent else None
        self.residual = residual
        self.apply(init_weights)

    def forward(self, packed: Packed, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.transformer(packed, x)[-1]
        if self.with_last:
            f = torch.cat([f, f[packed.last][packed.row]], dim=1)
        alpha = packed.softmax(self.global_scorer(f))
        if self.recent_scorer is not None:
            alpha_recent = packed.softmax(self.recent_scorer(f))
            if self.gate is None:
                alpha = (alpha + alpha_recent) / 2
            else:
                branches = torch.cat(
                    [packed.weighted_sum(alpha, x), packed.weighted_sum(alpha_recent, x)], dim=1
                )
                g = torch.softmax(self.gate(branches).float(), dim=1)
                alpha = g[:, :1] * alpha + g[:, 1:] * alpha_recent
        if self.residual:
            alpha = alpha + packed.mean_weights()
        return packed.weighted_sum(alpha, x), alpha


class EnhancedEncoder(nn.Module):
    """CORE-trm-enhanced: attention over F = sum_l softmax(omega)_l F^(l) (omega init ones), and
    h = gamma h_trm + (1 - gamma) h_ave with gamma = sigmoid(MLP([h_trm; h_ave])).

    ``aggregation``: "weighted" learns omega (above); "uniform" is the guide's ablation, all
    layers with equal, fixed weights (F = mean_l F^(l)); "last" uses the last layer only (as
    CORE-trm). ``gate=False`` fixes gamma = 1/2.
    """

    def __init__(
        self, transformer: Transformer, *, aggregation: str = "weighted", gate: bool = True
    ) -> None:
        super().__init__()
        if aggregation not in LAYER_AGGREGATIONS:
            raise ValueError(
                f"unknown layer aggregation {aggregation!r}; expected one of {LAYER_AGGREGATIONS}"
            )
        self.aggregation = aggregation
        self.transformer = transformer
        d = transformer.d
        self.scorer = nn.Linear(d, 1)
        self.gate = mlp(2 * d, d, 1) if gate else None
        self.apply(init_weights)
        n_layers = len(transformer.layers)
        weighted = aggregation == "weighted"
        self.layer_logits = nn.Parameter(torch.ones(n_layers)) if weighted else None

    def forward(self, packed: Packed, x: Tensor) -> tuple[Tensor, Tensor]:
        outputs = self.transformer(packed, x)
        if self.aggregation == "last":
            f = outputs[-1]
        elif self.aggregation == "uniform":
            f = torch.stack(outputs).mean(dim=0)
        else:
            weights = torch.softmax(self.layer_logits, dim=0)
            f = sum(w * layer for w, layer in zip(weights, outputs, strict=True))
        alpha_trm = packed.softmax(self.scorer(f))
        alpha_ave = packed.mean_weights()
        if self.gate is None:
            gamma = 0.5
        else:
            branches = torch.cat(
                [packed.weighted_sum(alpha_trm, x), packed.weighted_sum(alpha_ave, x)], dim=1
            )
            gamma = torch.sigmoid(self.gate(branches).float())
        alpha = gamma * alpha_trm + (1 - gamma) * alpha_ave
        return packed.weighted_sum(alpha, x), alpha
