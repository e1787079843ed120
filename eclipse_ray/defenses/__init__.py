"""Defenses, by name. ``DEFENSES[name]`` is the defense's config class (defaults = published settings)."""

from __future__ import annotations

from eclipse_ray.defenses.advtrain import AdvTrain
from eclipse_ray.defenses.base import DefenseConfig, NoDefense
from eclipse_ray.defenses.baselines import JPEG, BitDepth, Blur, Gray
from eclipse_ray.defenses.compensation import Compensation
from eclipse_ray.defenses.compose import composite
from eclipse_ray.defenses.diffusion import Denoise, Eclipse, PureGenDDPM
from eclipse_ray.defenses.ebm import PureGenEBM
from eclipse_ray.defenses.vab import VaB
from eclipse_ray.registry import Registry

DEFENSES: Registry[DefenseConfig] = Registry("defense", [NoDefense, JPEG, Gray, BitDepth, Blur, Compensation,
                                                         Eclipse, PureGenDDPM, Denoise, VaB, PureGenEBM, AdvTrain],
                                        group="eclipse_ray.defenses", kind=DefenseConfig, compose=composite)

__all__ = ["DEFENSES", "DefenseConfig"]
