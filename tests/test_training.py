"""The training loop end to end: every method on SD1.x-like and SDXL-like tiny models, full and LoRA,
exports that reload into diffusers pipelines, exact resume, atomic checkpoints, NaN losses."""

import json
import os
import subprocess
import sys

import pytest
import torch
from diffusers import DiffusionPipeline

from diffalign.training import NonFiniteLossError, TrainConfig, train
from diffalign.training.checkpoints import list_checkpoints


def config_for(model_dir, data, output_dir, **overrides):
    values = dict(model=model_dir, data=data, output_dir=str(output_dir), resolution=64, max_steps=2,
                  train_batch_size=2, progress_bar=False, checkpointing_steps=100)
    values.update(overrides)
    return TrainConfig(**values)


def read_metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle]


@pytest.mark.parametrize("lora_rank", [0, 4], ids=["full", "lora"])
@pytest.mark.parametrize("family", ["sd", "sdxl"])
@pytest.mark.parametrize("method", ["diffusion-dpo", "mapo", "sft"])
def test_train_and_export_reloads(tiny_model_dir, pair_jsonl, tmp_path, method, family, lora_rank):
    model_dir = tiny_model_dir(family)
    summary = train(config_for(model_dir, pair_jsonl, tmp_path, method=method, lora_rank=lora_rank))
    records = read_metrics(tmp_path)
    assert [record["step"] for record in records] == [1, 2]
    assert {"step", "loss", "lr", "grad_norm"} <= set(records[0])
    if method != "sft":
        assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"} <= set(records[0])
    assert summary["world_size"] == 1

    if lora_rank:
        pipeline = DiffusionPipeline.from_pretrained(model_dir)
        pipeline.load_lora_weights(str(tmp_path))
    else:
        pipeline = DiffusionPipeline.from_pretrained(str(tmp_path))
        trained = pipeline.unet.state_dict()
        original = DiffusionPipeline.from_pretrained(model_dir).unet.state_dict()
        assert any(not torch.equal(trained[name], original[name]) for name in trained)
    image = pipeline("a red circle", num_inference_steps=2, height=64, width=64,
                     generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)


@pytest.mark.parametrize("lora_rank", [0, 4], ids=["full", "lora"])
def test_resume_continues_exactly(tiny_model_dir, pair_jsonl, tmp_path, lora_rank):
    common = dict(method="diffusion-dpo", lora_rank=lora_rank, learning_rate=1e-4, gradient_accumulation_steps=2,
                  train_batch_size=1, lr_scheduler="constant")
    straight = tmp_path / "straight"
    train(config_for(tiny_model_dir("sd"), pair_jsonl, straight, max_steps=6, **common))
    interrupted = tmp_path / "interrupted"
    train(config_for(tiny_model_dir("sd"), pair_jsonl, interrupted, max_steps=3, **common))
    summary = train(config_for(tiny_model_dir("sd"), pair_jsonl, interrupted, max_steps=6, resume_from="latest", **common))
    assert summary["resumed_from_step"] == 3
    assert read_metrics(straight) == read_metrics(interrupted)
    weights = "pytorch_lora_weights.safetensors" if lora_rank else "unet/diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    a, b = load_file(straight / weights), load_file(interrupted / weights)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoints_are_atomic_and_pruned(tiny_model_dir, pair_jsonl, tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / ".tmp-step-00000009").mkdir()  # a crash mid-write leaves only a temporary folder
    (folder / "step-00000007").mkdir()  # a folder without trainer_state.json is not a checkpoint
    train(config_for(tiny_model_dir("sd"), pair_jsonl, tmp_path, method="sft", max_steps=4, checkpointing_steps=1,
                     checkpoints_total_limit=2, resume_from="latest"))
    assert [step for step, _ in list_checkpoints(tmp_path)] == [3, 4]
    assert not (folder / ".tmp-step-00000009").exists()


