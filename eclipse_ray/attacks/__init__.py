"""Poisoning attacks, by name. ``ATTACKS[name]`` is the attack's config class (defaults = published settings)."""

from __future__ import annotations

from eclipse_ray.attacks.adaptive import EMAdaptive
from eclipse_ray.attacks.backdoor import SIG, BadNets, Blend
from eclipse_ray.attacks.base import AVAILABILITY, BACKDOOR, NONE, TARGETED, AttackConfig, NoAttack
from eclipse_ray.attacks.bullseye import BullseyePolytope
from eclipse_ray.attacks.em import EM
from eclipse_ray.attacks.entf import EntF
from eclipse_ray.attacks.feature_collision import ConvexPolytope, PoisonFrogs
from eclipse_ray.attacks.gradient_matching import GradientMatching
from eclipse_ray.attacks.htba import HTBA
from eclipse_ray.attacks.iad import IAD
from eclipse_ray.attacks.label_consistent import LabelConsistent
from eclipse_ray.attacks.narcissus import Narcissus
from eclipse_ray.attacks.noise import AR, LSP, URP
from eclipse_ray.attacks.ops import OPS
from eclipse_ray.attacks.rem import REM
from eclipse_ray.attacks.sep import SEP
from eclipse_ray.attacks.sleeper_agent import SleeperAgent
from eclipse_ray.attacks.tap import TAP
from eclipse_ray.attacks.wanet import WaNet
from eclipse_ray.registry import Registry

ATTACKS: Registry[AttackConfig] = Registry(
    "attack", [NoAttack, URP, LSP, AR, OPS, BadNets, Blend, SIG, WaNet, GradientMatching, BullseyePolytope, Narcissus,
               EM, REM, TAP, EMAdaptive, LabelConsistent, PoisonFrogs, ConvexPolytope, SEP, HTBA, EntF, IAD,
               SleeperAgent], group="eclipse_ray.attacks", kind=AttackConfig)

__all__ = ["ATTACKS", "AttackConfig", "AVAILABILITY", "BACKDOOR", "NONE", "TARGETED"]
