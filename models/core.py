"""The CORE model: item table + representation-consistent encoder + robust distance measuring.

Training (``forward``) returns the loss: cosine logits against the item-dropped-out,
row-normalised table divided by the temperature, through the configured objective. Inference
(``predict``) returns the full-catalog logits against the normalised table, padding at -inf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.augment import augment
from models.catalog_loss import normalized_dropout
from models.encoders import PAD, Packed, dropout
from models.losses import catalog_loss, in_batch_session_loss, nt_xent


@dataclass(frozen=True)
class Objective:
    """Terms added to the full-catalog cross-entropy; the defaults give plain CORE."""

    hn_k: int = 0
    hn_lambda: float = 0.0  # hard-negative BPR share of the hybrid loss
    label_smoothing: float = 0.0  # of the full-catalog cross-entropy (never onto padding)
    loss_impl: str = "chunked"  # full-catalog loss: chunked | dense (models.catalog_loss)
    inbatch_weight: float = 0.0  # beta of the in-batch session term
    cl_weight: float = 0.0  # weight of NT-Xent between two augmented views (CL4SRec)
    cl_augmentations: tuple[str, ...] = ("crop", "mask", "reorder")  # see models.augment
    cl_crop_ratio: float = 0.6
    cl_mask_ratio: float = 0.2
    cl_reorder_ratio: float = 0.2
    cl_temperature: float = 1.0


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
        # masked positions of the contrastive views (id n_items, past the catalog).
        self.mask_embedding = None
        if objective.cl_weight and "mask" in objective.cl_augmentations:
            self.mask_embedding = nn.Parameter(torch.empty(embedding_size).uniform_(-bound, bound))
        self.encoder = encoder
        self.sess_dropout = sess_dropout
        self.item_dropout = item_dropout
        self.temperature = temperature
        self.objective = objective

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
        # Item dropout and row normalisation of the table, fused (models.catalog_loss).
        catalog = normalized_dropout(table, self.item_dropout, self.training)
        obj = self.objective
        loss = catalog_loss(
            h / self.temperature, catalog, targets, obj.hn_k, obj.hn_lambda,
            obj.label_smoothing, obj.loss_impl, weights=weights,
        )
        if obj.inbatch_weight:
            loss = loss + obj.inbatch_weight * in_batch_session_loss(h, self.temperature)
        if obj.cl_weight:
            loss = loss + obj.cl_weight * nt_xent(*self.views(items, table), obj.cl_temperature)
        return loss

    def views(self, items: Tensor, table: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """CL4SRec's two augmented views of a batch, encoded: each session of each view goes
        through one of the objective's augmentations (``models.augment.augment``), masked
        positions holding ``mask_embedding``.

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
