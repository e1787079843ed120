"""``eclipse-ray``: the command line.

    eclipse-ray list
    eclipse-ray show DATASET_OR_DIR --out grid.png
    eclipse-ray poison --dataset D --attack A [--set k=v ...] --out DIR
    eclipse-ray run --dataset D --attack A --defense P [--set k=v ...] --results DIR
    eclipse-ray train-ebm --dataset D --out DIR [--set ebm.iterations=N ...]
    eclipse-ray import FORMAT PATH --out DIR [--clean DATASET]
    eclipse-ray certify --dataset D [--attack A] --out DIR [--set certify.models=N ...] [--address A]
    eclipse-ray doctor DIR [--json]

Bad input ends with one line ``eclipse-ray: error: …`` on stderr, exit code 2,
and nothing written; any other error too (``--debug`` shows its traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from eclipse_ray import storage
from eclipse_ray.boundary import debug_requested, guarded, plugins_requested
from eclipse_ray.config import ConfigError, section_settings, seed_arg, split_overrides
from eclipse_ray.registry import use_plugins


def _cmd_list(args: argparse.Namespace) -> None:
    from eclipse_ray.attacks import ATTACKS
    from eclipse_ray.data.sources import descriptions
    from eclipse_ray.defenses import DEFENSES
    from eclipse_ray.victim.nets import VICTIMS
    from eclipse_ray.victim.train import VictimConfig

    print("datasets (--dataset):")
    for name, text in descriptions().items():
        print(f"  {name:<14} {text}")
    for title, reg in (("attacks (--attack)", ATTACKS), ("defenses (--defense)", DEFENSES)):
        print(f"\n{title}:")
        for name in reg:
            cls = reg[name]
            kind = f" [{cls.kind}]" if getattr(cls, "kind", None) not in (None, "none") else ""
            origin = f" ({reg.origin[name]})" if name in reg.origin else ""
            print(f"  {name:<14} {cls.summary}{kind}{origin}")
            for fname, tname, default, help_text in cls.describe():
                print(f"      {reg.section}.{fname}={_fmt(default)}  ({tname}) {help_text}")
    print("\n  A+B…           composed: purifiers in order, then at most one training-time defense "
          "(jpeg+vab, denoise+jpeg, eclipse+advtrain); each part's settings as defense.PART.KEY "
          "(PART with - as _), at most one part with a model")
    print("\nvictim networks (--set victim.arch=NAME):")
    for name in VICTIMS:
        doc = (VICTIMS[name].__doc__ or "").strip().splitlines()
        origin = f" ({VICTIMS.origin[name]})" if name in VICTIMS.origin else ""
        print(f"  {name:<14} {doc[0] if doc else ''}{origin}")
    print("\nvictim settings (--set victim.KEY=VALUE):")
    for fname, tname, default, help_text in VictimConfig.describe():
        print(f"      victim.{fname}={_fmt(default)}  ({tname}) {help_text}")
    print("\n      seed=0  (int) seed of victim training and defense randomness")


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "none" if v is None else str(v)


def _args_show(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("dataset", help="dataset spec or dataset directory")
    sp.add_argument("--out", required=True, help="PNG file to write")
    sp.add_argument("--split", default="train")
    sp.add_argument("-n", type=int, default=40, help="number of images")
    shared(sp, "data_dir")


def _cmd_show(args: argparse.Namespace) -> None:
    from eclipse_ray.data.grid import save_grid
    from eclipse_ray.data.sources import load_dataset

    data = load_dataset(args.dataset, args.data_dir)
    if args.split not in data.splits:
        raise ConfigError(f"{args.dataset} has no split {args.split!r} (has {', '.join(data.splits)})")
    s = data.splits[args.split]
    n_p = int(s.poisoned.sum())
    title = f"{data.name} · {args.split} · {len(s)} images" + (f" · {n_p} poisoned (★)" if n_p else "")
    path = save_grid(s, args.out, n=args.n, title=title)
    print(f"wrote {path}")


def _args_poison(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--dataset", required=True)
    sp.add_argument("--attack", required=True)
    sp.add_argument("--out", required=True, help="new dataset directory")
    shared(sp, "set", "data_dir", set_help="attack.* settings")


def _cmd_poison(args: argparse.Namespace) -> None:
    from eclipse_ray.data.store import write_dataset
    from eclipse_ray.trial import build_config, prepare

    _refuse_existing(args.out)
    cfg = build_config(args.dataset, args.attack, "none", split_overrides(args.set))
    storage.check_writable(args.out, "--out")
    with storage.claim(args.out, "--out"):
        data = prepare(cfg, args.data_dir)
        path = write_dataset(args.out, data.splits, data.meta)
    counts = {k: len(v) for k, v in data.splits.items()}
    print(json.dumps({"out": str(path), "attack": cfg.attack.name, "splits": counts,
                      "poisoned": int(data.train.poisoned.sum())}))


def _args_run(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--dataset", required=True)
    sp.add_argument("--attack", default="none")
    sp.add_argument("--defense", default="none")
    sp.add_argument("--results", default=None, help="results store directory to append the row to")
    sp.add_argument("--no-reference", action="store_true",
                    help="skip training the clean reference victim (no poison_success for availability attacks)")
    shared(sp, "set", "quiet", "data_dir", set_help="dotted settings, e.g. attack.eps=0.0314 victim.epochs=10 seed=1")


def _cmd_run(args: argparse.Namespace) -> None:
    from eclipse_ray.data.cache import cache_root
    from eclipse_ray.trial import build_config, run_trial, summary

    cfg = build_config(args.dataset, args.attack, args.defense, split_overrides(args.set))
    if args.results:
        storage.check_writable(args.results, "--results")
    storage.check_writable(cache_root(), "the cache ($ECLIPSE_RAY_CACHE)")
    row = run_trial(cfg, data_dir=args.data_dir, results_dir=args.results, reference=not args.no_reference,
                    progress=not args.quiet)
    print(json.dumps(summary(row)))


def _args_train_diffusion(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--dataset", required=True)
    sp.add_argument("--out", required=True, help="model directory (diffusers layout); rerun to resume")
    sp.add_argument("--recipe", choices=("eclipse", "puregen"), default="eclipse",  # = TRAIN_RECIPES (a test checks)
                    help="defaults: eclipse (cosine T=4000) or puregen (linear T=1000, t<250)")
    shared(sp, "set", "quiet", "data_dir", set_help="train.* settings")


def _cmd_train_diffusion(args: argparse.Namespace) -> None:
    from eclipse_ray.diffusion.train import recipe_config, train_diffusion

    cfg = recipe_config(args.recipe, section_settings(split_overrides(args.set), "train", "train-diffusion"))
    storage.check_writable(args.out, "--out")
    with storage.claim(args.out, "--out"):  # before anything in it is touched
        out, clean = _training_setup(args, cfg)
        path = train_diffusion(cfg, clean, out, progress=not args.quiet, extra_info={"dataset": args.dataset})
    print(json.dumps({"out": str(path), "clean_images": len(clean), "iterations": cfg.iterations,
                      "schedule": cfg.schedule, "num_steps": cfg.num_steps, "t_max": cfg.t_max}))


def _training_setup(args: argparse.Namespace, cfg: Any) -> tuple[Path, Any]:
    """(output directory, the defender's clean reference set) for train-diffusion / train-ebm."""
    from eclipse_ray.checkpoint import claim_out
    from eclipse_ray.data.sources import load_dataset
    from eclipse_ray.data.sources import clean_reference_rows
    from eclipse_ray.data.imageset import clean_view

    out = Path(args.out)
    claim_out(out, cfg, "config.json" if hasattr(cfg, "mcmc_steps") else "eclipse_ray.json")
    data = load_dataset(args.dataset, args.data_dir)
    full = clean_view(data.train, data.splits.get("originals"))
    return out, full.subset(clean_reference_rows(full, cfg.clean_fraction, cfg.seed))


def _args_train_ebm(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--dataset", required=True)
    sp.add_argument("--out", required=True, help="model directory (model.safetensors + config.json); rerun to resume")
    shared(sp, "set", "quiet", "data_dir", set_help="ebm.* settings")


def _cmd_train_ebm(args: argparse.Namespace) -> None:
    from eclipse_ray.ebm.train import ebm_train_config_with, train_ebm

    cfg = ebm_train_config_with(section_settings(split_overrides(args.set), "ebm", "train-ebm"))
    storage.check_writable(args.out, "--out")
    with storage.claim(args.out, "--out"):  # before anything in it is touched
        out, clean = _training_setup(args, cfg)
        path = train_ebm(cfg, clean, out, progress=not args.quiet, extra_info={"dataset": args.dataset})
    print(json.dumps({"out": str(path), "clean_images": len(clean), "iterations": cfg.iterations,
                      "preset": cfg.preset, "mcmc_steps": cfg.mcmc_steps}))


def _args_purify(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--input", required=True, help="dataset directory (eclipse-ray poison output)")
    sp.add_argument("--defense", required=True)
    sp.add_argument("--out", required=True, help="new dataset directory; rerun to resume")
    sp.add_argument("--actors", type=int, default=0, help="Ray actors (one GPU each if present); 0: in-process")
    sp.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    sp.add_argument("--seed", type=seed_arg, default=0, help="seed of the purification noise (0 ≤ seed < 2**63)")
    sp.add_argument("--reuse", nargs="+", default=[], metavar="DIR",
                    help="purified datasets to copy shared rows from (the same purifier, seed and model on a "
                         "dataset with the same rows, e.g. the clean set's: only the differing rows are purified)")
    shared(sp, "set", "quiet", set_help="defense.* settings")


def _cmd_purify(args: argparse.Namespace) -> None:
    from eclipse_ray.data import store
    from eclipse_ray.defenses import DEFENSES
    from eclipse_ray.distributed.purify import purify_dataset

    defense = DEFENSES.build(args.defense, section_settings(split_overrides(args.set), "defense", "purify"))
    if not defense.purifies:
        raise ConfigError(f"defense {defense.name!r} does not rewrite images (a training-time defense or none); "
                          f"use it with `eclipse-ray run`")
    if args.actors < 0:
        raise ConfigError(f"--actors={args.actors}: must be ≥ 0")
    for d in args.reuse:
        if not store.is_dataset(d):
            raise ConfigError(f"--reuse {d}: not a dataset directory")
    storage.check_writable(args.out, "--out")
    with storage.claim(args.out, "--out"):
        report = purify_dataset(args.input, defense, args.out, seed=args.seed, actors=args.actors,
                                address=args.address, progress=not args.quiet, reuse=args.reuse)
    print(json.dumps({k: report[k] for k in ("out", "rows", "units", "units_computed", "rows_reused", "donor",
                                             "seconds", "cached", "key") if k in report}))


def _args_results(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("action", choices=("summary", "pareto", "plot", "report"))
    sp.add_argument("study", help="results store directory (results/<study>)")
    sp.add_argument("--out", default=None, help="plot: PNG path; report: output directory")
    sp.add_argument("--cache", default=None, help="report: where the study's datasets are, for the HTML report's "
                                                  "image strips (default: STUDY/.cache, else $ECLIPSE_RAY_CACHE)")


def _cmd_results(args: argparse.Namespace) -> None:
    import pandas as pd

    from eclipse_ray.results.pareto import pareto, summarize
    from eclipse_ray.results.html import labelled
    from eclipse_ray.results.report import plot_pareto, summary_columns, write_report
    from eclipse_ray.result_store import read_results

    df = read_results(args.study)
    if df.empty:
        raise ConfigError(f"{args.study}: no results store there (no part-*.parquet)")
    df = labelled(df)  # datasets by short name and fingerprint
    cols = summary_columns(df)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 20)
    if args.action == "summary":
        s = summarize(df)
        print(s[[c for c in cols if c in s.columns]].to_string(index=False))
    elif args.action == "pareto":
        p = pareto(df)
        print(p[p["on_front"]][[c for c in cols if c in p.columns]].to_string(index=False))
    elif args.action == "plot":
        import tempfile

        dest = args.out or storage.join(args.study, "pareto.png")
        with tempfile.TemporaryDirectory() as tmp:
            path = plot_pareto(df, Path(tmp) / "pareto.png")
            if path is not None:
                storage.write_bytes(dest, path.read_bytes())
        print(f"wrote {dest}" if path else "nothing to plot (no poison_success values)")
    else:
        report = write_report(args.study, args.out, args.cache)
        print(f"wrote {report} and {report.removesuffix('.md')}.html")


def _args_certify(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--dataset", required=True)
    sp.add_argument("--attack", default="none")
    sp.add_argument("--out", required=True, help="output directory; rerun the same command to resume")
    sp.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    sp.add_argument("--in-process", action="store_true", help="train the models one by one here, without Ray")
    shared(sp, "set", "quiet", "data_dir",
           set_help="certify.* (sigma, models, alpha …), attack.*, defense.* (denoise), victim.*")


def _cmd_certify(args: argparse.Namespace) -> None:
    from eclipse_ray.certify.report import interpretation
    from eclipse_ray.certify.run import build_job, run_certify

    job = build_job(args.dataset, args.attack, split_overrides(args.set))
    storage.check_writable(args.out, "--out")
    with storage.claim(args.out, "--out"):
        s = run_certify(job, args.out, data_dir=args.data_dir, use_ray=not args.in_process,
                        address=args.address, progress=not args.quiet)
    print(f"certified accuracy — {s['dataset']}, attack {s['attack.name']}, σ = {s['certify.sigma_resolved']:.4g} "
          f"(t* = {s['defense.t_star']}), N = {s['certify.models']} models (n0 = {s['certify.n0']} select, "
          f"n = {s['certify.n']} estimate), α = {s['certify.alpha']:g}; "
          f"{s['models_trained']} trained, {s['models_reused']} reused")
    print(Path(args.out, "certified_accuracy.md").read_text().rstrip())
    for line in interpretation(s):
        print(f"- {line}")
    print(f"wrote {args.out}/radii.parquet, certified_accuracy.csv/.md/.png, certify.json")


def _args_import(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("format", choices=("apbench", "toxic", "backdoorbench", "eclipse", "npz"),
                    help="apbench: data/<index>.png folder; toxic: 'Just how toxic' trial folder; backdoorbench: "
                         "attack_result.pt; eclipse: <POISON>.pkl; npz: x_train,y_train,x_test,y_test[,poisoned,…]")
    sp.add_argument("path", help="the foreign file or folder")
    sp.add_argument("--out", required=True, help="new dataset directory (then: eclipse-ray run --dataset DIR)")
    sp.add_argument("--clean", default=None, help="clean dataset the poisons were made from (cifar10, npz:PATH …)")
    sp.add_argument("--trainset-size", type=int, default=None,
                    help="toxic: rebuild the benchmark's training subset of this size (e.g. 2500)")
    shared(sp, "quiet", "data_dir")


def _cmd_import(args: argparse.Namespace) -> None:
    from eclipse_ray.data.importers import import_poisons
    from eclipse_ray.data.store import write_dataset

    _refuse_existing(args.out)
    storage.check_writable(args.out, "--out")
    with storage.claim(args.out, "--out"):
        data = import_poisons(args.format, args.path, args.clean, args.data_dir, progress=not args.quiet,
                              trainset_size=args.trainset_size)
        path = write_dataset(args.out, data.splits, data.meta)
    print(json.dumps({"out": str(path), "format": args.format, "splits": {k: len(v) for k, v in data.splits.items()},
                      "poisoned": int(data.train.poisoned.sum()), "attack_kind": data.meta.get("attack_kind")}))


def _args_doctor(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("dir", help="a study, the cache ($ECLIPSE_RAY_CACHE) or any output directory (path or URI)")
    sp.add_argument("--json", action="store_true", help="one JSON object per finding")


def _cmd_doctor(args: argparse.Namespace) -> int:
    from eclipse_ray.doctor import report

    if not storage.exists(args.dir):
        raise ConfigError(f"{args.dir}: no such directory")
    return report(args.dir, as_json=args.json)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("eclipse_ray")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _refuse_existing(out: str) -> None:
    """Refuse an output location (local path or URI) that holds anything, before any work."""
    if storage.is_file(out) or storage.listdir(out):
        raise ConfigError(f"{out} already exists; choose a new output directory")


def shared(sp: argparse.ArgumentParser, *names: str, set_help: str = "dotted settings") -> None:
    """The options several commands share, declared once: ``set``, ``quiet``, ``data_dir``."""
    if "set" in names:  # repeated --set flags accumulate (a key given twice is an error, split_overrides)
        sp.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE", help=set_help)
    if "quiet" in names:
        sp.add_argument("--quiet", action="store_true", help="no progress bars")
    if "data_dir" in names:
        sp.add_argument("--data-dir", default=None, help="where torchvision datasets live / download to")


# name, help, its arguments (beside its handler above), handler
COMMANDS = [
    ("list", "every dataset, attack and defense with its settings and defaults", None, _cmd_list),
    ("show", "draw a labelled image grid (poisoned samples marked) to a PNG", _args_show, _cmd_show),
    ("poison", "write a poisoned dataset (all splits needed to evaluate it)", _args_poison, _cmd_poison),
    ("run", "one trial: poison, purify, train the victim, measure, append a row", _args_run, _cmd_run),
    ("train-diffusion", "train a DDPM on the defender's clean reference set", _args_train_diffusion,
     _cmd_train_diffusion),
    ("train-ebm", "train a PureGen EBM (contrastive divergence) on the clean reference set", _args_train_ebm,
     _cmd_train_ebm),
    ("purify", "purify a dataset directory's train split (Ray Data actor pool)", _args_purify, _cmd_purify),
    ("results", "summarise a results store: seed tables, Pareto frontier, plots, report", _args_results, _cmd_results),
    ("doctor", "list what under a study, cache or output directory is corrupt, stale or duplicated (changes "
               "nothing; exit 1 if anything is)", _args_doctor, _cmd_doctor),
    ("import", "turn poisons made with another tool into a dataset directory", _args_import, _cmd_import),
    ("certify", "certified denoising (Hong et al.): N noised+denoised trainings, radii", _args_certify, _cmd_certify),
]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eclipse-ray", description="Purify poisoned image datasets and measure it.",
                                allow_abbrev=False)  # no --plug for --plugin: it is read before parsing
    p.add_argument("--debug", action="store_true", help="show the traceback of an error (anywhere on the line)")
    p.add_argument("--plugin", metavar="FILE.py", action="append", default=[],
                   help="load attacks, defenses, victims or datasets from this Python file (anywhere on the line; "
                        "repeatable); installed plugins (entry points) load by themselves")
    p.add_argument("--version", action="version", version=f"eclipse-ray {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_text, add_arguments, handler in COMMANDS:
        sp = sub.add_parser(name, help=help_text)
        if add_arguments is not None:
            add_arguments(sp)
        sp.set_defaults(fn=handler)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    debug, argv = debug_requested(list(sys.argv[1:] if argv is None else argv))

    def go() -> Any:
        plugins, rest = plugins_requested(argv)
        args = parser().parse_args(rest)
        use_plugins(plugins)  # a broken plugin file: one line naming it
        return args.fn(args)

    return guarded("eclipse-ray", go, debug)


if __name__ == "__main__":
    sys.exit(main())
