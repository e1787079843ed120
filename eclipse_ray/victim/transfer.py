"""The transfer-learning victim: a net pre-trained on clean data, its features kept, trained on the training set.

Poison Frogs (Shafahi et al., 2018), Convex Polytope (Zhu et al., 2019) and
Bullseye Polytope (Aghakhani et al., 2021) craft feature-collision poisons
for a victim that *transfers*: a feature extractor pre-trained on clean data
is kept and only the last, linear layer is trained anew on the poisoned set
("linear transfer"), or every layer is fine-tuned from it ("end-to-end").
Against a victim trained from scratch these poisons rarely hit a target
(docs/results.md); this is the setting their success rates are reported in.

Here the pre-trained net is the victim's own net (``victim.arch`` at its
width, with its arch's recipe: the fine-tuning settings such as ``victim.lr``
or ``victim.label_smoothing`` are the transfer's) trained for
``victim.pretrain_epochs`` on the clean training set (the
originals of the poisoned rows, on their true labels) under the trial's seed:
the defender's clean pre-training, which the attacker knows only through a
surrogate of the same recipe on the same clean data (gray-box; the papers'
white-box case when seed and recipe coincide). Then, on the training set the
trial gives (poisoned, perhaps purified):

- ``linear``: every pre-trained layer frozen (BatchNorm statistics included),
  the linear head re-initialised and trained — features fixed exactly;
- ``finetune``: the head re-initialised, every layer trained from the
  pre-trained weights.

The papers fine-tune on a small set: Convex and Bullseye Polytope's victims
were pre-trained on 4,800 CIFAR-10 images per class and fine-tuned on the other
50 per class plus the poisons (5 per target). ``victim.finetune_per_class=N``
keeps that ratio: the transfer victim trains on the first N rows of each class
(by sample index) that are not poisoned, plus every poisoned row
(:func:`finetune_rows`); the default trains on every row.

The input normalisation is the pre-trained net's. Pre-trained nets are kept
in memory (the last two), so the trials of one process that share clean data,
recipe and seed pre-train once.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
from torch import nn

from eclipse_ray.config import config_hash, flatten
from eclipse_ray.victim.memo import data_key, kept

TRANSFERS = ("none", "linear", "finetune")
_PRETRAINED: dict[tuple, object] = {}


def head_of(model: nn.Module) -> nn.Linear:
    """The last linear layer of a victim net (the one transfer learning trains anew)."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not heads:
        raise ValueError(f"{type(model).__name__} has no linear head to transfer to")
    return heads[-1]


def pretrained(cfg, images: np.ndarray, labels: np.ndarray, num_classes: int, seed: int, train_fn,
               progress: bool = False):
    """The net ``cfg`` (its transfer off, ``pretrain_epochs`` epochs) trained by ``train_fn`` on the clean
    ``images``; the same object for the same data, recipe and seed within a process."""
    # the net its arch's recipe trains (the fine-tuning settings -- lr, schedule, label smoothing ... -- are the
    # transfer's): what defines the net (arch, width, stem, precision, device) from cfg, the rest the recipe's
    base = type(cfg)(arch=cfg.arch, width=cfg.width, whiten=cfg.whiten, precision=cfg.precision, device=cfg.device,
                     epochs=cfg.pretrain_epochs).resolved()
    key = (data_key(images, labels), config_hash(flatten(base)), num_classes, seed)
    return kept(_PRETRAINED, key, lambda: train_fn(base, images, labels, num_classes, seed, progress=progress))


def transfer_net(pre: nn.Module, mode: str, seed: int) -> nn.Module:
    """A copy of the pre-trained ``pre`` with its head re-initialised under ``seed``; for ``linear``, every
    other parameter frozen."""
    model = copy.deepcopy(pre)
    head = head_of(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = nn.Linear(head.in_features, head.out_features, bias=head.bias is not None)
    with torch.no_grad():
        head.weight.copy_(fresh.weight.to(head.weight))
        if head.bias is not None:
            head.bias.copy_(fresh.bias.to(head.bias))
    if mode == "linear":
        for p in model.parameters():
            p.requires_grad_(False)
        for p in head.parameters():
            p.requires_grad_(True)
    elif hasattr(model, "whiten"):  # a stem bias frozen at the end of pre-training trains again (its epochs)
        model.whiten.bias.requires_grad_(True)
    return model


def finetune_rows(labels: np.ndarray, poisoned: np.ndarray, index: np.ndarray, per_class: int | None) -> np.ndarray:
    """Rows of the fine-tuning set: every poisoned row and the ``per_class`` unpoisoned rows of each class with
    the smallest sample indices (all rows when ``per_class`` is None), in their order."""
    if per_class is None:
        return np.arange(len(labels))
    keep = np.asarray(poisoned, bool).copy()
    clean = np.flatnonzero(~keep)
    for c in np.unique(labels):
        rows = clean[labels[clean] == c]
        keep[rows[np.argsort(index[rows], kind="stable")[:per_class]]] = True
    return np.flatnonzero(keep)
