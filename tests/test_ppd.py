"""PPD: the decoupled user branch, the multi-user Diffusion-DPO objective, the user-conditioned data, the
adapter export and the personalised pipeline (research/diffusion_methods_B.md §3.3-§3.7)."""

import json
import math
import os

import numpy as np
import pytest
import torch

from diffalign.cli import main
from diffalign.data import ImageOptions, get_format, read_table
from diffalign.data.errors import DataError
from diffalign.data.formats.user_image_pairs import NO_EMBEDDING, ONLY_OWN_SHOTS
from diffalign.data.user_embeddings import UserChunk, UserEmbeddings
from diffalign.diffusion.model import USER_ADAPTER_CONFIG, USER_ADAPTER_FILE, DiffusionModel, LoraSettings
from diffalign.diffusion.user_branch import add_user_branch, user_branch_parameters, user_branch_scale
from diffalign.options import OptionError
from diffalign.training import TrainConfig, build_method

from conftest import write_jsonl, write_pair_images

DIM = 6
USERS = "abc"


@pytest.fixture(scope="module")
def user_data(tmp_path_factory):
    """12 pairs of users a, b, c (row i belongs to user USERS[i % 3]) and embeddings of two 2-shot chunks
    for a and b each; c has none."""
    folder = tmp_path_factory.mktemp("user-pairs")
    records = write_pair_images(folder, 12, size=32)
    for index, record in enumerate(records):
        record["user"] = USERS[index % 3]
    data = write_jsonl(folder / "pairs.jsonl", records)
    chunks = [UserChunk("a", 0, (0, 3)), UserChunk("a", 1, (6, 9)), UserChunk("b", 0, (1, 4)), UserChunk("b", 1, (7, 10))]
    embeddings = UserEmbeddings(torch.randn(4, DIM, generator=torch.Generator().manual_seed(0)), chunks, {"name": "test"}, 2,
                                data=data)
    embeddings.save(str(folder / "emb"))
    return data, str(folder / "emb")


def user_batch(data, embeddings, rows=(0, 1, 3, 4), seed=0):
    dataset, collate = get_format("user_image_pairs").build(
        read_table(data), ImageOptions(resolution=64, random_flip=False, seed=seed, user_embeddings=embeddings))
    positions = {example.index: position for position, example in enumerate(dataset.examples)}
    return collate([dataset[positions[row]] for row in rows])


def load(model_dir, lora_rank=0):
    return DiffusionModel.from_pretrained(model_dir, reference="user-off", lora=LoraSettings(lora_rank) if lora_rank else None,
                                          resolution=64, user_embedding_stats=(torch.zeros(DIM), torch.ones(DIM)))


def ppd(embeddings, **method_args):
    return build_method(TrainConfig(method="ppd", method_args={"user_embeddings": embeddings, **method_args}))


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def train_branch(model, method, inputs, steps=3, lr=0.05):
    """A few SGD steps on the user branch (and adapters) so the policy leaves the reference."""
    trainable = [parameter for parameter in model.unet.parameters() if parameter.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=lr)
    for step in range(steps):
        optimizer.zero_grad()
        method.compute_loss(model, inputs, seeded(step)).loss.backward()
        optimizer.step()


# -------------------------------------------------------------------------------------- the branch
@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_branch_leaves_the_base_model_unchanged_at_init_for_any_embedding(tiny_model_dir, family):
    base = DiffusionModel.from_pretrained(tiny_model_dir(family), reference=None, resolution=64)
    model = load(tiny_model_dir(family))
    cond = base.encode_prompts(["a red circle", "a blue square"])
    latents, timesteps = torch.randn(2, 4, 8, 8, generator=seeded(1)), torch.tensor([10, 700])
    expected = base.policy(latents, timesteps, cond)
    for users in (torch.randn(2, DIM, generator=seeded(2)), torch.zeros(2, DIM), 1e3 * torch.ones(2, DIM)):
        conditioned = cond.with_user_embeds(users)
        assert torch.equal(model.policy(latents, timesteps, conditioned), expected)
        assert torch.equal(model.reference(latents, timesteps, conditioned), expected)


