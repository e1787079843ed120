"""PureGen-EBM: energy networks, Langevin dynamics, contrastive-divergence training."""

from eclipse_ray.ebm.langevin import langevin, purify_images
from eclipse_ray.ebm.net import PRESETS, build_energy, load_energy, save_energy

__all__ = ["PRESETS", "build_energy", "langevin", "load_energy", "purify_images", "save_energy"]
