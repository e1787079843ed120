"""Adversarial training (Madry et al., ICLR 2018) as a training-time baseline defense: ``advtrain``.

Every training batch is replaced by its PGD ℓ∞ adversarial examples against
the current victim: random start in the ε-ball, ``steps`` signed-gradient
ascent steps of size ``step`` on the cross-entropy, each projected back onto
the ball and [0,1]. ECLIPSE (Table 1, "AT") and APBench report it at ε = 8/255
(10 steps of 2/255): availability poisons work because the victim can fit
their small perturbations, and a victim trained to be robust within the
poison's budget cannot use them — at a price in clean accuracy, and at
``steps + 1`` forward/backward passes per batch.

The PGD batch is made in eval mode (BatchNorm running statistics untouched by
the attack) from the training loop's own generator, so a run is deterministic
for a seed, like any victim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from eclipse_ray.attacks.surrogate import pgd_adversary
from eclipse_ray.config import setting
from eclipse_ray.data.imageset import ImageSet
from eclipse_ray.defenses.base import DefenseConfig
from eclipse_ray.victim.train import Victim, VictimConfig, train_victim


@dataclass(frozen=True)
class AdvTrain(DefenseConfig):
    name: ClassVar[str] = "advtrain"
    summary: ClassVar[str] = "adversarial training: each batch replaced by PGD ℓ∞ examples (8/255, 10 × 2/255)"
    eps: float = setting(8 / 255, "ℓ∞ radius on [0,1] (ECLIPSE, APBench: 8/255)", ge=0.0, le=1.0)
    step: float = setting(2 / 255, "PGD step size on [0,1] (2/255)", gt=0.0, le=1.0)
    steps: int = setting(10, "PGD steps per batch (10)", ge=1)
    random_start: bool = setting(True, "start PGD from a uniform point of the ε-ball")

    def train_victim(self, victim_cfg: VictimConfig, train: ImageSet, seed: int,
                     progress: bool = True) -> tuple[Victim, dict[str, Any]]:
        adversary = pgd_adversary(self.eps, self.step, self.steps, self.random_start)
        victim = train_victim(victim_cfg, train.images, train.labels, train.num_classes, seed,
                              progress=progress, adversary=adversary)
        return victim, {}
