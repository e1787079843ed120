"""Noise schedules and the one noise unit all samplers share (docs/design.md §5.0).

A purifier's noise is σ in pixel units ([0,1] scale): ``x_noisy = x + σ·n``.
A diffusion model works on [-1,1] with cumulative product ᾱ, so after ``t``
forward steps the noisy input ``√ᾱ·(2x−1) + √(1−ᾱ)·n`` carries
``σ(t) = √((1−ᾱ)/ᾱ) / 2`` of pixel-scale noise. Conventions here:

* ``t`` counts forward steps: ``t = 0`` is the clean image (ᾱ = 1), ``t = k``
  uses ``alphas_cumprod[k-1]`` and the model is called with timestep ``k-1``;
  purifying from ``t*`` with the full chain takes ``t*`` model calls.
* :meth:`Schedule.t_for_sigma` is the smallest ``t`` with ``σ(t) ≥ σ``.

Reference (cosine, T = 4,000): t* = 100 ↔ ᾱ = 0.9975 ↔ σ ≈ 6.4/255 (ECLIPSE).
On the linear 1,000-step schedule t = 100 is ≈ 41/255: never compare t* across
schedules. Betas come from diffusers' ``DDPMScheduler`` so saved models load
with their scheduler config.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from eclipse_ray.config import ConfigError

SCHEDULES = {"cosine": "squaredcos_cap_v2", "linear": "linear"}


@dataclass(frozen=True, eq=False)
class Schedule:
    """ᾱ for t = 0..T (index t; ᾱ[0] = 1) and the DDPM posterior coefficients, all float64 on the CPU."""

    kind: str
    alphas_cumprod: torch.Tensor  # (T+1,), [0] = 1

    @classmethod
    def make(cls, kind: str, num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> "Schedule":
        from diffusers import DDPMScheduler

        if kind not in SCHEDULES:
            raise ConfigError(f"unknown schedule {kind!r} (known: {', '.join(SCHEDULES)})")
        sched = DDPMScheduler(num_train_timesteps=num_steps, beta_schedule=SCHEDULES[kind],
                              beta_start=beta_start, beta_end=beta_end)
        return cls.from_scheduler(sched, kind)

    @classmethod
    def from_scheduler(cls, sched, kind: str | None = None) -> "Schedule":
        """From a diffusers scheduler (its ``alphas_cumprod``)."""
        ab = sched.alphas_cumprod.double()
        kind = kind or {v: k for k, v in SCHEDULES.items()}.get(sched.config.beta_schedule, sched.config.beta_schedule)
        return cls(kind, torch.cat([torch.ones(1, dtype=torch.float64), ab]))

    @property
    def num_steps(self) -> int:
        return len(self.alphas_cumprod) - 1

    def sigma(self, t: int) -> float:
        """Pixel-scale noise σ carried after ``t`` forward steps."""
        self._check_t(t)
        ab = self.alphas_cumprod[t]
        return float(torch.sqrt((1 - ab) / ab) / 2)

    def t_for_sigma(self, sigma: float) -> int:
        """The smallest ``t`` whose noise reaches ``sigma`` (pixel units)."""
        if sigma < 0:
            raise ConfigError(f"defense.sigma={sigma}: must be ≥ 0")
        ab = self.alphas_cumprod
        sig = torch.sqrt((1 - ab) / ab) / 2
        hits = torch.nonzero(sig >= sigma - 1e-12)
        if not len(hits):
            raise ConfigError(f"defense.sigma={sigma:.4g}: beyond this {self.kind} schedule's largest noise "
                              f"({float(sig[-1]):.4g} at t={self.num_steps})")
        return int(hits[0])

    def _check_t(self, t: int) -> None:
        if not 0 <= t <= self.num_steps:
            raise ConfigError(f"defense.t_star={t}: must lie in 0..{self.num_steps} for this schedule")

    def coefficients(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """Per-t tensors on ``device`` (index t = 1..T; [0] unused) for the samplers: no host sync per step."""
        ab = self.alphas_cumprod
        ab_prev = torch.cat([ab[:1], ab[:-1]])
        beta = 1 - ab / ab_prev
        post_var = beta * (1 - ab_prev) / (1 - ab).clamp_min(1e-20)
        c = {
            "sqrt_ab": ab.sqrt(), "sqrt_1m_ab": (1 - ab).sqrt(), "ab_prev_sqrt": ab_prev.sqrt(),
            "sqrt_1m_ab_prev": (1 - ab_prev).sqrt(),
            "post_c0": beta * ab_prev.sqrt() / (1 - ab).clamp_min(1e-20),
            "post_ct": (1 - ab_prev) * (1 - beta).sqrt() / (1 - ab).clamp_min(1e-20),
            "post_std": post_var.clamp_min(0).sqrt(),
        }
        return {k: v.to(device=device, dtype=dtype) for k, v in c.items()}
