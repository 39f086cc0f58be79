"""Flow-matching families (SD3.x, FLUX.1) through the family adapter, on tiny SD3-like and FLUX-like
pipelines saved to disk and loaded back through the real ``from_pretrained`` path: the noising and
target algebra, the timestep density, FLUX's packed model call, the DPO-type losses at init, LoRA
reference = copy reference, every offline method full and LoRA with exports that load in diffusers,
``diffalign generate``, exact resume and the refusals."""

import json
import math
import os

import pytest
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, FluxPipeline

from conftest import write_jsonl, write_pair_images
from diffalign.cli import main
from diffalign.data import ImageOptions, get_format, read_table
from diffalign.diffusion.families import FAMILIES, TimestepDensity
from diffalign.diffusion.families.flux import pack, unpack
from diffalign.diffusion.fingerprint import encoder_fingerprint
from diffalign.diffusion.families.flow import TimestepDensityError
from diffalign.diffusion.model import DiffusionModel, LoraSettings, model_family
from diffalign.training import TrainConfig, build_method, train
from diffalign.methods.base import get_method_class
from diffalign.training.diffusion_modality import UnsupportedFamilyError, check_family_supports

FLOW_METHODS = ["diffusion-dpo", "mapo", "sft", "diffusion-npo", "tdpo", "tkto", "diffusion-kto"]
DDPM_ONLY = {"inpo": "DDIM inversion", "smpo": "DDIM inversion", "self-npo": "DDIM self-sampling", "ppd": "user branch"}


@pytest.fixture(scope="module", params=["sd3", "flux"])
def flow_dir(request, tiny_model_dir):
    return tiny_model_dir(request.param)


@pytest.fixture(scope="module")
def sd3_dir(tiny_model_dir):
    return tiny_model_dir("sd3")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Each method's data: pairs (and their chosen images / labelled rows), or captioned images."""
    folder = tmp_path_factory.mktemp("flow-data")
    pairs = write_pair_images(folder, 4)
    captioned = [{"image": pair["chosen"], "prompt": pair["prompt"], "negative_prompts": [pair["prompt"].replace("red", "blue")]}
                 for pair in pairs]
    return {"pairs": write_jsonl(folder / "pairs.jsonl", pairs), "captioned": write_jsonl(folder / "captioned.jsonl", captioned)}


def data_for(method, data):
    return data["captioned"] if method in ("tdpo", "tkto") else data["pairs"]


def config_for(model_dir, data, output_dir, **overrides):
    values = dict(model=model_dir, data=data, output_dir=str(output_dir), resolution=64, max_steps=2,
                  train_batch_size=2, progress_bar=False, checkpointing_steps=100)
    values.update(overrides)
    return TrainConfig(**values)


def loss_at_init(model, method_name, data, seed=0):
    """What the training loop does with one micro-batch: the encode step, then the method's loss."""
    method = build_method(TrainConfig(method=method_name))
    dataset, collate = get_format(method.data_format).build(read_table(data), ImageOptions(resolution=64, random_flip=False))
    generator = torch.Generator().manual_seed(seed)
    inputs = model.encode_batch(collate([dataset[i] for i in range(2)]), generator, **method.encode_options())
    return method.compute_loss(model, inputs, generator)


def test_flow_noising_and_target(flow_dir):
    model = DiffusionModel.from_pretrained(flow_dir, reference=None, resolution=64)
    generator = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(6, *model.latent_shape, generator=generator), torch.randn(6, *model.latent_shape, generator=generator)
    timesteps = model.sample_timesteps(6, generator)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(flow_dir, subfolder="scheduler")
    assert all(t in scheduler.timesteps for t in timesteps)  # on the shifted training grid
    sigma = (timesteps / 1000).reshape(-1, 1, 1, 1)
    noisy = model.add_noise(latents, noise, timesteps)
    torch.testing.assert_close(noisy, (1 - sigma) * latents + sigma * noise)
    torch.testing.assert_close(noisy, scheduler.scale_noise(latents, timesteps, noise))  # diffusers' own forward process
    torch.testing.assert_close(model.target(latents, noise, timesteps), noise - latents)
    # the velocity target transports the noisy latents to x0 at sigma = 0 and to eps at sigma = 1
    torch.testing.assert_close(noisy - sigma * model.target(latents, noise, timesteps), latents)


