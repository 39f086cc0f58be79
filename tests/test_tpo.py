"""TPO (TDPO, TKTO) on captioned images: one image under its true and a perturbed caption, on tiny
SD1.x-like and SDXL-like models (research/diffusion_methods_B.md §4.2, §4.3, §4.6)."""

import json
import math

import pytest
import torch

from conftest import perturb, write_jsonl, write_pair_images
from diffalign.cli import main
from diffalign.data import DataError, ImageOptions, get_format, read_table
from diffalign.diffusion.model import DiffusionModel, LoraSettings
from diffalign.methods.base import get_method_class
from diffalign.methods.denoising import caption_pairs
from diffalign.methods.tdpo import TDPOConfig
from diffalign.methods.tkto import TKTOConfig
from diffalign.training import TrainConfig, build_method, train

NEGATIVES = [["a blue circle number 0", "a red square number 0", "two red circles number 0"], ["a green circle number 1"],
             ["a red circle number 7", "a red circle at the top number 2"], ["a red triangle number 3"]]


def load(model_dir, reference="copy", lora_rank=0):
    lora = LoraSettings(lora_rank) if lora_rank else None
    return DiffusionModel.from_pretrained(model_dir, reference=reference, lora=lora, resolution=64)


def captioned(folder, negatives=NEGATIVES):
    images = write_pair_images(folder, len(negatives))
    records = [{"image": image["chosen"], "prompt": image["prompt"], "negative_prompts": row}
               for image, row in zip(images, negatives)]
    return write_jsonl(folder / "captioned.jsonl", records)


@pytest.fixture(scope="module")
def captioned_jsonl(tmp_path_factory):
    return captioned(tmp_path_factory.mktemp("captioned"))


def batch_of(data, size=4):
    dataset, collate = get_format("captioned_images").build(read_table(data), ImageOptions(resolution=64, random_flip=False))
    return collate([dataset[i] for i in range(size)])


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def tpo(name, **method_args):
    return build_method(TrainConfig(method=name, method_args=method_args))


def loss(method, model, batch, seed):
    """What the training loop does with one micro-batch: the encode step, then the method's loss."""
    generator = seeded(seed)
    return method.compute_loss(model, model.encode_batch(batch, generator, **method.encode_options()), generator)


def caption_pairs_of(model, batch, seed):
    generator = seeded(seed)
    return caption_pairs(model, model.encode_batch(batch, generator), generator, "tdpo")


def unet_grads(model):
    return [parameter.grad for parameter in model.trainable_module().parameters() if parameter.requires_grad]


# ---------------------------------------------------------------------------------------- the pairs
@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_one_noised_latent_under_the_true_and_one_perturbed_caption(tiny_model_dir, captioned_jsonl, family):
    model = load(tiny_model_dir(family), reference=None)
    batch = batch_of(captioned_jsonl)
    pairs = caption_pairs_of(model, batch, 3)
    true_latents, perturbed_latents = pairs.noisy.chunk(2)
    assert torch.equal(true_latents, perturbed_latents) and torch.equal(*pairs.timesteps.chunk(2))
    assert torch.equal(*pairs.target.chunk(2))
    true_cond, perturbed_cond = pairs.cond.prompt_embeds.chunk(2)
    torch.testing.assert_close(true_cond, model.encode_prompts(batch["prompts"]).prompt_embeds)
    for row, negatives in enumerate(NEGATIVES):  # each image's perturbed caption is one of its own
        candidates = model.encode_prompts(negatives).prompt_embeds
        assert any(torch.equal(perturbed_cond[row], candidate) for candidate in candidates), row
    if family == "sdxl":  # the pooled embeddings travel with their caption
        true_pooled, perturbed_pooled = pairs.cond.added_cond_kwargs["text_embeds"].chunk(2)
        assert not torch.equal(true_pooled, perturbed_pooled)


