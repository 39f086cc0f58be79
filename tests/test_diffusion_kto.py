"""Diffusion-KTO on labelled images (jsonl labels, or image pairs giving a desirable and an undesirable
row), the KTO objective TKTO shares with it, and its reference point all-reduced across processes
(research/diffusion_methods_B.md §4.3; jacklishufan/diffusion-kto)."""

import json
import math
import multiprocessing

import datasets
import pytest
import torch

from conftest import write_jsonl, write_pair_images
from diffalign.cli import main
from diffalign.data import DataError, ImageOptions, get_format, read_table
from diffalign.data.cache import LatentCache
from diffalign.diffusion.model import DiffusionModel, LoraSettings
from diffalign.methods.base import get_method_class
from diffalign.methods.diffusion_kto import DiffusionKTOConfig, KTOConfig, denoising_kto_loss
from diffalign.training import TrainConfig, build_method

from conftest import perturb


def load(model_dir, reference="copy", lora_rank=0):
    lora = LoraSettings(lora_rank) if lora_rank else None
    return DiffusionModel.from_pretrained(model_dir, reference=reference, lora=lora, resolution=64)


def build(data, **options):
    options = {"resolution": 64, "random_flip": False, **options}
    table = data.table() if isinstance(data, LatentCache) else read_table(data)
    return get_format("labelled_images").build(table, ImageOptions(**options))


def batch_of(data, rows=None):
    dataset, collate = build(data)
    return collate([dataset[i] for i in (rows if rows is not None else range(len(dataset)))])


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def kto(**method_args):
    return build_method(TrainConfig(method="diffusion-kto", method_args=method_args))


def loss(method, model, batch, seed):
    generator = seeded(seed)
    return method.compute_loss(model, model.encode_batch(batch, generator, **method.encode_options()), generator)


@pytest.fixture(scope="module")
def labelled_jsonl(tmp_path_factory):
    """Four labelled images (desirable, undesirable, undesirable, desirable)."""
    folder = tmp_path_factory.mktemp("labelled")
    records = write_pair_images(folder, 2)
    rows = [{"prompt": record["prompt"], "image": record[side], "label": label}
            for record in records for side, label in (("chosen", True), ("rejected", False))]
    rows[2:] = rows[2:][::-1]
    return write_jsonl(folder / "labelled.jsonl", rows)


# ------------------------------------------------------------------------------------------ data
def test_labelled_rows(labelled_jsonl):
    dataset, _ = build(labelled_jsonl)
    assert [item["label"] for item in dataset] == [True, False, False, True]
    batch = batch_of(labelled_jsonl)
    assert batch["label"] == [True, False, False, True] and batch["image_pixels"].shape == (4, 3, 64, 64)


def test_a_pair_gives_a_desirable_and_an_undesirable_row(pair_jsonl):
    pairs = get_format("image_pairs").build(read_table(pair_jsonl), ImageOptions(resolution=64, random_flip=False))[0]
    dataset, _ = build(pair_jsonl)
    assert len(dataset) == 2 * len(pairs)
    assert [dataset[i]["label"] for i in range(4)] == [True, False, True, False]
    assert torch.equal(dataset[0]["image_pixels"], pairs[0]["chosen_pixels"])
    assert torch.equal(dataset[1]["image_pixels"], pairs[0]["rejected_pixels"])
    assert dataset[0]["prompt"] == dataset[1]["prompt"] == pairs[0]["prompt"]


def test_pickapic_pairs_give_two_rows_and_ties_are_dropped_and_counted(pickapic_with_ties):
    dataset, _ = build(pickapic_with_ties)
    assert len(dataset) == 8 and dataset.skipped.counts == {"ties (label_0 = 0.5)": 2}
    raw = datasets.load_from_disk(pickapic_with_ties)["train"]
    decoded = get_format("image_pairs").build(read_table(pickapic_with_ties), ImageOptions(resolution=64, random_flip=False))[0]
    # row 2 has label_0 = 0: jpg_1 won, so it is the desirable image
    assert [dataset[i]["label"] for i in (2, 3)] == [True, False]
    assert torch.equal(dataset[2]["image_pixels"], decoded[1]["chosen_pixels"])
    assert raw[2]["label_0"] == 0.0