@pytest.mark.parametrize("name, scheme", [("logit_normal", "logit_normal"), ("mode", "mode"), ("uniform", "none")])
def test_timestep_density_is_diffusers(name, scheme):
    """The same draws as diffusers' ``compute_density_for_timestep_sampling`` from the same generator."""
    from diffusers.training_utils import compute_density_for_timestep_sampling

    ours = TimestepDensity(name, logit_mean=0.3, logit_std=1.2).sample(1000, torch.Generator().manual_seed(0))
    theirs = compute_density_for_timestep_sampling(scheme, 1000, logit_mean=0.3, logit_std=1.2, mode_scale=1.29,
                                                   generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours, theirs)


def test_timestep_density_statistics(sd3_dir):
    generator = torch.Generator().manual_seed(0)
    u = TimestepDensity("logit_normal", logit_mean=0.5, logit_std=0.8).sample(20000, generator)
    logits = torch.logit(u.double())
    assert abs(logits.mean().item() - 0.5) < 0.03 and abs(logits.std().item() - 0.8) < 0.03
    u = TimestepDensity("uniform").sample(20000, generator)
    assert abs(u.mean().item() - 0.5) < 0.01
    mode = TimestepDensity("mode", mode_scale=1.29).sample(20000, generator)
    assert 0 <= mode.min() and mode.max() <= 1
    # through the model: sigma = shift s / (1 + (shift - 1) s) of s ~ U(0, 1) with SD3's shift 3: median 0.75
    model = DiffusionModel.from_pretrained(sd3_dir, reference=None, resolution=64, timestep_density=TimestepDensity("uniform"))
    sigmas = model.sample_timesteps(20000, generator) / 1000
    assert abs(sigmas.median().item() - 0.75) < 0.01
    with pytest.raises(TimestepDensityError, match="unknown timestep density 'normal'"):
        TimestepDensity("normal")


@pytest.mark.parametrize("method", ["diffusion-dpo", "diffusion-npo", "tdpo"])
@pytest.mark.parametrize("reference, lora_rank", [("adapters", 4), ("copy", 0)], ids=["lora-adapters", "copy"])
def test_dpo_type_losses_are_ln2_at_init(flow_dir, data, method, reference, lora_rank):
    model = DiffusionModel.from_pretrained(flow_dir, reference=reference, lora=LoraSettings(lora_rank) if lora_rank else None,
                                           resolution=64)
    output = loss_at_init(model, method, data_for(method, data))
    assert output.loss.item() == pytest.approx(math.log(2), abs=1e-6)


def test_lora_reference_equals_copy_reference_at_init(flow_dir, data):
    copy = DiffusionModel.from_pretrained(flow_dir, reference="copy", lora=LoraSettings(4), resolution=64)
    adapters = DiffusionModel.from_pretrained(flow_dir, reference="adapters", lora=LoraSettings(4), resolution=64)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, *copy.latent_shape, generator=generator)
    timesteps = copy.sample_timesteps(2, generator)
    cond = copy.encode_prompts(["a red circle", "a blue square"])
    torch.testing.assert_close(copy.reference(latents, timesteps, cond), adapters.reference(latents, timesteps, cond))
    torch.testing.assert_close(adapters.policy(latents, timesteps, cond), adapters.reference(latents, timesteps, cond))


