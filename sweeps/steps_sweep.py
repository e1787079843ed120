"""Steps sweep: purification quality against cost — sampler × number of model calls at a fixed σ.

Grid: ddpm (full chain, t* calls), ddim with k ∈ {1, 2, 5, 10, 20} calls, oneshot,
for ECLIPSE at one σ, against each attack, plus the undefended rows.

    python sweeps/steps_sweep.py --preset smoke
    ray job submit --working-dir . -- python sweeps/steps_sweep.py --preset cifar10
"""

from __future__ import annotations

from _common import main, trial_settings

from eclipse_ray.distributed.tune import spec

GRIDS = {"smoke": dict(sigma=0.05, steps=(1, 3), attacks=("lsp",), full_chain=False),
         "subset": dict(sigma=0.05, steps=(1, 2, 5), attacks=("lsp",), full_chain=False),
         "cifar10": dict(sigma=0.0249, steps=(1, 2, 5, 10, 20), attacks=("lsp", "ops", "badnets"), full_chain=True)}


def build(preset, args):
    g = GRIDS[args.preset]
    samplers = [{"defense.sampler": "oneshot"}] + [{"defense.sampler": "ddim", "defense.steps": str(k)}
                                                   for k in g["steps"]]
    if g["full_chain"]:
        samplers.append({"defense.sampler": "ddpm"})
    specs = []
    for seed in args.seeds:
        for attack in g["attacks"]:
            specs.append(spec(preset.dataset, attack, "none", trial_settings(preset, "none", {}, seed, args.user)))
            for s in samplers:
                extra = {**s, "defense.sigma": str(g["sigma"])}
                specs.append(spec(preset.dataset, attack, "eclipse",
                                  trial_settings(preset, "eclipse", extra, seed, args.user)))
    return specs


if __name__ == "__main__":
    main("steps_sweep", __doc__.split("\n")[0], build)
