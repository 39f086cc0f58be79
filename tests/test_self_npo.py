"""Self-NPO (research/diffusion_methods_B.md §2): the spec's sanity values (guidance algebra, DDIM
exactness, timestep bookkeeping, the re-noising kernel, pseudo-Huber, EMA), the loss against the
official formula written out, and training end to end on tiny SD1.x-like and SDXL-like models with an
EMA teacher that checkpoints and resumes exactly."""

import json
import math
import os

import pytest
import torch

from diffalign.data import ImageOptions, get_format, read_table
from diffalign.diffusion import pseudo_huber_errors
from diffalign.diffusion.model import DiffusionModel
from diffalign.diffusion.truncated import ddim_grid, ddim_step, previous_timesteps, renoise
from diffalign.errors import UsageError
from diffalign.methods.self_npo import SelfNPOConfig, teacher_prediction
from diffalign.options import OptionError
from diffalign.training import TrainConfig, build_method, train

from conftest import perturb, write_jsonl, write_pair_images


@pytest.fixture(scope="module")
def prompts_txt(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(f"a red circle number {i}" for i in range(6)) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def prompts_with_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prompts-images")
    records = [{"prompt": r["prompt"], "image": r["chosen"]} for r in write_pair_images(folder, 4)]
    return write_jsonl(folder / "prompts.jsonl", records)


def load(model_dir, **kwargs):
    return DiffusionModel.from_pretrained(model_dir, reference="ema", resolution=64, **kwargs)


def encoded(model, data, method, seed=0, size=2):
    dataset, collate = get_format("prompts").build(read_table(data), ImageOptions(resolution=64, random_flip=False))
    generator = torch.Generator().manual_seed(seed)
    batch = collate([dataset[i] for i in range(size)])
    return model.encode_batch(batch, generator, **method.encode_options()), generator


# ------------------------------------------------------------------------------ the spec's sanity values
@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_guidance_algebra(tiny_model_dir, prompts_txt, family):
    model = load(tiny_model_dir(family))
    method = build_method(TrainConfig(method="self-npo"))
    inputs, _ = encoded(model, prompts_txt, method)
    cond = inputs["cond"]
    null = model.null_conditioning().map(lambda t: t.expand(2, *t.shape[1:]))
    latents, t = torch.randn(2, *model.latent_shape), torch.tensor([999, 479])

    def x0(c):
        return model.denoised(model.reference(latents, t, c), latents, t).float()

    x0_u, x0_c = x0(null), x0(cond)
    assert torch.equal(teacher_prediction(model, latents, t, cond, null, -1.0)[0], x0_u)  # w = -1: the unconditional x0
    guided = teacher_prediction(model, latents, t, cond, null, -5.0)[0]
    assert torch.allclose(guided, 5 * x0_u - 4 * x0_c, rtol=1e-4, atol=1e-4)  # w = -5: anti-guidance (batched forward)
    assert not torch.allclose(x0_u, x0_c, atol=1e-4)
    if family == "sdxl":  # the SDXL null branch: zero prompt and pooled embeddings (force_zeros_for_empty_prompt)
        assert not null.prompt_embeds.any() and not null.added_cond_kwargs["text_embeds"].any()
    assert SelfNPOConfig().teacher_guidance is None
    assert method.config.for_family(model.family)["teacher_guidance"] == {"sd": -1.0, "sdxl": -5.0}[family]


def test_ddim_step_is_exact_and_grid_is_official():
    from diffalign.tiny import tiny_scheduler

    abar = tiny_scheduler().alphas_cumprod.double()
    assert ddim_grid(25, 1000)[:3].tolist() == [39, 79, 119] and int(ddim_grid(25, 1000)[-1]) == 999
    z0, eps = torch.randn(3, 4, 8, 8, dtype=torch.float64), torch.randn(3, 4, 8, 8, dtype=torch.float64)
    previous = torch.tensor([959, 39, 0])
    expected = abar[previous].sqrt().view(-1, 1, 1, 1) * z0 + (1 - abar[previous]).sqrt().view(-1, 1, 1, 1) * eps
    assert torch.allclose(ddim_step(z0, eps, previous, abar), expected.float().double(), atol=1e-6)


@pytest.mark.parametrize("start, end", [(999, 799), (199, 0), (159, 0), (39, 0), (479, 279)])
def test_timestep_bookkeeping(tiny_model_dir, prompts_txt, start, end):
    model = load(tiny_model_dir("sd"))
    method = build_method(TrainConfig(method="self-npo"))
    inputs, _ = encoded(model, prompts_txt, method, size=1)
    null = model.null_conditioning()
    latents = torch.randn(1, *model.latent_shape)
    _, reached, _, forwards = method._truncated_target(model, latents, torch.tensor([start]), inputs["cond"], null, 40)
    assert int(reached) == end
    assert forwards == 6  # w = -1: six null-prompt teacher forwards, the conditional ones skipped
    assert previous_timesteps(torch.tensor([39, 0, 80]), 40).tolist() == [0, 0, 40]


def test_student_timesteps_are_above_the_target_level(tiny_model_dir, prompts_txt):
    model = load(tiny_model_dir("sd"))
    method = build_method(TrainConfig(method="self-npo", method_args={"seed_from": "noise"}))
    inputs, generator = encoded(model, prompts_txt, method, size=6)
    output = method.compute_loss(model, inputs, generator)
    assert output.metrics["self_npo/start_t"].item() == 999 and output.metrics["self_npo/target_t"].item() == 799
    assert 800 <= output.metrics["self_npo/student_t"].item() <= 999


def test_renoise_has_the_forward_marginal():
    from diffalign.tiny import tiny_scheduler

    abar = tiny_scheduler().alphas_cumprod
    torch.manual_seed(0)
    n, t_from, t_to = 100_000, 279, 811
    y = (1 - abar[t_from]).sqrt() * torch.randn(n, 1)  # z0 = 0, y = sigma_t' eps
    x = renoise(y, torch.full((n,), t_from), torch.full((n,), t_to), torch.randn(n, 1), abar)
    assert x.var().item() == pytest.approx((1 - abar[t_to]).item(), rel=0.01)
    # with abar_s = 0 (zero terminal SNR) the kernel stays finite: pure noise
    zero = torch.cat([abar[:-1], torch.zeros(1)])
    assert torch.equal(renoise(y[:4], torch.full((4,), t_from), torch.full((4,), 999), torch.ones(4, 1), zero), torch.ones(4, 1))


def test_pseudo_huber_values():
    def f(d):
        return pseudo_huber_errors(torch.tensor([[d]]), torch.zeros(1, 1), 1e-3).item()

    assert f(0.0) == 0.0
    assert f(1e-3) == pytest.approx(4.14214e-4, rel=1e-5)
    assert f(1.0) == pytest.approx(0.9990005, rel=1e-6)


def test_ema_teacher_update(tiny_model_dir):
    model = load(tiny_model_dir("sd"))
    teacher = {k: v.clone() for k, v in model.reference_unet.state_dict().items()}
    model.update_reference_ema(0.999)  # the student has not moved (an optimiser step at lr 0): unchanged
    assert all(torch.equal(teacher[k], v) for k, v in model.reference_unet.state_dict().items())
    perturb(model.unet)
    student = dict(model.unet.named_parameters())
    model.update_reference_ema(0.9)
    for name, parameter in model.reference_unet.named_parameters():
        assert torch.allclose(parameter, 0.9 * teacher[name] + 0.1 * student[name], atol=1e-7)
    assert model.checkpointed_modules() == [model.reference_unet]


# --------------------------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loss_equals_the_official_formula(tiny_model_dir, prompts_with_images, prediction_type):
    """seed_from images (the official data path), the steps of Self-NPO train.py written out independently."""
    model = load(tiny_model_dir("sd", prediction_type))
    perturb(model.unet)  # student != teacher
    method = build_method(TrainConfig(method="self-npo", method_args={"seed_from": "images"}))
    inputs, generator = encoded(model, prompts_with_images, method)
    state = generator.get_state()
    ours = method.compute_loss(model, inputs, generator)

    generator.set_state(state)
    abar = model.alphas_cumprod.float()
    sq = lambda t: abar[t].sqrt().view(-1, 1, 1, 1)  # noqa: E731
    sg = lambda t: (1 - abar[t]).sqrt().view(-1, 1, 1, 1)  # noqa: E731

    def x0_eps(pred, x, t):
        if prediction_type == "v_prediction":
            return sq(t) * x - sg(t) * pred, sq(t) * pred + sg(t) * x
        return (x - sg(t) * pred) / sq(t), pred

    z0, cond = inputs["image_latents"], inputs["cond"]
    null = model.null_conditioning().map(lambda t: t.expand(2, *t.shape[1:]))
    k = torch.randint(0, 25, (2,), generator=generator)
    t = 40 * (k + 1) - 1
    y = sq(t) * z0 + sg(t) * torch.randn(z0.shape, generator=generator)
    with torch.no_grad():
        for j in range(6):
            x_hat, eps_hat = x0_eps(model.reference_unet(y, t, encoder_hidden_states=null.prompt_embeds).sample, y, t)  # w = -1
            if j == 5:
                break
            moving = (t > 0).view(-1, 1, 1, 1)
            t_prev = (t - 40).clamp(min=0)
            y = torch.where(moving, sq(t_prev) * x_hat + sg(t_prev) * eps_hat, y)
            t = torch.where(t > 0, t_prev, t)
    s = t + 1 + (torch.rand(2, generator=generator) * (999 - t).float()).long()
    z = torch.randn(y.shape, generator=generator)
    x_s = sq(s) * (y / sq(t) + ((sg(s) / sq(s)) ** 2 - (sg(t) / sq(t)) ** 2).sqrt() * z)
    student_x0, _ = x0_eps(model.unet(x_s, s, encoder_hidden_states=cond.prompt_embeds).sample, x_s, s)
    official = (torch.sqrt((student_x0 - x_hat) ** 2 + 1e-6) - 1e-3).mean()
    assert ours.loss.item() == pytest.approx(official.item(), rel=1e-4)
    assert ours.loss.item() > 0  # the student is conditional, the target unconditional: no zero loss at init


def test_options_and_data_are_checked(tiny_model_dir, prompts_txt):
    with pytest.raises(OptionError, match="truncated-steps must be below --grid-steps"):
        SelfNPOConfig(grid_steps=5, truncated_steps=5)
    model = load(tiny_model_dir("sd"))
    method = build_method(TrainConfig(method="self-npo", method_args={"seed_from": "images"}))
    inputs, generator = encoded(model, prompts_txt, method)
    with pytest.raises(UsageError, match="seed-from images needs an 'image'"):
        method.compute_loss(model, inputs, generator)
    uneven = build_method(TrainConfig(method="self-npo", method_args={"grid_steps": 7}))
    with pytest.raises(OptionError, match="grid-steps must divide the model's 1000 training timesteps, got 7"):
        uneven.compute_loss(model, *encoded(model, prompts_txt, uneven))
    from diffalign.cli import main

    assert main(["train", "--method", "self-npo", "--model", "m", "--data", "d", "--reference", "copy"]) == 2


@pytest.mark.parametrize("seed_from", ["samples", "noise"])
def test_seeding_without_images(tiny_model_dir, prompts_txt, seed_from):
    model = load(tiny_model_dir("sd"))
    method = build_method(TrainConfig(method="self-npo", method_args={"seed_from": seed_from, "sample_guidance": 3.0}))
    inputs, generator = encoded(model, prompts_txt, method, size=4)
    output = method.compute_loss(model, inputs, generator)
    assert torch.isfinite(output.loss) and output.loss.item() > 0
    if seed_from == "samples":  # the teacher's own DDIM chain from 999 down to each start: 2 forwards per row and step
        assert output.metrics["self_npo/teacher_forwards"].item() > 4 * 6


# ------------------------------------------------------------------------------------------- training
def read_metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def config_for(model_dir, data, output_dir, **overrides):
    values = dict(method="self-npo", model=model_dir, data=data, output_dir=str(output_dir), resolution=64, max_steps=2,
                  train_batch_size=2, progress_bar=False, checkpointing_steps=100, learning_rate=1e-4)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.parametrize("family, prediction_type, lora_rank, data", [
    ("sd", "epsilon", 0, "images"), ("sd", "v_prediction", 0, "prompts"), ("sdxl", "epsilon", 0, "prompts"),
    ("sd", "epsilon", 4, "prompts"),
])
def test_train_exports_the_negative_model(tiny_model_dir, prompts_txt, prompts_with_images, tmp_path, family,
                                          prediction_type, lora_rank, data):
    from diffusers import DiffusionPipeline

    model_dir = tiny_model_dir(family, prediction_type)
    source = prompts_with_images if data == "images" else prompts_txt
    summary = train(config_for(model_dir, source, tmp_path, lora_rank=lora_rank))
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2] and all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in records)
    assert {"self_npo/start_t", "self_npo/target_t", "self_npo/student_t"} <= set(records[0])
    assert summary["world_size"] == 1
    pipeline = DiffusionPipeline.from_pretrained(model_dir)
    if lora_rank:
        pipeline.load_lora_weights(str(tmp_path))
    else:
        pipeline = DiffusionPipeline.from_pretrained(str(tmp_path))
    image = pipeline("a red circle", num_inference_steps=2, height=64, width=64, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)


def test_resume_restores_the_ema_teacher(tiny_model_dir, prompts_txt, tmp_path):
    """The teacher makes the targets: metrics after a resume match an uninterrupted run only if the
    checkpoint restored the EMA teacher (a fresh load would start it from the base model again)."""
    from safetensors.torch import load_file

    common = dict(max_steps=4, lr_scheduler="constant", method_args={"ema_decay": 0.5, "seed_from": "noise"})
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train(config_for(tiny_model_dir("sd"), prompts_txt, straight, **common))
    train(config_for(tiny_model_dir("sd"), prompts_txt, interrupted, **{**common, "max_steps": 2}))
    summary = train(config_for(tiny_model_dir("sd"), prompts_txt, interrupted, resume_from="latest", **common))
    assert summary["resumed_from_step"] == 2
    assert read_metrics(straight) == read_metrics(interrupted)
    weights = "unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(straight / weights), load_file(interrupted / weights)
    assert all(torch.equal(a[k], b[k]) for k in a)
