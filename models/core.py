"""The CORE model: item table + representation-consistent encoder + robust distance measuring.

Training (``forward``) returns the loss: cosine logits against the item-dropped-out,
row-normalised table divided by the temperature, through the configured objective. Inference
(``predict``) returns the full-catalog logits against the normalised table, padding at -inf.

Options of the enhancements guide (``Objective``; each off by default):

- EMA target embeddings (the guide's "momentum-updated target embeddings",
  ``target_momentum`` = the config's ``ema_target``): a copy E_tgt of the item table, updated
  after every optimiser step by E_tgt <- m E_tgt + (1 - m) E (``update_target``, called by the
  trainer) and starting as E, is the *target* side of the training loss: the full-catalog term
  scores h_s against normalise(Dropout_item(E_tgt)) instead of the online table, with no
  gradient into E_tgt (the sessions are still built from the online table E, which learns
  through them). Inference scores against the online table (the guide uses the copy during
  training only; CORE's consistency: sessions and catalog in one space). Not to be confused
  with the config's ``ema_decay`` (``models.ema``), a moving average of all weights used for
  validation, selection and test only.
- auxiliary tasks (the guide's "multi-task learning"): session length, a linear head on h_s
  regressing log n (n real items), loss mean (head(h_s) - log n)^2 weighted by
  ``aux_length_weight``; shuffle detection, each session also encoded with its items in a
  random order (``models.augment.reorder`` at ratio 1) and a linear head on the 2B session
  vectors telling the original (0) from the shuffled copy (1; a copy that came out in the
  original order, e.g. a one-item session, counts as 0), binary cross-entropy weighted by
  ``aux_order_weight``. The guide's first auxiliary task, next-item prediction, is CORE's main
  loss. The heads are used in training only.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.augment import augment, reorder
from models.catalog_loss import normalized_dropout
from models.encoders import PAD, Packed, dropout, init_weights
from models.losses import catalog_loss, in_batch_session_loss, nt_xent


@dataclass(frozen=True)
class Objective:
    """Terms added to the full-catalog cross-entropy; the defaults give plain CORE."""

    hn_k: int = 0
    hn_lambda: float = 0.0  # hard-negative BPR share of the hybrid loss
    label_smoothing: float = 0.0  # of the full-catalog cross-entropy (never onto padding)
    loss_impl: str = "chunked"  # full-catalog loss: chunked | dense (models.catalog_loss)
    # The full-catalog loss alone under bf16 autocast (precision bf16, bf16_scope loss: the
    # encoder stays fp32; models.precision).
    loss_autocast: bool = False
    inbatch_weight: float = 0.0  # beta of the in-batch session term
    cl_weight: float = 0.0  # weight of NT-Xent between two augmented views (CL4SRec)
    cl_augmentations: tuple[str, ...] = ("mask",)  # see models.augment
    cl_mask: str = "guide"  # the mask's form: guide (to padding, never the last) | cl4srec
    cl_crop_ratio: float = 0.6
    cl_mask_ratio: float = 0.2
    cl_reorder_ratio: float = 0.2
    cl_temperature: float = 1.0
    target_momentum: float = 0.0  # m of the EMA target item table (0: the online table)
    aux_length_weight: float = 0.0  # session-length regression (guide's multi-task learning)
    aux_order_weight: float = 0.0  # shuffle detection (guide's multi-task learning)


class CORE(nn.Module):
    def __init__(
        self,
        n_items: int,
        embedding_size: int,
        encoder: nn.Module,
        *,
        sess_dropout: float,
        item_dropout: float,
        temperature: float,
        objective: Objective = Objective(),  # noqa: B008 (frozen dataclass)
    ) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(embedding_size)
        self.item_embedding = nn.Parameter(
            torch.empty(n_items, embedding_size).uniform_(-bound, bound)
        )
        # CL4SRec's mask token: one learned vector, drawn as the item table, that stands at the
        # masked positions of the contrastive views (id n_items, past the catalog). The guide's
        # mask (cl_mask "guide") masks to padding and needs none.
        self.mask_embedding = None
        if (objective.cl_weight and "mask" in objective.cl_augmentations
                and objective.cl_mask == "cl4srec"):
            self.mask_embedding = nn.Parameter(torch.empty(embedding_size).uniform_(-bound, bound))
        self.encoder = encoder
        self.sess_dropout = sess_dropout
        self.item_dropout = item_dropout
        self.temperature = temperature
        self.objective = objective
        if not 0.0 <= objective.target_momentum < 1.0:
            raise ValueError(f"target momentum must be in [0, 1), got {objective.target_momentum}")
        # The EMA target table: a buffer (in checkpoints, never trained), starting as E.
        target = self.item_embedding.detach().clone() if objective.target_momentum else None
        self.register_buffer("target_embedding", target)
        # The auxiliary tasks' heads (drawn only when used, so the default draws nothing more).
        self.length_head = self.order_head = None
        if objective.aux_length_weight:
            self.length_head = nn.Linear(embedding_size, 1)
            self.length_head.apply(init_weights)
        if objective.aux_order_weight:
            self.order_head = nn.Linear(embedding_size, 1)
            self.order_head.apply(init_weights)

    def item_table(self) -> Tensor:
        """The item representations [n_items, d] that sessions combine and the catalog is scored
        against: CORE's trainable table (subclasses may derive it, see ``models.semantic``)."""
        return self.item_embedding

    def session_vector(self, packed: Packed, items: Tensor, h: Tensor) -> Tensor:
        """Hook on the encoder's session vector h [B, d] before normalisation (identity here)."""
        return h

    def encode(self, items: Tensor, table: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Normalised session vectors h_s [B, d] (fp32) and the encoder's weights alpha [B, L].

        Args:
            items: right-padded item ids [B, L].
            table: the batch's ``item_table()`` when the caller already computed it.
        """
        packed = Packed(items)
        table = self.item_table() if table is None else table
        x = F.embedding(packed.pack(items), table)
        h, alpha = self.encoder(packed, dropout(x, self.sess_dropout, self.training))
        h = self.session_vector(packed, items, h)
        return F.normalize(h.float(), dim=-1), alpha

    def forward(self, items: Tensor, targets: Tensor, weights: Tensor | None = None) -> Tensor:
        """Training loss of a batch of right-padded prefixes [B, L] and next items [B]; with
        ``weights`` [B] (``models.weighting``) the full-catalog term is (1 / B) sum_i w_i l_i
        (``catalog_loss``), the in-batch and contrastive terms stay unweighted."""
        table = self.item_table()
        h, _ = self.encode(items, table)
        # Item dropout and row normalisation of the table, fused (models.catalog_loss): of the
        # online table, or of the EMA target copy when there is one (no gradient into it).
        catalog = normalized_dropout(self.loss_targets(table), self.item_dropout, self.training)
        obj = self.objective
        # Only ever enable here: ``autocast(enabled=False)`` would switch off the bf16 autocast
        # the trainer puts around the whole step (bf16_scope all) for the loss.
        scope = (torch.autocast(h.device.type, dtype=torch.bfloat16) if obj.loss_autocast
                 else contextlib.nullcontext())
        with scope:
            loss = catalog_loss(
                h / self.temperature, catalog, targets, hn_k=obj.hn_k,
                hn_lambda=obj.hn_lambda, label_smoothing=obj.label_smoothing,
                impl=obj.loss_impl, weights=weights,
            )
        if obj.inbatch_weight:
            loss = loss + obj.inbatch_weight * in_batch_session_loss(h, self.temperature)
        if obj.cl_weight:
            loss = loss + obj.cl_weight * nt_xent(*self.views(items, table), obj.cl_temperature)
        if obj.aux_length_weight:
            loss = loss + obj.aux_length_weight * self.length_loss(items, h)
        if obj.aux_order_weight:
            loss = loss + obj.aux_order_weight * self.order_loss(items, h, table)
        return loss

    def loss_targets(self, table: Tensor) -> Tensor:
        """The item table the training loss scores sessions against: the EMA target copy
        (``target_momentum`` > 0), else ``table`` itself.

        Args:
            table: the batch's ``item_table()``.

        Returns:
            [n_items, d], before item dropout and normalisation.
        """
        return table if self.target_embedding is None else self.target_embedding

    @torch.no_grad()
    def update_target(self) -> None:
        """E_tgt <- m E_tgt + (1 - m) E: the EMA target table's step towards the online table,
        after an optimiser step (a no-op without a target)."""
        if self.target_embedding is not None:
            m = self.objective.target_momentum
            self.target_embedding.lerp_(self.item_table().detach().to(self.target_embedding), 1 - m)

    def length_loss(self, items: Tensor, h: Tensor) -> Tensor:
        """Session-length regression: mean over the batch of (head(h_s) - log n)^2.

        Args:
            items: right-padded item ids [B, L].
            h: their normalised session vectors [B, d].

        Returns:
            The loss (a scalar).
        """
        n = (items != PAD).sum(dim=1).clamp(min=1).float()
        predicted = self.length_head(h).float().squeeze(1)
        return F.mse_loss(predicted, n.log())

    def order_loss(self, items: Tensor, h: Tensor, table: Tensor) -> Tensor:
        """Shuffle detection: binary cross-entropy of a linear head on the session vectors of
        the batch (label 0) and of its shuffled copy (label 1 where the order changed).

        Args:
            items: right-padded item ids [B, L].
            h: their normalised session vectors [B, d].
            table: the batch's ``item_table()``.

        Returns:
            The mean loss over the 2B vectors (a scalar).
        """
        shuffled = reorder(items, 1.0)
        changed = (shuffled != items).any(dim=1).float()
        both = torch.cat([h, self.encode(shuffled, table)[0]])
        labels = torch.cat([torch.zeros_like(changed), changed])
        logits = self.order_head(both).float().squeeze(1)
        return F.binary_cross_entropy_with_logits(logits, labels)

    def views(self, items: Tensor, table: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """CL4SRec's two augmented views of a batch, encoded: each session of each view goes
        through one of the objective's augmentations (``models.augment.augment``), masked
        positions holding ``mask_embedding`` (``cl_mask`` "cl4srec") or left empty (padding,
        the guide's mask).

        Args:
            items: right-padded item ids [B, L].
            table: the batch's ``item_table()`` when the caller already computed it.

        Returns:
            The two views' normalised session vectors, [B, d] each.
        """
        obj = self.objective
        table = self.item_table() if table is None else table
        mask_id = len(table)
        if self.mask_embedding is not None:
            table = torch.cat([table, self.mask_embedding[None].to(table.dtype)])
        options = {
            "crop_ratio": obj.cl_crop_ratio,
            "mask_ratio": obj.cl_mask_ratio,
            "reorder_ratio": obj.cl_reorder_ratio,
            "mask_id": mask_id,
            "mask_mode": obj.cl_mask,
        }
        a, b = (augment(items, obj.cl_augmentations, **options) for _ in range(2))
        return self.encode(a, table)[0], self.encode(b, table)[0]

    def catalog(self) -> Tensor:
        """The row-normalised item table used for inference (compute once per evaluation)."""
        return F.normalize(self.item_table(), dim=-1)

    def score(self, h: Tensor, catalog: Tensor, out: Tensor | None = None) -> Tensor:
        """Full-catalog logits [B, n_items] = h_s catalog^T / tau of session vectors h_s, with
        z_0 = -inf: the transpose of a contiguous [n_items, B] product (written to ``out`` if
        given), which CPU BLAS computes about twice as fast for the few rows of a block."""
        scores = torch.mm(catalog, (h / self.temperature).t(), out=out).t()
        scores[:, PAD] = float("-inf")
        return scores

    def predict(self, items: Tensor) -> Tensor:
        """Full-catalog inference logits of a batch of prefixes (see ``score``)."""
        return self.score(self.encode(items)[0], self.catalog())
