"""Poisoning attacks, by name. ``ATTACKS[name]`` is the attack's config class (defaults = published settings)."""

from __future__ import annotations

from eclipse_ray.attacks.backdoor import SIG, BadNets, Blend
from eclipse_ray.attacks.base import AVAILABILITY, BACKDOOR, NONE, TARGETED, AttackConfig, NoAttack
from eclipse_ray.attacks.noise import AR, LSP, URP
from eclipse_ray.attacks.ops import OPS
from eclipse_ray.registry import Registry

ATTACKS: Registry[AttackConfig] = Registry("attack", [NoAttack, URP, LSP, AR, OPS, BadNets, Blend, SIG])

__all__ = ["ATTACKS", "AttackConfig", "AVAILABILITY", "BACKDOOR", "NONE", "TARGETED"]
