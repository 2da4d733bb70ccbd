"""The conditional noise-prediction network eps_theta(x_t, t, c) of the augmentation's diffusion
model: a small pre-LN transformer over the tokens of one row.

A row is ``window`` prefix slots followed by the target slot, each holding an item vector (or zeros
for an empty prefix slot), so x_t is [B, window + 1, d]. Every token is projected to ``hidden``
and gets a learned slot embedding, the timestep's sinusoidal embedding (through an MLP, as in Ho
et al. 2020) and the condition's embedding: one of ``n_classes`` popularity groups, or the extra
null class that classifier-free guidance trains with (Ho & Salimans 2022). Attention is
bidirectional (the whole row is denoised jointly); the output projection back to d predicts the
noise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from models.diffusion.schedule import guided_eps


def timestep_embedding(t: Tensor, size: int) -> Tensor:
    """Sinusoidal embeddings [B, size] of timesteps (Vaswani et al.'s positions, as DDPM uses).

    Args:
        t: timesteps [B] (any numeric dtype).
        size: the embedding size (even).

    Returns:
        float32 [B, size]: sin of the first half of the frequencies, then cos.
    """
    half = size // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device) / max(half, 1))
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class Denoiser(nn.Module):
    """eps_theta(x_t, t, c) for rows of ``window + 1`` item vectors of size ``dim``.

    Args:
        dim: item vector size d.
        window: prefix slots per row (the row has window + 1 tokens).
        n_classes: condition classes (popularity groups); class ``n_classes`` is the null one.
        hidden: the transformer's width.
        layers: transformer layers.
        heads: attention heads (must divide ``hidden``).
    """

    def __init__(
        self, dim: int, window: int, n_classes: int, hidden: int = 128, layers: int = 2,
        heads: int = 4,
    ) -> None:
        super().__init__()
        self.dim, self.window, self.n_classes, self.hidden = dim, window, n_classes, hidden
        self.null_class = n_classes
        self.inp = nn.Linear(dim, hidden)
        self.slots = nn.Parameter(torch.zeros(window + 1, hidden))
        nn.init.normal_(self.slots, std=0.02)
        self.time = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.classes = nn.Embedding(n_classes + 1, hidden)
        layer = nn.TransformerEncoderLayer(
            hidden, heads, dim_feedforward=2 * hidden, dropout=0.0, activation="gelu",
            batch_first=True, norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim)

    def forward(self, x_t: Tensor, t: Tensor, c: Tensor) -> Tensor:
        """The predicted noise of ``x_t``.

        Args:
            x_t: noised rows [B, window + 1, dim].
            t: 0-based timesteps [B].
            c: condition classes [B], in 0..n_classes (n_classes = unconditional).

        Returns:
            The noise prediction [B, window + 1, dim].
        """
        h = self.inp(x_t) + self.slots
        condition = self.time(timestep_embedding(t, self.hidden)) + self.classes(c)
        h = self.encoder(h + condition[:, None, :])
        return self.out(self.norm(h))

    def guided(self, x_t: Tensor, t: Tensor, c: Tensor, scale: float) -> Tensor:
        """Classifier-free guided noise eps_u + scale (eps_c - eps_u), the conditional and
        unconditional predictions computed in one batch (``schedule.guided_eps``).

        Args:
            x_t: noised rows [B, window + 1, dim].
            t: 0-based timesteps [B].
            c: condition classes [B] (not the null class).
            scale: the guidance scale w (0: unconditional, 1: conditional).

        Returns:
            The guided noise prediction [B, window + 1, dim].
        """
        null = torch.full_like(c, self.null_class)
        both = self(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([c, null]))
        eps_cond, eps_uncond = both.chunk(2)
        return guided_eps(eps_cond, eps_uncond, scale)
