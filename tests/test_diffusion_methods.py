"""Diffusion method plugins on tiny SD1.x-like and SDXL-like models loaded from disk."""

import math

import pytest
import torch

from diffalign.data import ImageOptions, get_format, read_table
from diffalign.diffusion.attention import AttentionBackendError
from diffalign.diffusion.model import DiffusionModel, LoraSettings
from diffalign.methods.base import get_method_class
from diffalign.methods.denoising import forward_noised_pairs, stack_pairs
from diffalign.training import TrainConfig, build_method

from conftest import perturb


def load(model_dir, reference="copy", lora_rank=0, attention="sdpa"):
    lora = LoraSettings(lora_rank) if lora_rank else None
    return DiffusionModel.from_pretrained(model_dir, reference=reference, lora=lora, attention=attention, resolution=64)


def first_batch(model, data, data_format="image_pairs", size=2):
    dataset, collate = get_format(data_format).build(read_table(data), ImageOptions(resolution=64, random_flip=False))
    return collate([dataset[i] for i in range(size)])


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def loss(method, model, batch, seed):
    """What the training loop does with one micro-batch: the encode step, then the method's loss."""
    generator = seeded(seed)
    return method.compute_loss(model, model.encode_batch(batch, generator, **method.encode_options()), generator)


def forward_pair(method, model, batch, seed):
    """The forward-noised [winners; losers] latents the method's loss starts from."""
    generator = seeded(seed)
    inputs = model.encode_batch(batch, generator, **method.encode_options())
    return forward_noised_pairs(model, *stack_pairs(model, inputs, generator), generator)


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_pairs_share_timestep_and_noise(tiny_model_dir, pair_jsonl, family):
    model = load(tiny_model_dir(family))
    method = build_method(TrainConfig(method="diffusion-dpo"))
    pair = forward_pair(method, model, first_batch(model, pair_jsonl), 0)
    t_w, t_l = pair.timesteps.chunk(2)
    noise_w, noise_l = pair.target.chunk(2)  # epsilon-prediction: the target is the noise
    assert torch.equal(t_w, t_l)
    assert torch.equal(noise_w, noise_l)
    assert not torch.equal(noise_w[0], noise_w[1])


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_dpo_equals_the_official_formula(tiny_model_dir, pair_jsonl, family):
    model = load(tiny_model_dir(family))
    perturb(model.unet)  # move the policy away from the reference so the loss is not ln 2
    method = build_method(TrainConfig(method="diffusion-dpo", method_args={"beta": 5000}))
    batch = first_batch(model, pair_jsonl)
    ours = loss(method, model, batch, 7)

    pair = forward_pair(method, model, batch, 7)
    with torch.no_grad():
        model_pred = model.policy(pair.noisy, pair.timesteps, pair.cond)
        ref_pred = model.reference(pair.noisy, pair.timesteps, pair.cond)
    # SalesforceAIResearch/DiffusionDPO train.py, written out independently
    model_losses = (model_pred.float() - pair.target.float()).pow(2).mean(dim=[1, 2, 3])
    ref_losses = (ref_pred.float() - pair.target.float()).pow(2).mean(dim=[1, 2, 3])
    model_w, model_l = model_losses.chunk(2)
    ref_w, ref_l = ref_losses.chunk(2)
    inside = -0.5 * 5000 * ((model_w - model_l) - (ref_w - ref_l))
    official = -torch.nn.functional.logsigmoid(inside).mean()
    assert ours.loss.item() == pytest.approx(official.item(), rel=1e-5)
    assert abs(ours.loss.item() - math.log(2)) > 1e-3


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_copy_and_adapter_references_agree_at_init(tiny_model_dir, pair_jsonl, family):
    losses = []
    for reference, lora_rank in (("copy", 0), ("copy", 4), ("adapters", 4)):
        torch.manual_seed(0)
        model = load(tiny_model_dir(family), reference=reference, lora_rank=lora_rank)
        method = build_method(TrainConfig(method="diffusion-dpo"))
        output = loss(method, model, first_batch(model, pair_jsonl), 3)
        losses.append(output.loss.item())
        assert output.loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert losses[1] == losses[2]


def test_v_prediction_target_is_the_velocity(tiny_model_dir, pair_jsonl):
    model = load(tiny_model_dir("sd", "v_prediction"))
    method = build_method(TrainConfig(method="diffusion-dpo"))
    batch = first_batch(model, pair_jsonl)
    pair = forward_pair(method, model, batch, 5)
    generator = seeded(5)
    torch.rand(2, generator=generator)  # caption dropout draws
    latents = model.encode_images(torch.cat([batch["chosen_pixels"], batch["rejected_pixels"]]), generator)
    torch.randint(0, 1000, (2,), generator=generator)
    noise = torch.randn((2, *latents.shape[1:]), generator=generator).repeat(2, 1, 1, 1)
    expected = model.noise_scheduler.get_velocity(latents, noise, pair.timesteps)
    assert torch.allclose(pair.target, expected, atol=1e-5)
    assert torch.isfinite(loss(method, model, batch, 5).loss)


def test_sft_reads_only_the_chosen_image(tiny_model_dir, pair_jsonl):
    model = load(tiny_model_dir("sd"), reference=None)
    batch = first_batch(model, pair_jsonl, data_format="chosen_images")
    assert set(batch) == {"prompts", "image_pixels"}
    pairs = first_batch(model, pair_jsonl)
    assert torch.equal(batch["image_pixels"], pairs["chosen_pixels"])
    output = loss(build_method(TrainConfig(method="sft")), model, batch, 0)
    assert output.loss.item() == pytest.approx(output.metrics["nll_loss"].item())


def test_mapo_runs_without_a_reference(tiny_model_dir, pair_jsonl):
    model = load(tiny_model_dir("sdxl"), reference=None)
    assert model.reference_unet is None
    output = loss(build_method(TrainConfig(method="mapo")), model, first_batch(model, pair_jsonl), 0)
    assert torch.isfinite(output.loss)
    assert get_method_class("mapo").needs_reference is False


def test_attention_backends(tiny_model_dir, pair_jsonl):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    sdpa = load(tiny_model_dir("sd"), reference=None)
    native = load(tiny_model_dir("sd"), reference=None, attention="native")
    assert all(isinstance(p, AttnProcessor2_0) for p in sdpa.unet.attn_processors.values())
    assert all(isinstance(p, AttnProcessor) for p in native.unet.attn_processors.values())
    latents = torch.randn(2, 4, 8, 8, generator=seeded())
    cond = sdpa.encode_prompts(["a red circle", "a blue square"])
    t = torch.tensor([10, 900])
    with torch.no_grad():
        assert torch.allclose(sdpa.policy(latents, t, cond), native.policy(latents, t, cond), atol=1e-5)
    if not torch.cuda.is_available():
        with pytest.raises(AttentionBackendError, match="xformers"):
            load(tiny_model_dir("sd"), attention="xformers")
