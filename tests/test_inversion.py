"""DDIM / ReNoise inversion with diffusers-0.20 semantics (research/diffusion_methods_A.md §4.2, §5.2,
sanity values §7 SmPO 4-6 and InPO 2, 4)."""

import math

import pytest
import torch

import diffalign  # noqa: F401
from diffalign.diffusion.inversion import ddim_invert, inverse_step_variance, inversion_grid
from diffalign.tiny import tiny_unet


def exact_alphas_cumprod() -> torch.Tensor:
    """The SD scaled-linear schedule in float64 (spec §1.1), independent of diffusers' float32 maths."""
    betas = torch.linspace(math.sqrt(0.00085), math.sqrt(0.012), 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0)


ABAR = exact_alphas_cumprod()


def zero_model(z, timesteps, rows):
    return torch.zeros_like(z)


def test_schedule_checkpoints():
    assert ABAR[0].item() == pytest.approx(0.99915, abs=1e-12)
    assert [ABAR[i].item() for i in (1, 101, 999)] == pytest.approx([0.9982960, 0.8929805, 0.0046601], abs=5e-8)


def test_grids_and_step_counts():
    grid = inversion_grid(10)
    assert grid.eval_timesteps == (-99, 1, 101, 201, 301, 401, 501, 601, 701, 801)
    assert grid.dest_timesteps == (1, 101, 201, 301, 401, 501, 601, 701, 801, 901)
    five = inversion_grid(5)
    assert five.eval_timesteps == (-199, 1, 201, 401, 601)
    assert five.dest_timesteps == (1, 201, 401, 601, 801)
    t = torch.tensor([0, 1, 2, 101, 102, 500, 999])
    assert grid.steps_before(t).tolist() == [1, 1, 2, 2, 3, 6, 10]
    assert grid.levels(torch.tensor([0, 1, 2, 101, 102, 150, 201, 802, 999])).tolist() == [1, 1, 101, 101, 201, 201, 201, 901, 901]
    with pytest.raises(ValueError, match="num_inference_steps"):
        inversion_grid(1)


@pytest.mark.parametrize(
    "steps, t, latent_factor, tau_factor",
    [
        (10, 101, 0.9453783, 0.0012284),
        (10, 501, 0.5246265, None),
        (10, 901, 0.1183926, None),
        (5, 201, 0.8676308, 0.0007408),
        (10, 150, None, -0.1017234),  # level mismatch: L(150) = 201
    ],
)
@pytest.mark.parametrize("renoise_steps", [0, 1])
def test_zero_model_spec_values(steps, t, latent_factor, tau_factor, renoise_steps):
    x0 = torch.tensor([1.0, -2.5, 4.0]).reshape(3, 1, 1, 1)  # SD latents exceed [-1, 1]: nothing is clamped
    result = ddim_invert(zero_model, x0, torch.full((3,), t), ABAR, inversion_grid(steps), renoise_steps=renoise_steps)
    level = inversion_grid(steps).levels(torch.tensor([t])).item()
    expected = math.sqrt(ABAR[level] / ABAR[0])  # x_tilde = sqrt(abar_L / abar_0) x0
    torch.testing.assert_close(result.latents, expected * x0, rtol=0, atol=5e-7)
    if latent_factor is not None:
        assert expected == pytest.approx(latent_factor, abs=5e-8)
    if tau_factor is not None:
        # float32 tau: one ulp of x_tilde is amplified by 1 / sqrt(1 - abar_t), so compare tau / x0
        torch.testing.assert_close(result.target / x0, torch.full_like(x0, tau_factor), rtol=0, atol=3e-7)
    assert result.latents.dtype == result.target.dtype == torch.float32
    assert result.levels.tolist() == [level] * 3


