"""Purification samplers: noise a clean-looking image to t*, then walk back to t = 0.

* ``ddpm``    — the full reverse chain from t* (t* model calls): predicted x0 clipped
  to [-1,1] each step, DDPM posterior mean plus fixed posterior-variance noise,
  no noise on the last step (ECLIPSE, PureGen-DDPM).
* ``ddim``    — ``steps`` strided deterministic DDIM steps from t* (η = 0).
* ``oneshot`` — one model call: the x0 prediction at t* (Hong et al.).

Every random draw for a sample is a function of (seed, sample index, repeat):
either a CPU generator seeded by them, drawn on the host and copied over
(``rng="generator"``), or Philox4x32-10 counters keyed by them, drawn on the
model's device (``rng="philox"``: no host work in the loop). With the model calls' fixed shape
(:func:`eclipse_ray.defenses.base.fixed_shape`) the output never depends on
the shard layout or actor count. Schedule coefficients live on the device as tensors and
are indexed with Python ints: no host synchronisation inside the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from eclipse_ray.config import ConfigError
from eclipse_ray.rng import per_sample_randn, philox_randn

EpsFn = Callable[[torch.Tensor, int], torch.Tensor]
SAMPLERS = ("ddpm", "ddim", "oneshot")
NOISE_RNGS = ("generator", "philox")


@dataclass(frozen=True)
class SamplerPlan:
    """What to run: sampler, start step t*, model calls (ddim), repeats of the whole chain."""

    sampler: str
    t_star: int
    steps: int = 0
    repeats: int = 1

    def draws(self) -> int:
        """Gaussian draws per sample and repeat (initial noise + per-step noise for ddpm)."""
        return max(self.t_star, 1) if self.sampler == "ddpm" else 1

    def model_calls(self) -> int:
        calls = {"ddpm": self.t_star, "ddim": min(self.steps, self.t_star), "oneshot": min(1, self.t_star)}
        return calls[self.sampler] * self.repeats


def sample_noise(index: np.ndarray, seed: int, repeat: int, draws: int, shape: tuple[int, ...],
                 device: torch.device | str = "cpu", rng: str = "generator") -> torch.Tensor:
    """(B, draws, *shape) standard normal noise on ``device``, each sample's from its own (seed, index, repeat)
    stream: per-sample CPU generators copied over, or Philox drawn where it is used."""
    if rng == "philox":
        return philox_randn(index, seed, repeat, (draws, *shape), device)
    if rng != "generator":
        raise ConfigError(f"noise rng {rng!r}: expected one of {', '.join(NOISE_RNGS)}")
    return per_sample_randn(index, seed, repeat, (draws, *shape)).to(device, non_blocking=True)


def make_eps_fn(unet: torch.nn.Module, bf16: bool = False) -> EpsFn:
    """ε-prediction at forward step t (model timestep t-1), optionally under bf16 autocast."""
    def eps(x: torch.Tensor, t: int) -> torch.Tensor:
        steps = torch.full((x.shape[0],), t - 1, device=x.device, dtype=torch.long)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = unet(x, steps, return_dict=False)[0]
        # a tensor of its own: under CUDA graphs the UNet's output buffer is rewritten by the next call
        return out.float() if out.dtype != torch.float32 else out.clone()
    return eps


def ddpm(eps: EpsFn, x0: torch.Tensor, plan: SamplerPlan, c: dict[str, torch.Tensor], noise: torch.Tensor):
    t = plan.t_star
    x = c["sqrt_ab"][t] * x0 + c["sqrt_1m_ab"][t] * noise[:, 0]
    for k in range(t, 0, -1):
        x0_hat = ((x - c["sqrt_1m_ab"][k] * eps(x, k)) / c["sqrt_ab"][k]).clamp(-1, 1)
        if k == 1:
            return x0_hat
        x = c["post_c0"][k] * x0_hat + c["post_ct"][k] * x + c["post_std"][k] * noise[:, t - k + 1]
    return x0


def ddim(eps: EpsFn, x0: torch.Tensor, plan: SamplerPlan, c: dict[str, torch.Tensor], noise: torch.Tensor):
    t = plan.t_star
    if t == 0:
        return x0
    ts = ddim_timesteps(t, plan.steps)
    x = c["sqrt_ab"][t] * x0 + c["sqrt_1m_ab"][t] * noise[:, 0]
    for k, k_next in zip(ts, ts[1:] + [0]):
        e = eps(x, k)
        x0_hat = ((x - c["sqrt_1m_ab"][k] * e) / c["sqrt_ab"][k]).clamp(-1, 1)
        if k_next == 0:
            return x0_hat
        x = c["sqrt_ab"][k_next] * x0_hat + c["sqrt_1m_ab"][k_next] * e
    return x0


def oneshot(eps: EpsFn, x0: torch.Tensor, plan: SamplerPlan, c: dict[str, torch.Tensor], noise: torch.Tensor):
    t = plan.t_star
    if t == 0:
        return x0
    x = c["sqrt_ab"][t] * x0 + c["sqrt_1m_ab"][t] * noise[:, 0]
    return ((x - c["sqrt_1m_ab"][t] * eps(x, t)) / c["sqrt_ab"][t]).clamp(-1, 1)


def ddim_timesteps(t_star: int, steps: int) -> list[int]:
    """``steps`` distinct forward steps from t* down towards 1, evenly strided."""
    if steps < 1:
        raise ConfigError(f"defense.steps={steps}: ddim needs at least 1 step")
    ts = np.unique(np.round(np.linspace(t_star, 0, min(steps, t_star) + 1)[:-1]).astype(int))[::-1]
    return [int(v) for v in ts if v > 0]


RUNNERS = {"ddpm": ddpm, "ddim": ddim, "oneshot": oneshot}


@torch.inference_mode()
def purify_batch(unet: torch.nn.Module, coeffs: dict[str, torch.Tensor], images: np.ndarray, index: np.ndarray,
                 plan: SamplerPlan, seed: int, bf16: bool = False, channels_last: bool = False,
                 rng: str = "generator") -> np.ndarray:
    """Purify uint8 NHWC ``images`` (sample ids ``index``): the loop to read and to edit.

    pixels → [-1,1] → (noise to t*, reverse sampler) × repeats → pixels.
    """
    device = coeffs["sqrt_ab"].device
    eps = make_eps_fn(unet, bf16)
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for r in range(plan.repeats):
        noise = sample_noise(index, seed, r, plan.draws(), tuple(x.shape[1:]), device, rng)
        x = RUNNERS[plan.sampler](eps, x, plan, coeffs, noise)
    pixels = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()