def test_only_the_branch_trains_and_at_init_only_its_values_get_a_gradient(tiny_model_dir, user_data):
    data, embeddings = user_data
    model = load(tiny_model_dir("sd"))
    branch = {id(parameter) for parameter in user_branch_parameters(model.unet)}
    trainable = [parameter for parameter in model.unet.parameters() if parameter.requires_grad]
    assert {id(parameter) for parameter in trainable} == branch
    method = ppd(embeddings)
    method.compute_loss(model, model.encode_batch(user_batch(data, embeddings), seeded(0)), seeded(0)).loss.backward()
    processors = [p for name, p in model.unet.attn_processors.items() if name.endswith("attn2.processor")]
    assert processors and all(p.to_v_ip[0].weight.grad.abs().sum() > 0 for p in processors)  # dL/dW'_v != 0
    # with V_u = 0 the branch's output does not depend on K_u or on the projection P (spec §3.7 (i))
    assert all(p.to_k_ip[0].weight.grad.abs().sum() == 0 for p in processors)
    assert all(parameter.grad.abs().sum() == 0 for parameter in model.unet.encoder_hid_proj.parameters())


def test_export_folds_the_standardisation_into_the_projection(tiny_model_dir):
    from diffalign.diffusion.user_branch import embedding_statistics, load_user_branch_state_dict, user_branch_state_dict

    training = torch.randn(20, DIM, generator=seeded(4)) * torch.tensor([0.01, 0.1, 1.0, 10.0, 0.5, 0.2]) + 3.0
    mean, std = embedding_statistics(training)
    standardised = (training - mean) / std
    assert torch.allclose(standardised.mean(0), torch.zeros(DIM), atol=1e-4)
    assert torch.allclose(standardised.std(0, unbiased=False), torch.ones(DIM), atol=1e-4)
    assert torch.equal(embedding_statistics(torch.ones(3, 2))[1], torch.ones(2))  # a constant dimension: std 1
    trained, fresh = load(tiny_model_dir("sd")), load(tiny_model_dir("sd"))
    projection = trained.unet.encoder_hid_proj.image_projection_layers[0]
    projection.embedding_mean.copy_(mean)
    projection.embedding_std.copy_(std)
    with torch.no_grad():
        for parameter in user_branch_parameters(trained.unet):
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=seeded(5)))
    load_user_branch_state_dict(fresh.unet, user_branch_state_dict(trained.unet))
    cond = trained.encode_prompts(["a red circle"] * 2).with_user_embeds(training[:2])
    latents, timesteps = torch.randn(2, 4, 8, 8, generator=seeded(6)), torch.tensor([100, 600])
    with torch.no_grad():
        expected = trained.unet(latents, timesteps, **cond.unet_kwargs()).sample
        assert torch.allclose(fresh.unet(latents, timesteps, **cond.unet_kwargs()).sample, expected, atol=1e-5)
        assert not torch.allclose(expected, trained.reference(latents, timesteps, cond), atol=1e-4)


def test_branch_follows_the_attention_backend_and_refuses_a_second_install(tiny_model_dir):
    from diffusers.models.attention_processor import IPAdapterAttnProcessor

    model = DiffusionModel.from_pretrained(tiny_model_dir("sd"), reference=None, resolution=64, attention="native")
    add_user_branch(model.unet, torch.zeros(DIM), torch.ones(DIM))
    kinds = {type(p).__name__ for name, p in model.unet.attn_processors.items() if name.endswith("attn2.processor")}
    assert kinds == {IPAdapterAttnProcessor.__name__}
    with pytest.raises(ValueError, match="already has a user branch"):
        add_user_branch(model.unet, torch.zeros(DIM), torch.ones(DIM))


