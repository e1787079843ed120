"""Adversarial training (Madry et al., ICLR 2018) as a training-time baseline defense: ``advtrain``.

Every training batch is replaced by its PGD ℓ∞ adversarial examples against
the current victim: random start in the ε-ball, ``steps`` signed-gradient
ascent steps of size ``step`` on the cross-entropy, each projected back onto
the ball and [0,1]. ECLIPSE (Table 1, "AT") and APBench report it at ε = 8/255
(10 steps of 2/255): availability poisons work because the victim can fit
their small perturbations, and a victim trained to be robust within the
poison's budget cannot use them — at a price in clean accuracy, and at
``steps + 1`` forward/backward passes per batch.

The fast victim's frozen patch-whitening stem is off here by default
(``whiten``): it gives rare 2×2 patch directions up to 45× gain, so an ℓ∞
8/255 perturbation drowns the image in the whitened channels and adversarial
training cannot fit. Measured on the CIFAR subset (4,660 images, fast net,
10 epochs, PGD-10, seed 0, 2 CPU cores): clean accuracy **14.3 %** with the
stem frozen as for plain training, **47.3 %** with it trained (the plain
victim: 73.4 %). ResNet-18, the papers' victim, has no such stem.

The PGD batch is made in eval mode (BatchNorm running statistics untouched by
the attack) from the training loop's own generator, so a run is deterministic
for a seed, like any victim.
"""

from __future__ import annotations

import dataclasses
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
    whiten: bool = setting(False, "fast net: keep its frozen patch-whitening stem (off: the stem is trained; "
                           "its gain on rare 2×2 patch directions amplifies the ℓ∞ perturbations)")

    def train_victim(self, victim_cfg: VictimConfig, train: ImageSet, seed: int,
                     progress: bool = True) -> tuple[Victim, dict[str, Any]]:
        if not self.whiten:
            victim_cfg = dataclasses.replace(victim_cfg, whiten=False)
        adversary = pgd_adversary(self.eps, self.step, self.steps, self.random_start)
        victim = train_victim(victim_cfg, train.images, train.labels, train.num_classes, seed,
                              progress=progress, adversary=adversary)
        return victim, {}
