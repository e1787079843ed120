"""What a certify run writes and prints: per-input radii, the certified-accuracy table, its plot.

* ``radii.parquet`` — per test input: index, label, prediction (−1 = abstain),
  count (votes for the selected class among the estimation models), n,
  p_lower, radius (NaN when abstained), correct;
* ``certified_accuracy.csv`` / ``.md`` — certified accuracy at several radii,
  with each radius read as a number of poisons of a stated per-image ℓ2 norm;
* ``certified_accuracy.png`` — the curve, with the attack's own training-set
  perturbation norm marked when the clean originals are known;
* ``certify.json`` — the config, the resolved σ, counts, timings, the table.

Reading a radius (Hong et al. docs/design.md §5.3): R bounds the ℓ2 norm of the
change to the *whole* training set (pixels on [0,1], labels fixed); k poisons
of norm ε each change it by √k·ε, so R covers ⌊(R/ε)²⌋ of them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eclipse_ray.certify.stats import (
    Certificate,
    certified_accuracy,
    max_radius,
    poisons_covered,
)
from eclipse_ray.data.imageset import to_float
from eclipse_ray.data.sources import Dataset
from eclipse_ray.figures import save_png
from eclipse_ray.storage import replacing


def attack_perturbation(data: Dataset) -> dict[str, Any]:
    """ℓ2 norm of (poisoned − clean) over the whole training set, and per poison, when originals are known."""
    from eclipse_ray.data.imageset import clean_view

    originals = data.splits.get("originals")
    if originals is None or not len(originals):
        return {}
    train = data.train
    clean = clean_view(train, originals)
    diff = (to_float(train.images) - to_float(clean.images)).reshape(len(train), -1)
    per = np.sqrt((diff.astype(np.float64) ** 2).sum(1))
    changed = per > 0
    return {"attack.l2_total": float(np.sqrt((per ** 2).sum())), "attack.images_changed": int(changed.sum()),
            "attack.l2_per_poison_max": float(per.max()) if changed.any() else 0.0,
            "attack.labels_changed": int((train.labels != clean.labels).sum())}


def table_radii(summary: dict[str, Any], given: tuple[float, ...] | None) -> np.ndarray:
    if given:
        return np.asarray(sorted(given), dtype=np.float64)
    top = max_radius(summary["certify.n"], summary["certify.alpha"], summary["certify.sigma_resolved"])
    return np.linspace(0.0, top, 8)


def _write_atomic(path: Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text)


def markdown_table(table: pd.DataFrame, eps: float) -> str:
    lines = [f"| radius ‖Δ‖₂ | radius/σ | certified accuracy | poisons of ℓ2 {eps:.3g} covered |",
             "|---:|---:|---:|---:|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['radius']:.4f} | {r['radius_over_sigma']:.3f} | {r['certified_accuracy']:.3f} | "
                     f"{int(r['poisons_covered'])} |")
    return "\n".join(lines)


def plot_curve(cert: Certificate, labels: np.ndarray, summary: dict[str, Any], path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = max_radius(summary["certify.n"], summary["certify.alpha"], summary["certify.sigma_resolved"])
    grid = np.linspace(0.0, top * 1.05, 300)
    acc = certified_accuracy(labels, cert.prediction, cert.radius, grid)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.step(grid, acc, where="post", lw=2, label="certified accuracy")
    l2 = summary.get("attack.l2_total")
    if l2 and l2 <= grid[-1]:
        ax.axvline(l2, color="C3", ls="--", lw=1, label=f"this attack's ‖Δ‖₂ = {l2:.3g}")
    ax.set_xlabel("radius r: ℓ2 norm of the training-set perturbation ([0,1] pixels)")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(f"{summary['dataset']} · attack {summary['attack.name']} · σ={summary['certify.sigma_resolved']:.3g}"
                 f" · N={summary['certify.models']} (n0={summary['certify.n0']}) · α={summary['certify.alpha']:g}",
                 fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path, dpi=110)


def write_outputs(out: Path, job, data: Dataset, preds: np.ndarray, cert: Certificate,
                  summary: dict[str, Any]) -> dict[str, Any]:
    """Write radii.parquet, certified_accuracy.{csv,md,png}, certify.json; return the summary with the table."""
    from eclipse_ray.provenance import provenance
    from eclipse_ray.tensors import pick_device

    out.mkdir(parents=True, exist_ok=True)
    test = data.test
    shape = data.train.image_shape
    eps = job.certify.poison_l2 or 8 / 255 * math.sqrt(shape[0] * shape[1] * shape[2])
    summary = {**summary, **attack_perturbation(data), "certify.poison_l2_resolved": eps}
    correct = (cert.prediction == test.labels)
    radii_df = pd.DataFrame({"index": test.index, "label": test.labels, "prediction": cert.prediction,
                             "count": cert.count, "n": cert.n, "p_lower": cert.p_lower, "radius": cert.radius,
                             "correct": correct})
    with replacing(out / "radii.parquet") as tmp:
        radii_df.to_parquet(tmp, index=False)

    at = table_radii(summary, job.certify.radii)
    sigma = summary["certify.sigma_resolved"]
    table = pd.DataFrame({"radius": at, "radius_over_sigma": at / sigma,
                          "certified_accuracy": certified_accuracy(test.labels, cert.prediction, cert.radius, at),
                          "poisons_covered": poisons_covered(at, eps)})
    _write_atomic(out / "certified_accuracy.csv", table.to_csv(index=False))
    _write_atomic(out / "certified_accuracy.md", markdown_table(table, eps) + "\n")
    plot_curve(cert, test.labels, summary, out / "certified_accuracy.png")

    model_acc = (preds == test.labels[None, :]).mean(1)
    votes_all = np.apply_along_axis(lambda c: np.bincount(c, minlength=data.train.num_classes).argmax(), 0, preds)
    l2 = summary.get("attack.l2_total")
    summary.update({
        "model_test_acc_mean": float(model_acc.mean()), "model_test_acc_std": float(model_acc.std()),
        "majority_vote_acc": float((votes_all == test.labels).mean()),
        "abstain_rate": float(cert.abstained.mean()), "median_radius": float(np.nanmedian(cert.radius))
        if (~np.isnan(cert.radius)).any() else 0.0,
        "max_certifiable_radius": max_radius(cert.n, job.certify.alpha, sigma),
        "certified_acc_at_attack_l2": float(certified_accuracy(test.labels, cert.prediction, cert.radius, [l2])[0])
        if l2 is not None else None,
        "table": table.to_dict(orient="records"), **provenance(pick_device(job.victim.device))})
    _write_atomic(out / "certify.json", json.dumps(summary, indent=2, default=str))
    return summary


def interpretation(summary: dict[str, Any]) -> list[str]:
    """Plain-language lines on what the radii mean (printed by the CLI)."""
    eps = summary["certify.poison_l2_resolved"]
    sigma = summary["certify.sigma_resolved"]
    rmax = summary["max_certifiable_radius"]
    lines = [
        "R bounds the ℓ2 norm of the change to the WHOLE training set (pixels on [0,1], labels fixed): "
        "k poisons of ℓ2 norm ε each change it by √k·ε, so R covers ⌊(R/ε)²⌋ poisons.",
        f"With ε = {eps:.3g} (an ℓ∞ 8/255 perturbation of a full image at its largest, unless certify.poison_l2 is "
        f"set) the largest certifiable radius here, {rmax:.3g} = σ·Φ⁻¹(α^(1/n)) with σ = {sigma:.3g} and "
        f"n = {summary['certify.n']} estimation models, covers {int(poisons_covered(rmax, eps))} such poisons; "
        f"it covers one poison of ℓ2 norm ≤ {rmax:.3g} (≈ {rmax / eps * 8:.2g}/255 in ℓ∞ over the whole image).",
        f"Smoothed classifier: accuracy without abstaining {summary['majority_vote_acc']:.3f}, abstains on "
        f"{summary['abstain_rate']:.1%} of test inputs; single models average {summary['model_test_acc_mean']:.3f}.",
    ]
    l2 = summary.get("attack.l2_total")
    if l2:
        lines.append(f"This attack changes {summary['attack.images_changed']} training images by ‖Δ‖₂ = {l2:.3g} "
                     f"in total; certified accuracy at that radius: {summary['certified_acc_at_attack_l2']:.3f}.")
        if summary.get("attack.labels_changed"):
            lines.append(f"Note: it also changes {summary['attack.labels_changed']} labels, which this ℓ2 "
                         f"certificate does not cover.")
    return lines