# -------------------------------------------------------------------------------------- objective
@pytest.mark.parametrize("family, lora_rank", [("sd", 0), ("sdxl", 0), ("sd", 4)], ids=["sd", "sdxl", "sd-lora"])
def test_loss_is_ln2_at_init(tiny_model_dir, user_data, family, lora_rank):
    data, embeddings = user_data
    torch.manual_seed(0)
    model = load(tiny_model_dir(family), lora_rank)
    method = ppd(embeddings)
    output = method.compute_loss(model, model.encode_batch(user_batch(data, embeddings), seeded(3), **method.encode_options()),
                                 seeded(3))
    assert output.loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert output.metrics["rewards/accuracies"].item() == 0


def test_loss_is_diffusion_dpo_of_the_user_conditioned_policy_against_the_base(tiny_model_dir, user_data):
    data, embeddings = user_data
    model = load(tiny_model_dir("sd"))
    method = ppd(embeddings, beta=2500.0)
    inputs = model.encode_batch(user_batch(data, embeddings), seeded(0))
    train_branch(model, method, inputs)
    output = method.compute_loss(model, inputs, seeded(11))

    # the same draws by hand: one timestep and one noise per pair, shared by winner and loser
    generator = seeded(11)
    pairs = inputs["chosen_latents"].shape[0]
    timesteps = torch.randint(0, 1000, (pairs,), generator=generator).repeat(2)
    latents = torch.cat([inputs["chosen_latents"], inputs["rejected_latents"]])
    noise = torch.randn((pairs, *latents.shape[1:]), generator=generator).repeat(2, 1, 1, 1)
    noisy = model.add_noise(latents, noise, timesteps)
    cond = inputs["cond"].with_user_embeds(inputs["user_embeddings"]).repeat_for_pair()
    with torch.no_grad():
        policy_error = (model.unet(noisy, timesteps, **cond.unet_kwargs()).sample - noise).pow(2).mean(dim=(1, 2, 3))
        with user_branch_scale(model.unet, 0.0):
            base_error = (model.unet(noisy, timesteps, **cond.unet_kwargs()).sample - noise).pow(2).mean(dim=(1, 2, 3))
    m_w, m_l = policy_error.chunk(2)
    r_w, r_l = base_error.chunk(2)
    expected = -torch.nn.functional.logsigmoid(-(2500.0 / 2) * ((m_w - r_w) - (m_l - r_l))).mean()
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert abs(output.loss.item() - math.log(2)) > 1e-4


def test_permuting_users_changes_the_loss_after_training_not_at_init(tiny_model_dir, user_data):
    data, embeddings = user_data
    model = load(tiny_model_dir("sd"))
    method = ppd(embeddings)
    inputs = model.encode_batch(user_batch(data, embeddings, rows=(0, 1, 3, 4)), seeded(0))
    assert inputs["users"] == ["a", "b", "a", "b"]
    shuffled = {**inputs, "user_embeddings": inputs["user_embeddings"][[1, 0, 3, 2]]}  # a <-> b

    def loss(batch):
        return method.compute_loss(model, batch, seeded(5)).loss.item()

    assert loss(shuffled) == loss(inputs) == pytest.approx(math.log(2), abs=1e-6)
    train_branch(model, method, inputs)
    assert abs(loss(shuffled) - loss(inputs)) > 1e-4


def test_ppd_needs_user_embeddings():
    with pytest.raises(OptionError, match="--user-embeddings is required"):
        build_method(TrainConfig(method="ppd"))


