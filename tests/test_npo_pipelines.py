"""NPO-guided classifier-free guidance pipelines and negative-UNet construction (diffalign.pipelines).

Spec: research/diffusion_methods_B.md §1.4 / §2.4 (inference), §1.6 (iv)-(v) (sanity checks).
Tiny random-weight SD1.x-like and SDXL-like pipelines from ``diffalign.tiny``; all offline, CPU.
"""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

from diffalign.errors import ModelNotFoundError, UsageError, UserError
from diffalign.pipelines import (
    IncompatibleUNetsError,
    StableDiffusionNPOPipeline,
    StableDiffusionXLNPOPipeline,
    fuse_lora_into_unet,
    merge_negative_unet,
)
from diffalign.tiny import build_tiny_pipeline, tiny_unet

NPO_CLASSES = {"sd": StableDiffusionNPOPipeline, "sdxl": StableDiffusionXLNPOPipeline}
STANDARD_CLASSES = {"sd": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}
PROMPT = "a red circle on a blue background"
STEPS = 3


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def tiny():
    """{family: (standard pipeline, a negative UNet with other random weights)}."""
    out = {}
    for family in ("sd", "sdxl"):
        pipe = _quiet(build_tiny_pipeline(family, seed=0))
        negative = copy.deepcopy(pipe.unet)
        generator = torch.Generator().manual_seed(123)
        with torch.no_grad():
            for parameter in negative.parameters():
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
        out[family] = (pipe, negative)
    return out


def _components(pipe):
    components = {k: v for k, v in pipe.components.items()}
    if isinstance(pipe, StableDiffusionPipeline):
        components["requires_safety_checker"] = False
    return components


def npo_pipe(family, base, negative_unet=None, **overrides):
    components = _components(base)
    components.update(overrides)
    return _quiet(NPO_CLASSES[family](**components, negative_unet=negative_unet))


def standard_pipe(family, base, **overrides):
    components = _components(base)
    components.update(overrides)
    return _quiet(STANDARD_CLASSES[family](**components))


def run(pipe, seed=0, **kwargs):
    kwargs.setdefault("prompt", PROMPT)
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("output_type", "np")
    batch = len(kwargs["prompt"]) if isinstance(kwargs["prompt"], list) else 1
    batch *= kwargs.get("num_images_per_prompt", 1)
    kwargs.setdefault("generator", [torch.Generator().manual_seed(seed + i) for i in range(batch)])
    images = pipe(**kwargs).images
    return torch.as_tensor(images) if not torch.is_tensor(images) else images


class CallRecorder:
    """Forward hook recording each call's (sample, encoder_hidden_states, output) of a UNet."""

    def __init__(self, unet):
        self.calls = []
        self.handle = unet.register_forward_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs, output):
        sample = args[0] if args else kwargs["sample"]
        self.calls.append({
            "sample": sample.clone(),
            "encoder_hidden_states": kwargs["encoder_hidden_states"].clone(),
            "added_cond_kwargs": {k: v.clone() for k, v in (kwargs.get("added_cond_kwargs") or {}).items()},
            "output": output[0].clone(),
        })

    def remove(self):
        self.handle.remove()


# ------------------------------------------------------------------ equality with standard CFG
@pytest.mark.parametrize("family", ["sd", "sdxl"])
@pytest.mark.parametrize("negative", ["none", "same_module"])
def test_equals_standard_pipeline_bit_for_bit_when_negative_is_positive(tiny, family, negative):
    base, _ = tiny[family]
    pipe = npo_pipe(family, base, negative_unet=base.unet if negative == "same_module" else None)
    assert pipe.shares_unet
    kwargs = dict(prompt=[PROMPT, "a cat"], negative_prompt=["blurry", "ugly"], num_images_per_prompt=2, guidance_scale=4.5)
    recorder = CallRecorder(base.unet)
    try:
        ours = run(pipe, **kwargs)
        calls = list(recorder.calls)
    finally:
        recorder.remove()
    assert torch.equal(ours, run(base, **kwargs))
    # one batched forward on [uncond; cond] per step, as diffusers does
    assert len(calls) == STEPS and all(call["sample"].shape[0] == 2 * 4 for call in calls)
    # default negative prompt (SDXL: all-zero embeddings) and latent output, single generator
    ours = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=7.0, output_type="latent",
                generator=torch.Generator().manual_seed(3)).images
    theirs = base(PROMPT, num_inference_steps=STEPS, guidance_scale=7.0, output_type="latent",
                  generator=torch.Generator().manual_seed(3)).images
    assert torch.equal(ours, theirs)