def test_bad_rows_name_the_line_and_field(tmp_path):
    records = write_pair_images(tmp_path, 1)
    good = {"prompt": "p", "image": records[0]["chosen"], "label": True}
    cases = [({**good, "label": 1}, r"line 2, field 'label': expected true \(desirable\) or false \(undesirable\), got 1"),
             ({"prompt": "p", "image": records[0]["chosen"]}, r"line 2: missing field 'label'"),
             ({"prompt": "p", "label": False}, r"line 2: missing field 'image'"),
             ({"prompt": "p", "chosen": records[0]["chosen"]}, r"line 2: missing field 'rejected'")]
    for bad, message in cases:
        with pytest.raises(DataError, match=message):
            build(write_jsonl(tmp_path / "bad.jsonl", [good, bad]))
    dataset, _ = build(write_jsonl(tmp_path / "skip.jsonl", [good, cases[0][0]]), skip_bad_rows=True)
    assert len(dataset) == 1 and dataset.skipped.counts == {"bad rows": 1}


@pytest.mark.parametrize("cache_format", ["labelled_images", "image_pairs"])
def test_a_latent_cache_reads_back_as_the_same_examples(tiny_model_dir, pickapic_with_ties, pair_jsonl, tmp_path, cache_format):
    model = DiffusionModel.from_pretrained(tiny_model_dir("sd"), reference=None, resolution=64)
    for name, data in (("pickapic", pickapic_with_ties), ("jsonl", pair_jsonl)):
        output = tmp_path / name
        assert main(["cache", "--model", tiny_model_dir("sd"), "--data", data, "--output", str(output), "--format",
                     cache_format, "--resolution", "64", "--no-random-flip", "--no-progress-bar"]) == 0
        from_images, from_cache = batch_of(data), batch_of(LatentCache(str(output)))
        assert from_cache["label"] == from_images["label"] and from_cache["prompts"] == from_images["prompts"]
        latents = [model.encode_batch(batch, seeded(0))["image_latents"] for batch in (from_images, from_cache)]
        torch.testing.assert_close(latents[1], latents[0], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------- objective
@pytest.mark.parametrize("family", ["sd", "sdxl"])
@pytest.mark.parametrize("reference, lora_rank", [("adapters", 8), ("copy", 0)], ids=["lora-adapters", "copy"])
def test_one_half_per_sample_at_init(tiny_model_dir, labelled_jsonl, family, reference, lora_rank):
    torch.manual_seed(0)
    model = load(tiny_model_dir(family), reference=reference, lora_rank=lora_rank)
    output = loss(kto(), model, batch_of(labelled_jsonl), 3)
    assert torch.allclose(output.losses, torch.full((4,), 0.5), atol=1e-6)
    assert output.metrics["kl"].item() == 0
    assert output.metric_counts["rewards/chosen"].item() == output.metric_counts["rewards/rejected"].item() == 2


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_equals_the_official_code_written_out(tiny_model_dir, labelled_jsonl, family):
    model = load(tiny_model_dir(family))
    perturb(model.unet, scale=0.003)
    batch = batch_of(labelled_jsonl)
    method = kto(caption_dropout=0.0, desirable_weight=1.5)
    ours = loss(method, model, batch, 7)

    generator = seeded(7)  # what the method draws: the encode step, then one t and one eps per image
    inputs = model.encode_batch(batch, generator, caption_dropout=0.0)
    latents = inputs["image_latents"]
    timesteps = torch.randint(0, 1000, (4,), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    noisy = model.add_noise(latents, noise, timesteps)
    with torch.no_grad():
        model_losses = (model.policy(noisy, timesteps, inputs["cond"]) - noise).pow(2).mean(dim=[1, 2, 3])
        ref_loss = (model.reference(noisy, timesteps, inputs["cond"]) - noise).pow(2).mean(dim=[1, 2, 3])
    # jacklishufan/diffusion-kto train_kto_sd_v1.5.py (loss kto, halo sigmoid), one process
    labels = torch.tensor(batch["label"], dtype=torch.float32)
    g_term = -model_losses - (-ref_loss)
    kl = g_term.mean().clamp(min=0)
    h = torch.sigmoid((2 * labels - 1) * 1000 * (g_term - kl))
    expected = torch.where(labels == 1, torch.tensor(1.5), torch.tensor(1.0)) * (1 - h)
    torch.testing.assert_close(ours.losses.detach(), expected, rtol=1e-4, atol=1e-6)
    assert ours.metrics["kl"].item() == pytest.approx(kl.item(), rel=1e-4, abs=1e-9)
    assert not torch.allclose(ours.losses.detach(), torch.full((4,), 0.5), atol=1e-3)


@pytest.mark.parametrize("label", [True, False])
def test_one_sgd_step_moves_a_single_sample_the_right_way(tiny_model_dir, labelled_jsonl, label):
    """Spec §4.6 (iv): a desirable sample's denoising error goes down, an undesirable one's goes up."""
    model = load(tiny_model_dir("sd"))
    batch = batch_of(labelled_jsonl, rows=[0 if label else 1])
    assert batch["label"] == [label]
    method = kto(caption_dropout=0.0)
    before = loss(method, model, batch, 11)
    before.loss.backward()
    # policy == reference up to float rounding (~1e-6 apart at batch size 1 on CPU), which beta = 1000 scales up
    assert before.loss.item() == pytest.approx(0.5, abs=1e-4)
    with torch.no_grad():
        for parameter in model.unet.parameters():
            parameter -= 1e-4 * parameter.grad
    after = loss(method, model, batch, 11)  # the same t and eps
    key = "logps/chosen" if label else "logps/rejected"  # -mse of the sample
    mse_before, mse_after = -before.metrics[key].item(), -after.metrics[key].item()
    assert (mse_after < mse_before) if label else (mse_after > mse_before), (mse_before, mse_after)


def _all_reduce_worker(rank, init_file, results):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        # denoising_logps s = -mse/2, so g = 2 (s - r): rank 0 has mean g 0 (z alone: 0), rank 1 has mean g 0.3
        policy = torch.tensor([[-0.45, -0.55], [-0.40, -0.40]][rank])
        ref = torch.tensor([[-0.50, -0.50], [-0.55, -0.55]][rank])
        output = denoising_kto_loss(KTOConfig(), policy, ref, torch.tensor([True, False]))
        results.put((rank, output.metrics["kl"].item()))
    finally:
        torch.distributed.destroy_process_group()


def test_the_reference_point_is_averaged_across_processes(tmp_path):
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_all_reduce_worker, args=(rank, str(tmp_path / "init"), results)) for rank in (0, 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0]
    reference_points = dict(results.get(timeout=5) for _ in workers)
    assert reference_points[0] == pytest.approx(0.15, abs=1e-6) and reference_points[1] == pytest.approx(0.15, abs=1e-6)


# ------------------------------------------------------------------------------------ options, CLI
def test_defaults_and_data_contract():
    config = DiffusionKTOConfig()
    assert (config.beta, config.desirable_weight, config.undesirable_weight, config.caption_dropout) == (1000.0, 1.0, 1.0, 0.2)
    method_class = get_method_class("diffusion-kto")
    assert (method_class.data_format, method_class.needs_reference) == ("labelled_images", True)


@pytest.mark.parametrize("lora_rank", [0, 4], ids=["full", "lora"])
@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_train_through_the_cli(tiny_model_dir, pickapic_with_ties, tmp_path, capsys, family, lora_rank):
    argv = ["train", "--method", "diffusion-kto", "--model", tiny_model_dir(family), "--data", pickapic_with_ties,
            "--resolution", "64", "--lora-rank", str(lora_rank), "--learning-rate", "1e-4", "--max-steps", "2",
            "--train-batch-size", "2", "--gradient-accumulation-steps", "2", "--output-dir", str(tmp_path),
            "--no-progress-bar"]
    assert main(argv) == 0
    assert "trained diffusion-kto for 2 steps" in capsys.readouterr().out
    report = json.loads((tmp_path / "data_report.json").read_text())
    assert report["rows"] == 8 and report["skipped"] == {"ties (label_0 = 0.5)": 2}
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [1, 2]
    assert records[0]["loss"] == pytest.approx(0.5, abs=1e-6)  # policy == reference
    assert {"kl", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"} <= set(records[0])
    for record in records:  # margins: the step's chosen mean minus its rejected mean, when it saw both
        if "rewards/chosen" in record and "rewards/rejected" in record:
            assert record["rewards/margins"] == pytest.approx(record["rewards/chosen"] - record["rewards/rejected"], abs=1e-6)
        assert math.isfinite(record["loss"])
    exported = "pytorch_lora_weights.safetensors" if lora_rank else "unet/diffusion_pytorch_model.safetensors"
    assert (tmp_path / exported).exists()
