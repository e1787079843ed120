"""PureGen-EBM on real CIFAR-10 images, CPU scale (issue 6, item 1).

On ``../shared/data/cifar10_subset.npz`` (4,660 train / 932 test): the defender's
clean reference set is 4 % of the training split (187 images, duplicated ×4);
an energy network (``--preset``, default ``tiny``) is trained on it once by
contrastive divergence on the CPU (``--iterations`` × ``--batch`` positives, each
negative batch ``--mcmc-steps`` Langevin steps from the replay buffer; cached
under $ECLIPSE_RAY_CACHE). Then ``puregen-ebm`` (150 Langevin steps,
η = 1.25e-2, τ = 1e-4, PureGen's purification) runs on every training image and
the fast victim trains 10 epochs. Undefended references (foundation_quality.py):
LSP 22.5 %, clean 72.7 %.

Usage:  ECLIPSE_RAY_CACHE=cache nice -n 10 python benchmarks/ebm_quality.py [--iterations 300] [--attacks lsp none ops badnets]
Cost:   measured on 2 shared CPU cores; see results/ebm/ and the README for the figures and wall times.
"""

from __future__ import annotations

import argparse
import json
import time

from eclipse_ray.data.sources import npz_spec
from eclipse_ray.presets import SUBSET_NPZ as DEFAULT_NPZ
from eclipse_ray.trial import build_config, is_stored, prepare, run_trial


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--npz", default=str(DEFAULT_NPZ))
    p.add_argument("--preset", default="tiny", choices=("tiny", "small", "paper"))
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--mcmc-steps", type=int, default=20, help="training Langevin steps (PureGen: 100)")
    p.add_argument("--steps", type=int, default=150, help="purification Langevin steps (PureGen: 150)")
    p.add_argument("--attacks", nargs="+", default=["lsp", "none"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default="results/ebm")
    args = p.parse_args()
    dataset = npz_spec(args.npz)
    settings = {"victim.epochs": "10", "seed": str(args.seed), "defense.train.preset": args.preset,
                "defense.train.iterations": str(args.iterations), "defense.train.batch_size": str(args.batch),
                "defense.train.mcmc_steps": str(args.mcmc_steps), "defense.steps": str(args.steps),
                "defense.batch_size": "256"}

    # Train (or find in the cache) the EBM first, so its cost is reported on its own.
    cfg = build_config(dataset, "none", "puregen-ebm", settings)
    data = prepare(cfg)
    t = time.perf_counter()
    model_dir = cfg.defense.model_path(data.train, None, progress=True)
    info = json.loads((model_dir / "config.json").read_text())
    print(f"EBM {model_dir}: {info['clean_images']} clean images, train_seconds {info['train_seconds']:.0f} "
          f"(this call {time.perf_counter() - t:.0f} s), final CD loss {info['final_cd_loss']:.3e}", flush=True)

    for attack in args.attacks:
        cfg = build_config(dataset, attack, "puregen-ebm", settings)
        if is_stored(cfg, args.results):
            continue  # measured already (rerun to finish an interrupted benchmark)
        t = time.perf_counter()
        row = run_trial(cfg, results_dir=args.results, reference=False, progress=False)
        print(f"{attack:>8} + puregen-ebm test_acc {row['test_acc']:.3f}"
              + (f" asr {row['asr']:.3f}" if "asr" in row else "")
              + f" psnr_p {row.get('purify_psnr_poisoned', float('nan')):.1f}"
              f" psnr_c {row.get('purify_psnr_clean', float('nan')):.1f}"
              f" purify {row['purify_seconds']:.0f}s train {row['train_seconds']:.0f}s"
              f" total {time.perf_counter() - t:.0f}s", flush=True)


if __name__ == "__main__":
    main()