def test_no_clamping_unless_asked():
    x0 = torch.tensor([3.0, -4.0, 0.5]).reshape(3, 1, 1, 1)
    t = torch.full((3,), 301)
    free = ddim_invert(zero_model, x0, t, ABAR, inversion_grid(10))
    torch.testing.assert_close(free.latents, math.sqrt(ABAR[301] / ABAR[0]) * x0, rtol=0, atol=5e-7)
    clipped = ddim_invert(zero_model, x0, t, ABAR, inversion_grid(10), clip_sample=True)
    # with a zero model each step maps z to sqrt(abar_b) * clamp(z / sqrt(abar_a), -1, 1)
    bound = math.sqrt(ABAR[301])
    assert clipped.latents.abs().max().item() <= bound + 1e-6
    assert clipped.latents[2].item() == pytest.approx(free.latents[2].item(), abs=1e-6)  # inside the range
    assert clipped.latents[0].item() == pytest.approx(bound, abs=1e-6)


def test_exact_t_lands_on_t():
    x0 = torch.ones(4, 1, 1, 1)
    t = torch.tensor([0, 150, 650, 999])
    result = ddim_invert(zero_model, x0, t, ABAR, inversion_grid(10), exact_t=True)
    assert result.levels.tolist() == t.tolist()
    expected = torch.sqrt(ABAR[t] / ABAR[0]).float().reshape(4, 1, 1, 1)
    torch.testing.assert_close(result.latents, expected, rtol=0, atol=5e-7)
    tau = (torch.sqrt(ABAR[t] / ABAR[0]) - ABAR[t].sqrt()) / (1 - ABAR[t]).sqrt()
    torch.testing.assert_close(result.target, tau.float().reshape(4, 1, 1, 1), rtol=0, atol=5e-6)


def test_inpo_noise_scale():
    # eta * sigma_k at the spec's steps (-99 -> 1, 1 -> 101, 401 -> 501, 801 -> 901)
    sigma = inverse_step_variance(ABAR, torch.tensor([-99, 1, 401, 801]), torch.tensor([1, 101, 501, 901])).sqrt()
    assert (0.1 * sigma).tolist() == pytest.approx([0.0021, 0.0041, 0.0528, 0.0776], abs=5e-5)
    # t = 901: nine steps; the noise of step k is scaled by the later steps' sqrt(abar_b / abar_a)
    grid = inversion_grid(10)
    a, b = torch.tensor(grid.eval_timesteps), torch.tensor(grid.dest_timesteps)
    gains = torch.sqrt(ABAR[b] / ABAR[a.clamp(min=0)])
    variance = sum(0.01 * inverse_step_variance(ABAR, a[k : k + 1], b[k : k + 1]).item() * gains[k + 1 :].prod().item() ** 2 for k in range(10))
    x0 = torch.zeros(1, 4, 64, 64)
    run = lambda seed: ddim_invert(  # noqa: E731
        zero_model, x0, torch.tensor([901]), ABAR, grid, eta=0.1, generator=torch.Generator().manual_seed(seed)
    ).latents
    first = run(0)
    assert torch.equal(first, run(0))  # a fixed seed is deterministic
    assert not torch.equal(first, run(1))
    assert first.std().item() == pytest.approx(math.sqrt(variance), rel=0.03)
    assert first.mean().item() == pytest.approx(0.0, abs=5 * math.sqrt(variance / first.numel()))


# ------------------------------------------------------------------ against a step-by-step recurrence


@pytest.fixture(scope="module")
def unet_and_cond():
    torch.manual_seed(0)
    unet = tiny_unet("sd", sample_size=8, cross_attention_dim=32).eval()
    cond = torch.randn(4, 5, 32)
    return unet, cond