def test_every_perturbed_caption_is_drawn_uniformly(tiny_model_dir, captioned_jsonl):
    model = load(tiny_model_dir("sd"), reference=None)
    batch = batch_of(captioned_jsonl, size=1)  # the row with three perturbed captions
    candidates = model.encode_prompts(NEGATIVES[0]).prompt_embeds
    generator = seeded(0)
    inputs = model.encode_batch(batch, generator)
    drawn = [0, 0, 0]
    for _ in range(300):
        perturbed = caption_pairs(model, inputs, generator, "tdpo").cond.prompt_embeds[1]
        drawn[[torch.equal(perturbed, candidate) for candidate in candidates].index(True)] += 1
    assert sum(drawn) == 300 and all(70 < count < 130 for count in drawn), drawn


@pytest.mark.parametrize("name", ["tdpo", "tkto"])
def test_an_image_without_perturbed_captions_is_refused(tiny_model_dir, tmp_path, name):
    data = captioned(tmp_path, [["a blue circle number 0"], []])
    with pytest.raises(DataError, match=rf"^{name} needs at least one perturbed caption per image, but the image captioned "
                                        r"'a red circle number 1' has no 'negative_prompts'; add them or drop the row$"):
        train(TrainConfig(method=name, model=tiny_model_dir("sd"), data=data, output_dir=str(tmp_path / "run"),
                          resolution=64, max_steps=1, train_batch_size=2, progress_bar=False))


# --------------------------------------------------------------------------------------------- TDPO
@pytest.mark.parametrize("family", ["sd", "sdxl"])
@pytest.mark.parametrize("reference, lora_rank", [("adapters", 8), ("copy", 0)], ids=["lora-adapters", "copy"])
def test_tdpo_is_ln2_at_init(tiny_model_dir, captioned_jsonl, family, reference, lora_rank):
    torch.manual_seed(0)
    model = load(tiny_model_dir(family), reference=reference, lora_rank=lora_rank)
    output = loss(tpo("tdpo"), model, batch_of(captioned_jsonl), 3)
    assert output.loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert output.metrics["rewards/accuracies"].item() == 0  # all ties
    assert output.metrics["tpo/identical_captions"].item() == 0


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_tdpo_equals_diffusion_dpo_on_the_two_captions(tiny_model_dir, captioned_jsonl, family):
    model = load(tiny_model_dir(family))
    perturb(model.unet)  # move the policy away from the reference so the loss is not ln 2
    batch = batch_of(captioned_jsonl)
    ours = loss(tpo("tdpo", beta=5000), model, batch, 7)

    pairs = caption_pairs_of(model, batch, 7)
    with torch.no_grad():
        policy = (model.policy(pairs.noisy, pairs.timesteps, pairs.cond).float() - pairs.target.float()).pow(2).mean(dim=[1, 2, 3])
        ref = (model.reference(pairs.noisy, pairs.timesteps, pairs.cond).float() - pairs.target.float()).pow(2).mean(dim=[1, 2, 3])
    (m_w, m_l), (r_w, r_l) = policy.chunk(2), ref.chunk(2)
    expected = -torch.nn.functional.logsigmoid(-0.5 * 5000 * ((m_w - r_w) - (m_l - r_l))).mean()  # spec §4.2
    assert ours.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert abs(ours.loss.item() - math.log(2)) > 1e-3
    assert ours.metrics["diffusion/mse_w"].item() == pytest.approx(m_w.mean().item(), rel=1e-5)
    assert ours.metrics["diffusion/mse_l"].item() == pytest.approx(m_l.mean().item(), rel=1e-5)
    assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"} <= set(ours.metrics)
    # the optional SFT term adds gamma x the true caption's mean denoising error
    with_sft = loss(tpo("tdpo", beta=5000, sft_weight=100.0), model, batch, 7)
    assert with_sft.loss.item() == pytest.approx(expected.item() + 100.0 * m_w.mean().item(), rel=1e-5)


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_a_perturbed_caption_equal_to_the_true_one_is_ln2_with_zero_gradient(tiny_model_dir, tmp_path, family):
    data = captioned(tmp_path, [[f"a red circle number {index}"] for index in range(3)])  # each row's own caption
    model = load(tiny_model_dir(family))
    perturb(model.unet)  # policy != reference: only the degenerate pair makes the logit 0
    output = loss(tpo("tdpo"), model, batch_of(data, size=3), 5)
    assert output.loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert output.metrics["tpo/identical_captions"].item() == 1
    output.loss.backward()
    grads = unet_grads(model)
    assert grads and all(grad is not None and torch.count_nonzero(grad) == 0 for grad in grads)


