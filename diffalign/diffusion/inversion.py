"""DDIM inversion on a coarse grid, and its ReNoise refinement, as SmPO and InPO use them.

Sources: SmPO (Lu et al., ICML 2025, arXiv 2506.02698; ``JaydenLyh/SmPO`` ``train.py``), DDIM-InPO
(Lu et al., CVPR 2025, arXiv 2503.18454; ``JaydenLyh/InPO`` ``train.py``), ReNoise (Garibi et al.
2024, ``garibida/ReNoise-Inversion``). Equations as restated in research/diffusion_methods_A.md
§4.2 and §5.2; everything here is our own implementation, not a copy.

Which scheduler semantics, and why
----------------------------------
Both official trainers pin ``diffusers==0.20.0`` and drive ``DDIMInverseScheduler``. Its behaviour
changed in diffusers 0.22 (PR #5145: the UNet is evaluated at the destination timestep, the first
negative timestep disappears, the last level falls below t and t <= 1 inverts nothing), so running the
official code with a modern diffusers silently changes what is trained (spec Q16). We therefore do not
use the library class and implement the **0.20.0 semantics** ourselves:

* Grid (``inversion_grid``; ``Delta = T // N``, ``steps_offset = 1``): the leading grid
  ``{0, Delta, ..., (N-1) Delta} + 1`` rolled right by one with its first entry replaced by
  ``(second entry) - Delta``. Evaluation (source) timesteps ``a_0 = 1 - Delta``,
  ``a_k = 1 + (k-1) Delta`` (k >= 1); destination levels ``b_k = a_k + Delta``.
  N = 10: a = [-99, 1, 101, ..., 801], b = [1, 101, ..., 901]. N = 5: a = [-199, 1, 201, 401, 601].
* For a sampled training timestep t, the steps k with ``a_k < t`` are run, ``n(t) = #{k : a_k < t}``;
  the inverted latent sits at the nominal level ``L(t) = b_{n(t)-1}`` (the smallest grid level >= t,
  capped at ``b_{N-1}``), which differs from t by up to Delta (spec Q15).
* Inverse step ``Inv(z, eps; a -> b)`` with ``abar(a) = abar_a`` if a >= 0 else ``abar_0``
  (``set_alpha_to_one = False``)::

      x0_hat = (z - sqrt(1 - abar(a)) * eps) / sqrt(abar(a))      [clamped only if clip_sample]
      Inv    = sqrt(abar_b) * x0_hat + sqrt(1 - abar_b) * eps

  The UNet is evaluated at the **source** timestep ``a_k`` (including the negative a_0).
  ``DDIMInverseScheduler`` defaults to ``clip_sample=True``, which clamps x0_hat to [-1, 1] and
  destroys SD latents (std ~1, range ~ +-4); here ``clip_sample`` defaults to False and nothing is ever
  clamped unless asked (spec Q19).
* The regression target implied at the *sampled* t (not at L(t))::

      tau = (x_tilde - sqrt(abar_t) * x0) / sqrt(1 - abar_t)

  so that ``x_tilde == sqrt(abar_t) x0 + sqrt(1 - abar_t) tau`` holds exactly; tau is not unit
  Gaussian when L(t) != t (spec §4.2). ``exact_t=True`` is the spec-Q15 option: the last step's
  destination is replaced by t itself, so L(t) = t.

Variants
--------
* DDIM (InPO, ``renoise_steps=0``): one model call per inverse step. With ``eta > 0`` InPO adds,
  after every step, ``eta * sigma_k * xi`` with xi ~ N(0, I) drawn from ``generator`` and
  ``sigma_k^2 = (1 - abar(a_k)) / (1 - abar_{b_k}) * (1 - abar_{b_k} / abar(a_k))``, the DDIM
  eta = 1 posterior variance of the transition b_k -> a_k (``DDIMScheduler._get_variance(b_k, a_k)``);
  InPO's default is eta = 0.1 (0.1 sigma = 0.0776 at 801 -> 901).
* ReNoise (SmPO, ``renoise_steps=K``, SmPO uses K = 1): ``e^(0) = eps(z, a_k)``; for j = 1..K,
  ``z^(j) = Inv(z, e^(j-1))`` and ``e^(j) = eps(z^(j), a_k)`` (re-evaluated at the predicted
  destination but with the *source* timestep label, as SmPO's code does; the ReNoise paper labels it
  with the destination); the step is ``Inv(z, mean_j e^(j))``. SmPO averages all K + 1 estimates
  (for K = 1: (e1 + e2) / 2); ReNoise's noise regularisation and correction are not used by SmPO.

Precision: latents, model outputs and all step arithmetic are float32 (the model may run under
autocast; its output is upcast); the schedule coefficients are taken from a float64 ``alphas_cumprod``
and rounded once to float32. The official code casts abar to fp16 before computing tau, where
1/sqrt(1 - abar_t) amplifies the error at small t (spec Q18); we do not.

Batches: items may carry different t. Step k runs the model only on the rows with ``a_k < t``
(``n(t)`` is monotone, so the active rows shrink), which costs the same number of image-forwards as
the official batch-of-one loop. The model callable therefore receives the row indices it serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

EpsModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``eps_model(z, timesteps, rows) -> eps``: z (b, C, H, W) float32 latents of the batch rows ``rows``
(int64 (b,), indices into the full batch, so conditioning can be selected), timesteps int64 (b,)
(may be negative: the first evaluation timestep of the 0.20 grid is 1 - Delta). Called without
gradients."""


