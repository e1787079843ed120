"""Certified diffusion denoising (Hong et al., arXiv 2403.11981): randomized smoothing over training.

``stats`` — Cohen et al.'s certification maths; ``run`` — N noised-and-denoised
trainings as Ray tasks (resumable); ``report`` — radii, tables and the plot.
"""

from eclipse_ray.certify.run import CertifyConfig, CertifyJob, build_job, run_certify

__all__ = ["CertifyConfig", "CertifyJob", "build_job", "run_certify"]
