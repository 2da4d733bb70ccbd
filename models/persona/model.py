"""The ``persona`` variant: persona-conditioned CORE proposes candidates, CORE-trm re-ranks them.

Two models are trained together, on the same batches, with the sum of their full-catalog
cross-entropies (each keeps its own table, encoder and temperature-scaled cosine scores):

* **candidate model** (``PersonaCORE`` itself): CORE-trm over dual-view items, the trainable ID
  vector fused with the projected frozen text vector, SemSR-F's item view
  (``models.semantic.DualViewCORE``), x_i = W_f [e_i; dropout(W_p S_i)] (W_f starts as
  [I | N(0, 0.02)]); its session vector h is conditioned on
  the persona p_u of the session's user (unit-normalised, projected q = W_q p_u) by
  ``persona_fusion``: ``gate``, h' = g * h + (1 - g) * q with g = sigmoid(W_g [h; q] + b), or
  ``concat``, h' = W_c [h; q] (W_c starts as [I | N(0, 0.02)]);
* **re-ranker** (``base``): plain CORE-trm, blind to users and text: the short-term intent.

Ranking (``two_stage_scores``): the candidate model's top ``n_candidates`` items; inside them
final = mix * log_softmax(re-ranker) + (1 - mix) * log_softmax(candidate), both taken over the
candidate set only (each model's distribution restricted to the candidates, so the mix is a
weighted product of experts on one scale; mix = 1 is the re-ranker's order); every other item
sits below every candidate, in the candidate model's order. Scores are finite except padding.

Users without a persona (id 0, an id beyond the table, or a user with no training rows): the
fallback persona is the mean persona of the ``fallback_k`` training users whose profile (mean
text vector of their training items) is closest, by cosine, to the mean text vector of the
session's items (``models.persona.graph.persona_groups`` labels these rows ``unknown``).

Trained jointly rather than taking a separately trained CORE-trm: one run, one checkpoint, one
early-stopping decision, and the re-ranker sees exactly the training rows the candidate model
sees; the cost is about two CORE-trm steps per batch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.core import CORE
from models.encoders import PAD, Packed, dropout
from models.losses import catalog_loss
from models.semantic import DualViewCORE, fuse_vectors

PERSONA_FUSIONS = ("gate", "concat")


def two_stage_scores(
    candidate: Tensor, rerank: Tensor, n_candidates: int, mix: float
) -> Tensor:
    """Full-catalog scores [B, N] whose ranking is: the top ``n_candidates`` items of
    ``candidate`` ordered by mix * log_softmax(rerank) + (1 - mix) * log_softmax(candidate)
    (both over the candidates), then every other item in ``candidate``'s order.

    Args:
        candidate: first-stage scores [B, N], padding -inf.
        rerank: re-ranker scores [B, N] (finite at the candidates).
        n_candidates: candidates kept per row (capped at the finite items of a row).
        mix: weight of the re-ranker in [0, 1].

    Returns:
        A new tensor; -inf exactly where ``candidate`` is -inf, finite elsewhere.
    """
    finite = int(torch.isfinite(candidate).sum(dim=1).min())
    n = max(1, min(n_candidates, finite))
    top_scores, top = candidate.topk(n, dim=1)
    picked = rerank.gather(1, top)
    final = mix * torch.log_softmax(picked.float(), dim=1) + (1 - mix) * torch.log_softmax(
        top_scores.float(), dim=1
    )
    floor = final.amin(dim=1, keepdim=True)
    cut = top_scores[:, -1:].float()  # no non-candidate scores above it
    out = candidate.float() - cut + floor - 1.0
    return out.scatter_(1, top, final)


class PersonaCORE(DualViewCORE):
    """Persona-conditioned CORE-trm candidates re-ranked by a jointly trained CORE-trm (see the
    module docstring). ``wants_users``: the trainer passes each row's user id.

    Args:
        n_items: catalog rows (row 0 = padding).
        embedding_size: d.
        encoder: the candidate model's session encoder (CORE-trm's).
        base: the re-ranker (a CORE-trm).
        semantic: frozen item text vectors [n_items, D] (zero rows: no text).
        personas: persona per user id [n_users, P].
        known: bool [n_users], which user ids have a persona (False at 0).
        profiles: profiles [n_known, D] of the training users, for the fallback.
        profile_personas: their personas [n_known, P], same order.
        persona_fusion: "gate" or "concat".
        n_candidates: first-stage candidates per row.
        rerank_mix: weight of the re-ranker inside the candidates.
        fallback_k: nearest training users averaged for a session without a known user.
        sem_size: projected text dimension.
        sem_dropout: dropout on the projected text view.
        **core_options: CORE's options (dropouts, temperature, objective).
    """

    wants_users = True

    def __init__(
        self,
        n_items: int,
        embedding_size: int,
        encoder: nn.Module,
        base: CORE,
        semantic: np.ndarray | Tensor,
        personas: np.ndarray,
        known: np.ndarray,
        profiles: np.ndarray,
        profile_personas: np.ndarray,
        *,
        persona_fusion: str,
        n_candidates: int,
        rerank_mix: float,
        fallback_k: int,
        sem_size: int,
        sem_dropout: float,
        **core_options,
    ) -> None:
        super().__init__(n_items, embedding_size, encoder, **core_options)
        if not len(profiles):
            raise ValueError("no training user has a persona")
        d = embedding_size
        size = personas.shape[1]
        self.base = base
        self.persona_fusion = persona_fusion
        self.n_candidates = n_candidates
        self.rerank_mix = rerank_mix
        self.fallback_k = min(fallback_k, len(profiles))
        self._add_item_views(semantic, sem_size=sem_size, sem_dropout=sem_dropout,
                             fusion=persona_fusion)
        # Data, not weights: non-persistent buffers (they come from the dataset, not checkpoints).
        unit = F.normalize
        self.register_buffer("unit_semantic", unit(self.semantic, dim=1), persistent=False)
        self.register_buffer("personas", unit(torch.as_tensor(personas), dim=1), persistent=False)
        self.register_buffer("known", torch.as_tensor(known, dtype=torch.bool), persistent=False)
        self.register_buffer("profiles", unit(torch.as_tensor(profiles), dim=1), persistent=False)
        self.register_buffer(
            "profile_personas", unit(torch.as_tensor(profile_personas), dim=1), persistent=False
        )
        self.persona_project = nn.Linear(size, d)
        self.fuse = nn.Linear(2 * d, d)
        self._init_item_views(self.persona_project, self.fuse, fusion_layer=self.fuse,
                              fusion=persona_fusion)

    # -- representations --------------------------------------------------------------------

    def known_users(self, users: Tensor) -> Tensor:
        """Bool [B]: which user ids have a persona.

        Args:
            users: user ids [B] (0 = unknown; ids beyond the table are unknown too).

        Returns:
            Bool [B].
        """
        inside = (users > 0) & (users < len(self.known))
        return inside & self.known[torch.where(inside, users, 0)]

    def persona_of(self, items: Tensor, users: Tensor | None) -> Tensor:
        """Unit personas [B, P] of the rows' users, the fallback where a user has none.

        Args:
            items: right-padded prefixes [B, L] (for the fallback).
            users: user ids [B]; None: no row has a known user.

        Returns:
            [B, P].
        """
        if users is None:
            users = torch.zeros(len(items), dtype=torch.long, device=items.device)
        known = self.known_users(users)
        out = self.personas[torch.where(known, users, 0)]
        if not bool(known.all()):
            rows = (~known).nonzero().squeeze(1)
            out = out.index_copy(0, rows, self.fallback_persona(items[rows]))
        return out

    def fallback_persona(self, items: Tensor) -> Tensor:
        """Mean persona of the ``fallback_k`` training users whose profiles are nearest to the
        mean text vector of each session's items (unit, [B, P]).

        Args:
            items: right-padded prefixes [B, L].

        Returns:
            [B, P].
        """
        # embedding_bag sums each row's vectors without a [B, L, D] intermediate.
        summed = F.embedding_bag(items, self.unit_semantic, mode="sum", padding_idx=PAD)
        session = F.normalize(summed, dim=1)
        nearest = (session @ self.profiles.t()).topk(self.fallback_k, dim=1).indices
        return F.normalize(self.profile_personas[nearest].mean(dim=1), dim=1)

    def condition(self, h: Tensor, persona: Tensor) -> Tensor:
        """The session vector fused with the projected persona (``persona_fusion``).

        Args:
            h: session vectors [B, d] before normalisation.
            persona: unit personas [B, P].

        Returns:
            The conditioned session vectors [B, d].
        """
        q = self.persona_project(persona).to(h.dtype)
        return fuse_vectors(h, q, self.fuse, self.persona_fusion)

    def encode(
        self, items: Tensor, table: Tensor | None = None, users: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Normalised persona-conditioned session vectors [B, d] and the attention weights.

        Args:
            items: right-padded item ids [B, L].
            table: the batch's ``item_table()`` when already computed.
            users: user id per row [B] (None: every row without a known user).

        Returns:
            The session vectors and the encoder's weights [B, L].
        """
        packed = Packed(items)
        table = self.item_table() if table is None else table
        x = F.embedding(packed.pack(items), table)
        h, alpha = self.encoder(packed, dropout(x, self.sess_dropout, self.training))
        h = self.condition(h, self.persona_of(items, users))
        return F.normalize(h.float(), dim=-1), alpha

    # -- training and inference --------------------------------------------------------------

    def forward(
        self, items: Tensor, targets: Tensor, users: Tensor | None = None,
        weights: Tensor | None = None,
    ) -> Tensor:
        """Sum of the candidate model's and the re-ranker's training losses.

        Args:
            items: right-padded prefixes [B, L].
            targets: next items [B].
            users: user ids [B] (None: all rows use the fallback persona).
            weights: loss weight per row [B] (None: all 1), for both losses.

        Returns:
            The loss (a scalar).
        """
        table = self.item_table()
        h, _ = self.encode(items, table, users)
        dropped = dropout(table, self.item_dropout, self.training)
        obj = self.objective
        loss = catalog_loss(
            h / self.temperature, F.normalize(dropped, dim=-1), targets,
            label_smoothing=obj.label_smoothing, impl=obj.loss_impl, weights=weights,
        )
        return loss + self.base(items, targets, weights)

    def inference_context(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """What every inference batch shares: both models' tables and normalised catalogs
        (compute once per evaluation).

        Returns:
            The candidate model's table and catalog, then the re-ranker's.
        """
        table, base_table = self.item_table(), self.base.item_table()
        return table, F.normalize(table, dim=-1), base_table, F.normalize(base_table, dim=-1)

    def candidate_scores(
        self, items: Tensor, users: Tensor | None = None, context: tuple | None = None
    ) -> Tensor:
        """The candidate model's full-catalog logits [B, N] (padding -inf).

        Args:
            items: right-padded prefixes [B, L].
            users: user ids [B].
            context: ``inference_context()``, when scoring many batches.

        Returns:
            [B, N].
        """
        table, catalog, _, _ = context or self.inference_context()
        return self.score(self.encode(items, table, users)[0], catalog)

    def rerank_scores(self, items: Tensor, context: tuple | None = None) -> Tensor:
        """The re-ranker's full-catalog logits [B, N] (padding -inf).

        Args:
            items: right-padded prefixes [B, L].
            context: ``inference_context()``, when scoring many batches.

        Returns:
            [B, N].
        """
        _, _, base_table, base_catalog = context or self.inference_context()
        return self.base.score(self.base.encode(items, base_table)[0], base_catalog)

    def predict(
        self, items: Tensor, users: Tensor | None = None, context: tuple | None = None
    ) -> Tensor:
        """Full-catalog scores [B, N] of the two-stage ranking (``two_stage_scores``).

        Args:
            items: right-padded prefixes [B, L].
            users: user id per row [B] (None: all rows use the fallback persona).
            context: ``inference_context()``, when scoring many batches.

        Returns:
            [B, N], padding -inf.
        """
        context = context or self.inference_context()
        scores = two_stage_scores(
            self.candidate_scores(items, users, context),
            self.rerank_scores(items, context),
            self.n_candidates,
            self.rerank_mix,
        )
        scores[:, PAD] = float("-inf")
        return scores
