"""Poison-rate sweep: how do undefended and purified victims fare as the poisoned share grows?

Grid: attack.rate ∈ {0.01, 0.05, 0.1, 0.2, 0.5, 1.0} × attacks × {none, jpeg, eclipse}.

    python sweeps/poison_rate_sweep.py --preset smoke
    ray job submit --working-dir . -- python sweeps/poison_rate_sweep.py --preset cifar10
"""

from __future__ import annotations

from _common import main, trial_settings

from eclipse_ray.distributed.tune import spec

GRIDS = {"smoke": dict(rates=(0.05, 0.2), attacks=("badnets",), defenses=("none", "eclipse")),
         "subset": dict(rates=(0.1, 0.5, 1.0), attacks=("lsp", "badnets"), defenses=("none", "eclipse")),
         "cifar10": dict(rates=(0.01, 0.05, 0.1, 0.2, 0.5, 1.0), attacks=("lsp", "badnets", "blend"),
                         defenses=("none", "jpeg", "eclipse"))}


def build(preset, args):
    g = GRIDS[args.preset]
    specs = []
    for seed in args.seeds:
        for attack in g["attacks"]:
            for rate in g["rates"]:
                for defense in g["defenses"]:
                    extra = {"attack.rate": str(rate)}
                    if defense == "eclipse" and args.preset in ("smoke", "subset"):
                        extra.update({"defense.sampler": "oneshot",
                                      "defense.sigma": "0.1" if args.preset == "smoke" else "0.05"})
                    specs.append(spec(preset.dataset, attack, defense,
                                      trial_settings(preset, defense, extra, seed, args.user)))
    return specs


if __name__ == "__main__":
    main("poison_rate_sweep", __doc__.split("\n")[0], build)