# -------------------------------------------------------------------------------------------- data
def test_each_pair_is_conditioned_on_its_users_other_chunks(user_data):
    data, embeddings = user_data
    stored = UserEmbeddings.load(embeddings)
    for seed in (0, 1):
        dataset, _ = get_format("user_image_pairs").build(
            read_table(data), ImageOptions(resolution=32, seed=seed, user_embeddings=embeddings))
        # user c has no embedding; no pair of a or b sits in both of its user's chunks
        assert sorted(example.index for example in dataset.examples) == [0, 1, 3, 4, 6, 7, 9, 10]
        assert dataset.skipped.counts == {NO_EMBEDDING: 4}
        drawn = set()
        for epoch in range(4):
            dataset.set_epoch(epoch)
            for position, example in enumerate(dataset.examples):
                embedding = dataset[position]["user_embedding"]
                chunk = next(i for i in range(len(stored)) if torch.equal(stored.embeddings[i], embedding))
                assert stored.chunks[chunk].user == example.extras["user"]
                assert example.index not in stored.chunks[chunk].rows
                drawn.add(chunk)
        assert drawn == {0, 1, 2, 3}
    # the same seed and epoch draw the same chunks (a resumed run sees the same embeddings)
    again, _ = get_format("user_image_pairs").build(read_table(data), ImageOptions(resolution=32, seed=1, user_embeddings=embeddings))
    again.set_epoch(3)
    assert all(torch.equal(again[i]["user_embedding"], dataset[i]["user_embedding"]) for i in range(len(again)))


def test_pairs_whose_only_chunks_hold_them_are_counted(tmp_path, user_data):
    data, _ = user_data
    UserEmbeddings(torch.randn(2, DIM), [UserChunk("a", 0, (0, 3)), UserChunk("b", 0, (1, 4))], {"name": "test"}, 2).save(
        str(tmp_path / "emb"))
    dataset, _ = get_format("user_image_pairs").build(read_table(data), ImageOptions(resolution=32, user_embeddings=str(tmp_path / "emb")))
    assert sorted(example.index for example in dataset.examples) == [6, 7, 9, 10]
    assert dataset.skipped.counts == {ONLY_OWN_SHOTS: 4, NO_EMBEDDING: 4}


def test_embeddings_of_other_data_are_refused(tmp_path, user_data):
    data, _ = user_data
    UserEmbeddings(torch.randn(1, DIM), [UserChunk("a", 0, (0, 1))], {"name": "test"}, 2).save(str(tmp_path / "emb"))
    with pytest.raises(DataError, match=r"chunk 0 \(user a\) names row 1, which in .* is user b's pair; were the user "
                                        r"embeddings built from another --data"):
        get_format("user_image_pairs").build(read_table(data), ImageOptions(resolution=32, user_embeddings=str(tmp_path / "emb")))


# -------------------------------------------------------------------------- training, export, loading
def train_cli(model_dir, data, embeddings, out, *extra):
    return main(["train", "--method", "ppd", "--model", model_dir, "--data", data, "--user-embeddings", embeddings,
                 "--output-dir", str(out), "--max-steps", "3", "--train-batch-size", "2", "--resolution", "64",
                 "--learning-rate", "1e-2", "--no-progress-bar", "--report-to", "none", *extra])


@pytest.mark.parametrize("family, lora_rank", [("sd", 0), ("sdxl", 0), ("sd", 4)], ids=["sd", "sdxl", "sd-lora"])
def test_train_export_and_load_with_diffusers(tiny_model_dir, user_data, tmp_path, family, lora_rank):
    from diffusers import DiffusionPipeline

    data, embeddings = user_data
    extra = ["--lora-rank", str(lora_rank)] if lora_rank else []
    assert train_cli(tiny_model_dir(family), data, embeddings, tmp_path / "run", *extra) == 0
    run = tmp_path / "run"
    assert (run / USER_ADAPTER_FILE).is_file() and not (run / "unet").exists()
    config = json.loads((run / USER_ADAPTER_CONFIG).read_text())
    assert config["embedding_dim"] == DIM and config["family"] == family and config["encoder"] == {"name": "test"}
    assert (run / "pytorch_lora_weights.safetensors").is_file() == bool(lora_rank)
    report = json.loads((run / "data_report.json").read_text())
    assert report["skipped"] == {NO_EMBEDDING: 4}

    # diffusers' own IP-Adapter loader reads the adapter: its UNet equals a UNet given the trained branch
    pipeline = DiffusionPipeline.from_pretrained(tiny_model_dir(family))
    pipeline.load_ip_adapter(str(run), subfolder="", weight_name=USER_ADAPTER_FILE, image_encoder_folder=None)
    if lora_rank:
        pipeline.load_lora_weights(str(run))
    from safetensors.torch import load_file

    from diffalign.diffusion.user_branch import load_user_branch_state_dict, user_branch_state_dict

    assert all(torch.equal(value, load_file(str(run / USER_ADAPTER_FILE))[key])
               for key, value in user_branch_state_dict(pipeline.unet).items())
    reference = load(tiny_model_dir(family))
    load_user_branch_state_dict(reference.unet, load_file(str(run / USER_ADAPTER_FILE)))
    if not lora_rank:
        cond = reference.encode_prompts(["a red circle"]).with_user_embeds(torch.randn(1, DIM))
        latents, timesteps = torch.randn(1, 4, 8, 8), torch.tensor([400])
        with torch.no_grad():
            assert torch.allclose(pipeline.unet(latents, timesteps, **cond.unet_kwargs()).sample,
                                  reference.unet(latents, timesteps, **cond.unet_kwargs()).sample, atol=1e-6)


