"""SEP — self-ensemble protection (Chen et al., ICLR 2023), one of ECLIPSE's Table 1 availability poisons.

Adversarial examples make strong availability poisons (Fowl et al.), and they
transfer better when crafted against an ensemble; SEP gets the ensemble for
free from the *checkpoints of one training run*. A surrogate is trained on the
clean data for ``surrogate_epochs`` epochs and ``checkpoints`` of its states,
evenly spaced over the run (the last one included), are kept; every poisoned
image is then replaced by an untargeted PGD ℓ∞ example (``eps`` 8/255) that
maximises the cross-entropy of its true label averaged over the checkpoints.
Signed steps of ``tau``·eps, decayed ×0.1 at 3/8, 5/8 and 7/8 of ``steps``,
with differentiable flip + translate augmentation (``augment``), as TAP's.

Deviations: the paper's feature-alignment and variance-reduction refinements
(SEP-FA-VR) are not implemented — this is the plain self-ensemble (SEP); the
surrogate is the fast net (paper: ResNet-18, 15 checkpoints of 120 epochs;
CPU settings in benchmarks/model_poisons.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from eclipse_ray.attacks.base import mask_of, setting_rate, setting_seed
from eclipse_ray.attacks.surrogate import CraftedAttack, budget_steps, images_tensor, linf_project, pgd, quantise
from eclipse_ray.attacks.tap import step_size
from eclipse_ray.config import ConfigError, setting
from eclipse_ray.data.imageset import ImageSet
from eclipse_ray.tensors import augment_batch
from eclipse_ray.victim.train import VictimConfig, train_victim


def checkpoint_epochs(epochs: int, k: int) -> list[int]:
    """``k`` epochs (0-based) evenly spaced over ``epochs``, the last one included."""
    return sorted({int(round(epochs * (i + 1) / k)) - 1 for i in range(k)})


@dataclass(frozen=True)
class SEP(CraftedAttack):
    name: ClassVar[str] = "sep"
    summary: ClassVar[str] = "self-ensemble protection: adversarial examples against checkpoints of one training run"
    steps: int = setting(250, "PGD steps", ge=1)
    tau: float = setting(0.1, "PGD step size as a fraction of eps (decayed ×0.1 at 3/8, 5/8, 7/8)", gt=0.0)
    augment: bool = setting(True, "differentiable flip + translate of the perturbed batch while crafting")
    surrogate_epochs: int = setting(30, "epochs of the surrogate's training run on clean data (paper: 120)", ge=1)
    checkpoints: int = setting(15, "checkpoints of that run in the ensemble (paper: 15)", ge=1)
    rate: float = setting_rate(1.0)
    seed: int = setting_seed()

    def check_dataset(self, train: ImageSet) -> None:
        super().check_dataset(train)
        if self.checkpoints > self.surrogate_epochs:
            raise ConfigError(f"attack.checkpoints={self.checkpoints}: more than the "
                              f"{self.surrogate_epochs} epochs of the surrogate's run")

    def ensemble(self, train: ImageSet, gen: torch.Generator,
                 device: torch.device) -> tuple[list[nn.Module], torch.Tensor, torch.Tensor]:
        """(the checkpoints of one surrogate training run, frozen, in eval mode; its input mean and std)."""
        keep = set(checkpoint_epochs(self.surrogate_epochs, self.checkpoints))
        states: list[dict] = []
        seed = int(torch.randint(0, 2**31, (1,), generator=gen))
        vcfg = VictimConfig(arch=self.arch, epochs=self.surrogate_epochs, width=self.width,
                            batch_size=self.batch_size, device=str(device))

        def save(epoch: int, model: nn.Module) -> None:
            if epoch in keep:
                states.append(copy.deepcopy(model.state_dict()))

        victim = train_victim(vcfg, train.images, train.labels, train.num_classes, seed, progress=False,
                              whiten_tol=None, on_epoch=save)
        models = []
        for state in states:
            m = copy.deepcopy(victim.model)
            m.load_state_dict(state)
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
            models.append(m)
        return models, victim.mean, victim.std

    def poison_train(self, train: ImageSet, rng: np.random.Generator):
        rows, gen, device = self.begin(len(train), rng)
        models, mean, std = self.ensemble(train, gen, device)
        eps = budget_steps(self.eps) / 255
        x_all = images_tensor(train.images[rows], device)
        y_all = torch.from_numpy(train.labels[rows].astype(np.int64)).to(device)
        out = torch.zeros_like(x_all)
        for i in tqdm(range(0, len(rows), self.batch_size), desc="craft sep", disable=None, leave=False):
            x, y = x_all[i:i + self.batch_size], y_all[i:i + self.batch_size]

            def loss(d: torch.Tensor) -> torch.Tensor:
                v = x + d
                if self.augment:
                    v = augment_batch(v, gen)
                v = (v - mean) / std
                return torch.stack([F.cross_entropy(m(v), y) for m in models]).mean()

            out[i:i + self.batch_size] = pgd(torch.zeros_like(x), loss, linf_project(x, eps),
                                             lambda k: step_size(k, self.steps, self.tau * eps), self.steps,
                                             minimise=False)
        return quantise(train.images, rows, out, self.eps), train.labels, mask_of(rows, len(train))