def test_guidance_rescale_matches_standard_pipeline(tiny):
    base, _ = tiny["sd"]
    kwargs = dict(guidance_scale=6.0, guidance_rescale=0.7)
    assert torch.equal(run(npo_pipe("sd", base), **kwargs), run(base, **kwargs))


# ------------------------------------------------------------------ w == 1 and w == 0
@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_w1_is_the_positive_model_alone_and_ignores_the_negative(tiny, family):
    base, negative = tiny[family]
    pipe = npo_pipe(family, base, negative_unet=negative)
    recorder = CallRecorder(negative)
    try:
        ours = run(pipe, guidance_scale=1.0, negative_prompt="something else")
    finally:
        recorder.remove()
    assert recorder.calls == []  # the negative model is never called
    assert torch.equal(ours, run(base, guidance_scale=1.0))  # = eps_pos(x, c) alone
    other = copy.deepcopy(negative)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.mul_(-3.0)
    assert torch.equal(ours, run(npo_pipe(family, base, negative_unet=other), guidance_scale=1.0))


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_w0_is_the_negative_model_on_the_negative_prompt(tiny, family):
    base, negative = tiny[family]
    pipe = npo_pipe(family, base, negative_unet=negative)
    ours = run(pipe, guidance_scale=0.0, negative_prompt="a cat")
    # a standard pipeline running the negative UNet on the negative prompt without guidance
    reference = standard_pipe(family, base, unet=negative)
    assert torch.equal(ours, run(reference, prompt="a cat", guidance_scale=1.0))
    assert not torch.equal(ours, run(base, prompt="a cat", guidance_scale=1.0))


def test_w0_sdxl_default_negative_conditioning_is_all_zeros(tiny):
    base, negative = tiny["sdxl"]
    ours = run(npo_pipe("sdxl", base, negative_unet=negative), guidance_scale=0.0)
    reference = standard_pipe("sdxl", base, unet=negative)
    zeros = torch.zeros(1, 77, 64)
    theirs = run(reference, prompt=None, prompt_embeds=zeros, pooled_prompt_embeds=torch.zeros(1, 32), guidance_scale=1.0)
    assert torch.equal(ours, theirs)


