"""Every export carries a Hugging Face model card (README.md) that ``ModelCard.load`` reads."""

import json
import shutil

import pytest
from huggingface_hub import ModelCard

from diffalign.tiny import save_tiny_lm
from diffalign.training import TrainConfig, train


def _config(model, data, output_dir, **overrides):
    values = dict(model=str(model), data=data, output_dir=str(output_dir), resolution=64, max_steps=1,
                  train_batch_size=2, progress_bar=False, checkpointing_steps=100, method="diffusion-dpo")
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.parametrize("lora_rank", [0, 4], ids=["full", "lora"])
def test_diffusion_export_has_a_model_card(tiny_model_dir, pair_jsonl, tmp_path, lora_rank):
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir("sd"), base)
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n\n# a tiny base model\n")
    out = tmp_path / "out"
    summary = train(_config(base, pair_jsonl, out, lora_rank=lora_rank))

    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == str(base)
    assert card.data.library_name == "diffusers"
    assert card.data.license == "apache-2.0"
    assert {"diffalign", "diffusion-dpo", "text-to-image", "diffusers"} <= set(card.data.tags)
    assert ("lora" in card.data.tags) == bool(lora_rank)
    if lora_rank:
        assert f"pipe.load_lora_weights({str(out)!r})" in card.text
    else:
        assert f"DiffusionPipeline.from_pretrained({str(out)!r})" in card.text
    assert "rewards/accuracies" in card.text and "Effective batch size: 2" in card.text
    assert "README.md" in summary["files"]  # --overwrite removes it with the rest of the run
    with open(out / "train_summary.json") as handle:
        assert "README.md" in json.load(handle)["files"]

    train(_config(base, pair_jsonl, out, lora_rank=lora_rank, overwrite=True))
    assert ModelCard.load(out / "README.md").data.base_model == str(base)


def test_no_license_without_a_base_card_and_a_users_readme_is_kept(tiny_model_dir, pair_jsonl, tmp_path):
    (tmp_path / "README.md").write_text("my notes\n")
    train(_config(tiny_model_dir("sd"), pair_jsonl, tmp_path, lora_rank=4, method="sft"))
    assert (tmp_path / "README.md").read_text() == "my notes\n"

    out = tmp_path / "out"
    train(_config(tiny_model_dir("sd"), pair_jsonl, out, lora_rank=4, method="sft"))
    card = ModelCard.load(out / "README.md")
    assert card.data.license is None and "sft" in card.data.tags


@pytest.mark.parametrize("lora_rank", [0, 4], ids=["full", "lora"])
def test_text_export_has_a_model_card(tmp_path, lora_rank):
    model = save_tiny_lm(str(tmp_path / "lm"), ["the sky is blue", "the grass is green"])
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "chosen": " blue", "rejected": " red"}) + "\n"
                            for p in ["the sky is", "the grass is"]))
    out = tmp_path / "out"
    train(TrainConfig(method="text-dpo", model=model, data=str(data), output_dir=str(out), max_steps=1,
                      train_batch_size=2, progress_bar=False, lora_rank=lora_rank))
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == ("peft" if lora_rank else "transformers")
    assert "text-dpo" in card.data.tags and card.data.base_model == model
    assert ("PeftModel.from_pretrained" if lora_rank else "AutoModelForCausalLM.from_pretrained") in card.text
