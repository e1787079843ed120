"""Reference study: every defense against every attack on real CIFAR-10 images, as one Ray Tune study.

ECLIPSE's Table 1 protocol at CPU scale (issue 7). Availability poisons on 100 %
of the training set (URP, LSP, AR, OPS, EM, REM, TAP, SEP, EntF), backdoors on 10 %
(BadNets, Blend, WaNet, IAD; SIG and LC on the whole target class = 10 %), the hidden-trigger backdoors
Sleeper Agent and HTBA on 1 %, and clean data,
each against ``none``, ``jpeg``, ``gray``, ``eclipse``, ``puregen-ddpm``,
``denoise``, ``puregen-ebm`` (and, for the backdoors, ``vab`` and the composites
``jpeg+vab`` and ``eclipse+vab``: each part with its own settings below). The defender's clean
reference set (4 % of the training split, which models are trained on) is
disjoint from the test split; every purifier is computed once per (attack,
purifier) through the purification cache; crafted poisons and models are
computed once and cached under $ECLIPSE_RAY_CACHE.

``--preset subset`` (default; 2 CPU cores): ``../shared/data/cifar10_subset.npz``
(4,660 train / 932 test); victim = width-16 fast net, 6 epochs; seeds 0 and 1
vary the victim while the poison and the purified set are drawn once
(``purify_seed=0``), so the spread is the victim's; eclipse one-shot σ = 0.05
+ compensation; denoise one-shot σ = 0.1; puregen-ddpm DDIM 2 calls from σ = 0.1
on its t<250 model; puregen-ebm 25 Langevin steps (PureGen: 150) of a tiny EBM
trained 300 CD iterations; V&B Beneficiary 10 epochs (``epoch_scale`` 0.05,
and ``benchmarks/vab_quality.py``'s short-run settings: linear lr schedule,
λ2 = 0.1, T = 1); EM/REM/TAP/SEP/EntF crafted with ``benchmarks/model_poisons.py``'s
CPU settings, LC, IAD, Sleeper Agent and HTBA with ``benchmarks/targeted_poisons.py``'s. The tiny DDPMs (600 iterations each) are trained by the first
trials that need them. 2 trials run at once, one CPU each.

``--preset full`` (2 CPU cores, one seed): all 50,000/10,000 images of the JPEG re-encoded
CIFAR-10 (``cifar10-jpeg``), the model-free Table 1 attacks (URP, LSP, AR, OPS) and BadNets,
Blend, SIG at their Table 1 rates, plus clean data, against ``none``, ``jpeg``, ``gray``,
``eclipse`` and ``denoise`` with the subset's purifier and victim settings (tiny DDPM trained
600 iterations on the defender's 2,000-image clean set; width-16 fast victim, 6 epochs), victims and
diffusion purifiers under bfloat16 autocast (``victim.precision`` / ``defense.precision``: 2× per step
measured alone on this AMX CPU; every cell within 1.6 points of the fp32 study's accuracy). Measured: **69 min** (4,152 s) for
the 40 trials in one uninterrupted run from an empty cache (poisons 53 s, the DDPM 503 s, 32 purifications
1,290 s, the clean reference victim 70 s, 40 victims ≈ 37 min, 2 at a time); the fp32 study took 4 h 17 min
in four parts (``results/reference/full-fp32/``, its rows per part in ``parts/``). ``--attacks`` still runs
it in parts, each part's wall time in ``<reference>/wall.jsonl``, the report summing them. The report puts
every cell beside the subset study's and the fp32 study's (``COMPARED``).

``--preset cifar10`` (GPUs, full CIFAR-10): the paper UNet and ResNet-18 for 80
epochs, published purifier settings (full reverse chains), crafted poisons at
their published settings, V&B at full length, seeds 0 1 2 each purified anew.

Usage:  python benchmarks/defense_quality.py [--preset subset] [--seeds 0 1] [--only vab]
        (rerun to resume; ``--only`` reruns the cells of some defenses after their settings changed;
        ``--report-only`` rewrites results/reference/<preset>/ from the store; models,
        poisons and purified sets are cached in the study folder, or in $ECLIPSE_RAY_CACHE when set)
Wall time (subset, 2 cores), measured: 1 h 44 min (6,265 s) for the first 176 trials from an empty cache with
        nothing else running — the first ≈ 20 min build the two tiny DDPMs, the EBM and the EM/REM/TAP poisons;
        then a victim takes 21–32 s, a purification 30–100 s per 4,660 images, a V&B run 2–2.5 min; the 84 cells
        of SEP, EntF, LC, IAD and the composites 68 min more, Sleeper Agent and HTBA 20 min
        (results/reference/subset/wall.jsonl, 3 h 12 min summed, a model rebuild included): ≈ 3 h from scratch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

from eclipse_ray import storage
from eclipse_ray.defenses.compose import SEPARATOR, field_name
from eclipse_ray.distributed.study import run_study
from eclipse_ray.distributed.tune import cache_counts, spec
from eclipse_ray.presets import PRESETS, trial_settings
from eclipse_ray.results.html import labelled
from eclipse_ray.results.report import plot_pareto
from eclipse_ray.result_store import read_results
from eclipse_ray.results.table import (
    best_backdoor,
    clean_cost,
    defense_table,
    scale_change,
    markdown,
    won_back,
)
from eclipse_ray.trial import build_config

sys.path.insert(0, str(Path(__file__).parent))
from model_poisons import ATTACK_SETTINGS as CPU_CRAFTING  # noqa: E402
from targeted_poisons import ATTACKS as TARGETED_CPU  # noqa: E402
from vab_quality import CPU_SETTINGS as VAB_CPU  # noqa: E402

AVAILABILITY = ("urp", "lsp", "ar", "ops", "em", "rem", "tap", "sep", "entf")
BACKDOORS = ("badnets", "blend", "sig", "wanet", "lc", "iad", "sleeper_agent", "htba")  # the last two: hidden triggers
PURIFIERS = ("none", "jpeg", "gray", "eclipse", "puregen-ddpm", "denoise", "puregen-ebm")
COMPOSITES = ("jpeg+vab", "eclipse+vab")  # a purifier, then V&B on what it leaves (backdoors)
ROW_COLUMNS = ["dataset", "attack.name", "attack.kind", "defense.name", "seed", "test_acc", "asr", "asr_any", "poison_success",
               "acc_ref", "clean_cost", "purify_psnr_poisoned", "purify_psnr_clean", "vab_precision", "vab_recall",
               "craft_seconds", "purify_seconds", "train_seconds", "seconds", "purify_reused", "config_hash"]

# Per-preset settings of each defense and crafted attack (on top of the preset's).
DEFENSE_SETTINGS = {
    "subset": {
        "eclipse": {"defense.sampler": "oneshot", "defense.sigma": "0.05"},
        "denoise": {"defense.sampler": "oneshot", "defense.sigma": "0.1"},
        "puregen-ddpm": {"defense.sampler": "ddim", "defense.steps": "2", "defense.sigma": "0.1"},
        "puregen-ebm": {"defense.steps": "25", "defense.train.iterations": "300", "defense.train.batch_size": "32",
                        "defense.train.mcmc_steps": "20"},
        "vab": {"defense.epoch_scale": "0.05", **dict(kv.split("=", 1) for kv in VAB_CPU)},
    },
    "full": {},
    "cifar10": {"puregen-ebm": {"defense.train.preset": "paper", "defense.train.iterations": "30000"}},
}
DEFENSE_SETTINGS["full"] = {d: DEFENSE_SETTINGS["subset"][d] for d in ("eclipse", "denoise")}
ATTACK_SETTINGS = {
    "subset": {**CPU_CRAFTING, **{a: {f"attack.{k}": v for k, v in TARGETED_CPU[a].items()} for a in ("lc", "iad", "sleeper_agent", "htba")}},
    "full": {},
    "cifar10": {a: {"attack.arch": "resnet18"} for a in ("em", "rem", "tap", "sep", "entf")},
}
# LC implants only in a victim whose first layer is trained (docs/results.md: 99.9 % ASR, 0.2 % on the fast
# net's frozen whitening stem, which amplifies its PGD perturbations); its cells train the stem, as ResNet-18 does.
ATTACK_SETTINGS["subset"]["lc"] = {**ATTACK_SETTINGS["subset"]["lc"], "victim.whiten": "false"}
SHARED = {"subset": {"purify_seed": "0"}, "full": {"purify_seed": "0"}, "cifar10": {}}
REFERENCE = Path(__file__).parent.parent / "results" / "reference"
# what each preset's report puts its cells beside: the subset (size), the same study in fp32 (precision)
COMPARED = {"full": [("the size: the 4,660-image subset (seeds 0 and 1)", REFERENCE / "subset" / "rows.parquet"),
                     ("the precision: the same study with fp32 victims and purifiers (results/reference/full-fp32)",
                      REFERENCE / "full-fp32" / "rows.parquet")]}
FULL_ATTACKS = ("none", "urp", "lsp", "ar", "ops", "badnets", "blend", "sig")
FULL_DEFENSES = ("none", "jpeg", "gray", "eclipse", "denoise")
FIRST = [("none", "none"), ("lsp", "eclipse"), ("lsp", "puregen-ddpm"), ("lsp", "puregen-ebm"), ("em", "none"),
         ("tap", "none"), ("rem", "none")]  # the trials that build the shared models/poisons go first


def cells(preset: str = "subset") -> list[tuple[str, str]]:
    """Every (attack, defense) of the study, those that build cached artifacts first."""
    if preset == "full":
        return [(a, d) for a in FULL_ATTACKS for d in FULL_DEFENSES]
    grid = [(a, d) for a in ("none", *AVAILABILITY, *BACKDOORS) for d in PURIFIERS]
    grid += [(a, d) for a in BACKDOORS for d in ("vab", *COMPOSITES)]
    return FIRST + [c for c in grid if c not in FIRST]


def defense_settings(preset: str, defense: str) -> dict[str, str]:
    """The preset's settings of ``defense``; of a composite, each part's own under the part's name."""
    own = DEFENSE_SETTINGS[preset]
    if SEPARATOR not in defense:
        return dict(own.get(defense, {}))
    return {f"defense.{field_name(p)}.{k[len('defense.'):]}": v
            for p in defense.split(SEPARATOR) for k, v in own.get(p, {}).items()}