# ------------------------------------------------------------------ the guidance formula, one step
@pytest.mark.parametrize("family", ["sd", "sdxl"])
@pytest.mark.parametrize("w", [0.5, 3.0, -1.0])
def test_one_step_guidance_formula_with_distinct_unets(tiny, family, w, monkeypatch):
    base, negative = tiny[family]
    pipe = npo_pipe(family, base, negative_unet=negative)
    scheduler_inputs = []
    original_step = pipe.scheduler.step

    def spy_step(model_output, timestep, sample, *args, **kwargs):
        scheduler_inputs.append((model_output.clone(), sample.clone()))
        return original_step(model_output, timestep, sample, *args, **kwargs)

    monkeypatch.setattr(pipe.scheduler, "step", spy_step)
    positive_calls, negative_calls = CallRecorder(base.unet), CallRecorder(negative)
    try:
        run(pipe, num_inference_steps=1, guidance_scale=w, output_type="latent")
    finally:
        positive_calls.remove()
        negative_calls.remove()
    assert len(positive_calls.calls) == len(negative_calls.calls) == len(scheduler_inputs) == 1
    pos, neg = positive_calls.calls[0], negative_calls.calls[0]
    eps, latents = scheduler_inputs[0]
    # each UNet ran once, on the same (unbatched) model input, with its own conditioning
    assert pos["sample"].shape[0] == neg["sample"].shape[0] == 1
    assert torch.equal(pos["sample"], neg["sample"])
    assert torch.equal(pos["sample"], pipe.scheduler.scale_model_input(latents, pipe.scheduler.timesteps[0]))
    if family == "sd":
        prompt_embeds, empty_embeds = pipe.encode_prompt(PROMPT, "cpu", 1, True)
        assert torch.equal(pos["encoder_hidden_states"], prompt_embeds)
        assert torch.equal(neg["encoder_hidden_states"], empty_embeds)  # c_neg = CLIP("")
    else:
        assert torch.count_nonzero(neg["encoder_hidden_states"]) == 0  # force_zeros_for_empty_prompt
        assert torch.count_nonzero(neg["added_cond_kwargs"]["text_embeds"]) == 0
        assert torch.count_nonzero(pos["added_cond_kwargs"]["text_embeds"]) > 0
        assert torch.equal(neg["added_cond_kwargs"]["time_ids"], pos["added_cond_kwargs"]["time_ids"])
    expected = neg["output"] + w * (pos["output"] - neg["output"])
    assert torch.equal(eps, expected)
    # and by hand, element by element, for one entry
    e_pos, e_neg = pos["output"].flatten()[7].item(), neg["output"].flatten()[7].item()
    assert eps.flatten()[7].item() == pytest.approx(e_neg + w * (e_pos - e_neg), rel=1e-5, abs=1e-6)


def test_guidance_scales_below_one_change_the_output(tiny):
    """diffusers silently drops guidance for w <= 1; here w = 0.5 is a real interpolation."""
    base, _ = tiny["sd"]
    pipe = npo_pipe("sd", base)
    half = run(pipe, guidance_scale=0.5, output_type="latent")
    assert not torch.equal(half, run(base, guidance_scale=0.5, output_type="latent"))
    assert torch.isfinite(run(pipe, guidance_scale=-2.0, output_type="latent")).all()