def test_a_tie_leaves_the_other_images_gradient_alone(tiny_model_dir, tmp_path):
    tie_first = captioned(tmp_path, [["a red circle number 0"], ["a green circle number 1"]])
    model = load(tiny_model_dir("sd"))
    perturb(model.unet)
    output = loss(tpo("tdpo"), model, batch_of(tie_first, size=2), 5)
    assert output.metrics["tpo/identical_captions"].item() == 0.5
    assert output.losses[0].item() == pytest.approx(math.log(2), abs=1e-7)
    assert abs(output.losses[1].item() - math.log(2)) > 1e-4
    output.loss.backward()
    assert any(torch.count_nonzero(grad) for grad in unet_grads(model))


# --------------------------------------------------------------------------------------------- TKTO
@pytest.mark.parametrize("family", ["sd", "sdxl"])
@pytest.mark.parametrize("reference, lora_rank", [("adapters", 8), ("copy", 0)], ids=["lora-adapters", "copy"])
def test_tkto_is_one_half_per_sample_at_init(tiny_model_dir, captioned_jsonl, family, reference, lora_rank):
    torch.manual_seed(0)
    model = load(tiny_model_dir(family), reference=reference, lora_rank=lora_rank)
    output = loss(tpo("tkto"), model, batch_of(captioned_jsonl), 3)
    assert output.losses.shape == (8,)  # 4 desirable (true caption) + 4 undesirable (perturbed) samples
    assert torch.allclose(output.losses, torch.full((8,), 0.5), atol=1e-6)
    assert output.loss.item() == pytest.approx(0.5, abs=1e-6)
    assert output.metrics["kl"].item() == 0
    assert output.metric_counts["rewards/chosen"].item() == output.metric_counts["rewards/rejected"].item() == 4


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_tkto_equals_the_diffusion_kto_formula(tiny_model_dir, captioned_jsonl, family):
    model = load(tiny_model_dir(family))
    perturb(model.unet, scale=0.003)
    batch = batch_of(captioned_jsonl)
    ours = loss(tpo("tkto", beta=1000, desirable_weight=1.0, undesirable_weight=0.5), model, batch, 7)

    pairs = caption_pairs_of(model, batch, 7)
    with torch.no_grad():
        policy = (model.policy(pairs.noisy, pairs.timesteps, pairs.cond).float() - pairs.target.float()).pow(2).mean(dim=[1, 2, 3])
        ref = (model.reference(pairs.noisy, pairs.timesteps, pairs.cond).float() - pairs.target.float()).pow(2).mean(dim=[1, 2, 3])
    # jacklishufan/diffusion-kto train_kto_sd_v1.5.py, written out independently (one process, halo sigmoid)
    g = (-policy) - (-ref)
    z = g.mean().clamp(min=0)
    sign = torch.tensor([1.0] * 4 + [-1.0] * 4)
    weight = torch.tensor([1.0] * 4 + [0.5] * 4)
    expected = weight * (1 - torch.sigmoid(sign * 1000 * (g - z)))
    torch.testing.assert_close(ours.losses.detach(), expected, rtol=1e-4, atol=1e-6)
    assert ours.metrics["kl"].item() == pytest.approx(z.item(), rel=1e-4, abs=1e-9)
    assert ours.metrics["rewards/chosen"].item() == pytest.approx(1000 * g[:4].mean().item(), rel=1e-4)
    assert ours.metrics["logps/rejected"].item() == pytest.approx(-policy[4:].mean().item(), rel=1e-5)
    assert not torch.allclose(ours.losses.detach(), torch.full((8,), 0.5), atol=1e-3)