def build_specs(preset_name: str, seeds: list[int], dataset: str | None = None) -> list[dict]:
    preset = PRESETS[preset_name]
    ds = dataset or preset.dataset
    specs = []
    for seed in seeds:  # seed-major: the second seed finds every purification cached
        for attack, defense in cells(preset_name):
            extra = {**SHARED[preset_name], **ATTACK_SETTINGS[preset_name].get(attack, {}),
                     **defense_settings(preset_name, defense)}
            specs.append(spec(ds, attack, defense, trial_settings(preset, defense, extra, seed)))
    return specs


def write_reference(df: pd.DataFrame, out: Path, wall_seconds: float | None,
                    compare: list[tuple[str, pd.DataFrame]] | None = None, parts: list[dict] | None = None) -> Path:
    """rows.parquet, report.md (Table 1, clean cost, won-back) and pareto PNGs into ``out``; for each of
    ``compare`` (what differs and another study's rows, e.g. "the size: the subset") a section with both side
    by side; with ``parts`` (a study run in parts, :func:`read_parts_log`) each part's wall time."""
    df = labelled(df)  # datasets by short name and content fingerprint, never a path
    out.mkdir(parents=True, exist_ok=True)
    df[[c for c in ROW_COLUMNS if c in df]].to_parquet(out / "rows.parquet", index=False)
    avail_png = plot_pareto(df[df["attack.name"].isin(AVAILABILITY)], out / "pareto_availability.png")
    back_png = plot_pareto(df[df["attack.name"].isin(BACKDOORS)], out / "pareto_backdoor.png")
    defenses = [d for d in (*PURIFIERS, "vab", *COMPOSITES) if d in set(df["defense.name"])]
    attacks = [a for a in ("none", *AVAILABILITY, *BACKDOORS) if a in set(df["attack.name"])]
    table = defense_table(df, attacks, defenses)
    cost = clean_cost(df, defenses).map(lambda v: "–" if pd.isna(v) else f"{v:+.1f}").to_frame("clean cost (pts)").T
    wb, bd = won_back(df, AVAILABILITY), best_backdoor(df, BACKDOORS)
    counted = wb[wb["counted"]] if not wb.empty else wb
    seeds = sorted(df["seed"].unique().tolist())
    text = [f"# Reference study ({len(df)} trials, seeds {seeds})", "",
            "Test accuracy % (availability, clean) or accuracy % / ASR % (backdoors), mean ± std over seeds.", "",
            markdown(table), "", "Clean-data cost of each defense (undefended clean accuracy minus defended):", "",
            markdown(cost, ""), "", "## Accuracy won back by the best defense (availability)", "",
            markdown(wb.set_index("attack")) if not wb.empty else "(none)", "",
            f"Average won back over attacks removing ≥ 10 points: "
            f"{100 * counted['won_back'].mean():.1f} % ({', '.join(counted['attack'])}); left out (remove < 10 "
            f"points): {', '.join(wb[~wb['counted']]['attack']) or 'none'}." if not counted.empty else "", "",
            "## Lowest backdoor ASR", "", markdown(bd.set_index("attack")) if not bd.empty else "(none)", ""]
    for name, other in compare or []:
        other_wb = won_back(other, AVAILABILITY).set_index("attack")
        text += [f"## What changes with {name} → this study", "",
                 "Mean accuracy % (/ ASR %) per cell, and each defense's clean cost in points:", "",
                 markdown(scale_change(other, df, attacks, defenses)), ""]
        if not wb.empty:
            lines = [f"{r.attack}: {100 * other_wb.loc[r.attack, 'won_back']:.0f} % → {100 * r.won_back:.0f} %"
                     for r in wb.itertuples() if r.attack in other_wb.index]
            text += ["Share of the removed accuracy won back by the best defense (each study's own defenses): "
                     + "; ".join(lines) + ".", ""]
    if wall_seconds is not None:
        text += [f"Study wall time: {wall_seconds / 60:.1f} min"
                 + (f" ({wall_seconds / 3600:.2f} h) in {len(parts)} parts: " + "; ".join(
                     f"{' '.join(r['attacks'])} — {r['trials']} trials, {r['seconds'] / 60:.1f} min" for r in parts)
                    if len(parts) > 1 else "") + ".", ""]
    text += ["![availability](pareto_availability.png)" if avail_png else "",
             "![backdoors](pareto_backdoor.png)" if back_png else "", ""]
    path = out / "report.md"
    path.write_text("\n".join(text))
    return path


