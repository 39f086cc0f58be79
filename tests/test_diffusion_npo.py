"""Diffusion-NPO (DPO-based): Diffusion-DPO with the preference reversed, on tiny SD1.x-like and SDXL-like
models and on a stub model with chosen denoising errors (research/diffusion_methods_B.md §1.2, §1.6)."""

import json
import math

import pytest
import torch

from diffalign.cli import main
from diffalign.data import ImageOptions, get_format, read_table
from diffalign.diffusion import Conditioning
from diffalign.diffusion.model import DiffusionModel, LoraSettings
from diffalign.methods.base import get_method_class
from diffalign.methods.diffusion_npo import DiffusionNPOConfig
from diffalign.options import OptionError
from diffalign.training import TrainConfig, build_method

from conftest import perturb


def load(model_dir, reference="copy", lora_rank=0):
    lora = LoraSettings(lora_rank) if lora_rank else None
    return DiffusionModel.from_pretrained(model_dir, reference=reference, lora=lora, resolution=64)


def first_batch(data, size=2):
    dataset, collate = get_format("image_pairs").build(read_table(data), ImageOptions(resolution=64, random_flip=False))
    return collate([dataset[i] for i in range(size)])


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def npo(**method_args):
    return build_method(TrainConfig(method="diffusion-npo", method_args=method_args))


# ------------------------------------------------------------------------------------------ init
@pytest.mark.parametrize("family", ["sd", "sdxl"])
@pytest.mark.parametrize("reference, lora_rank", [("adapters", 8), ("copy", 0)], ids=["lora-adapters", "copy"])
def test_loss_is_ln2_at_init(tiny_model_dir, pair_jsonl, family, reference, lora_rank):
    torch.manual_seed(0)
    model = load(tiny_model_dir(family), reference=reference, lora_rank=lora_rank)
    method = npo()
    generator = seeded(3)
    output = method.compute_loss(model, model.encode_batch(first_batch(pair_jsonl), generator, **method.encode_options()),
                                 generator)
    assert output.loss.item() == pytest.approx(math.log(2), abs=1e-6)
    # policy == reference: every implicit reward is 0, a tie, which strict accuracies count as 0
    assert output.metrics["rewards/accuracies"].item() == 0
    assert output.metrics["npo/original_label_accuracy"].item() == 0


# -------------------------------------------------------------------------------------- reversal
@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_npo_is_dpo_with_chosen_and_rejected_swapped(tiny_model_dir, pair_jsonl, family):
    model = load(tiny_model_dir(family))
    perturb(model.unet)  # move the policy away from the reference so the loss is not ln 2
    inputs = model.encode_batch(first_batch(pair_jsonl), seeded(0))
    swapped = {**inputs, "chosen_latents": inputs["rejected_latents"], "rejected_latents": inputs["chosen_latents"]}
    dpo = build_method(TrainConfig(method="diffusion-dpo", method_args={"beta": 1000}))

    ours = npo().compute_loss(model, inputs, seeded(7))  # beta None: 1000 (sd) / 2000 (sdxl)
    ours_same_beta = npo(beta=1000).compute_loss(model, inputs, seeded(7))
    dpo_swapped = dpo.compute_loss(model, swapped, seeded(7))
    dpo_original = dpo.compute_loss(model, inputs, seeded(7))

    # (t, eps) are drawn per pair, so the swap changes nothing but the slot order
    assert torch.equal(ours_same_beta.losses, dpo_swapped.losses)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "diffusion/mse_w", "diffusion/mse_l"):
        assert torch.equal(ours_same_beta.metrics[name], dpo_swapped.metrics[name]), name
    # the original-label accuracy is Diffusion-DPO's accuracy on the unswapped pairs
    assert ours.metrics["npo/original_label_accuracy"].item() == dpo_original.metrics["rewards/accuracies"].item()
    assert ours_same_beta.metrics["diffusion/mse_w"] == dpo_original.metrics["diffusion/mse_l"]
    # not a vacuous comparison: the loss moved away from ln 2, and the swap matters
    assert abs(ours_same_beta.loss.item() - math.log(2)) > 1e-3
    assert abs(ours_same_beta.loss.item() - dpo_original.loss.item()) > 1e-4
    if family == "sd":
        assert torch.equal(ours.losses, ours_same_beta.losses)
    else:
        assert not torch.equal(ours.losses, ours_same_beta.losses)


# ------------------------------------------------------------------------------------------ beta
def test_beta_defaults_by_family_and_override():
    config = DiffusionNPOConfig()
    assert config.beta is None and config.caption_dropout == 0.0
    assert (config.beta_for("sd"), config.beta_for("sdxl")) == (1000.0, 2000.0)
    assert DiffusionNPOConfig(beta=300).beta_for("sd") == DiffusionNPOConfig(beta=300).beta_for("sdxl") == 300.0
    for bad in (0, -1.0):
        with pytest.raises(OptionError, match="--beta must be > 0"):
            DiffusionNPOConfig(beta=bad)
    method_class = get_method_class("diffusion-npo")
    assert (method_class.data_format, method_class.needs_reference) == ("image_pairs", True)


# ------------------------------------------------------------------------------ spec sanity values
PREFERRED, DISPREFERRED = 0.0, 1.0  # the stub's clean latents say which image a row holds


