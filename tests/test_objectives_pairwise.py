"""The pairwise core against hand-computed values: text_objectives.md §9.8 (beta = 0.1,
policy == reference, n_w = 4, n_l = 6; gradients per pair) and its invariance tests."""

import math

import pytest
import torch

from diffalign.objectives import combine_losses, dpo_loss, pairwise_loss, sft_loss

LOG2 = math.log(2.0)


def _at_reference(loss_type, beta=0.1, **kwargs):
    """Loss and d loss / d (l_w, l_l) for one pair at l = r, n_w = 4, n_l = 6."""
    pc = torch.tensor([-7.0], requires_grad=True)
    pr = torch.tensor([-9.0], requires_grad=True)
    out = pairwise_loss(
        pc, pr, pc.detach().clone(), pr.detach().clone(), loss_type=loss_type, beta=beta,
        chosen_lengths=torch.tensor([4.0]), rejected_lengths=torch.tensor([6.0]), **kwargs,
    )
    out.loss.backward()
    return out, pc.grad.item(), pr.grad.item()


SANITY = [
    # loss_type, kwargs, loss, dL/dl_w, dL/dl_l
    ("sigmoid", {}, LOG2, -0.05, 0.05),
    ("cdpo", {"label_smoothing": 0.1}, LOG2, -0.04, 0.04),
    ("robust", {"label_smoothing": 0.1}, LOG2, -0.0625, 0.0625),
    ("hinge", {}, 1.0, -0.1, 0.1),
    ("ipo", {}, 25.0, -2.5, 1.0 / 0.6),
    ("exo_pair", {"label_smoothing": 1e-3}, 2.7612307, -0.1726689, 0.1726689),
    ("nca_pair", {}, 2 * LOG2, -0.025, 0.025),
    ("bco_pair", {}, 2 * LOG2, -0.05, 0.05),
    ("sppo_hard", {}, 50.0, -10.0, 10.0),
    ("apo_zero", {}, 1.0, -0.025, 0.025),
    ("apo_down", {}, 1.0, 0.0, 0.025),
    ("discopop", {}, 0.5 + 0.5 * LOG2, 0.0784264, -0.0784264),
    ("sigmoid_norm", {}, LOG2, -0.0125, 0.05 / 6),
    ("aot", {}, LOG2, -0.05, 0.05),
    ("aot_unpaired", {}, LOG2, -0.05, 0.05),
]


@pytest.mark.parametrize("loss_type,kwargs,value,grad_w,grad_l", SANITY, ids=[s[0] for s in SANITY])
def test_sanity_table(loss_type, kwargs, value, grad_w, grad_l):
    out, gw, gl = _at_reference(loss_type, **kwargs)
    assert out.loss.item() == pytest.approx(value, rel=1e-6)
    assert gw == pytest.approx(grad_w, abs=1e-6)
    assert gl == pytest.approx(grad_l, abs=1e-6)
    assert out.metrics["rewards/accuracies"].item() == 0.0  # strict: a tie is not a win
    assert out.metrics["rewards/margins"].item() == 0.0


def test_discopop_is_non_monotone_at_zero_margin():
    """DiscoPOP's gradient on the chosen score is positive at zero margin (a property, not a bug)."""
    _, grad_w, _ = _at_reference("discopop", beta=0.05, discopop_tau=0.05)
    tau, beta = 0.05, 0.05
    assert grad_w == pytest.approx(beta * (-0.25 - LOG2 / (4 * tau) + 1 / (4 * tau) - 0.5), abs=1e-7)
    assert grad_w > 0


def test_reference_gradients_are_zero_and_sigmoid_ref_sign_is_opposite():
    pc = torch.tensor([-7.0], requires_grad=True)
    rc = torch.tensor([-7.0], requires_grad=True)
    out = pairwise_loss(pc, torch.tensor([-9.0]), rc, torch.tensor([-9.0]), beta=0.1)
    out.loss.backward()
    assert rc.grad is None or rc.grad.abs().sum() == 0  # the reference is detached
    # d/d r_w of the undetached formula is +beta/2: verify with the analytic sign via a shifted reference
    shifted = pairwise_loss(pc.detach(), torch.tensor([-9.0]), rc.detach() + 1e-3, torch.tensor([-9.0]), beta=0.1)
    assert (shifted.loss - out.loss).item() / 1e-3 == pytest.approx(0.05, rel=1e-2)