def test_non_finite_loss_is_a_clear_error(tiny_model_dir, pair_jsonl, tmp_path, monkeypatch):
    from diffalign.methods import diffusion_dpo

    # a NaN beta is refused as an option (tests/test_options.py): make the loss NaN behind the config's back
    dpo_loss = diffusion_dpo.dpo_loss
    monkeypatch.setattr(diffusion_dpo, "dpo_loss", lambda *scores, beta: dpo_loss(*scores, beta=float("nan")))
    with pytest.raises(NonFiniteLossError, match="step 1, micro-batch 1: the loss is"):
        train(config_for(tiny_model_dir("sd"), pair_jsonl, tmp_path, method="diffusion-dpo"))


def test_unknown_method_option(tiny_model_dir, pair_jsonl, tmp_path):
    with pytest.raises(ValueError, match="method 'mapo' has no option"):
        train(config_for(tiny_model_dir("sd"), pair_jsonl, tmp_path, method="mapo", method_args={"gamma": 1}))


def test_bf16_mixed_precision_starts_at_ln2(tiny_model_dir, pair_jsonl, tmp_path):
    # a subprocess: accelerate keeps one mixed-precision setting per process
    command = [sys.executable, "-m", "diffalign", "train", "--method", "diffusion-dpo", "--model", tiny_model_dir("sd"),
               "--data", pair_jsonl, "--resolution", "64", "--max-steps", "1", "--train-batch-size", "2",
               "--lora-rank", "4", "--mixed-precision", "bf16", "--output-dir", str(tmp_path), "--no-progress-bar"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert read_metrics(tmp_path)[0]["loss"] == pytest.approx(0.6931472, abs=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_fp16_needs_cuda(tiny_model_dir, pair_jsonl, tmp_path):
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        train(config_for(tiny_model_dir("sd"), pair_jsonl, tmp_path, mixed_precision="fp16"))


def test_vae_encodes_in_float32_outside_autocast(tiny_model_dir, pair_jsonl, tmp_path):
    """The encode step runs outside autocast, so under bf16 mixed precision the VAE still sees float32."""
    spy = (
        "import sys, torch, diffalign\n"
        "from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL\n"
        "seen, encode = set(), AutoencoderKL.encode\n"
        "def spy(self, x, *a, **k):\n"
        "    seen.add((torch.is_autocast_enabled('cpu'), str(x.dtype), str(next(self.parameters()).dtype)))\n"
        "    return encode(self, x, *a, **k)\n"
        "AutoencoderKL.encode = spy\n"
        "from diffalign.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print('SEEN', sorted(seen))\n"
        "raise SystemExit(code)\n"
    )
    command = [sys.executable, "-c", spy, "train", "--method", "diffusion-dpo", "--model", tiny_model_dir("sd"),
               "--data", pair_jsonl, "--resolution", "64", "--max-steps", "1", "--train-batch-size", "2",
               "--lora-rank", "4", "--mixed-precision", "bf16", "--output-dir", str(tmp_path), "--no-progress-bar"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "SEEN [(False, 'torch.float32', 'torch.float32')]" in result.stdout


def test_lora_export_keeps_alpha(tiny_model_dir, tmp_path):
    """A LoRA with alpha != rank reloads at its own scale alpha / rank (the adapter config is in the file)."""
    from diffusers import StableDiffusionPipeline

    from diffalign.diffusion.model import DiffusionModel, LoraSettings

    model = DiffusionModel.from_pretrained(tiny_model_dir("sd"), reference=None, lora=LoraSettings(4, alpha=8), resolution=64)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.unet.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    model.export(str(tmp_path), model.unet)
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_model_dir("sd"))
    pipeline.load_lora_weights(str(tmp_path))
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, 32)
    with torch.no_grad():
        trained = model.unet(x, t, encoder_hidden_states=c).sample
        reloaded = pipeline.unet(x, t, encoder_hidden_states=c).sample
        base = StableDiffusionPipeline.from_pretrained(tiny_model_dir("sd")).unet(x, t, encoder_hidden_states=c).sample
    assert torch.allclose(trained, reloaded, atol=1e-5) and not torch.allclose(trained, base, atol=1e-3)