@pytest.mark.parametrize("lora_rank", [0, 4], ids=["full", "lora"])
@pytest.mark.parametrize("method", FLOW_METHODS)
def test_every_flow_method_trains_and_exports(flow_dir, data, tmp_path, method, lora_rank):
    train(config_for(flow_dir, data_for(method, data), tmp_path, method=method, lora_rank=lora_rank, max_steps=1))
    if lora_rank:
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import load_file

        pipeline = DiffusionPipeline.from_pretrained(flow_dir)
        pipeline.load_lora_weights(str(tmp_path))
        saved = load_file(tmp_path / "pytorch_lora_weights.safetensors")
        loaded = get_peft_model_state_dict(pipeline.transformer, adapter_name=pipeline.get_active_adapters()[0])
        assert {f"transformer.{key}" for key in loaded} == set(saved)  # every trained LoRA layer is in the pipeline
        assert all(torch.equal(loaded[key], saved[f"transformer.{key}"]) for key in loaded)
    else:
        pipeline = DiffusionPipeline.from_pretrained(str(tmp_path))
        trained, original = pipeline.transformer.state_dict(), DiffusionPipeline.from_pretrained(flow_dir).transformer.state_dict()
        assert any(not torch.equal(trained[name], original[name]) for name in trained)
    image = pipeline("a red circle", num_inference_steps=2, height=64, width=64, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)


@pytest.mark.parametrize("lora_rank", [0, 4], ids=["full", "lora"])
def test_resume_continues_exactly(flow_dir, data, tmp_path, lora_rank):
    from safetensors.torch import load_file

    common = dict(method="diffusion-dpo", lora_rank=lora_rank, learning_rate=1e-4, gradient_accumulation_steps=2,
                  train_batch_size=1, lr_scheduler="constant")
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train(config_for(flow_dir, data["pairs"], straight, max_steps=4, **common))
    train(config_for(flow_dir, data["pairs"], interrupted, max_steps=2, **common))
    summary = train(config_for(flow_dir, data["pairs"], interrupted, max_steps=4, resume_from="latest", **common))
    assert summary["resumed_from_step"] == 2
    assert (straight / "metrics.jsonl").read_text() == (interrupted / "metrics.jsonl").read_text()
    weights = "pytorch_lora_weights.safetensors" if lora_rank else "transformer/diffusion_pytorch_model.safetensors"
    a, b = load_file(straight / weights), load_file(interrupted / weights)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_and_generate_through_the_cli(flow_dir, data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--method", "diffusion-dpo", "--model", flow_dir, "--data", data["pairs"], "--output-dir", str(run),
                 "--lora-rank", "4", "--max-steps", "1", "--train-batch-size", "2", "--timestep-density", "mode",
                 "--validation-prompts", "a red circle", "--validation-inference-steps", "2", "--no-progress-bar"]) == 0
    assert os.path.isfile(run / "validation" / "step-1" / "grid.png")  # validation images through the family's pipeline
    out = tmp_path / "images"
    assert main(["generate", "--model", flow_dir, "--lora", str(run), "--prompt", "a red circle", "--steps", "2",
                 "--height", "64", "--width", "64", "--out", str(out), "--no-progress"]) == 0
    assert os.path.isfile(out / "0_0.png")
    capsys.readouterr()
    assert main(["generate", "--model", flow_dir, "--negative-model", flow_dir, "--prompt", "a red circle",
                 "--out", str(tmp_path / "npo"), "--no-progress"]) == 2
    title = model_family(flow_dir).title
    assert f"--negative-model is a UNet piece (SD1.x/2.x, SDXL); {title} models generate with plain classifier-free " \
           "guidance" in capsys.readouterr().err


