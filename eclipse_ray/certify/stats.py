"""Certification statistics of randomized smoothing over the training pipeline.

Implements the CERTIFY procedure of Cohen, Rosenfeld & Kolter (ICML 2019,
"Certified Adversarial Robustness via Randomized Smoothing"), as Hong, Carlini
& Kurakin (arXiv 2403.11981) apply it to training-data poisoning: the "base
classifier" is *train a model on (training set + Gaussian noise σ, denoised)
and classify the test input*; N independently noised training sets give N
votes per test input.

* the majority class c_A is picked from the votes of the first n0 models
  (selection), its count k among the remaining n = N − n0 models (estimation)
  gives a one-sided Clopper–Pearson lower bound p_A at level 1 − α;
* abstain when p_A < 0.5, else the certified radius is R = σ·Φ⁻¹(p_A);
* R bounds the ℓ2 norm (pixel units, [0,1] scale) of a perturbation of the
  *whole* training set that cannot change the smoothed prediction.

Deviation (a setting, ``certify.selection_models``): n0 = 0 picks c_A and
estimates k on the same N votes — cheaper, but the bound is then slightly
optimistic (selection bias); Cohen et al. keep the two samples disjoint.
Pure numpy/scipy functions; no randomness.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

ABSTAIN = -1


def vote_counts(preds: np.ndarray, num_classes: int) -> np.ndarray:
    """(models, inputs) predicted classes → (inputs, classes) vote counts."""
    preds = np.asarray(preds)
    if preds.ndim != 2:
        raise ValueError(f"vote_counts: predictions must be (models, inputs), got shape {preds.shape}")
    if preds.size and (preds.min() < 0 or preds.max() >= num_classes):
        raise ValueError(f"vote_counts: predictions must lie in 0..{num_classes - 1}")
    counts = np.zeros((preds.shape[1], num_classes), dtype=np.int64)
    cols = np.broadcast_to(np.arange(preds.shape[1]), preds.shape)
    np.add.at(counts, (cols.ravel(), preds.ravel().astype(np.int64)), 1)
    return counts


def clopper_pearson_lower(k: np.ndarray | int, n: int, alpha: float) -> np.ndarray:
    """One-sided (1 − α) Clopper–Pearson lower bound on a binomial proportion: Beta(α; k, n − k + 1).

    Equals statsmodels' ``proportion_confint(k, n, alpha=2α, method="beta")[0]``
    (what Cohen et al. use); 0 when k = 0, α^(1/n) when k = n.
    """
    k = np.asarray(k, dtype=np.float64)
    if n < 1:
        raise ValueError("clopper_pearson_lower: needs n ≥ 1 samples")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"clopper_pearson_lower: alpha={alpha} must lie in (0, 1)")
    if np.any((k < 0) | (k > n)):
        raise ValueError("clopper_pearson_lower: counts must lie in 0..n")
    safe = np.where(k > 0, k, 1.0)
    return np.where(k > 0, stats.beta.ppf(alpha, safe, n - safe + 1), 0.0)


def radius(p_lower: np.ndarray | float, sigma: float) -> np.ndarray:
    """Certified ℓ2 radius σ·Φ⁻¹(p_lower); NaN where p_lower < 0.5 (abstain)."""
    p = np.asarray(p_lower, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        r = sigma * stats.norm.ppf(np.clip(p, 0.0, 1.0))
    return np.where(p >= 0.5, r, np.nan)


def max_radius(n: int, alpha: float, sigma: float) -> float:
    """The largest radius n estimation votes can certify (all n agree): σ·Φ⁻¹(α^(1/n))."""
    return float(radius(alpha ** (1.0 / n), sigma)) if n >= 1 else float("nan")


@dataclass(frozen=True)
class Certificate:
    """Per test input: the smoothed prediction (ABSTAIN = −1), its vote count, p_A lower bound, radius."""

    prediction: np.ndarray
    selected: np.ndarray  # majority class of the selection votes (before abstention)
    count: np.ndarray     # votes for it among the estimation models
    n: int                # estimation models
    p_lower: np.ndarray
    radius: np.ndarray    # NaN where abstained

    @property
    def abstained(self) -> np.ndarray:
        return self.prediction == ABSTAIN


def certify(preds: np.ndarray, num_classes: int, sigma: float, alpha: float = 0.001,
            selection_models: int = 0) -> Certificate:
    """Cohen et al.'s CERTIFY on (models, inputs) votes.

    The first ``selection_models`` rows pick the class, the rest estimate its
    probability; with ``selection_models = 0`` all rows do both.
    Ties in the selection go to the lowest class id.
    """
    preds = np.asarray(preds)
    n_models = preds.shape[0]
    if not 0 <= selection_models < n_models:
        raise ValueError(f"certify: selection_models={selection_models} must lie in 0..{n_models - 1}")
    sel = preds[:selection_models] if selection_models else preds
    est = preds[selection_models:]
    selected = vote_counts(sel, num_classes).argmax(1)
    count = vote_counts(est, num_classes)[np.arange(preds.shape[1]), selected]
    p_lower = clopper_pearson_lower(count, est.shape[0], alpha)
    r = radius(p_lower, sigma)
    prediction = np.where(np.isnan(r), ABSTAIN, selected)
    return Certificate(prediction, selected, count, est.shape[0], p_lower, r)


def certified_accuracy(labels: np.ndarray, prediction: np.ndarray, radii: np.ndarray,
                       at: np.ndarray | list[float]) -> np.ndarray:
    """Share of inputs that are correct, not abstained and certified at radius ≥ r, for each r in ``at``."""
    labels, prediction, radii = np.asarray(labels), np.asarray(prediction), np.asarray(radii, dtype=np.float64)
    ok = (prediction == labels) & (prediction != ABSTAIN) & ~np.isnan(radii)
    at = np.asarray(at, dtype=np.float64)
    if len(labels) == 0:
        return np.full(at.shape, np.nan)
    return np.array([(ok & (radii >= r)).mean() for r in at])


def poisons_covered(r: np.ndarray | float, per_poison_l2: float) -> np.ndarray:
    """How many poisons of ℓ2 norm ε each a training-set radius r covers: ⌊(r/ε)²⌋ (their norms add as √k·ε)."""
    r = np.asarray(r, dtype=np.float64)
    if per_poison_l2 <= 0:
        raise ValueError("poisons_covered: the per-poison ℓ2 norm must be > 0")
    return np.where(np.isnan(r), 0, np.floor((np.nan_to_num(r) / per_poison_l2) ** 2 + 1e-9)).astype(np.int64)
