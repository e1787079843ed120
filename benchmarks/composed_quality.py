"""Composed defenses and adversarial training on the CIFAR-10 subset: do two defenses beat one?

No single defense of the reference study (benchmarks/defense_quality.py) stops
SIG: every purifier leaves its ASR at 98–100 %, V&B at 86 ± 12 %. This study
runs, on the same subset with the same victim and per-defense settings (each
part of a composite gets the reference study's settings for that defense):

* SIG against ``none``, ``vab`` and the composites ``jpeg+vab``, ``gray+vab``,
  ``eclipse+vab`` (a purifier first, then V&B on what it leaves);
* BadNets and Blend against ``eclipse+vab`` and ``denoise+jpeg``;
* adversarial training (``advtrain``: PGD ℓ∞ 8/255, 10 × 2/255) against clean
  data and the model-free availability poisons URP, LSP, AR, OPS;

seeds 0 and 1 (victim seeds; one purified set per cell, ``purify_seed=0``), as
one staged Ray study. Its table goes to ``results/reference/composed-subset/``
beside the best single defense of the reference study's published rows.

Usage:  python benchmarks/composed_quality.py [--seeds 0 1] [--results DIR]   (rerun to resume)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

from eclipse_ray import storage
from eclipse_ray.defenses.compose import SEPARATOR
from eclipse_ray.distributed.study import run_study
from eclipse_ray.distributed.tune import spec
from eclipse_ray.presets import PRESETS, trial_settings
from eclipse_ray.results.html import labelled
from eclipse_ray.results.table import cell_stats, defense_table, markdown

sys.path.insert(0, str(Path(__file__).parent))
from defense_quality import SHARED, defense_settings  # noqa: E402

CELLS = ([("sig", d) for d in ("none", "vab", "jpeg+vab", "gray+vab", "eclipse+vab")]
         + [(a, d) for a in ("badnets", "blend") for d in ("eclipse+vab", "denoise+jpeg")]
         + [(a, "advtrain") for a in ("none", "urp", "lsp", "ar", "ops")])
REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference" / "subset" / "rows.parquet"


def build_specs(seeds: list[int], dataset: str | None = None) -> list[dict]:
    preset = PRESETS["subset"]
    # cell-major: the SIG composites (both seeds) first, adversarial training last
    return [spec(dataset or preset.dataset, a, d,
                 trial_settings(preset, d, {**SHARED["subset"], **defense_settings("subset", d)}, seed))
            for a, d in CELLS for seed in seeds]


def best_single(reference: pd.DataFrame, attack: str, metric: str, lowest: bool) -> tuple[str, float] | None:
    """The best single defense of the reference rows for ``attack`` by ``metric`` (mean over seeds)."""
    stats = cell_stats(reference[reference["attack.name"] == attack], metric)
    stats = stats[[d != "none" and SEPARATOR not in d for _, d in stats.index]]  # single defenses only
    if stats.empty:
        return None
    row = stats["mean"].idxmin() if lowest else stats["mean"].idxmax()
    return row[1], float(stats.loc[row, "mean"])


def write_table(df: pd.DataFrame, out: Path, wall: float | None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out / "rows.parquet", index=False)
    ref = pd.read_parquet(REFERENCE) if REFERENCE.is_file() else pd.DataFrame()
    lines = ["# Composed defenses and adversarial training (CIFAR-10 subset, CPU)", "",
             "Test accuracy % / ASR % for backdoors, mean ± std over seeds "
             f"{', '.join(map(str, sorted(df['seed'].unique())))}; {len(df)} trials"
             + (f", {wall / 60:.0f} min wall on the 2-core machine." if wall else "."), ""]
    for attacks, title in ((("sig", "badnets", "blend"), "Backdoors"), (("none", "urp", "lsp", "ar", "ops"),
                                                                        "Availability poisons and clean data")):
        part = df[df["attack.name"].isin(attacks)]
        present = [a for a in attacks if a in set(part["attack.name"])]
        if not present:
            lines += [f"## {title}", "", "Not run yet (rerun the command: it resumes).", ""]
            continue
        defenses = sorted(set(part["defense.name"]), key=lambda d: (SEPARATOR in d, d != "none", d))
        lines += [f"## {title}", "", markdown(defense_table(part, present, defenses)), ""]
    if not ref.empty:
        lines += ["Best single defense of the reference study (results/reference/subset):", ""]
        for a in ("sig", "badnets", "blend"):
            best = best_single(ref, a, "asr", lowest=True)
            if best:
                lines.append(f"- {a}: `{best[0]}`, ASR {100 * best[1]:.1f} %")
        for a in ("urp", "lsp", "ar", "ops"):
            best = best_single(ref, a, "test_acc", lowest=False)
            if best:
                lines.append(f"- {a}: `{best[0]}`, accuracy {100 * best[1]:.1f} %")
        lines.append("")
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--results", default="results/composed_quality-subset")
    p.add_argument("--reference", default="results/reference/composed-subset")
    p.add_argument("--dataset", default=None, help="override the subset (tests: digits)")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    study = storage.normalize(args.results)
    specs = build_specs(args.seeds, args.dataset)
    wall = None
    if not args.report_only:
        t = time.perf_counter()
        run_study(study, specs, max_concurrent=2)
        wall = time.perf_counter() - t
    from eclipse_ray.result_store import read_results

    df = labelled(read_results(study))
    report = write_table(df, Path(args.reference), wall)
    print(json.dumps({"rows": len(df), "report": str(report)}))


if __name__ == "__main__":
    main()