class StubModel:
    """Just what ``compute_loss`` reads from a ``DiffusionModel``: the noised latent is the clean one
    (so it names its image), the target is 0, and each network predicts sqrt(m) everywhere for the
    image it is given, so that its per-sample mean squared error is exactly the chosen m."""

    num_train_timesteps = 1000

    def __init__(self, family, policy_mse, reference_mse):
        self.family = family
        self.policy = self._network(policy_mse)
        self.reference = self._network(reference_mse)

    @staticmethod
    def _network(mse):
        def predict(noisy, timesteps, cond):
            return torch.where(noisy == DISPREFERRED, math.sqrt(mse["dispreferred"]), math.sqrt(mse["preferred"]))
        return predict

    def add_noise(self, latents, noise, timesteps):
        return latents

    def target(self, latents, noise, timesteps):
        return torch.zeros_like(latents)


def stub_inputs(pairs=3):
    """Encoded inputs as the image_pairs format gives them: chosen = the human-preferred image."""
    return {"chosen_latents": torch.full((pairs, 1, 2, 2), PREFERRED),
            "rejected_latents": torch.full((pairs, 1, 2, 2), DISPREFERRED),
            "cond": Conditioning(torch.zeros(pairs, 1, 4))}


@pytest.mark.parametrize("family, expected", [("sd", 0.474077), ("sdxl", 0.313262)])
def test_spec_sanity_values(family, expected):
    # Spec §1.6 (ii) writes Delta as the official scripts compute it, with slot W = the human-DISpreferred
    # image (train_sd15.py / train_sdxl.py flip jpg_0/jpg_1 when label_0 == 1):
    #     Delta_theta = m_theta(dispreferred) - m_theta(preferred),  Delta_ref likewise,
    # and Delta_theta - Delta_ref = -0.001: the policy denoises the dispreferred image 0.001 better than
    # the preferred one, relative to the reference, which is what NPO asks for, so the loss is below ln 2:
    #     SD1.5 script: -log sigmoid(500 * (Delta_ref - Delta_theta))    = -log sigmoid(0.5) = 0.474077
    #     SDXL script:  -log sigmoid(-(2000/2) (Delta_theta - Delta_ref)) = -log sigmoid(1)   = 0.313262
    # diffalign: dpo_loss on scores s = -m/2 with the dispreferred image in the chosen slot:
    #     beta ((s_disp - s_pref) - (r_disp - r_pref)) = -(beta/2)(Delta_theta - Delta_ref) = (beta/2) 0.001
    # so beta = 1000 (sd) gives 0.5 and beta = 2000 (sdxl) gives 1: the defaults reproduce both scripts.
    policy = {"dispreferred": 0.100, "preferred": 0.101}  # Delta_theta = -0.001
    reference = {"dispreferred": 0.200, "preferred": 0.200}  # Delta_ref = 0
    output = npo().compute_loss(StubModel(family, policy, reference), stub_inputs(), seeded(0))
    # the scores are float32: m ~ 0.1 is off by up to ~1e-8, i.e. ~5e-6 in the logit (beta/2) Delta
    assert output.loss.item() == pytest.approx(expected, abs=1e-5)
    assert output.loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-FAMILY_SCALE[family]))), abs=1e-5)
    # reversed slots: the dispreferred image wins; with the original labels every pair is lost
    assert output.metrics["rewards/accuracies"].item() == 1
    assert output.metrics["npo/original_label_accuracy"].item() == 0
    assert output.metrics["diffusion/mse_w"].item() == pytest.approx(0.100)  # mse_w: the dispreferred image

    # the mirror image (the policy moved towards the preferred image) costs -log sigmoid(-x)
    mirrored = {"dispreferred": 0.101, "preferred": 0.100}
    output = npo().compute_loss(StubModel(family, mirrored, reference), stub_inputs(), seeded(0))
    assert output.loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(FAMILY_SCALE[family]))), abs=1e-5)
    assert output.metrics["npo/original_label_accuracy"].item() == 1


FAMILY_SCALE = {"sd": 0.5, "sdxl": 1.0}  # (beta / 2) x 0.001 with the family's default beta


# ------------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_train_through_the_cli(tiny_model_dir, pickapic_with_ties, tmp_path, capsys, family):
    argv = ["train", "--method", "diffusion-npo", "--model", tiny_model_dir(family), "--data", pickapic_with_ties,
            "--lora-rank", "8", "--learning-rate", "5e-6", "--lr-scheduler", "constant", "--max-steps", "2",
            "--train-batch-size", "2", "--output-dir", str(tmp_path), "--no-progress-bar"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "trained diffusion-npo for 2 steps" in out
    report = json.loads((tmp_path / "data_report.json").read_text())
    assert report["rows"] == 4 and report["skipped"] == {"ties (label_0 = 0.5)": 2}
    run = json.loads((tmp_path / "run_config.json").read_text())
    assert run["method_config"] == {"beta": None, "caption_dropout": 0.0}
    # the family's official beta is what the run used, recorded with the options as given and in the card
    assert run["method_config_resolved"] == {"beta": {"sd": 1000.0, "sdxl": 2000.0}[family], "caption_dropout": 0.0}
    assert f'"beta": {run["method_config_resolved"]["beta"]}' in (tmp_path / "README.md").read_text()
    with open(tmp_path / "metrics.jsonl") as handle:
        records = [json.loads(line) for line in handle]
    assert [record["step"] for record in records] == [1, 2]
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # LoRA B = 0: policy == reference
    assert {"rewards/accuracies", "npo/original_label_accuracy", "diffusion/mse_w"} <= set(records[0])
    assert all(math.isfinite(record["loss"]) for record in records)
    assert (tmp_path / "pytorch_lora_weights.safetensors").exists()
