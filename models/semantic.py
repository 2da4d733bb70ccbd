"""SemSR on CORE's transformer backbone: semantic item vectors from item text, two ways.

SemSR (Semantics-aware robust Session-based Recommendation, 2025) feeds frozen language-model
embeddings of item text into a data-driven session model. Of its variants, two fit CORE:

* **SemSR-I** (``semsr_i``): the trainable item table starts from the semantic vectors instead of
  random numbers (``semantic_init``), then trains exactly as CORE-trm. The projection from the
  text model's D dimensions to ``embedding_size`` d is PCA: the vectors of items that have text
  are centred, projected on their top-d principal directions (SVD of the centred matrix), and
  scaled so that the table's entries have the standard deviation of CORE's own initialisation,
  U(-1/sqrt(d), 1/sqrt(d)), i.e. 1/sqrt(3d): the text fixes the table's geometry (which items
  start close), CORE's init fixes its scale, so Adam's steps mean the same as in CORE-trm. Items
  without text, and the columns beyond the semantic matrix's rank, keep CORE's random values.

* **SemSR-F** (``semsr_f``, ``SemanticFusionCORE``): a dual-view item representation.
  The frozen semantic table S [n_items, D] (a buffer: no gradient, never trained) is projected to
  ``sem_size`` dimensions, s_i = dropout(W_p S_i + b_p) (``sem_dropout`` on the semantic view),
  and fused with the trainable ID vector e_i through a linear layer: x_i = W_f [e_i; s_i] + b_f.
  W_f starts as [I | N(0, 0.02)], so the fused table starts as CORE's ID table plus a small
  semantic part. Sessions are then encoded twice:

  - behavioural: CORE-trm over the fused item vectors x (a linear combination of them);
  - semantic: soft attention over the session's projected semantic vectors with the last item
    as the query (as SR-GNN / NISER, which SemSR builds on, read a session):
    beta_i = softmax_i(q^T sigmoid(W_1 s_last + W_2 s_i + c)), h_sem = W_o sum_i beta_i s_i;

  and fused (``fusion``): ``concat``, h = W_c [h_beh; h_sem] (W_c starts as [I | N(0, 0.02)]),
  or ``gate``, h = g * h_beh + (1 - g) * h_sem with g = sigmoid(W_g [h_beh; h_sem] + b_g) per
  dimension. Scoring is CORE's: cosine between h and the fused, item-dropped-out table, divided
  by the temperature.

Items without text have a zero semantic vector (see ``data.text``): their semantic view is the
projection's bias, so they rely on their ID vector; nothing divides by their norm.

The dual-view item table, the gate / concat fusion of two vectors and their initialisation are
``DualViewCORE``'s, which the ``persona`` variant's candidate model shares (``models.persona``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.core import CORE
from models.core_variants import CORE_KEYS, TRANSFORMER, core_options, trm_encoder
from models.encoders import INIT_STD, Packed, dropout, init_weights
from models.spec import COUNT, FRACTION, Keys, VariantSpec, one_of

FUSIONS = ("concat", "gate")


def semantic_init(
    vectors: np.ndarray | Tensor, table: Tensor, *, has_text: np.ndarray | Tensor | None = None
) -> Tensor:
    """SemSR-I's initial item table: ``table`` (CORE's random init) with the rows of items that
    have text replaced by the PCA projection of their semantic vectors, scaled to CORE's init
    standard deviation 1/sqrt(3d) (see the module docstring).

    Args:
        vectors: semantic item vectors [n_items, D] (row 0 = padding; zero rows = no text).
        table: CORE's randomly initialised table [n_items, d]; not modified.
        has_text: boolean [n_items], which rows carry text (default: the non-zero rows, never
            the padding row 0).

    Returns:
        A new table [n_items, d] (float32).
    """
    semantic = torch.as_tensor(np.asarray(vectors), dtype=torch.float64)
    if semantic.ndim != 2 or len(semantic) != len(table):
        raise ValueError(
            f"semantic vectors {tuple(semantic.shape)} do not match the table {tuple(table.shape)}"
        )
    if has_text is None:
        has_text = semantic.abs().sum(dim=1) > 0
    has_text = torch.as_tensor(np.asarray(has_text), dtype=torch.bool).clone()
    has_text[0] = False
    out = table.detach().clone().float()
    rows = semantic[has_text]
    if len(rows) < 2:
        return out  # nothing to learn a geometry from
    d = table.shape[1]
    centred = rows - rows.mean(dim=0)
    _, singular, directions = torch.linalg.svd(centred, full_matrices=False)
    rank = int((singular > singular[0] * 1e-6).sum()) if singular[0] > 0 else 0
    k = min(d, rank)
    if k == 0:
        return out
    projected = centred @ directions[:k].T  # [rows, k]
    target_std = 1.0 / math.sqrt(3 * d)
    projected = projected * (target_std / projected.std())
    block = out[has_text]
    block[:, :k] = projected.float()
    out[has_text] = block
    return out


class SemanticAttention(nn.Module):
    """Soft attention over a session's vectors with its last item as the query:
    beta_i = softmax_i(q^T sigmoid(W_1 s_last + W_2 s_i + c))."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.query = nn.Linear(size, size)  # W_1 s_last + c
        self.key = nn.Linear(size, size, bias=False)  # W_2 s_i
        self.score = nn.Linear(size, 1, bias=False)  # q

    def forward(self, packed: Packed, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Session vectors [B, size] and the weights beta [B, L] of token vectors [T, size].

        Args:
            packed: the batch's layout.
            tokens: the session tokens' vectors [T, size].

        Returns:
            The session vectors [B, size] and the weights beta [B, L].
        """
        last = tokens[packed.last][packed.row]
        beta = packed.softmax(self.score(torch.sigmoid(self.query(last) + self.key(tokens))))
        return packed.weighted_sum(beta, tokens), beta


def _identity_then_noise(layer: nn.Linear, identity_columns: int) -> None:
    """Weight [I | N(0, INIT_STD)], bias 0: the output starts as the first input block."""
    with torch.no_grad():
        nn.init.normal_(layer.weight, std=INIT_STD)
        layer.weight[:, :identity_columns] = torch.eye(layer.out_features, identity_columns)
        nn.init.zeros_(layer.bias)


def fuse_vectors(h: Tensor, other: Tensor, layer: nn.Linear, fusion: str) -> Tensor:
    """Two vectors fused by ``fusion``: "concat", W [h; other] + b, or "gate",
    g * h + (1 - g) * other with g = sigmoid(W [h; other] + b) per dimension.

    Args:
        h: the main vectors [B, d].
        other: the vectors fused into them [B, d].
        layer: W, b (2d -> d).
        fusion: one of ``FUSIONS``.

    Returns:
        The fused vectors [B, d].
    """
    both = torch.cat([h, other.to(h.dtype)], dim=1)
    if fusion == "concat":
        return layer(both)
    gate = torch.sigmoid(layer(both))
    return gate * h + (1 - gate) * other


class DualViewCORE(CORE):
    """CORE over dual-view items: the trainable ID vector e_i fused with the projected frozen
    text vector, x_i = W_f [e_i; dropout(W_p S_i + b_p)] (W_f starts as [I | N(0, 0.02)]).
    Subclasses add the views in their ``__init__`` (``_add_item_views``), then their own layers,
    then initialise them together (``_init_item_views``): the order decides the random draws."""

    def _add_item_views(self, semantic: np.ndarray | Tensor, *, sem_size: int,
                        sem_dropout: float, fusion: str) -> None:
        """Registers the frozen text vectors (a non-persistent buffer: no gradient, never
        trained, not in checkpoints: they come from the dataset) and the two item-view layers.

        Args:
            semantic: text vectors [n_items, D] (zero rows: no text).
            sem_size: projected text dimension.
            sem_dropout: dropout on the projected text view.
            fusion: the subclass's fusion of session vectors (checked here, one of ``FUSIONS``).
        """
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; expected one of {FUSIONS}")
        n_items, d = self.item_embedding.shape
        semantic = torch.as_tensor(np.asarray(semantic), dtype=torch.float32)
        if semantic.ndim != 2 or len(semantic) != n_items:
            raise ValueError(
                f"semantic vectors must be [n_items={n_items}, D], got {tuple(semantic.shape)}"
            )
        self.register_buffer("semantic", semantic, persistent=False)
        self.sem_dropout = sem_dropout
        self.sem_project = nn.Linear(semantic.shape[1], sem_size)
        self.item_fuse = nn.Linear(d + sem_size, d)

    def _init_item_views(self, *modules: nn.Module, fusion_layer: nn.Linear, fusion: str) -> None:
        """The spec initialisation of the projection and ``modules``, then W_f, and the fusion
        layer as [I | N(0, 0.02)] when ``fusion`` is "concat" (its output starts as h).

        Args:
            *modules: the subclass's layers (``fusion_layer`` among them).
            fusion_layer: the layer of ``fuse_vectors``.
            fusion: its fusion.
        """
        for module in (self.sem_project, *modules):
            module.apply(init_weights)
        d = self.item_embedding.shape[1]
        _identity_then_noise(self.item_fuse, d)
        if fusion == "concat":
            _identity_then_noise(fusion_layer, d)

    def semantic_view(self, ids: Tensor | None = None) -> Tensor:
        """Projected semantic vectors s = W_p S + b_p of ``ids`` (default: the whole catalog),
        with ``sem_dropout`` in training (an independent draw per call, as CORE's session and
        item dropouts are independent).

        Args:
            ids: item ids, any shape (None: the catalog).

        Returns:
            The projected vectors [..., sem_size].
        """
        semantic = self.semantic if ids is None else F.embedding(ids, self.semantic)
        return dropout(self.sem_project(semantic), self.sem_dropout, self.training)

    def item_table(self) -> Tensor:
        """The fused item vectors x_i = W_f [e_i; s_i] + b_f of the catalog.

        Returns:
            [n_items, d].
        """
        return self.item_fuse(torch.cat([self.item_embedding, self.semantic_view()], dim=1))


class SemanticFusionCORE(DualViewCORE):
    """SemSR-F: CORE-trm over fused ID + semantic item vectors, fused with a semantic session
    vector (see the module docstring)."""

    def __init__(
        self,
        n_items: int,
        embedding_size: int,
        encoder: nn.Module,
        semantic: np.ndarray | Tensor,
        *,
        sem_size: int,
        sem_dropout: float,
        fusion: str,
        **core_options,
    ) -> None:
        super().__init__(n_items, embedding_size, encoder, **core_options)
        self._add_item_views(semantic, sem_size=sem_size, sem_dropout=sem_dropout, fusion=fusion)
        d = embedding_size
        self.fusion = fusion
        self.sem_attention = SemanticAttention(sem_size)
        self.sem_out = nn.Linear(sem_size, d)
        self.combine = nn.Linear(2 * d, d)
        self._init_item_views(self.sem_attention, self.sem_out, self.combine,
                              fusion_layer=self.combine, fusion=fusion)

    def session_vector(self, packed: Packed, items: Tensor, h: Tensor) -> Tensor:
        """CORE-trm's session vector fused with the semantic one (``fusion``).

        Args:
            packed: the batch's layout.
            items: right-padded item ids [B, L].
            h: CORE-trm's session vectors [B, d] before normalisation.

        Returns:
            The fused session vectors [B, d].
        """
        tokens = self.semantic_view(packed.pack(items))
        h_sem = self.sem_out(self.sem_attention(packed, tokens)[0])
        return fuse_vectors(h, h_sem, self.combine, self.fusion)


# --------------------------------------------------------------------------- specs

# SemSR-F: size of the projected semantic view, its dropout, and how the behavioural and the
# semantic session vectors are fused.
SEMSR_F = Keys(
    {"sem_size": 128, "sem_dropout": 0.2, "fusion": "gate"},
    {"sem_size": COUNT, "sem_dropout": FRACTION, "fusion": one_of(FUSIONS)},
)


def _build_semsr_i(config: dict, n_items: int, item_vectors: np.ndarray) -> CORE:
    model = CORE(n_items, config["embedding_size"], trm_encoder(config), **core_options(config))
    with torch.no_grad():
        model.item_embedding.copy_(semantic_init(item_vectors, model.item_embedding))
    return model


def _build_semsr_f(config: dict, n_items: int, item_vectors: np.ndarray) -> SemanticFusionCORE:
    return SemanticFusionCORE(
        n_items, config["embedding_size"], trm_encoder(config), item_vectors,
        sem_size=config["sem_size"], sem_dropout=config["sem_dropout"], fusion=config["fusion"],
        **core_options(config),
    )


SPECS = {
    "semsr_i": VariantSpec("semsr_i", "SemSR-I (CORE-trm)", (CORE_KEYS, TRANSFORMER),
                           build=_build_semsr_i, needs_item_text=True),
    "semsr_f": VariantSpec("semsr_f", "SemSR-F (CORE-trm)", (CORE_KEYS, TRANSFORMER, SEMSR_F),
                           build=_build_semsr_f, needs_item_text=True),
}