def test_train_without_user_embeddings_is_one_sentence(tiny_model_dir, user_data, tmp_path, capsys):
    data, embeddings = user_data
    code = main(["train", "--method", "ppd", "--model", tiny_model_dir("sd"), "--data", data, "--output-dir", str(tmp_path / "r")])
    assert code == 2
    assert "--user-embeddings is required" in capsys.readouterr().err
    code = main(["train", "--method", "ppd", "--model", tiny_model_dir("sd"), "--data", data, "--user-embeddings", embeddings,
                 "--reference", "copy", "--output-dir", str(tmp_path / "r")])
    assert code == 2
    assert "--reference is not used by ppd, whose reference is the same model with its user branch off" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- pipeline
@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, user_data, tmp_path_factory):
    data, embeddings = user_data
    run = tmp_path_factory.mktemp("ppd-run")
    assert train_cli(tiny_model_dir("sd"), data, embeddings, run, "--max-steps", "4") == 0
    return str(run)


def test_pipeline_users_interpolation_and_base(tiny_model_dir, user_data, trained_run):
    from diffusers import StableDiffusionPipeline

    from diffalign.pipelines.personalized import StableDiffusionPPDPipeline, interpolate_users

    _, embeddings = user_data
    stored = UserEmbeddings.load(embeddings)
    base = StableDiffusionPipeline.from_pretrained(tiny_model_dir("sd"), safety_checker=None)
    pipeline = StableDiffusionPPDPipeline.from_pretrained(tiny_model_dir("sd"), safety_checker=None)
    pipeline.load_user_adapter(trained_run)
    options = dict(num_inference_steps=3, guidance_scale=3.0, output_type="np")

    def images(pipe, **kwargs):
        return pipe("a red circle", generator=torch.Generator().manual_seed(0), **options, **kwargs).images

    user_a, user_b = stored.user_mean("a"), stored.user_mean("b")
    for_a, for_b = images(pipeline, user_embedding=user_a), images(pipeline, user_embedding=user_b)
    assert np.array_equal(images(pipeline, user_embedding=None), images(base))  # no user: the base model, bit for bit
    assert np.array_equal(images(pipeline, user_embedding=user_a, user_scale=0.0), images(base))
    assert np.abs(for_a - for_b).max() > 1e-4
    assert np.array_equal(images(pipeline, user_embedding=interpolate_users(user_a, user_b, 0.0)), for_a)
    assert np.array_equal(images(pipeline, user_embedding=interpolate_users(user_a, user_b, 1.0)), for_b)
    halfway = images(pipeline, user_embedding=interpolate_users(user_a, user_b, 0.5))
    assert not np.array_equal(halfway, for_a) and not np.array_equal(halfway, for_b)