def test_first_step_from_the_latent_cache_equals_from_images(flow_dir, data, tmp_path):
    """The cache holds the T5 embeddings and pooled projections too, and its fingerprint the T5 encoder and tokenizer."""
    from diffalign.data.cache import LatentCache

    cache = tmp_path / "cache"
    assert main(["cache", "--model", flow_dir, "--data", data["pairs"], "--output", str(cache), "--resolution", "64",
                 "--no-progress-bar"]) == 0
    assert set(LatentCache(str(cache)).conditioning("")) == {"prompt_embeds", "pooled_projections"}
    encoders = [name for name in DiffusionPipeline.load_config(flow_dir) if name.startswith(("text_encoder", "tokenizer"))]
    assert set(encoder_fingerprint(flow_dir)) == {"vae", *encoders}  # T5 and its tokenizer included
    common = dict(method="diffusion-dpo", lora_rank=4, learning_rate=1e-4, max_steps=1)
    images = train(config_for(flow_dir, data["pairs"], tmp_path / "images", **common))["output_dir"]
    cached = train(config_for(flow_dir, str(cache), tmp_path / "cached", **common))["output_dir"]
    first = [json.loads(open(os.path.join(folder, "metrics.jsonl")).readline()) for folder in (images, cached)]
    assert first[0].keys() == first[1].keys()
    for name, value in first[0].items():
        assert first[1][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


@pytest.mark.parametrize("family", ["sd3", "flux"])
@pytest.mark.parametrize("method", sorted(DDPM_ONLY))
def test_ddpm_methods_refuse_flow_families(method, family):
    title = FAMILIES[family].title.replace(".", r"\.")
    with pytest.raises(UnsupportedFamilyError, match=rf"^{method} needs .*{DDPM_ONLY[method]}.*, which {title} models "
                                                     r"\(flow-matching transformers\) do not have; on them use .*diffusion-dpo"):
        check_family_supports(FAMILIES[family], get_method_class(method))
    check_family_supports(FAMILIES["sd"], get_method_class(method))  # the UNet families run them


@pytest.mark.parametrize("method", ["inpo", "self-npo"])
def test_refused_before_loading_and_without_a_traceback(flow_dir, data, tmp_path, method, capsys):
    with pytest.raises(UnsupportedFamilyError):
        train(config_for(flow_dir, data["pairs"], tmp_path / "run", method=method))
    assert main(["train", "--method", method, "--model", flow_dir, "--data", data["pairs"], "--output-dir",
                 str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err
    assert f"{method} needs" in err and "Traceback" not in err


def test_flux_model_call_is_the_pipelines(tiny_model_dir):
    """Packed 2 x 2 patches, t / 1000, the guidance embedding at 3.5 and the ids, as ``FluxPipeline`` calls it."""
    model = DiffusionModel.from_pretrained(tiny_model_dir("flux"), reference=None, resolution=64)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, *model.latent_shape, generator=generator)
    assert torch.equal(pack(latents), FluxPipeline._pack_latents(latents, 2, 16, 8, 8))
    assert torch.equal(unpack(pack(latents), 8, 8), latents)
    timesteps = model.sample_timesteps(2, generator)
    cond = model.encode_prompts(["a red circle", "a blue square"])
    with torch.no_grad():
        expected = model.unet(hidden_states=FluxPipeline._pack_latents(latents, 2, 16, 8, 8), timestep=timesteps / 1000,
                              guidance=torch.tensor([3.5, 3.5]), pooled_projections=cond.added_cond_kwargs["pooled_projections"],
                              encoder_hidden_states=cond.prompt_embeds, txt_ids=torch.zeros(cond.prompt_embeds.shape[1], 3),
                              img_ids=FluxPipeline._prepare_latent_image_ids(2, 4, 4, "cpu", torch.float32)).sample
        torch.testing.assert_close(model.policy(latents, timesteps, cond), FluxPipeline._unpack_latents(expected, 64, 64, 8))


def test_timestep_density_is_for_flow_families(tiny_model_dir):
    with pytest.raises(Exception, match="a timestep density is for the flow-matching families; SD1.x/2.x models"):
        DiffusionModel.from_pretrained(tiny_model_dir("sd"), reference=None, timestep_density=TimestepDensity("uniform"))