def recurrence(unet, cond, x0, t, steps, renoise, eval_offset=0):
    """Spec §4.2 / §5.2 written out per image in float64 with the closed form
    z_b = sqrt(abar_b / abar(a)) z + sqrt(abar_b) (sqrt(1 / abar_b - 1) - sqrt(1 / abar(a) - 1)) eps."""
    delta = 1000 // steps
    grid_a = [1 - delta] + [1 + (k - 1) * delta for k in range(1, steps)]
    outputs, targets = [], []
    for row in range(x0.shape[0]):
        z = x0[row : row + 1].double()

        def eps(latent, timestep):
            with torch.no_grad():
                out = unet(latent.float(), torch.tensor([timestep + eval_offset]), encoder_hidden_states=cond[row : row + 1])
            return out.sample.double()

        for a in grid_a:
            if not a < t[row]:
                break
            b = a + delta
            abar_a, abar_b = ABAR[max(a, 0)].item(), ABAR[b].item()

            def inv(latent, e):
                return math.sqrt(abar_b / abar_a) * latent + math.sqrt(abar_b) * (math.sqrt(1 / abar_b - 1) - math.sqrt(1 / abar_a - 1)) * e

            e1 = eps(z, a)
            z = inv(z, (e1 + eps(inv(z, e1), a)) / 2) if renoise else inv(z, e1)
        abar_t = ABAR[t[row]].item()
        outputs.append(z)
        targets.append((z - math.sqrt(abar_t) * x0[row : row + 1].double()) / math.sqrt(1 - abar_t))
    return torch.cat(outputs), torch.cat(targets)


@pytest.mark.parametrize("steps, renoise", [(10, False), (10, True), (5, True)])
def test_tiny_unet_matches_step_by_step_recurrence(unet_and_cond, steps, renoise):
    unet, cond = unet_and_cond
    generator = torch.Generator().manual_seed(1)
    x0 = 2 * torch.randn(4, 4, 8, 8, generator=generator)
    t = torch.tensor([0, 150, 999, 501])  # mixed: each step runs on a shrinking subset of rows
    calls = []

    def eps_model(z, timesteps, rows):
        calls.append(rows.tolist())
        return unet(z, timesteps, encoder_hidden_states=cond[rows]).sample

    result = ddim_invert(eps_model, x0, t, ABAR, inversion_grid(steps), renoise_steps=int(renoise))
    expected_latents, expected_target = recurrence(unet, cond, x0, t, steps, renoise)
    torch.testing.assert_close(result.latents.double(), expected_latents, rtol=0, atol=5e-6)
    torch.testing.assert_close(result.target.double(), expected_target, rtol=0, atol=1e-4)
    # x_tilde == sqrt(abar_t) x0 + sqrt(1 - abar_t) tau to float32 precision
    abar_t = ABAR[t].float().reshape(-1, 1, 1, 1)
    torch.testing.assert_close(result.latents, abar_t.sqrt() * x0 + (1 - abar_t).sqrt() * result.target, rtol=0, atol=2e-6)
    per_image = inversion_grid(steps).steps_before(t) * (2 if renoise else 1)
    assert result.image_forwards == per_image.sum().item() == sum(len(rows) for rows in calls)
    assert not result.latents.requires_grad
    if steps == 10 and not renoise:
        # the comparison can fail: evaluating at the destination timestep (diffusers >= 0.22) differs
        destination_labels, _ = recurrence(unet, cond, x0, t, steps, renoise, eval_offset=1000 // steps)
        assert (destination_labels - expected_latents).abs().max().item() > 1000 * 5e-6
    if renoise:
        plain = ddim_invert(eps_model, x0, t, ABAR, inversion_grid(steps))
        assert (plain.latents.double() - expected_latents).abs().max().item() > 1000 * 5e-6


def test_input_errors():
    x0 = torch.zeros(2, 1, 1, 1)
    grid = inversion_grid(10)
    with pytest.raises(ValueError, match="timesteps must lie"):
        ddim_invert(zero_model, x0, torch.tensor([0, 1000]), ABAR, grid)
    with pytest.raises(ValueError, match="timesteps must have shape"):
        ddim_invert(zero_model, x0, torch.tensor([5]), ABAR, grid)
    with pytest.raises(ValueError, match="alphas_cumprod has 999"):
        ddim_invert(zero_model, x0, torch.tensor([5, 6]), ABAR[:999], grid)
