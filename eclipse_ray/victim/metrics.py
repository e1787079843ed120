"""Trial metrics (docs/design.md §6): accuracy, attack success, poison success and purification fidelity.

* ``test_acc`` — accuracy on the clean test set.
* ``asr`` — backdoors: share of triggered non-target test images classified as the target.
* ``poison_success`` — one number for the Pareto plot: ASR for backdoors; for
  availability poisons the relative accuracy loss ``(acc_ref - test_acc) / acc_ref``
  (floored at 0), ``acc_ref`` being the same victim trained on the undefended clean data.
* ``purify_psnr_*`` / ``purify_l2_*`` — purified images against their clean
  originals, separately for poisoned and for clean samples; ``poison_psnr`` —
  the poisoned images against the same originals (how visible the poison was).
"""

from __future__ import annotations

import numpy as np

from eclipse_ray.data.imageset import ImageSet, to_float


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(pred == labels)) if len(labels) else float("nan")


def attack_success_rate(pred_triggered: np.ndarray, target: int) -> float:
    """Share of triggered (non-target) test images predicted as ``target``."""
    return float(np.mean(pred_triggered == target)) if len(pred_triggered) else float("nan")


def any_class_asr(pred_triggered: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """(rate, class): the class the trigger sends the largest share of the other classes' images to.

    Equals the ASR when that class is the target; a defense that re-routes the
    trigger to another class (V&B's self-training can) shows here, not in the ASR.
    """
    best, best_c = float("nan"), -1
    for c in np.unique(np.concatenate([pred_triggered, labels])):
        others = labels != c
        if others.any():
            rate = float(np.mean(pred_triggered[others] == c))
            if not rate <= best:
                best, best_c = rate, int(c)
    return best, best_c


def relative_accuracy_loss(test_acc: float, acc_ref: float) -> float:
    if not acc_ref > 0:
        return float("nan")
    return max(0.0, (acc_ref - test_acc) / acc_ref)


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of uint8 images (inf where identical)."""
    mse = ((to_float(a) - to_float(b)) ** 2).reshape(len(a), -1).mean(1)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(1.0 / mse)


def l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image ℓ2 distance on the [0,1] scale."""
    return np.linalg.norm((to_float(a) - to_float(b)).reshape(len(a), -1), axis=1)


def _mean_finite(x: np.ndarray, cap: float = 100.0) -> float:
    """Mean with +inf (identical images) capped, so means stay finite."""
    return float(np.mean(np.minimum(x, cap))) if len(x) else float("nan")


def fidelity(purified: ImageSet, poisoned: ImageSet, clean_images: np.ndarray) -> dict[str, float]:
    """PSNR (capped at 100 dB) and ℓ2 of purified and poisoned images against the clean originals."""
    mask = poisoned.poisoned
    out: dict[str, float] = {}
    p_psnr, p_l2 = psnr(purified.images, clean_images), l2(purified.images, clean_images)
    for name, sel in (("poisoned", mask), ("clean", ~mask)):
        out[f"purify_psnr_{name}"] = _mean_finite(p_psnr[sel])
        out[f"purify_l2_{name}"] = float(np.mean(p_l2[sel])) if sel.any() else float("nan")
    out["poison_psnr"] = _mean_finite(psnr(poisoned.images[mask], clean_images[mask])) if mask.any() else float("nan")
    return out


def target_success(pred_targets: np.ndarray, adv_labels: np.ndarray) -> float:
    """Targeted poisons: share of the target images predicted as their adversarial class."""
    return float(np.mean(pred_targets == np.asarray(adv_labels))) if len(pred_targets) else float("nan")


def max_class_asr(pred_triggered: np.ndarray, labels: np.ndarray, target: int) -> float:
    """The worst case over source classes of the attack success rate (PureGen's Narcissus figure)."""
    rates = [np.mean(pred_triggered[labels == c] == target) for c in np.unique(labels)]
    return float(max(rates)) if rates else float("nan")
