"""``em-adaptive`` — error-minimising noise crafted through ECLIPSE (Wang et al., ESORICS 2024, adaptive attack).

An attacker who knows the defense crafts EM noise (:mod:`eclipse_ray.attacks.em`)
whose min-min loop sees the data the way ECLIPSE's victim will: the surrogate's
input is the perturbed image passed through a differentiable copy of the
defense, both when the surrogate trains and when the noise is optimised, with
the loss averaged over ``eot`` random draws of the defense per PGD step
(expectation over transformation).

* ``through=compensation`` — ECLIPSE's corruption compensation: random
  grayscale (p = 0.4) then Gaussian noise (σ = 0.05), clamped (the same
  :func:`~eclipse_ray.defenses.compensation.compensate` the defense uses; it is
  differentiable in the image).
* ``through=denoise`` — first a differentiable approximation of the purifier:
  Gaussian noise at ``denoise_sigma`` and the *one-shot* x0 prediction of the
  defender's DDPM (gradients flow through the UNet), then compensation. The
  model is ``model`` or, for ``auto``, the same cached tiny DDPM ECLIPSE trains
  on the clean reference set (white-box attacker); ECLIPSE itself runs the full
  reverse chain, which is too deep to differentiate through.

The ECLIPSE paper reports that its defense stays robust to such an adaptive
attack; this module lets that claim be measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from eclipse_ray.attacks.em import EM
from eclipse_ray.attacks.surrogate import View
from eclipse_ray.config import nested, setting
from eclipse_ray.data.imageset import ImageSet
from eclipse_ray.defenses.compensation import compensate, compensation_settings
from eclipse_ray.diffusion.train import DiffusionTrainConfig, recipe_config
from eclipse_ray.diffusion.unet import PRESETS, check_fits, check_model_fits, unet_config

_GRAY_P, _SIGMA, _ = compensation_settings()


@dataclass(frozen=True)
class EMAdaptive(EM):
    name: ClassVar[str] = "em-adaptive"
    summary: ClassVar[str] = "EM crafted through ECLIPSE's compensation (and optionally a one-shot DDPM denoiser)"
    aliases: ClassVar[dict[str, str]] = {"train_preset": "train.preset", "train_iterations": "train.iterations"}
    through: str = setting("compensation", "what the noise is crafted through", choices=("compensation", "denoise"))
    gray_p: float = _GRAY_P  # ECLIPSE's compensation, as the defense declares it
    noise_sigma: float = _SIGMA
    eot: int = setting(4, "random draws of the defense averaged per PGD step", ge=1)
    denoise_sigma: float = setting(0.0249, "denoise: purifier noise σ on [0,1] (ECLIPSE: 0.0249)", gt=0.0, le=1.0)
    model: str = setting("auto", "denoise: DDPM directory, or auto: ECLIPSE's model on the clean reference set")
    train: DiffusionTrainConfig = nested(lambda: recipe_config("eclipse"),
                                         "denoise, auto model: how it is trained (as the eclipse defense's)")

    def check_dataset(self, train: ImageSet) -> None:
        super().check_dataset(train)
        if self.through != "denoise":
            return
        if self.model == "auto":  # before the surrogate is trained or the model fitted
            check_fits(train.image_shape, len(PRESETS[self.train.preset]["down_block_types"]),
                       f"attack.train.preset={self.train.preset}")
        else:
            check_model_fits(unet_config(self.model, "attack.model"), train.image_shape, f"attack.model={self.model}")

    def make_view(self, train: ImageSet, device: torch.device) -> tuple[View, int]:
        def comp(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            return compensate(x, self.gray_p, self.noise_sigma, gen)

        if self.through == "compensation":
            return comp, self.eot
        denoise = one_shot_denoiser(self, train, device)
        return (lambda x, gen: comp(denoise(x, gen), gen)), self.eot


def one_shot_denoiser(cfg: EMAdaptive, train: ImageSet, device: torch.device) -> View:
    """x ↦ one-shot DDPM x0 prediction of x noised to ``denoise_sigma`` (differentiable in x)."""
    from eclipse_ray.defenses.diffusion import Eclipse
    from eclipse_ray.diffusion.samplers import make_eps_fn
    from eclipse_ray.diffusion.unet import load_model

    defense = Eclipse(model=cfg.model, train=cfg.train)
    model = load_model(defense.model_path(train, train, progress=False), device)  # clean data: the attacker's own
    for p in model.unet.parameters():
        p.requires_grad_(False)
    t = model.schedule.t_for_sigma(cfg.denoise_sigma)
    c = model.schedule.coefficients(device)
    eps = make_eps_fn(model.unet.eval())
    a, s = c["sqrt_ab"][t], c["sqrt_1m_ab"][t]

    def denoise(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=gen).to(x.device)
        xt = a * (2 * x - 1) + s * noise
        x0 = ((xt - s * eps(xt, t)) / a).clamp(-1, 1)
        return (x0 + 1) / 2

    return denoise