@dataclass(frozen=True)
class InversionGrid:
    """The diffusers-0.20 ``DDIMInverseScheduler`` grid: evaluation timesteps a_k, destinations b_k."""

    num_inference_steps: int
    num_train_timesteps: int
    eval_timesteps: tuple[int, ...]
    dest_timesteps: tuple[int, ...]

    def steps_before(self, timesteps: torch.Tensor) -> torch.Tensor:
        """``n(t) = #{k : a_k < t}`` (int64, same shape as ``timesteps``): inverse steps run for t."""
        eval_t = torch.tensor(self.eval_timesteps, dtype=torch.long, device=timesteps.device)
        return (eval_t.unsqueeze(0) < timesteps.long().reshape(-1, 1)).sum(dim=1).reshape(timesteps.shape)

    def levels(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Nominal level ``L(t) = b_{n(t)-1}`` reached by the inversion for t (n(t) >= 1 for t >= 0)."""
        dest = torch.tensor(self.dest_timesteps, dtype=torch.long, device=timesteps.device)
        return dest[self.steps_before(timesteps) - 1]


def inversion_grid(num_inference_steps: int, num_train_timesteps: int = 1000, steps_offset: int = 1) -> InversionGrid:
    """The grid that ``DDIMInverseScheduler.set_timesteps`` builds in diffusers 0.20.0 (see module doc)."""
    if not 2 <= num_inference_steps <= num_train_timesteps:  # 0.20 reads the rolled grid's second entry
        raise ValueError(f"num_inference_steps must be in [2, {num_train_timesteps}], got {num_inference_steps}")
    delta = num_train_timesteps // num_inference_steps
    leading = [k * delta + steps_offset for k in range(num_inference_steps)]
    rolled = leading[-1:] + leading[:-1]
    eval_t = [rolled[1] - delta] + rolled[1:]
    return InversionGrid(
        num_inference_steps=num_inference_steps,
        num_train_timesteps=num_train_timesteps,
        eval_timesteps=tuple(eval_t),
        dest_timesteps=tuple(a + delta for a in eval_t),
    )


def inverse_step_variance(alphas_cumprod: torch.Tensor, source: torch.Tensor, dest: torch.Tensor) -> torch.Tensor:
    """``sigma^2 = (1 - abar(a)) / (1 - abar_b) * (1 - abar_b / abar(a))`` (float64), a = source, b = dest."""
    abar_a, abar_b = _abar(alphas_cumprod, source), _abar(alphas_cumprod, dest)
    return (1 - abar_a) / (1 - abar_b) * (1 - abar_b / abar_a)


@dataclass
class InversionResult:
    """Inverted latents x_tilde (float32), the implied noise target tau at the sampled t (float32), the
    nominal levels L(t) (int64) and the number of image-forwards (rows x calls) the inversion made."""

    latents: torch.Tensor
    target: torch.Tensor
    levels: torch.Tensor
    image_forwards: int


@torch.no_grad()
def ddim_invert(
    eps_model: EpsModel,
    x0: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    grid: InversionGrid,
    *,
    renoise_steps: int = 0,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    clip_sample: bool = False,
    clip_sample_range: float = 1.0,
    exact_t: bool = False,
) -> InversionResult:
    """Invert clean latents ``x0`` (B, C, H, W) to the grid level of each sampled ``timesteps`` (B,).

    ``renoise_steps=1`` is SmPO's ReNoise-refined inversion, ``renoise_steps=0, eta=0.1`` InPO's
    noisy DDIM inversion (module docstring for the equations). ``alphas_cumprod`` is the training
    schedule (length T; float64 recommended). ``eta > 0`` draws xi from ``generator`` (torch's
    default generator when None); the draws are made on the generator's device. ``clip_sample``
    clamps x0_hat to ``[-clip_sample_range, clip_sample_range]`` only when True. Runs under no_grad.
    """
    if renoise_steps < 0:
        raise ValueError(f"renoise_steps must be >= 0, got {renoise_steps}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if timesteps.shape != (x0.shape[0],):
        raise ValueError(f"timesteps must have shape ({x0.shape[0]},), got {tuple(timesteps.shape)}")
    if alphas_cumprod.numel() != grid.num_train_timesteps:
        raise ValueError(f"alphas_cumprod has {alphas_cumprod.numel()} entries, the grid expects {grid.num_train_timesteps}")
    timesteps = timesteps.long().to(x0.device)
    if bool((timesteps < 0).any()) or bool((timesteps >= grid.num_train_timesteps).any()):
        raise ValueError(f"timesteps must lie in [0, {grid.num_train_timesteps - 1}]")
    abar = alphas_cumprod.detach().to(device="cpu", dtype=torch.float64)
    x0 = x0.detach().float()
    steps = grid.steps_before(timesteps)
    levels = grid.levels(timesteps)
    if exact_t:
        levels = timesteps.clone()
    z = x0.clone()
    image_forwards = 0
    for k, (a, b) in enumerate(zip(grid.eval_timesteps, grid.dest_timesteps)):
        rows = torch.nonzero(steps > k).flatten()
        if rows.numel() == 0:
            break
        dest = torch.full_like(rows, b)
        if exact_t:
            dest = torch.where(steps[rows] == k + 1, timesteps[rows], dest)
        source = torch.full_like(rows, a)
        src_coef = _signal_noise_scales(abar, source, z)
        dst_coef = _signal_noise_scales(abar, dest, z)
        z_rows = z[rows]
        estimates = [eps_model(z_rows, source, rows).float()]
        for _ in range(renoise_steps):
            z_renoised = _inverse_step(z_rows, estimates[-1], src_coef, dst_coef, clip_sample, clip_sample_range)
            estimates.append(eps_model(z_renoised, source, rows).float())
        image_forwards += rows.numel() * len(estimates)
        eps = estimates[0] if len(estimates) == 1 else torch.stack(estimates).mean(dim=0)
        z_rows = _inverse_step(z_rows, eps, src_coef, dst_coef, clip_sample, clip_sample_range)
        if eta > 0:
            scale = (eta * inverse_step_variance(abar, source.cpu(), dest.cpu()).sqrt()).to(z.device, torch.float32)
            xi = torch.randn(z_rows.shape, generator=generator, device=generator.device if generator is not None else "cpu")
            z_rows = z_rows + scale.reshape(-1, *[1] * (z.dim() - 1)) * xi.to(z.device)
        z = z.index_copy(0, rows, z_rows)
    sqrt_abar_t, sqrt_one_minus_abar_t = _signal_noise_scales(abar, timesteps, z)
    target = (z - sqrt_abar_t * x0) / sqrt_one_minus_abar_t
    return InversionResult(latents=z, target=target, levels=levels, image_forwards=image_forwards)


def _abar(abar: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """abar at integer timesteps, with abar(t < 0) = abar_0 (diffusers 0.20 ``initial_alpha_cumprod``
    with ``set_alpha_to_one=False``)."""
    return abar.to(timesteps.device)[timesteps.long().clamp(min=0)]


def _signal_noise_scales(abar: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sqrt(abar_t), sqrt(1 - abar_t)) computed in float64, rounded once to float32, shaped to
    broadcast against ``like`` (b, C, H, W)."""
    values = _abar(abar, timesteps.cpu())
    shape = (-1,) + (1,) * (like.dim() - 1)
    return (
        values.sqrt().to(device=like.device, dtype=torch.float32).reshape(shape),
        (1 - values).sqrt().to(device=like.device, dtype=torch.float32).reshape(shape),
    )


def _inverse_step(z, eps, src_coef, dst_coef, clip_sample: bool, clip_sample_range: float) -> torch.Tensor:
    """``Inv(z, eps; a -> b)`` in float32 (module docstring)."""
    (sqrt_abar_a, sqrt_one_minus_abar_a), (sqrt_abar_b, sqrt_one_minus_abar_b) = src_coef, dst_coef
    x0_hat = (z - sqrt_one_minus_abar_a * eps) / sqrt_abar_a
    if clip_sample:
        x0_hat = x0_hat.clamp(-clip_sample_range, clip_sample_range)
    return sqrt_abar_b * x0_hat + sqrt_one_minus_abar_b * eps
