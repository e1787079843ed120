"""Class-wise additive availability poisons: URP, LSP and AR.

Each class gets its own noise process; a model learns the noise (a linearly
separable shortcut) instead of the images, and fails on clean test data.

* URP — one uniform pattern per class in [-eps, eps] (ℓ∞ 8/255).
* LSP (Yu et al., KDD 2022) — per-sample patch-constant patterns from a
  class-conditional Gaussian around a ±class_sep hypercube vertex
  (sklearn ``make_classification`` recipe, 8x8 patches on 32x32), nearest
  upsampled, each scaled to ℓ2 = eps·√(H·W·C) (≈ 1.30 for eps = 6/255).
* AR (Sandoval-Segura et al., NeurIPS 2022) — per class and channel a 3x3
  autoregressive filter (8 Gaussian coefficients summing to 1), run in raster
  order over a canvas 4 px larger than the image from a Gaussian start, cropped,
  a fresh draw per image, each scaled to ℓ2 = 1.0. Filters are drawn by
  rejection sampling as in the reference code: bounded generation norm and a
  strong response of every earlier filter to the new process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from eclipse_ray.attacks.base import (AVAILABILITY, AttackConfig, add_perturbation, l2_normalise, mask_of,
                                      rate_rows, setting_rate, setting_seed)
from eclipse_ray.config import ConfigError, setting
from eclipse_ray.data.imageset import ImageSet


@dataclass(frozen=True)
class URP(AttackConfig):
    name: ClassVar[str] = "urp"
    kind: ClassVar[str] = AVAILABILITY
    summary: ClassVar[str] = "class-wise uniform random noise (one pattern per class)"
    eps: float = setting(8 / 255, "ℓ∞ budget on the [0,1] scale", ge=0.0, le=1.0)
    rate: float = setting_rate(1.0)
    seed: int = setting_seed()

    def poison_train(self, train: ImageSet, rng: np.random.Generator):
        patterns = rng.uniform(-self.eps, self.eps, size=(train.num_classes, *train.image_shape))
        rows = rate_rows(len(train), self.rate, rng)
        images = add_perturbation(train.images, rows, patterns[train.labels[rows]])
        return images, train.labels, mask_of(rows, len(train))


@dataclass(frozen=True)
class LSP(AttackConfig):
    name: ClassVar[str] = "lsp"
    kind: ClassVar[str] = AVAILABILITY
    summary: ClassVar[str] = "linearly separable patch-constant patterns, ℓ2-normalised"
    eps: float = setting(6 / 255, "ℓ∞-equivalent budget; each pattern gets ℓ2 = eps·sqrt(H·W·C)", ge=0.0, le=1.0)
    patch: int = setting(8, "patch side in pixels (8 on 32x32 gives a 4x4 grid)", ge=1)
    class_sep: float = setting(10.0, "distance of class centroids from the origin per feature", ge=0.0)
    rate: float = setting_rate(1.0)
    seed: int = setting_seed()

    def check_dataset(self, train: ImageSet) -> None:
        super().check_dataset(train)
        h, w, _ = train.image_shape
        if h % self.patch or w % self.patch:
            raise ConfigError(f"attack.patch={self.patch}: must divide the image size {h}x{w}")

    def poison_train(self, train: ImageSet, rng: np.random.Generator):
        h, w, c = train.image_shape
        gh, gw = h // self.patch, w // self.patch
        n_fea = gh * gw * c
        k = train.num_classes
        # Distinct hypercube vertices as centroids; one random linear map per class.
        vertices = _distinct_sign_vectors(k, n_fea, rng) * self.class_sep
        maps = rng.uniform(-1, 1, size=(k, n_fea, n_fea))
        rows = rate_rows(len(train), self.rate, rng)
        y = train.labels[rows]
        z = rng.standard_normal((len(rows), n_fea))
        feats = np.einsum("nf,nfg->ng", z, maps[y]) + vertices[y]
        patterns = feats.reshape(len(rows), gh, gw, c).repeat(self.patch, 1).repeat(self.patch, 2)
        delta = l2_normalise(patterns, self.eps * np.sqrt(h * w * c))
        images = add_perturbation(train.images, rows, delta)
        return images, train.labels, mask_of(rows, len(train))


def _distinct_sign_vectors(k: int, d: int, rng: np.random.Generator) -> np.ndarray:
    if d < 64 and k > 2**d:
        raise ConfigError(f"lsp: cannot place {k} classes on a {d}-dimensional hypercube")
    seen: set[bytes] = set()
    out = []
    while len(out) < k:
        v = rng.integers(0, 2, size=d) * 2.0 - 1.0
        if v.tobytes() not in seen:
            seen.add(v.tobytes())
            out.append(v)
    return np.stack(out)


@dataclass(frozen=True)
class AR(AttackConfig):
    name: ClassVar[str] = "ar"
    kind: ClassVar[str] = AVAILABILITY
    summary: ClassVar[str] = "class-wise autoregressive noise (3x3 AR filter per class and channel)"
    eps: float = setting(1.0, "ℓ2 norm of each image's perturbation", ge=0.0)
    window: int = setting(3, "AR window side (the filter sees window²-1 earlier pixels)", ge=2)
    crop: int = setting(4, "canvas margin cropped away (top-left)", ge=0)
    rate: float = setting_rate(1.0)
    seed: int = setting_seed()

    def poison_train(self, train: ImageSet, rng: np.random.Generator):
        h, w, c = train.image_shape
        filters = ar_filters(train.num_classes, c, self.window, rng, canvas=(h + self.crop, w + self.crop),
                             crop=self.crop)
        rows = rate_rows(len(train), self.rate, rng)
        delta = np.zeros((len(rows), h, w, c))
        for k in range(train.num_classes):
            sel = np.flatnonzero(train.labels[rows] == k)
            if len(sel):
                gen = ar_generate(filters[k], len(sel), (h + self.crop, w + self.crop), rng)[..., self.crop:, self.crop:]
                delta[sel] = l2_normalise(gen, self.eps).transpose(0, 2, 3, 1)
        images = add_perturbation(train.images, rows, delta)
        return images, train.labels, mask_of(rows, len(train))


def ar_generate(b: np.ndarray, n: int, canvas: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """``n`` draws (n, C, H, W) of the AR process with coefficients ``b``.

    ``b`` is (C, k, k) for one process or (n, C, k, k) for one process per draw;
    ``b[..., -1, -1]`` (the pixel being generated) must be 0.
    """
    k = b.shape[-1]
    b = np.broadcast_to(b, (n, *b.shape[-3:]))
    x = rng.standard_normal((n, b.shape[1], *canvas))
    with np.errstate(over="ignore", invalid="ignore"):
        for i in range(canvas[0] - k + 1):
            for j in range(canvas[1] - k + 1):
                x[:, :, i + k - 1, j + k - 1] = np.einsum("ncab,ncab->nc", x[:, :, i:i + k, j:j + k], b)
    return x


def ar_filters(classes: int, channels: int, k: int, rng: np.random.Generator, canvas: tuple[int, int],
               crop: int, norm_bound: float = 50.0, pool: int = 64, batch: int = 1024) -> np.ndarray:
    """Per-class AR coefficients (classes, C, k, k).

    As in the reference code, candidates whose generation norm exceeds
    ``norm_bound`` (unstable processes) are rejected, and the accepted ones must
    be told apart: each new process must be predicted badly by the residual
    filters of those already chosen. The reference searched offline for a fixed
    response threshold; here the ``classes`` processes are picked greedily from
    a pool of stable candidates, each maximising its smallest response to the
    ones already chosen (farthest-point selection), which is fast and seeded.
    """
    cands: list[np.ndarray] = []
    gens: list[torch.Tensor] = []
    for _ in range(200):
        b = rng.standard_normal((batch, channels, k, k))
        b[..., -1, -1] = 0.0
        b = b / b.sum(axis=(2, 3), keepdims=True)
        out = ar_generate(b, batch, canvas, rng)[..., crop:, crop:]
        with np.errstate(over="ignore", invalid="ignore"):
            norms = np.sqrt((out.reshape(batch, -1) ** 2).sum(1))
        for i in np.flatnonzero(np.isfinite(norms) & (norms <= norm_bound)):
            cands.append(b[i])
            gens.append(torch.from_numpy(out[i] / norms[i])[None].float())
        if len(cands) >= max(pool, classes):
            break
    if len(cands) < classes:
        raise ConfigError(f"ar: found only {len(cands)} stable AR processes for {classes} classes")
    chosen = [0]
    best = np.full(len(cands), np.inf)
    while len(chosen) < classes:
        last = cands[chosen[-1]]
        best = np.minimum(best, [_response(g, last) for g in gens])
        best[chosen] = -np.inf
        chosen.append(int(np.argmax(best)))
    return np.stack([cands[i] for i in chosen])


def _response(gen: torch.Tensor, b: np.ndarray) -> float:
    """How badly process ``b`` predicts ``gen``: relu of its residual filter's output, summed."""
    filt = b.copy()
    filt[:, -1, -1] = -1.0
    return F.relu(F.conv2d(gen, torch.from_numpy(filt)[:, None].float(), groups=gen.shape[1])).sum().item()
