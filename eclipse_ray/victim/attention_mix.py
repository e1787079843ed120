"""AttentionMix (Zhu et al., ICCV 2023, "The Victim and the Beneficiary", §3.3): attention-guided mixing.

The Beneficiary of V&B trains on *credible* samples mixed with AttentionMix so
that a few poisons left among them cannot implant their trigger:

* attention map = channel sum of squared last-stage feature maps, upsampled
  (nearest) to the image size and min-max normalised per sample to [0, 1];
* mask = attention ≥ threshold (0.1); inside a sample's mask its pixels are
  blended with a partner's (a permutation of the batch), weighted by how much
  attention mass each has there: own mass ``w`` (share of the sample's total
  attention inside its mask) and the partner's mass ``w_p`` inside the *same*
  mask; the blend gives the sample ``w / (w + w_p)`` of the masked region;
* labels: the sample keeps ``1 - w`` (attention outside the mask) plus its
  share of ``w``; the partner gets ``w · w_p / (w + w_p)``. For one-hot (or any
  normalised) targets the mixed target sums to 1.

Pure tensor functions: the partner permutation is passed in, so randomness is
the caller's (seeded) business. Deviation: none known; the public code's
cutmix/mixup alternatives are not implemented.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-12


def feature_attention(features: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Per-sample attention map (N, 1, H, W) in [0, 1] from last-stage features (N, C, h, w)."""
    att = features.float().pow(2).sum(1, keepdim=True)
    att = F.interpolate(att, size=size if isinstance(size, tuple) else (size, size), mode="nearest")
    lo = att.amin((2, 3), keepdim=True)
    hi = att.amax((2, 3), keepdim=True)
    return (att - lo) / (hi - lo + EPS)


def mix_weights(attention: torch.Tensor, perm: torch.Tensor,
                threshold: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mask (N,1,H,W) bool, own mass ``w`` (N,), partner mass ``w_p`` (N,)) for partners ``perm``."""
    mask = attention >= threshold
    total = attention.sum((1, 2, 3))
    own = (attention * mask).sum((1, 2, 3)) / (total + EPS)
    partner = attention[perm]
    partner_mass = (partner * mask).sum((1, 2, 3)) / (partner.sum((1, 2, 3)) + EPS)
    return mask, own, partner_mass


def attention_mix(inputs: torch.Tensor, attention: torch.Tensor, targets: torch.Tensor, perm: torch.Tensor,
                  threshold: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix every sample with its partner ``inputs[perm]`` inside its attention mask.

    ``inputs`` (N, C, H, W), ``attention`` (N, 1, H, W) from :func:`feature_attention`,
    ``targets`` (N, K) soft labels, ``perm`` (N,) partner indices. Returns the mixed
    inputs, mixed targets and the mean masked area (a diagnostic).
    """
    if not (len(inputs) == len(attention) == len(targets) == len(perm)):
        raise ValueError("attention_mix: inputs, attention, targets and perm must have the same length")
    mask, w, w_p = mix_weights(attention, perm, threshold)
    keep = w / (w + w_p + EPS)                     # the sample's share of its masked region
    give = (1 - keep)[:, None, None, None] * mask  # partner's pixel weight, zero outside the mask
    mixed = inputs + give * (inputs[perm] - inputs)
    partner_label = (w * (1 - keep))[:, None]
    mixed_targets = (1 - partner_label) * targets + partner_label * targets[perm]
    return mixed, mixed_targets, mask.float().mean()