def log_part(reference: Path, attacks: list[str], trials: int, seconds: float) -> None:
    """Append one part of a study run in parts (``--attacks``) to ``<reference>/wall.jsonl``."""
    reference.mkdir(parents=True, exist_ok=True)
    with open(reference / "wall.jsonl", "a") as f:
        f.write(json.dumps({"attacks": attacks, "trials": trials, "seconds": round(seconds, 1),
                            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")


def read_parts_log(reference: Path) -> list[dict]:
    path = reference / "wall.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=("subset", "full", "cifar10"), default="subset")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 (subset), 0 (full), 0 1 2 (cifar10)")
    p.add_argument("--dataset", default=None, help="override the preset's dataset")
    p.add_argument("--results", default=None, help="study store (default results/defense_quality-<preset>)")
    p.add_argument("--reference", default=None, help="published summary (default results/reference/<preset>)")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else an embedded Ray)")
    p.add_argument("--concurrent", type=int, default=None,
                   help="trials at once (default: 2 for subset, as many as the cluster's resources allow for cifar10)")
    p.add_argument("--data-dir", default=None, help="where torchvision datasets live / are downloaded (cifar10)")
    p.add_argument("--gpus-per-trial", type=float, default=None)
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--only", nargs="+", default=None, metavar="DEFENSE",
                   help="run only these defenses' cells (e.g. after changing their settings); the report "
                        "still covers every cell")
    p.add_argument("--attacks", nargs="+", default=None, metavar="ATTACK",
                   help="run only these attacks' cells (a long study in parts: each part's trials land in the store; "
                        "every run that computes trials logs its wall time in <reference>/wall.jsonl and the report "
                        "sums them)")
    args = p.parse_args()
    seeds = args.seeds or {"subset": [0, 1], "full": [0]}.get(args.preset, [0, 1, 2])
    study = storage.normalize(args.results or f"results/defense_quality-{args.preset}")
    reference = Path(args.reference or f"results/reference/{args.preset}")
    wall = None
    specs = build_specs(args.preset, seeds, args.dataset)
    # every setting checked before any work starts; the report shows only these trials' rows
    wanted = {h for s in specs for h in build_config(s["dataset"], s["attack"], s["defense"], s["set"]).hashes()}
    for flag, chosen, key in (("--only", args.only, "defense"), ("--attacks", args.attacks, "attack")):
        unknown = set(chosen or ()) - {s[key] for s in specs}
        if unknown:
            p.error(f"{flag} {' '.join(sorted(unknown))}: not {'a defense' if key == 'defense' else 'an attack'} "
                    f"of this study")
    if not args.report_only:
        gpus = args.gpus_per_trial
        if gpus is None:
            import torch

            gpus = 0.25 if torch.cuda.is_available() else 0.0
        todo = [s for s in specs if (args.only is None or s["defense"] in args.only)
                and (args.attacks is None or s["attack"] in args.attacks)]
        done = read_results(study)
        stored = set(done["config_hash"]) if not done.empty else set()
        pending = sum(not stored.intersection(build_config(s["dataset"], s["attack"], s["defense"], s["set"]).hashes())
                      for s in todo)  # what this run computes: a part's log counts these, not the stored ones
        print(f"defense_quality: {len(todo)} trials ({len(todo) - pending} stored) -> {study}", flush=True)
        t = time.perf_counter()
        concurrent = args.concurrent or (2 if args.preset in ("subset", "full") else None)
        try:
            run_study(study, todo, address=args.address, cpus_per_trial=1.0, gpus_per_trial=gpus,
                      max_concurrent=concurrent, data_dir=args.data_dir)
        finally:  # a run that computed trials is a part of the study's time, interrupted or not
            seconds = time.perf_counter() - t
            after = read_results(study)
            ran = len(set(after["config_hash"]) - stored) if not after.empty else 0
            if args.only is None and (ran or pending):  # a rerun of some defenses' cells is not the study's time
                log_part(reference, args.attacks or ["all"], ran, seconds)
    # the study's wall time: the sum of the runs that computed its trials (<reference>/wall.jsonl)
    parts = read_parts_log(reference)
    wall = sum(r["seconds"] for r in parts) if parts else None
    df = read_results(study)
    stale = ~df["config_hash"].isin(wanted)
    if stale.any():
        print(f"defense_quality: {int(stale.sum())} stored rows with other settings left out of the report "
              f"({', '.join(sorted(set(df.loc[stale, 'defense.name'])))})", flush=True)
    df = df[~stale]
    compare = [(name, pd.read_parquet(path)) for name, path in COMPARED.get(args.preset, []) if path.exists()]
    report = write_reference(df, reference, wall, compare, parts)
    computed, reused = cache_counts(df)
    print(json.dumps({"rows": len(df), "purifications_computed": computed, "purifications_reused": reused,
                      "report": str(report), "wall_seconds": None if wall is None else round(wall, 1)}))


if __name__ == "__main__":
    main()
