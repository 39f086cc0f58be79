"""PPD: Personalized Preference Fine-tuning of Diffusion Models (Dang, Singh, Zhou, Ermon, Song; CVPR 2025;
arXiv 2501.06655; research/diffusion_methods_B.md §3). No official diffusion trainer is public; the
user-embedding stage exists in a co-author's repository (``Asap7772/personalized-t2i``).

One model for many users: the policy is the base UNet plus a decoupled user cross-attention branch
(``diffalign.diffusion.user_branch``) reading an embedding u_i of user i's few-shot preferences
(``diffalign users embed``), trained with multi-user Diffusion-DPO (spec §3.4)::

    m(x; u) = per-sample mean squared denoising error of the policy conditioned on (c, u)
    r(x)    = the same for the reference: the base model, i.e. the same network with the branch off
    L = -E_i E_{(c, x_w, x_l) in D_i} log sigmoid(-(beta / 2) [(m(x_w; u_i) - r(x_w)) - (m(x_l; u_i) - r(x_l))])

on forward-noised latents with (t, eps) shared within each pair: Diffusion-DPO with u_i in the
policy's conditioning, through the objective core's ``dpo_loss`` on ``denoising_logps`` (= -m / 2).
Its optimum is p*(x | c, u_i) proportional to p_ref(x | c) exp(r_i(c, x) / beta): one conditional model
holds every user's reward-tilted distribution.

Data: ``user_image_pairs`` plus ``--user-embeddings``, the folder ``diffalign users embed`` wrote from
the same data. Each pair is conditioned on an embedding of one of its user's chunks that does not
contain the pair, re-drawn every epoch (``diffalign.data.formats.user_image_pairs``); batches mix users.

What the spec leaves open, as decided here (also in the README):

- **trainable set**: the branch alone (P and W'_k, W'_v per cross-attention layer), the UNet frozen;
  P standardises each embedding dimension with the training embeddings' mean and std first (folded
  into P's weights on export);
  ``--lora-rank`` adds LoRA on the UNet's attention, whose reference then also disables the adapters;
- **user tokens** N = 4 (IP-Adapter's, loadable by diffusers' IP-Adapter loader);
- **beta** 5000 in the Salesforce form (the spec suggests Diffusion-DPO's 2000-5000), **lr**: the
  spec's suggestion 1e-5 for adapter-only training is ``diffalign train``'s choice to make
  (``--learning-rate``); the toy world's setting is in ``diffalign.toy``;
- **caption dropout** 0.2 (Diffusion-DPO's) replaces the caption but keeps u: the empty-caption
  branch learns (empty, u), which classifier-free guidance then uses as its unconditional branch,
  so guidance does not cancel the personalisation (spec §3.5 [REC]);
- **lambda** (``--user-scale``) 1 in training; at generation it is the personalisation strength.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from diffalign.data.user_embeddings import UserEmbeddings
from diffalign.diffusion.user_branch import embedding_statistics, set_user_branch_scale
from diffalign.methods.base import register_method
from diffalign.methods.denoising import CAPTION_DROPOUT_HELP
from diffalign.methods.diffusion_dpo import DiffusionDPO, DiffusionDPOConfig
from diffalign.options import OptionError, option


@dataclass
class PPDConfig(DiffusionDPOConfig):
    user_embeddings: Optional[str] = option("the user embeddings: the folder `diffalign users embed` wrote from the same --data "
                                            "(required)", default=None, nonempty=True)
    caption_dropout: float = option(CAPTION_DROPOUT_HELP + "; the user embedding is kept", default=0.2, ge=0, le=1)
    user_scale: float = option("lambda, the user branch's weight in training", default=1.0, gt=0)

    def __post_init__(self):
        super().__post_init__()
        if self.user_embeddings is None:
            raise OptionError("user_embeddings", "is required: the folder `diffalign users embed --data DATA --out FOLDER` wrote")


@register_method
class PPD(DiffusionDPO):
    """Diffusion-DPO whose policy reads each pair's user embedding (module docstring)."""

    name = "ppd"
    summary = "PPD: multi-user Diffusion-DPO through a decoupled user cross-attention branch (pairs tagged with users)"
    config_class = PPDConfig
    data_format = "user_image_pairs"
    user_conditioned = True
    needs_ddpm_unet = "a user branch in a UNet's cross-attention (IP-Adapter layout)"

    def __init__(self, config: PPDConfig | None = None):
        super().__init__(config)
        self._embeddings: Optional[UserEmbeddings] = None

    @property
    def embeddings(self) -> UserEmbeddings:
        if self._embeddings is None:
            self._embeddings = UserEmbeddings.load(self.config.user_embeddings)
        return self._embeddings

    def data_options(self):
        return {"user_embeddings": self.config.user_embeddings}

    def model_options(self):
        return {"user_embedding_stats": embedding_statistics(self.embeddings.embeddings)}

    def prepare_model(self, model):
        set_user_branch_scale(model.unwrapped_unet, self.config.user_scale)
        model.user_adapter_info = {"user_scale": self.config.user_scale, "shots": self.embeddings.shots,
                                   "encoder": self.embeddings.encoder, "user_embeddings": self.config.user_embeddings}

    def compute_loss(self, model, inputs, generator=None):
        # the policy (the branch at lambda) reads u through the conditioning; the reference switches the branch off
        conditioned = inputs["cond"].with_user_embeds(inputs["user_embeddings"])
        return super().compute_loss(model, {**inputs, "cond": conditioned}, generator)
