"""The ``inpo`` and ``smpo`` trainer plugins on tiny SD1.x-like and SDXL-like models, full and LoRA
(research/diffusion_methods_A.md §4-§5, sanity values §7 SmPO 1-2 and InPO 1, 3)."""

import json
import math

import pytest
import torch

import diffalign  # noqa: F401
from conftest import write_jsonl, write_pair_images
from diffalign.diffusion.model import DiffusionModel, LoraSettings
from diffalign.methods import denoising as denoising_module
from diffalign.methods import inpo as inpo_module
from diffalign.methods.denoising import forward_noised_pairs, invert_pairs
from diffalign.methods.diffusion_dpo import DiffusionDPO, DiffusionDPOConfig
from diffalign.methods.inpo import InPO, InPOConfig
from diffalign.methods.smpo import SmPO, SmPOConfig

LN2 = math.log(2)


@pytest.fixture(scope="module")
def load(tiny_model_dir):
    def get(family, lora=False):
        settings = LoraSettings(rank=4) if lora else None
        return DiffusionModel.from_pretrained(tiny_model_dir(family), reference="adapters" if lora else "copy",
                                              lora=settings, resolution=64)

    return get


def make_batch(pairs=2, chosen_scores=(0.21, 0.25), rejected_scores=(0.20, 0.18), seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {
        "prompts": ["a red circle on a blue background", "a small yellow square"][:pairs],
        "chosen_pixels": torch.rand(pairs, 3, 64, 64, generator=generator) * 2 - 1,
        "rejected_pixels": torch.rand(pairs, 3, 64, 64, generator=generator) * 2 - 1,
        "chosen_scores": torch.tensor(chosen_scores[:pairs]),
        "rejected_scores": torch.tensor(rejected_scores[:pairs]),
    }


def perturb(unet, seed=3, scale=0.02):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


def encoded(method, model, batch, seed=0):
    """The encode step of the training loop: (inputs, the generator to continue with)."""
    generator = torch.Generator().manual_seed(seed)
    return model.encode_batch(batch, generator, **method.encode_options()), generator


def loss_of(method, model, batch, seed=0):
    inputs, generator = encoded(method, model, batch, seed)
    return method.compute_loss(model, inputs, generator)


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_loss_is_ln2_at_policy_equal_reference(load, family):
    model = load(family)
    batch = make_batch()
    for method in (InPO(), SmPO()):
        output = loss_of(method, model, batch)
        assert output.loss.item() == pytest.approx(LN2, abs=1e-7), method.name
    assert output.metrics["smpo/kappa"].item() > 0.5  # kappa != 0: ln 2 comes from z = 0, not from kappa


def test_smpo_equal_scores_give_ln2_and_zero_gradient_for_any_policy(load):
    model = load("sd")
    perturb(model.unet)
    batch = make_batch(chosen_scores=(0.2, 0.23), rejected_scores=(0.2, 0.23))
    output = loss_of(SmPO(), model, batch)
    assert output.loss.item() == pytest.approx(LN2, abs=1e-7)
    assert output.metrics["diffusion/mse_w"].item() != output.metrics["diffusion/ref_mse_w"].item()  # policy != ref
    output.loss.backward()
    grads = [p.grad for p in model.unet.parameters() if p.grad is not None]
    assert grads and all(torch.count_nonzero(grad) == 0 for grad in grads)


def test_inpo_with_forward_noising_is_diffusion_dpo_bit_for_bit(load, monkeypatch):
    """Spec §7 InPO 3: only the latent provider differs between InPO and Diffusion-DPO."""

    def forward_noising(model, latents, timesteps, cond, generator, **inversion):
        return forward_noised_pairs(model, latents, timesteps, cond, generator)

    monkeypatch.setattr(inpo_module, "invert_pairs", forward_noising)  # InPO with Diffusion-DPO's latent provider
    model = load("sd")
    perturb(model.unet, seed=4)
    batch = make_batch()
    inpo_output = loss_of(InPO(InPOConfig(beta=5000.0)), model, batch)
    dpo_output = loss_of(DiffusionDPO(DiffusionDPOConfig(beta=5000.0)), model, batch)
    assert abs(dpo_output.loss.item() - LN2) > 1e-3
    assert torch.equal(inpo_output.losses, dpo_output.losses)
    sd2000 = loss_of(InPO(), model, batch)  # beta None: 2000 for SD1.x
    assert torch.equal(sd2000.losses, loss_of(DiffusionDPO(DiffusionDPOConfig(beta=2000.0)), model, batch).losses)


@pytest.mark.parametrize(
    "family, method, steps, renoise, eta, beta",
    [("sd", InPO, 10, 0, 0.1, 2000.0), ("sd", SmPO, 5, 1, 0.0, 2000.0),
     ("sdxl", InPO, 10, 0, 0.1, 5000.0), ("sdxl", SmPO, 10, 1, 0.0, 5000.0)],
)
def test_official_defaults_per_family(load, monkeypatch, family, method, steps, renoise, eta, beta):
    calls = []
    invert = denoising_module.ddim_invert

    def recording(eps_model, x0, timesteps, alphas_cumprod, grid, **options):
        calls.append((grid.num_inference_steps, options))
        return invert(eps_model, x0, timesteps, alphas_cumprod, grid, **options)

    monkeypatch.setattr(denoising_module, "ddim_invert", recording)
    model = load(family)
    plugin = method()
    output = loss_of(plugin, model, make_batch(pairs=1))
    (grid_steps, options), = calls
    assert (grid_steps, options["renoise_steps"], options["eta"]) == (steps, renoise, eta)
    assert options["exact_t"] is False and plugin.config.beta_for(model.family) == beta
    assert plugin.config.caption_dropout == 0.2 and plugin.config.invert_with == "policy"
    assert output.metrics["inversion/image_forwards"].item() >= 2 * (renoise + 1)


def test_invert_with_reference_uses_the_frozen_network(load):
    model = load("sd")
    generator = torch.Generator().manual_seed(5)
    latents = torch.randn(4, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([350, 700, 350, 700])
    cond = model.encode_prompts(["a red circle", "a green square"]).repeat_for_pair()

    def provide(config):
        pairs = invert_pairs(model, latents, timesteps, cond, None, steps=config.inversion_steps_for(model.family),
                             renoise_steps=1, eta=0.0, invert_with=config.invert_with, exact_t=config.exact_t)
        return pairs.noisy, pairs.target

    before = provide(SmPOConfig())
    perturb(model.unet, seed=6)
    after_policy, after_reference = provide(SmPOConfig()), provide(SmPOConfig(invert_with="reference"))
    assert torch.equal(after_reference[0], before[0]) and torch.equal(after_reference[1], before[1])
    assert not torch.equal(after_policy[0], before[0])
    with pytest.raises(ValueError, match="--invert-with must be one of: policy, reference"):
        SmPOConfig(invert_with="ema")


def test_smpo_winner_is_the_higher_scored_image(load):
    model = load("sd")
    perturb(model.unet, seed=7)
    inputs, generator = encoded(SmPO(), model, make_batch(chosen_scores=(0.18, 0.25), rejected_scores=(0.24, 0.2)))
    swapped = dict(inputs, chosen_latents=inputs["rejected_latents"].clone(), rejected_latents=inputs["chosen_latents"].clone(),
                   chosen_scores=inputs["rejected_scores"].clone(), rejected_scores=inputs["chosen_scores"].clone())
    state = generator.get_state()
    direct = SmPO().compute_loss(model, inputs, generator)
    generator.set_state(state)
    mirrored = SmPO().compute_loss(model, swapped, generator)
    assert direct.metrics["smpo/swapped_to_score_winner"].item() == 0.5
    assert mirrored.metrics["smpo/swapped_to_score_winner"].item() == 0.5
    assert torch.equal(direct.losses, mirrored.losses)
    assert direct.metrics["smpo/kappa"].item() > 0


def test_input_errors(load):
    model = load("sd")
    batch = make_batch()
    del batch["rejected_scores"]
    with pytest.raises(KeyError, match="rejected_scores"):
        loss_of(SmPO(), model, batch)


def test_v_prediction_models_invert_with_the_implied_noise(tiny_model_dir):
    model = DiffusionModel.from_pretrained(tiny_model_dir("sd", "v_prediction"), reference="copy", resolution=32)
    generator = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    t = torch.tensor([-99, 500])  # a negative inversion timestep uses abar_0
    abar = model.alphas_cumprod[t.clamp(min=0)].float().reshape(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    v = abar.sqrt() * eps - (1 - abar).sqrt() * x0
    assert torch.allclose(model.epsilon(v, x_t, t), eps, atol=1e-5)

    latents = torch.randn(4, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([150, 700, 150, 700])
    cond = model.encode_prompts(["a red circle", "a blue square"] * 2)
    pairs = invert_pairs(model, latents, timesteps, cond, torch.Generator().manual_seed(1), steps=10, renoise_steps=0, eta=0.1)
    noisy, target = pairs.noisy, pairs.target
    abar_t = model.alphas_cumprod[timesteps].float().reshape(-1, 1, 1, 1)
    # the target is the velocity of (x_tilde, x0): x0 = sqrt(abar) x_tilde - sqrt(1 - abar) v
    assert torch.allclose(abar_t.sqrt() * noisy - (1 - abar_t).sqrt() * target, latents, atol=1e-4)


@pytest.mark.parametrize("family", ["sd", "sdxl"])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_few_training_steps(load, family, lora):
    for method in (InPO(), SmPO()):
        model = load(family, lora=lora)
        trainable = [p for p in model.unet.parameters() if p.requires_grad]
        start = [p.detach().clone() for p in trainable]
        frozen = model.reference_unet if not lora else model.unet
        frozen_start = {name: p.detach().clone() for name, p in frozen.named_parameters() if not p.requires_grad}
        optimizer = torch.optim.AdamW(trainable, lr=1e-4)
        batch = make_batch()
        losses = []
        for step in range(2):
            output = loss_of(method, model, batch, seed=step)
            output.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(output.loss.item())
        assert all(math.isfinite(loss) for loss in losses)
        assert losses[0] == pytest.approx(LN2, abs=1e-7) and losses[1] != pytest.approx(LN2, abs=1e-7)
        assert any(not torch.equal(p, s) for p, s in zip(trainable, start))
        assert all(torch.equal(p, frozen_start[name]) for name, p in frozen.named_parameters() if name in frozen_start)


@pytest.mark.parametrize("method, family, lora", [("smpo", "sdxl", True), ("inpo", "sd", False)])
def test_diffalign_train_cli(tiny_model_dir, tmp_path, method, family, lora):
    from diffalign.cli import main

    records = write_pair_images(tmp_path, 2)
    for index, record in enumerate(records):
        record.update(chosen_score=0.2 + 0.01 * index, rejected_score=0.22)
    data = write_jsonl(tmp_path / "pairs.jsonl", records)
    output_dir = tmp_path / "run"
    args = ["train", "--method", method, "--model", tiny_model_dir(family), "--data", data, "--output-dir", str(output_dir),
            "--resolution", "64", "--max-steps", "2", "--train-batch-size", "1", "--no-progress-bar"]
    if lora:
        args += ["--lora-rank", "4"]
    args += ["--gamma", "5", "--inversion-steps", "4"] if method == "smpo" else ["--eta", "0.05", "--exact-t"]
    assert main(args) == 0
    run = json.loads((output_dir / "run_config.json").read_text())["method_config"]
    if method == "smpo":
        assert (run["gamma"], run["inversion_steps"]) == (5.0, 4)
    else:
        assert (run["eta"], run["exact_t"]) == (0.05, True)
    metrics = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in metrics] == [1, 2]
    assert all(math.isfinite(record["loss"]) and record["inversion/image_forwards"] > 0 for record in metrics)
