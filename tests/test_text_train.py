"""Text methods through the shared training loop and CLI on a tiny LM: a few steps each, resume."""

import json
import math
import os

import pytest

import diffalign  # noqa: F401
from diffalign.cli import main
from diffalign.methods import registered_methods
from diffalign.tiny import save_tiny_lm
from diffalign.training.config import TrainConfig
from diffalign.training.loop import train

TEXT_METHODS = ["text-dpo", "text-ipo", "text-rpo", "text-simpo", "text-cpo", "text-orpo", "text-kto", "text-lipo"]
PROMPTS = ["the sky is", "the grass is", "what color is the sky?", "the sun is"]
WORDS = [" blue", " green", " red", " yellow"]


def _write_jsonl(path, rows):
    with open(path, "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    model = save_tiny_lm(str(root / "lm"), [p + w for p in PROMPTS for w in WORDS])
    pairs = [{"prompt": p, "chosen": WORDS[i % 4], "rejected": WORDS[(i + 1) % 4] + " and" + WORDS[(i + 2) % 4]}
             for i, p in enumerate(PROMPTS)]
    conversational = [{"prompt": [{"role": "user", "content": r["prompt"]}],
                       "chosen": [{"role": "assistant", "content": r["chosen"]}],
                       "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in pairs]
    unpaired = [{"prompt": p, "completion": w, "label": i % 2 == 0} for i, (p, w) in enumerate(zip(PROMPTS, WORDS))]
    ranked = [{"prompt": p, "completions": WORDS[:3], "scores": [2, 1, 0]} for p in PROMPTS]
    return {
        "model": model,
        "text_pairs": _write_jsonl(root / "pairs.jsonl", pairs),
        "conversational": _write_jsonl(root / "conv.jsonl", conversational),
        "text_unpaired": _write_jsonl(root / "unpaired.jsonl", unpaired),
        "text_ranked": _write_jsonl(root / "ranked.jsonl", ranked),
    }


def _metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def _config(files, method, output_dir, **kwargs):
    data_format = registered_methods()[method].data_format
    defaults = dict(method=method, model=files["model"], data=files[data_format], output_dir=str(output_dir),
                    max_steps=2, train_batch_size=2, learning_rate=1e-3, progress_bar=False, checkpointing_steps=2)
    defaults.update(kwargs)
    return TrainConfig(**defaults)


def test_text_methods_are_registered():
    assert set(TEXT_METHODS) <= set(registered_methods())


@pytest.mark.parametrize("method", TEXT_METHODS)
def test_a_few_steps(files, tmp_path, method):
    summary = train(_config(files, method, tmp_path))
    records = _metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in records)
    assert records[0]["grad_norm"] > 0
    first = records[0]
    if method in ("text-dpo", "text-rpo"):
        assert first["loss/sigmoid"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at step 1
        assert first["rewards/accuracies"] == 0.0
    if method == "text-kto":
        assert first["loss"] == pytest.approx(0.5, abs=1e-5) and first["kl"] == 0.0
    if method == "text-lipo":
        assert first["rewards/margins"] == 0.0
    assert os.path.isfile(os.path.join(tmp_path, "model.safetensors"))
    assert summary["steps"] == 2


def test_conversational_data_lora_and_adapter_reference(files, tmp_path):
    train(_config(files, "text-dpo", tmp_path, data=files["conversational"], lora_rank=4))
    first = _metrics(tmp_path)[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)  # LoRA B = 0: policy == base == reference
    assert os.path.isfile(os.path.join(tmp_path, "adapter_model.safetensors"))


def test_precomputed_reference_logps_are_used(files, tmp_path):
    rows = [dict(json.loads(line), ref_chosen_logps=-1.0, ref_rejected_logps=-1.0) for line in open(files["text_pairs"])]
    data = _write_jsonl(tmp_path / "with_ref.jsonl", rows)
    train(_config(files, "text-dpo", tmp_path / "run", data=data, max_steps=1))
    first = _metrics(tmp_path / "run")[0]
    assert first["loss"] != pytest.approx(math.log(2), abs=1e-3)  # the reference is the data's -1.0, not the model
    assert first["rewards/chosen"] == pytest.approx(0.1 * (first["logps/chosen"] + 1.0), rel=1e-4)


def test_resume_reproduces_an_uninterrupted_run(files, tmp_path):
    straight = train(_config(files, "text-dpo", tmp_path / "a", max_steps=4))
    train(_config(files, "text-dpo", tmp_path / "b", max_steps=2))
    resumed = train(_config(files, "text-dpo", tmp_path / "b", max_steps=4, resume_from="latest"))
    assert resumed["resumed_from_step"] == 2
    assert resumed["parameter_checksums"] == pytest.approx(straight["parameter_checksums"], rel=1e-6)
    assert [r["loss"] for r in _metrics(tmp_path / "b")][-2:] == pytest.approx([r["loss"] for r in _metrics(tmp_path / "a")][-2:], rel=1e-5)


def test_cli_trains_text_dpo_with_trl_loss_list(files, tmp_path, capsys):
    assert main(["methods"]) == 0
    assert "text-dpo" in capsys.readouterr().out
    code = main(["train", "--method", "text-dpo", "--model", files["model"], "--data", files["text_pairs"],
                 "--output-dir", str(tmp_path), "--max-steps", "1", "--train-batch-size", "2", "--no-progress-bar",
                 "--loss-type", "sigmoid", "sft", "--loss-weights", "1.0", "0.5"])
    assert code == 0
    first = _metrics(tmp_path)[0]
    assert first["loss"] == pytest.approx(first["loss/sigmoid"] + 0.5 * first["loss/sft"], rel=1e-5)
