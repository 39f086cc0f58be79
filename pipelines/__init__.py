"""Generation pipelines, installed as ``diffalign.pipelines`` (DESIGN.md §2).

- ``StableDiffusionNPOPipeline`` / ``StableDiffusionXLNPOPipeline``: classifier-free guidance whose
  negative branch comes from a separate ``negative_unet`` (Diffusion-NPO, Self-NPO), valid for every
  guidance scale;
- ``merge_negative_unet``: move a trained negative's weight offset onto another positive model;
- ``fuse_lora_into_unet``: a plain UNet from a base UNet and a LoRA trained on it;
- ``StableDiffusionPPDPipeline`` / ``StableDiffusionXLPPDPipeline``: generation for a user embedding
  through a PPD user adapter (``load_user_adapter``), ``interpolate_users`` between two users.
"""

from diffalign.pipelines.personalized import StableDiffusionPPDPipeline, StableDiffusionXLPPDPipeline, interpolate_users
from diffalign.pipelines.npo_merge import LORA_WEIGHT_NAME, IncompatibleUNetsError, fuse_lora_into_unet, merge_negative_unet
from diffalign.pipelines.stable_diffusion_npo import NPOGuidanceMixin, StableDiffusionNPOPipeline
from diffalign.pipelines.stable_diffusion_xl_npo import StableDiffusionXLNPOPipeline

__all__ = [
    "StableDiffusionNPOPipeline",
    "StableDiffusionXLNPOPipeline",
    "NPOGuidanceMixin",
    "merge_negative_unet",
    "fuse_lora_into_unet",
    "IncompatibleUNetsError",
    "LORA_WEIGHT_NAME",
    "StableDiffusionPPDPipeline",
    "StableDiffusionXLPPDPipeline",
    "interpolate_users",
]
