"""Diffusion pieces: the denoising log-likelihood proxy, noising, conditioning, the model adapter."""

from diffalign.diffusion.conditioning import Conditioning
from diffalign.diffusion.scores import DENOISING_LOGP_SCALE, denoising_errors, denoising_logps, pseudo_huber_errors

__all__ = ["Conditioning", "DENOISING_LOGP_SCALE", "denoising_errors", "denoising_logps", "pseudo_huber_errors"]