def test_one_tkto_step_prefers_the_true_caption(tiny_model_dir, captioned_jsonl):
    torch.manual_seed(0)
    model = load(tiny_model_dir("sd"))
    method = tpo("tkto")
    batch = batch_of(captioned_jsonl, size=1)
    before = loss(method, model, batch, 11)
    before.loss.backward()
    with torch.no_grad():
        for parameter in model.unet.parameters():
            parameter -= 1e-4 * parameter.grad
    after = loss(method, model, batch, 11)  # the same caption draw, t and eps
    m_w = (before.metrics["diffusion/mse_w"].item(), after.metrics["diffusion/mse_w"].item())
    m_l = (before.metrics["diffusion/mse_l"].item(), after.metrics["diffusion/mse_l"].item())
    assert m_w[1] < m_w[0] and m_l[1] > m_l[0], (m_w, m_l)


# ------------------------------------------------------------------------------------ options, CLI
@pytest.mark.parametrize("name", ["tdpo", "tkto"])
def test_first_step_from_a_latent_cache_equals_from_images(tiny_model_dir, captioned_jsonl, tmp_path, name):
    cache = tmp_path / "cache"
    assert main(["cache", "--model", tiny_model_dir("sdxl"), "--data", captioned_jsonl, "--output", str(cache),
                 "--resolution", "64", "--no-progress-bar"]) == 0
    firsts = []
    for data in (captioned_jsonl, str(cache)):
        output = tmp_path / ("images" if data == captioned_jsonl else "cached")
        train(TrainConfig(method=name, model=tiny_model_dir("sdxl"), data=data, output_dir=str(output), max_steps=1,
                          train_batch_size=2, progress_bar=False, learning_rate=1e-4, seed=3))
        firsts.append(json.loads((output / "metrics.jsonl").read_text().splitlines()[0]))
    assert firsts[0].keys() == firsts[1].keys()
    for key, value in firsts[0].items():
        assert firsts[1][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_defaults_and_data_contract():
    assert (TDPOConfig().beta, TDPOConfig().caption_dropout) == (5000.0, 0.0)
    config = TKTOConfig()
    assert (config.beta, config.desirable_weight, config.undesirable_weight, config.caption_dropout) == (1000.0, 1.0, 1.0, 0.0)
    for name in ("tdpo", "tkto"):
        method_class = get_method_class(name)
        assert (method_class.data_format, method_class.needs_reference) == ("captioned_images", True)


@pytest.mark.parametrize("lora_rank", [0, 4], ids=["full", "lora"])
@pytest.mark.parametrize("family", ["sd", "sdxl"])
@pytest.mark.parametrize("name", ["tdpo", "tkto"])
def test_train_through_the_cli(tiny_model_dir, captioned_jsonl, tmp_path, capsys, name, family, lora_rank):
    argv = ["train", "--method", name, "--model", tiny_model_dir(family), "--data", captioned_jsonl, "--resolution", "64",
            "--lora-rank", str(lora_rank), "--learning-rate", "1e-4", "--max-steps", "2", "--train-batch-size", "2",
            "--output-dir", str(tmp_path), "--no-progress-bar"]
    assert main(argv) == 0
    assert f"trained {name} for 2 steps" in capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [1, 2]
    assert records[0]["loss"] == pytest.approx(math.log(2) if name == "tdpo" else 0.5, abs=1e-6)  # policy == reference
    expected = {"rewards/chosen", "rewards/rejected", "rewards/margins", "diffusion/mse_w", "diffusion/mse_l"}
    expected |= {"rewards/accuracies"} if name == "tdpo" else {"kl", "logps/chosen", "logps/rejected"}
    assert expected <= set(records[0])
    assert all(math.isfinite(record["loss"]) for record in records)
    exported = "pytorch_lora_weights.safetensors" if lora_rank else "unet/diffusion_pytorch_model.safetensors"
    assert (tmp_path / exported).exists()