def test_generate_for_a_user_and_an_interpolation(tiny_model_dir, user_data, trained_run, tmp_path):
    _, embeddings = user_data
    common = ["generate", "--model", tiny_model_dir("sd"), "--prompts", "a red circle", "--steps", "2", "--no-progress-bar",
              "--user-adapter", trained_run, "--user-embeddings", embeddings]
    assert main([*common, "--out", str(tmp_path / "a"), "--user", "a"]) == 0
    assert main([*common, "--out", str(tmp_path / "ab"), "--interpolate", "a", "b", "--alpha", "0"]) == 0
    assert (tmp_path / "a" / "0_0.png").read_bytes() == (tmp_path / "ab" / "0_0.png").read_bytes()
    row = json.loads((tmp_path / "ab" / "generations.jsonl").read_text().splitlines()[0])
    assert (row["interpolate"], row["alpha"], row["user_scale"]) == (["a", "b"], 0.0, 1.0)


@pytest.mark.parametrize("extra, message", [
    (["--user", "a"], "--user personalises with a PPD adapter: give --user-adapter too"),
    (["--user-adapter", "RUN"], "--user-adapter needs exactly one of --user U"),
    (["--user-adapter", "RUN", "--user-embeddings", "EMB", "--interpolate", "a", "b"], "--interpolate A B and --alpha go together"),
    (["--user-adapter", "RUN", "--user-embeddings", "EMB", "--user", "zz"], "user 'zz' has no embedding"),
    (["--user-adapter", "RUN", "--user-embeddings", "EMB", "--user", "a", "--negative-model", "RUN"],
     "--user-adapter and --negative-model cannot be combined"),
])
def test_generate_personalisation_errors_are_one_sentence(tiny_model_dir, user_data, trained_run, tmp_path, capsys, extra, message):
    _, embeddings = user_data
    extra = [{"RUN": trained_run, "EMB": embeddings}.get(value, value) for value in extra]
    code = main(["generate", "--model", tiny_model_dir("sd"), "--prompts", "a red circle", "--steps", "1", "--no-progress-bar",
                 "--out", str(tmp_path / "g"), *extra])
    error = capsys.readouterr().err
    assert code == 2 and message in error and "Traceback" not in error


def test_generate_for_a_new_users_shots_with_the_adapters_encoder(tiny_model_dir, user_data, tmp_path):
    """Four example pairs of a new user are embedded on the fly by the encoder the adapter's training
    embeddings were made with (here the tiny model's own VAE, rebuilt from the adapter's record)."""
    data, _ = user_data
    model = tiny_model_dir("sd")
    assert main(["users", "embed", "--data", data, "--out", str(tmp_path / "emb"), "--encoder", "vae", "--model", model,
                 "--shots", "2", "--no-progress-bar"]) == 0
    assert train_cli(model, data, str(tmp_path / "emb"), tmp_path / "run", "--max-steps", "2") == 0
    rows = [json.loads(line) for line in open(data)]
    shots = tmp_path / "shots.jsonl"
    folder = os.path.dirname(data)
    shots.write_text("".join(json.dumps({"prompt": r["prompt"], "chosen": os.path.join(folder, r["chosen"]),
                                         "rejected": os.path.join(folder, r["rejected"])}) + "\n" for r in rows[2:12:3]))
    common = ["generate", "--model", model, "--prompts", "a red circle", "--steps", "2", "--no-progress-bar",
              "--user-adapter", str(tmp_path / "run")]
    assert main([*common, "--out", str(tmp_path / "g"), "--user-shots", str(shots)]) == 0
    row = json.loads((tmp_path / "g" / "generations.jsonl").read_text().splitlines()[0])
    assert row["user_shots"] == str(shots) and row["user"] is None

    from diffalign.pipelines.personalized import read_user_adapter_config, user_encoder_of
    from diffalign.pipelines.user_inputs import read_user_shots, user_embedding
    from diffalign.pipelines.generate import GenerateSettings

    config = read_user_adapter_config(str(tmp_path / "run"))
    settings = GenerateSettings(model=model, prompts="p", out="o", user_adapter=str(tmp_path / "run"), user_shots=str(shots))
    embedded = user_encoder_of(config).embed([read_user_shots(str(shots))])[0]
    assert torch.equal(user_embedding(settings, config), embedded) and embedded.shape == (config["embedding_dim"],)