# ------------------------------------------------------------------ Euler: the model input is scaled
def test_euler_scheduler_model_input_is_scaled_for_both_branches(tiny):
    base, negative = tiny["sd"]
    scheduler = EulerDiscreteScheduler.from_config(base.scheduler.config)
    pipe = npo_pipe("sd", base, negative_unet=negative, scheduler=scheduler)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    positive_calls, negative_calls = CallRecorder(base.unet), CallRecorder(negative)
    try:
        pipe(PROMPT, num_inference_steps=2, guidance_scale=3.0, latents=noise.clone(), output_type="latent")
    finally:
        positive_calls.remove()
        negative_calls.remove()
    fresh = EulerDiscreteScheduler.from_config(base.scheduler.config)
    fresh.set_timesteps(2)
    start = noise * fresh.init_noise_sigma
    expected = fresh.scale_model_input(start, fresh.timesteps[0])
    assert not torch.allclose(expected, start)  # the scaling is not the identity here
    for calls in (positive_calls.calls, negative_calls.calls):
        assert len(calls) == 2
        assert torch.allclose(calls[0]["sample"], expected, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ save / load
def test_save_pretrained_round_trip_keeps_negative_unet(tiny, tmp_path):
    base, negative = tiny["sd"]
    pipe = npo_pipe("sd", base, negative_unet=negative)
    pipe.save_pretrained(tmp_path / "npo")
    assert os.path.isfile(tmp_path / "npo" / "negative_unet" / "config.json")
    with open(tmp_path / "npo" / "model_index.json") as handle:
        assert json.load(handle)["negative_unet"] == ["diffusers", "UNet2DConditionModel"]
    loaded = _quiet(StableDiffusionNPOPipeline.from_pretrained(tmp_path / "npo"))
    assert loaded.negative_unet is not None and not loaded.shares_unet
    for (name, a), (_, b) in zip(negative.state_dict().items(), loaded.negative_unet.state_dict().items()):
        assert torch.equal(a, b), name
    # not bit-exact: weights read from safetensors are not 64-byte aligned, so CPU matmul kernels may
    # take another path and round differently (~1e-7 per layer)
    torch.testing.assert_close(run(loaded, guidance_scale=3.0), run(pipe, guidance_scale=3.0), rtol=0, atol=1e-4)


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_from_pretrained_composes_a_plain_pipeline_with_a_separate_negative(tiny, family, tmp_path):
    base, negative = tiny[family]
    base.save_pretrained(tmp_path / "positive")
    composed = _quiet(NPO_CLASSES[family].from_pretrained(tmp_path / "positive", negative_unet=negative))
    assert composed.negative_unet is negative
    torch.testing.assert_close(  # loaded weights: see the round-trip test on why not bit-exact
        run(composed, guidance_scale=2.0, output_type="latent"),
        run(npo_pipe(family, base, negative_unet=negative), guidance_scale=2.0, output_type="latent"),
        rtol=0,
        atol=1e-4,
    )
    plain = NPO_CLASSES[family].from_pretrained(tmp_path / "positive")
    assert plain.negative_unet is None and plain.shares_unet


def test_negative_unet_assigned_after_construction_is_saved(tiny, tmp_path):
    base, negative = tiny["sd"]
    pipe = npo_pipe("sd", base)
    pipe.negative_unet = negative
    pipe.save_pretrained(tmp_path / "npo")
    assert os.path.isfile(tmp_path / "npo" / "negative_unet" / "config.json")
    assert StableDiffusionNPOPipeline.from_pretrained(tmp_path / "npo").negative_unet is not None


# ------------------------------------------------------------------ merge
def _unets(family="sd", seeds=(0, 1, 2), **kwargs):
    out = []
    for seed in seeds:
        torch.manual_seed(seed)
        out.append(tiny_unet(family, **kwargs))
    return out


def _params(unet):
    return {name: tensor.detach().clone() for name, tensor in unet.state_dict().items()}


def test_merge_weights_match_hand_arithmetic():
    negative, base, positive = _unets()
    before = [_params(u) for u in (negative, base, positive)]
    theta_neg, theta_base, theta_pos = before
    m1 = _params(merge_negative_unet(negative, base, positive, merge_weight=1.0))
    m0 = _params(merge_negative_unet(negative, base, positive, merge_weight=0.0))
    m03 = _params(merge_negative_unet(negative, base, positive, merge_weight=0.3))
    for name in theta_neg:
        delta = theta_neg[name] - theta_base[name]
        assert torch.equal(m1[name], theta_neg[name])  # m = 1: the trained negative itself
        torch.testing.assert_close(m0[name], theta_pos[name] + delta, rtol=0, atol=1e-6)  # m = 0: theta_pos + Delta
        expected = theta_base[name] + delta + 0.7 * (theta_pos[name] - theta_base[name])
        torch.testing.assert_close(m03[name], expected, rtol=0, atol=1e-6)
    # inputs untouched
    for unet, saved in zip((negative, base, positive), before):
        assert all(torch.equal(t, saved[n]) for n, t in unet.state_dict().items())
    # the same positive as base: every m gives the trained negative
    same = _params(merge_negative_unet(negative, base, base, merge_weight=0.25))
    assert all(torch.equal(same[n], theta_neg[n]) for n in theta_neg)


def test_merge_computes_in_float32_and_keeps_the_negative_dtype():
    negative, base, positive = _unets()
    negative_half = copy.deepcopy(negative).half()
    merged = merge_negative_unet(negative_half, base, positive, merge_weight=0.0)
    name = "conv_in.weight"
    assert merged.state_dict()[name].dtype == torch.float16
    expected = (negative_half.state_dict()[name].float() + (positive.state_dict()[name] - base.state_dict()[name])).half()
    assert torch.equal(merged.state_dict()[name], expected)


def test_merge_mismatch_errors_name_the_parameter():
    negative, positive = _unets(seeds=(0, 1))
    (wider,) = _unets(seeds=(2,), block_out_channels=(32, 96))
    with pytest.raises(IncompatibleUNetsError, match=r"parameter '[\w.]+' has shape") as error:
        merge_negative_unet(negative, wider, positive)
    assert isinstance(error.value, UserError) and isinstance(error.value, ValueError)
    assert "base UNet" in str(error.value)
    (xl,) = _unets("sdxl", seeds=(3,), cross_attention_dim=32)
    with pytest.raises(IncompatibleUNetsError, match=r"in the positive UNet but .* in the trained negative UNet"):
        merge_negative_unet(negative, positive, xl)
    extra = copy.deepcopy(positive)
    extra.register_parameter("extra_scale", torch.nn.Parameter(torch.ones(1)))
    lacks = r"the positive UNet has a parameter 'extra_scale' that the trained negative UNet lacks"
    with pytest.raises(IncompatibleUNetsError, match=lacks):
        merge_negative_unet(negative, positive, extra)
    with pytest.raises(IncompatibleUNetsError, match=r"the base UNet has no parameter 'extra_scale'"):
        merge_negative_unet(extra, positive, positive)
    with pytest.raises(UsageError, match="finite"):
        merge_negative_unet(negative, positive, positive, merge_weight=float("nan"))


# ------------------------------------------------------------------ LoRA -> plain UNet
def test_fuse_lora_into_unet_equals_the_peft_adapted_unet(tiny, tmp_path):
    from diffalign.diffusion.model import DiffusionModel, LoraSettings

    base, _ = tiny["sd"]
    base.save_pretrained(tmp_path / "base")
    model = DiffusionModel.from_pretrained(str(tmp_path / "base"), reference=None, lora=LoraSettings(rank=4))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained-looking LoRA (B starts at zero)
        for name, parameter in model.unet.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    model.export(str(tmp_path / "lora"), model.unet)
    assert os.path.isfile(tmp_path / "lora" / "pytorch_lora_weights.safetensors")

    fused = fuse_lora_into_unet(str(tmp_path / "base"), str(tmp_path / "lora"))
    assert not any("lora" in name for name in fused.state_dict())
    assert set(fused.state_dict()) == set(base.unet.state_dict())
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    hidden = torch.randn(2, 77, 32, generator=generator)
    t = torch.tensor([10, 500])
    model.unet.eval()
    with torch.no_grad():
        adapted = model.unet(sample, t, encoder_hidden_states=hidden).sample
        ours = fused(sample, t, encoder_hidden_states=hidden).sample
        plain = base.unet(sample, t, encoder_hidden_states=hidden).sample
    torch.testing.assert_close(ours, adapted, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(ours, plain, atol=1e-3)  # the LoRA delta is really there
    # weights: base + B A (alpha = rank, scale 1) on one projection
    prefix = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    lora_a = dict(model.unet.named_parameters())[f"{prefix}.lora_A.default.weight"]
    lora_b = dict(model.unet.named_parameters())[f"{prefix}.lora_B.default.weight"]
    torch.testing.assert_close(
        fused.state_dict()[f"{prefix}.weight"], base.unet.state_dict()[f"{prefix}.weight"] + lora_b @ lora_a, rtol=0, atol=1e-6
    )
    # a module base is copied, not changed; a merge over the fused negative then works
    before = _params(base.unet)
    fused_from_module = fuse_lora_into_unet(base.unet, str(tmp_path / "lora" / "pytorch_lora_weights.safetensors"))
    assert all(torch.equal(t, before[n]) for n, t in base.unet.state_dict().items())
    assert all(torch.equal(t, fused.state_dict()[n]) for n, t in fused_from_module.state_dict().items())
    merged = merge_negative_unet(fused, base.unet, base.unet, merge_weight=0.0)
    assert all(torch.equal(t, fused.state_dict()[n]) for n, t in merged.state_dict().items())
    with pytest.raises(ModelNotFoundError):
        fuse_lora_into_unet(base.unet, str(tmp_path / "nowhere"))
