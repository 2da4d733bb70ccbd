"""The DDPM noise schedule: beta_t, the forward (noising) process in closed form, the ancestral
reverse step, and classifier-free guidance.

Forward process (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", eq. 4): with
alpha_t = 1 - beta_t and abar_t = prod_{s<=t} alpha_s,

    q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I),
    i.e. x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps with eps ~ N(0, I).

Reverse step (their Algorithm 2), with the network's noise prediction eps_theta:

    x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps_theta) / sqrt(alpha_t) + sigma_t z,
    sigma_t^2 = beta_t (1 - abar_{t-1}) / (1 - abar_t)   (the posterior variance; z = 0 at t = 1).

Schedules: ``linear`` is Ho et al.'s beta from 1e-4 to 0.02 over 1000 steps, rescaled to T steps
(both ends times 1000 / T, as Nichol & Dhariwal 2021 do, so a shorter chain still ends near pure
noise); ``cosine`` is Nichol & Dhariwal's abar_t = f(t) / f(0), f(t) = cos^2((t/T + s)/(1 + s)
pi/2), s = 0.008, betas clipped at 0.999.

Classifier-free guidance (Ho & Salimans 2022): one network trained with the condition dropped
(replaced by a null condition) with some probability predicts both eps(x_t, c) and eps(x_t, 0);
sampling uses eps_uncond + w (eps_cond - eps_uncond). Here w = 0 is the unconditional model and
w = 1 the conditional one (the paper's (1 + w') eps_c - w' eps_u with w' = w - 1).

Respaced sampling (Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models",
section 4): a network trained on the T-step chain samples with K < T evenly spaced steps S_1 <
... < S_K of it, the chain's abar at those steps kept and the betas recomputed as beta_k = 1 -
abar_{S_k} / abar_{S_(k-1)}; the network is still told the original timestep S_k. Sampling costs
K instead of T network calls (``Schedule.respaced``).

Timesteps are 0-based in code: index t = 0..T-1 stands for the paper's t = 1..T.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

BETA_SCHEDULES = ("linear", "cosine")
LINEAR_BETA_START = 1e-4  # Ho et al. 2020, for 1000 steps
LINEAR_BETA_END = 0.02
COSINE_OFFSET = 0.008  # Nichol & Dhariwal 2021
MAX_BETA = 0.999


def make_betas(kind: str, steps: int) -> Tensor:
    """The noise variances beta_1..beta_T of a named schedule (float64).

    Args:
        kind: "linear" or "cosine" (see the module docstring).
        steps: T, the chain's length (>= 1).

    Returns:
        A float64 tensor [steps], every value in (0, 1).

    Raises:
        ValueError: an unknown schedule or steps < 1.
    """
    if steps < 1:
        raise ValueError(f"diffusion steps must be >= 1, got {steps}")
    if kind == "linear":
        scale = 1000.0 / steps
        start, end = LINEAR_BETA_START * scale, min(LINEAR_BETA_END * scale, MAX_BETA)
        return torch.linspace(start, end, steps, dtype=torch.float64)
    if kind == "cosine":
        s = COSINE_OFFSET
        grid = torch.arange(steps + 1, dtype=torch.float64) / steps
        f = torch.cos((grid + s) / (1 + s) * math.pi / 2) ** 2
        abar = f / f[0]
        return (1 - abar[1:] / abar[:-1]).clamp(max=MAX_BETA)
    raise ValueError(f"beta schedule must be one of {BETA_SCHEDULES}, got {kind!r}")


@dataclass(frozen=True)
class Schedule:
    """A DDPM chain's constants (float32 tensors [T], index t for the paper's t + 1), and the
    network timestep of each index (long [T]: ``arange(T)``, or the steps kept by
    ``respaced``)."""

    betas: Tensor
    alphas: Tensor
    alpha_bars: Tensor
    posterior_variance: Tensor
    timesteps: Tensor

    @classmethod
    def create(cls, kind: str, steps: int) -> Schedule:
        """The schedule of ``make_betas(kind, steps)``.

        Args:
            kind: "linear" or "cosine".
            steps: T.

        Returns:
            The schedule (float32 tensors on CPU; see ``to``).
        """
        betas = make_betas(kind, steps)
        return cls._from_alpha_bars(torch.cumprod(1 - betas, dim=0), torch.arange(steps))

    @classmethod
    def _from_alpha_bars(cls, alpha_bars: Tensor, timesteps: Tensor) -> Schedule:
        previous = torch.cat([alpha_bars.new_ones(1), alpha_bars[:-1]])
        alphas = alpha_bars / previous
        betas = 1 - alphas
        posterior = betas * (1 - previous) / (1 - alpha_bars)
        return cls(*(x.float() for x in (betas, alphas, alpha_bars, posterior)), timesteps)

    @classmethod
    def respaced(cls, kind: str, steps: int, sample_steps: int) -> Schedule:
        """The chain of ``make_betas(kind, steps)`` restricted to ``sample_steps`` evenly spaced
        timesteps, the first and the last included (see the module docstring); the full chain
        when ``sample_steps`` >= ``steps``.

        Args:
            kind: "linear" or "cosine".
            steps: T, the chain the network was trained on.
            sample_steps: K, the steps to sample with (>= 1).

        Returns:
            A schedule of K steps whose ``timesteps`` are the original ones.

        Raises:
            ValueError: sample_steps < 1 (or as ``make_betas``).
        """
        if sample_steps < 1:
            raise ValueError(f"sample steps must be >= 1, got {sample_steps}")
        betas = make_betas(kind, steps)
        if sample_steps >= steps:
            return cls.create(kind, steps)
        kept = torch.linspace(0, steps - 1, sample_steps, dtype=torch.float64).round().long()
        alpha_bars = torch.cumprod(1 - betas, dim=0)[kept]
        return cls._from_alpha_bars(alpha_bars, kept)

    @property
    def steps(self) -> int:
        """T, the chain's length."""
        return len(self.betas)

    def to(self, device: torch.device | str) -> Schedule:
        """This schedule with its tensors on ``device``.

        Args:
            device: the target device.

        Returns:
            A new schedule.
        """
        return Schedule(*(x.to(device) for x in (
            self.betas, self.alphas, self.alpha_bars, self.posterior_variance, self.timesteps)))

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t ~ q(x_t | x_0) in closed form: sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise.

        Args:
            x0: clean samples [B, ...].
            t: 0-based timesteps [B] (long).
            noise: standard normal noise shaped like ``x0``.

        Returns:
            The noised samples, shaped like ``x0``.
        """
        abar = self.alpha_bars[t].view(-1, *([1] * (x0.dim() - 1)))
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def p_step(self, x_t: Tensor, t: int, eps: Tensor, noise: Tensor | None) -> Tensor:
        """One ancestral reverse step x_t -> x_{t-1} (Ho et al.'s Algorithm 2).

        Args:
            x_t: current samples [B, ...].
            t: the 0-based timestep of ``x_t`` (all rows share it).
            eps: the (guided) noise prediction for ``x_t``.
            noise: standard normal noise shaped like ``x_t``; ignored (no noise) at t = 0.

        Returns:
            x_{t-1} (x_0 at t = 0).
        """
        beta, alpha, abar = self.betas[t], self.alphas[t], self.alpha_bars[t]
        mean = (x_t - beta / (1 - abar).sqrt() * eps) / alpha.sqrt()
        if t == 0 or noise is None:
            return mean
        return mean + self.posterior_variance[t].sqrt() * noise


def guided_eps(eps_cond: Tensor, eps_uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: eps_uncond + scale (eps_cond - eps_uncond).

    Args:
        eps_cond: the noise predicted with the condition.
        eps_uncond: the noise predicted with the null condition.
        scale: w; 0 gives ``eps_uncond``, 1 gives ``eps_cond``, larger values extrapolate
            towards the condition.

    Returns:
        The guided prediction.
    """
    return eps_uncond + scale * (eps_cond - eps_uncond)
