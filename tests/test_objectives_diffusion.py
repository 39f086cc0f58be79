"""The foundation losses against hand-computed values and the spec's sanity numbers
(research/diffusion_methods_A.md §7, text_objectives.md §9.8 last row)."""

import math

import pytest
import torch

from diffalign.diffusion import denoising_errors, denoising_logps
from diffalign.objectives import bose_link, dpo_loss, mapo_loss, sft_loss

LN2 = math.log(2.0)


def logps_from_errors(*errors):
    return [torch.tensor(e, dtype=torch.float64) * -0.5 for e in errors]


def test_dpo_is_ln2_at_policy_equal_reference_and_gradient_is_beta_over_4():
    errors_w = torch.tensor([0.3, 0.1, 0.7], requires_grad=True)
    errors_l = torch.tensor([0.2, 0.5, 0.7], requires_grad=True)
    out = dpo_loss(-0.5 * errors_w, -0.5 * errors_l, -0.5 * errors_w.detach(), -0.5 * errors_l.detach(), beta=5000)
    assert out.loss.item() == pytest.approx(LN2, abs=1e-7)
    assert torch.allclose(out.losses, torch.full((3,), LN2))
    out.loss.backward()
    # per pair dL/dm_w = +beta/4 = 1250; the batch mean divides by B = 3
    assert torch.allclose(errors_w.grad, torch.full((3,), 1250 / 3))
    assert torch.allclose(errors_l.grad, torch.full((3,), -1250 / 3))
    assert out.metrics["rewards/accuracies"].item() == 0.0  # strict, as TRL and the official code
    assert out.metrics["rewards/accuracies_ties_half"].item() == 0.5
    assert out.metrics["rewards/margins"].item() == 0.0


def test_dpo_text_convention_gradient():
    chosen = torch.tensor([-3.0], requires_grad=True)
    rejected = torch.tensor([-5.0], requires_grad=True)
    out = dpo_loss(chosen, rejected, chosen.detach(), rejected.detach(), beta=0.1)
    out.loss.backward()
    assert chosen.grad.item() == pytest.approx(-0.05)
    assert rejected.grad.item() == pytest.approx(0.05)


def test_dpo_spec_value_and_official_formula():
    # m_w - r_w = -1e-4, m_l - r_l = +1e-4, beta = 5000: z = 0.5, loss 0.4740769841801 (spec §7 DPO 2)
    m_w, r_w, m_l, r_l = 0.1, 0.1001, 0.2001, 0.2
    pc, rc, pr, rr = logps_from_errors(m_w, r_w, m_l, r_l)
    out = dpo_loss(pc.reshape(1), pr.reshape(1), rc.reshape(1), rr.reshape(1), beta=5000)
    assert out.loss.item() == pytest.approx(0.4740769841801, abs=1e-12)
    # the official code: scale_term = -0.5 * beta; loss = -logsigmoid(scale_term * (model_diff - ref_diff))
    official = -torch.nn.functional.logsigmoid(torch.tensor(-0.5 * 5000 * ((m_w - m_l) - (r_w - r_l))))
    assert out.loss.item() == pytest.approx(official.item(), abs=1e-6)
    # diffusers SD1.5 form: beta_hf = 2500 without the 1/2 is the same number
    diffusers = -torch.nn.functional.logsigmoid(torch.tensor(2500 * ((r_w - r_l) - (m_w - m_l))))
    assert out.loss.item() == pytest.approx(diffusers.item(), abs=2e-6)


def test_dpo_swap_flips_the_logit():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(5, generator=g) for _ in range(4))
    forward = dpo_loss(pc, pr, rc, rr, beta=2.0)
    swapped = dpo_loss(pr, pc, rr, rc, beta=2.0)
    z = 2.0 * ((pc - pr) - (rc - rr))
    assert torch.allclose(forward.losses - swapped.losses, -z, atol=1e-5)


def test_dpo_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="policy_rejected_logps has shape"):
        dpo_loss(torch.zeros(3), torch.zeros(2), torch.zeros(3), torch.zeros(3), beta=1.0)


@pytest.mark.parametrize("m, expected", [(0.1, 0.16931471805599), (0.0, 0.06931471805599)])
def test_mapo_equal_errors(m, expected):
    pc, pr = logps_from_errors([m], [m])
    assert mapo_loss(pc, pr).loss.item() == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize("m_l, expected", [(0.1001, 0.16809311402), (0.2, 0.10000000000259)])
def test_mapo_spec_values(m_l, expected):
    pc, pr = logps_from_errors([0.1], [m_l])
    assert mapo_loss(pc, pr).loss.item() == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("m, grad_w, grad_l", [(0.1, 13.2916840, -12.2916840), (1e-9, 13.5, -12.5)])
def test_mapo_gradients(m, grad_w, grad_l):
    errors = torch.tensor([m, m], dtype=torch.float64, requires_grad=True)
    out = mapo_loss(-0.5 * errors[:1], -0.5 * errors[1:])
    out.loss.backward()
    assert errors.grad[0].item() == pytest.approx(grad_w, rel=1e-5)
    assert errors.grad[1].item() == pytest.approx(grad_l, rel=1e-5)


def test_mapo_matches_official_formula_on_random_errors():
    g = torch.Generator().manual_seed(3)
    m_w, m_l = torch.rand(6, generator=g), torch.rand(6, generator=g)
    phi = lambda m: 0.5 * m / (torch.exp(0.5 * m) - 1)  # noqa: E731  (official utils.py form, m > 0)
    official = m_w.mean() - 0.1 * torch.nn.functional.logsigmoid(1000 * (phi(m_w) - phi(m_l))).mean()
    assert mapo_loss(-0.5 * m_w, -0.5 * m_l).loss.item() == pytest.approx(official.item(), rel=1e-5)


def test_bose_link_is_continuous_at_zero():
    x = torch.tensor([-2e-4, -1e-4, 0.0, 1e-4, 2e-4], dtype=torch.float64)
    assert torch.allclose(bose_link(x), x / torch.expm1(x).where(x != 0, torch.ones_like(x)) * (x != 0) + (x == 0), atol=1e-12)
    assert bose_link(torch.tensor([0.0])).item() == 1.0


def test_sft_uses_chosen_errors_only():
    errors = torch.tensor([0.2, 0.4])
    out = sft_loss(-0.5 * errors, logp_scale=0.5)
    assert out.loss.item() == pytest.approx(0.3)


def test_denoising_logps_is_minus_half_mean_square_in_float32():
    pred = torch.arange(24, dtype=torch.float16).reshape(2, 3, 2, 2)
    target = torch.zeros_like(pred)
    logps = denoising_logps(pred, target)
    assert logps.dtype == torch.float32 and logps.shape == (2,)
    expected = -0.5 * (torch.arange(24.0).reshape(2, 12) ** 2).mean(dim=1)
    assert torch.allclose(logps, expected)
    assert torch.allclose(denoising_errors(pred, target), -2 * logps)
    with pytest.raises(ValueError, match="target has shape"):
        denoising_logps(pred, target[:1])
