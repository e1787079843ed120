"""Noise sweep: where does each diffusion purifier's noise level σ trade accuracy against poison success?

Grid: σ × attacks × defenses (+ undefended and JPEG rows, + ``attack=none`` rows
for each purifier's cost on clean data), every trial a fast-victim training on
a purified set from the shared purification cache.

    python sweeps/noise_sweep.py --preset smoke            # digits, CPU, offline
    ECLIPSE_RAY_CACHE=cache python sweeps/noise_sweep.py --preset subset   # CIFAR-10 subset, CPU
    ray job submit --working-dir . -- python sweeps/noise_sweep.py --preset cifar10

smoke preset, measured on the 2-core CPU machine: see README ("Sweeps").
"""

from __future__ import annotations

from _common import main, trial_settings

from eclipse_ray.distributed.tune import spec

GRIDS = {
    "smoke": dict(sigmas=(0.05, 0.15), attacks=("lsp", "badnets"), defenses=("denoise", "eclipse"),
                  sampler={"defense.sampler": "oneshot"}),
    # subset: LSP and clean data only (OPS is in benchmarks/defense_quality.py) to fit a 2-core CPU budget
    "subset": dict(sigmas=(0.0125, 0.025, 0.05, 0.075, 0.1), attacks=("lsp",), defenses=("eclipse", "denoise"),
                   sampler={"defense.sampler": "oneshot"}),
    "cifar10": dict(sigmas=(0.0125, 0.0249, 0.035, 0.05, 0.1), attacks=("lsp", "ops", "ar", "badnets"),
                    defenses=("eclipse", "denoise"), sampler={}),
}


def build(preset, args):
    g = GRIDS[args.preset]
    specs = []
    for seed in args.seeds:
        for attack in (*g["attacks"], "none"):
            for baseline in ("none", "jpeg"):
                specs.append(spec(preset.dataset, attack, baseline,
                                  trial_settings(preset, baseline, {}, seed, args.user)))
            for defense in g["defenses"]:
                for sigma in g["sigmas"]:
                    extra = {**g["sampler"], "defense.sigma": str(sigma)}
                    specs.append(spec(preset.dataset, attack, defense,
                                      trial_settings(preset, defense, extra, seed, args.user)))
    return specs


if __name__ == "__main__":
    main("noise_sweep", __doc__.split("\n")[0], build)