def test_simpo_values():
    pc = torch.tensor([-8.0], requires_grad=True)  # mean -2 over 4 tokens
    pr = torch.tensor([-12.0], requires_grad=True)  # mean -2 over 6 tokens
    lengths = dict(chosen_lengths=torch.tensor([4.0]), rejected_lengths=torch.tensor([6.0]))
    out = pairwise_loss(pc, pr, loss_type="simpo", beta=2.0, gamma=1.0, **lengths)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(math.log1p(math.e), rel=1e-6)  # 1.3132617
    assert pc.grad.item() == pytest.approx(-2.0 * torch.sigmoid(torch.tensor(1.0)).item() / 4, rel=1e-6)  # -0.3655293
    assert pr.grad.item() == pytest.approx(2.0 * torch.sigmoid(torch.tensor(1.0)).item() / 6, rel=1e-6)  # +0.2436862
    trl_default = pairwise_loss(pc, pr, loss_type="simpo", beta=0.1, gamma=0.5, **lengths)
    assert trl_default.loss.item() == pytest.approx(0.9740770, rel=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(-4.0)  # beta * mean logp (reference-free)


def test_cpo_sigmoid_reference_free_and_nll_combination():
    pc = torch.tensor([-7.0, -3.0], requires_grad=True)
    pr = pc.detach().clone()
    pref = pairwise_loss(pc, pr, beta=0.1)
    nll = sft_loss(pc, lengths=torch.tensor([4.0, 2.0]))
    total = combine_losses([("cpo", pref, 1.0), ("nll", nll, 1.0)])
    assert pref.loss.item() == pytest.approx(LOG2)
    assert nll.loss.item() == pytest.approx(10.0 / 6.0)  # token mean over the batch
    assert total.loss.item() == pytest.approx(LOG2 + 10.0 / 6.0)
    assert total.metrics["loss/nll"].item() == pytest.approx(10.0 / 6.0)
    assert total.metrics["rewards/chosen"].item() == pytest.approx(-0.5)  # beta * summed logp


def test_invariances():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(5, generator=g) * 3 for _ in range(4))
    base = pairwise_loss(pc, pr, rc, rr, beta=0.3)
    shifted = pairwise_loss(pc + 11, pr + 11, rc + 11, rr + 11, beta=0.3)
    torch.testing.assert_close(base.losses, shifted.losses)
    for loss_type in ("sigmoid", "robust", "hinge"):
        kw = {"label_smoothing": 0.2} if loss_type == "robust" else {}
        forward = pairwise_loss(pc, pr, rc, rr, loss_type=loss_type, beta=0.3, **kw)
        swapped = pairwise_loss(pr, pc, rr, rc, loss_type=loss_type, beta=0.3, **kw)
        delta = 0.3 * ((pc - rc) - (pr - rr))
        if loss_type == "hinge":
            torch.testing.assert_close(swapped.losses, torch.relu(1 + delta))
        else:
            torch.testing.assert_close(forward.losses - swapped.losses, -delta * (1 / (1 - 0.4) if kw else 1.0))
    for loss_type in ("sigmoid", "ipo", "discopop"):
        reverse = pairwise_loss(pc, pr, rc, rr, loss_type=loss_type, beta=0.3)
        explicit = pairwise_loss(pc, pr, rc, rr, loss_type=loss_type, beta=0.3, f_divergence="alpha_divergence", f_alpha=1.0)
        torch.testing.assert_close(reverse.losses, explicit.losses)
    single = combine_losses([("dpo", base, 1.0)])
    torch.testing.assert_close(single.loss, base.loss)


def test_dpo_loss_is_the_sigmoid_case_with_per_pair_beta():
    g = torch.Generator().manual_seed(1)
    pc, pr, rc, rr = (torch.randn(4, generator=g) for _ in range(4))
    kappa = torch.tensor([0.0, 1.0, 2.0, 4.0])
    out = dpo_loss(pc, pr, rc, rr, beta=5000.0, sample_weight=kappa)
    expected = torch.nn.functional.softplus(-5000.0 * kappa * ((pc - pr) - (rc - rr)))
    torch.testing.assert_close(out.losses, expected)
    assert out.losses[0].item() == pytest.approx(LOG2)
    torch.testing.assert_close(out.metrics["rewards/chosen"], (5000.0 * kappa * (pc - rc)).mean())


def test_diffusion_scale_gradient():
    """c = 1/2, beta = 5000 at policy == reference: dL/dMSE_w = +1250 (spec §9.5)."""
    mse_w = torch.tensor([0.1], requires_grad=True)
    mse_l = torch.tensor([0.2], requires_grad=True)
    out = dpo_loss(-0.5 * mse_w, -0.5 * mse_l, torch.tensor([-0.05]), torch.tensor([-0.1]), beta=5000.0)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(LOG2)
    assert mse_w.grad.item() == pytest.approx(1250.0)
    assert mse_l.grad.item() == pytest.approx(-1250.0)


@pytest.mark.parametrize(
    "loss_type,kwargs,message",
    [
        ("sigmoid", {"label_smoothing": 0.1}, "cdpo"),
        ("robust", {"label_smoothing": 0.5}, r"\[0, 0.5\)"),
        ("exo_pair", {}, "exo_pair needs label_smoothing"),
        ("hinge", {"gamma": 1.0}, "gamma"),
        ("nca_pair", {"f_divergence": "forward_kl"}, "f_divergence"),
    ],
)
def test_bad_options_raise(loss_type, kwargs, message):
    x = torch.zeros(2)
    with pytest.raises(ValueError, match=message):
        pairwise_loss(x, x, x, x, loss_type=loss_type, **kwargs)


def test_reference_requirements():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="needs reference"):
        pairwise_loss(x, x, loss_type="bco_pair")
    with pytest.raises(ValueError, match="reference-free"):
        pairwise_loss(x, x, x, x, loss_type="simpo")
    with pytest.raises(ValueError, match="shape"):
        pairwise_loss(x, torch.zeros(3), x, x)
