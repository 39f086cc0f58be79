"""PPD user embeddings: chunking of users' pairs, the on-disk format, the clip / vae / vlm encoders, and
``diffalign users embed`` (spec research/diffusion_methods_B.md §3.2, §3.7)."""

import io
import json
import os

import numpy as np
import pytest
import torch
from conftest import perturb, png_bytes, write_jsonl, write_pair_images
from PIL import Image
from tiny_rewards import save_tiny_pickscore, save_tiny_unifiedreward

from diffalign.cli import main
from diffalign.data.errors import DataError
from diffalign.data.user_embeddings import (
    EMBEDDINGS_FILE,
    INDEX_FILE,
    UserChunk,
    UserEmbeddings,
    UserPairs,
    chunk_user_pairs,
)
from diffalign.errors import UnknownNameError
from diffalign.rewards.user_encoders import Shot, embed_user_pairs, get_user_encoder, profile_prompt, rebuild_user_encoder

# rows 0-8 u1 (9 pairs), 9-12 u2 (4), 13-15 u3 (3); row 16 (u2) and 17 (u1) show one image twice
USERS = ["u1"] * 9 + ["u2"] * 4 + ["u3"] * 3 + ["u2", "u1"]


@pytest.fixture(scope="module")
def user_pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user-pairs")
    records = write_pair_images(folder, len(USERS), size=32)
    for record, user in zip(records, USERS):
        record["user"] = user
    for row in (16, 17):
        records[row]["rejected"] = records[row]["chosen"]
    return write_jsonl(folder / "pairs.jsonl", records)


@pytest.fixture(scope="module")
def pickapic_users(tmp_path_factory):
    """Pick-a-Pic schema with user_id and are_different: u1 has 8 rows, 2 of them ties (1, 4) and 1 of
    the same image twice (6); u2 has 2 rows."""
    import datasets

    labels = [1.0, 0.5, 0.0, 1.0, 0.5, 0.0, 1.0, 0.0, 1.0, 0.0]
    table = datasets.Dataset.from_dict({
        "caption": [f"a red circle number {i}" for i in range(len(labels))],
        "jpg_0": [png_bytes(2 * i, size=32) for i in range(len(labels))],
        "jpg_1": [png_bytes(2 * i + 1, size=32) for i in range(len(labels))],
        "label_0": labels,
        "user_id": [7] * 8 + [9] * 2,
        "are_different": [True] * 6 + [False] + [True] * 3,
    })
    path = tmp_path_factory.mktemp("pickapic-users") / "data"
    table.save_to_disk(str(path))
    return str(path)


def random_image(rng, size=32) -> Image.Image:
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def random_chunks(counts, size=32, seed=0) -> list[list[Shot]]:
    rng = np.random.default_rng(seed)
    return [[Shot(f"a red circle number {n}" + " on blue" * n, random_image(rng, size), random_image(rng, size))
             for n in range(count)] for count in counts]


# ------------------------------------------------------------------------------------------ chunking
def test_chunks_are_disjoint_seeded_and_drop_the_partial_chunk():
    rows = {"a": list(range(10)), "b": [20, 21], "c": list(range(30, 36))}
    chunks, skipped = chunk_user_pairs(rows, shots=3, seed=0)
    by_user = {user: [c for c in chunks if c.user == user] for user in rows}
    assert [c.chunk for c in by_user["a"]] == [0, 1, 2] and [c.chunk for c in by_user["c"]] == [0, 1]
    used = [row for c in by_user["a"] for row in c.rows]
    assert all(len(c.rows) == 3 for c in chunks) and len(set(used)) == 9 and set(used) < set(rows["a"])  # one row dropped
    assert skipped == {"b": "2 usable pairs, fewer than 3 shots"}
    assert chunk_user_pairs(rows, 3, seed=0)[0] == chunks  # same seed, same chunks
    assert any(chunk_user_pairs(rows, 3, seed=s)[0] != chunks for s in range(1, 5))
    alone, _ = chunk_user_pairs({"a": rows["a"]}, 3, seed=0)  # a user's chunks do not depend on the others
    assert alone == by_user["a"]
    capped, _ = chunk_user_pairs(rows, 3, seed=0, chunks_per_user=1)
    assert capped == [by_user["a"][0], by_user["c"][0]]


def test_user_pairs_from_jsonl_leave_out_identical_pairs(user_pairs):
    pairs = UserPairs.read(user_pairs, progress=False)
    assert pairs.rows_by_user == {"u1": list(range(9)), "u2": [9, 10, 11, 12], "u3": [13, 14, 15]}
    assert pairs.skipped.counts == {"identical pairs (the same image twice)": 2}
    prompt, chosen, rejected = pairs.shot(3)
    folder = os.path.dirname(user_pairs)
    assert prompt == "a red circle number 3"
    assert np.array_equal(np.asarray(chosen), np.asarray(Image.open(os.path.join(folder, "img/3a.png")).convert("RGB")))
    assert np.array_equal(np.asarray(rejected), np.asarray(Image.open(os.path.join(folder, "img/3b.png")).convert("RGB")))
    chunks, skipped = chunk_user_pairs(pairs.rows_by_user, 4)
    assert [(c.user, c.chunk) for c in chunks] == [("u1", 0), ("u1", 1), ("u2", 0)]
    assert skipped == {"u3": "3 usable pairs, fewer than 4 shots"}
    assert not {16, 17} & {row for c in chunks for row in c.rows}


def test_pickapic_ties_and_same_images_are_never_shots(pickapic_users):
    pairs = UserPairs.read(pickapic_users, progress=False)
    assert pairs.rows_by_user == {"7": [0, 2, 3, 5, 7], "9": [8, 9]}
    assert pairs.skipped.counts == {"ties (label_0 = 0.5)": 2, "identical pairs (the same image twice)": 1}
    assert pairs.shot(2)[1].tobytes() == Image.open(io.BytesIO(png_bytes(5, size=32))).convert("RGB").tobytes()  # label 0: jpg_1 won
    chunks, skipped = chunk_user_pairs(pairs.rows_by_user, 2, seed=3)
    assert len(chunks) == 3 and skipped == {}
    assert not {1, 4, 6} & {row for c in chunks for row in c.rows}


# ------------------------------------------------------------------------------------ the format
def example_embeddings(texts=(None, None, None, None)) -> UserEmbeddings:
    chunks = [UserChunk("u1", 0, (0, 1), texts[0]), UserChunk("u1", 1, (2, 3), texts[1]), UserChunk("u1", 2, (4, 5), texts[2]),
              UserChunk("u2", 0, (9, 8), texts[3])]
    embeddings = torch.arange(4 * 3, dtype=torch.float32).reshape(4, 3)
    return UserEmbeddings(embeddings, chunks, {"name": "clip", "model": "m"}, shots=2, data="pairs.jsonl", seed=5,
                          chunks_per_user=None, skipped_users={"u3": "1 usable pair, fewer than 2 shots"})


def test_round_trip(tmp_path):
    original = example_embeddings(texts=("likes red", "likes big", None, "tidy"))
    original.save(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted([EMBEDDINGS_FILE, INDEX_FILE])  # no partial files left
    loaded = UserEmbeddings.load(str(tmp_path))
    assert torch.equal(loaded.embeddings, original.embeddings) and loaded.embeddings.dtype == torch.float32
    assert loaded.chunks == original.chunks and loaded.chunks[0].text == "likes red"
    assert loaded.settings() == original.settings() and loaded.skipped_users == original.skipped_users
    assert (loaded.dim, loaded.shots, len(loaded)) == (3, 2, 4)


def test_lookups():
    embeddings = example_embeddings()
    assert embeddings.users() == ["u1", "u2"] and "u1" in embeddings and "u3" not in embeddings
    assert embeddings.chunk_ids("u1") == [0, 1, 2] and embeddings.chunk_ids("u2") == [3] and embeddings.chunk_ids("u3") == []
    assert embeddings.chunks_excluding("u1", 2) == [0, 2]  # chunk 1 holds row 2
    assert embeddings.chunks_excluding("u1", 9) == [0, 1, 2]  # row 9 is u2's
    assert embeddings.chunks_excluding("u2", 8) == [] and embeddings.chunks_excluding("u3", 0) == []
    assert torch.equal(embeddings.user_mean("u1"), torch.tensor([3.0, 4.0, 5.0]))  # mean of rows 0, 1, 2
    with pytest.raises(UnknownNameError, match=r"user 'u3' has no embedding \(skipped: 1 usable pair, fewer than 2 shots\); "
                                               r"users with embeddings: u1, u2"):
        embeddings.user_mean("u3")


def _edit_index(folder, edit):
    path = os.path.join(folder, INDEX_FILE)
    with open(path) as handle:
        index = json.load(handle)
    edit(index)
    with open(path, "w") as handle:
        json.dump(index, handle)


def _write_tensor(folder, tensors, write_id=None):
    from safetensors.torch import save_file

    with open(os.path.join(folder, INDEX_FILE)) as handle:
        write_id = write_id or json.load(handle)["write_id"]
    save_file(tensors, os.path.join(folder, EMBEDDINGS_FILE), metadata={"write_id": write_id})


def _nan_row(folder):
    values = torch.zeros(4, 3)
    values[2, 1] = float("nan")
    _write_tensor(folder, {"embeddings": values})


LOAD_ERRORS = {
    "no folder": (lambda f: os.rename(f, f + "-gone"), "no such folder of user embeddings"),
    "no index": (lambda f: os.remove(os.path.join(f, INDEX_FILE)), f"{INDEX_FILE}: missing"),
    "no tensor file": (lambda f: os.remove(os.path.join(f, EMBEDDINGS_FILE)), f"{EMBEDDINGS_FILE}: missing"),
    "bad json": (lambda f: open(os.path.join(f, INDEX_FILE), "w").write("{oops"), f"{INDEX_FILE}: not valid JSON"),
    "schema": (lambda f: _edit_index(f, lambda i: i.update(schema=2)), "schema 2; this diffalign reads user embeddings of schema 1"),
    "dim type": (lambda f: _edit_index(f, lambda i: i.update(dim="3")), "field 'dim' must be an integer >= 1, got '3'"),
    "short chunk": (lambda f: _edit_index(f, lambda i: i["chunks"][1].update(rows=[2])),
                    "chunks[1], field 'rows': expected 2 distinct row indices (shots = 2), got [2]"),
    "empty user": (lambda f: _edit_index(f, lambda i: i["chunks"][0].update(user="")), "chunks[0], field 'user'"),
    "chunk twice": (lambda f: _edit_index(f, lambda i: i["chunks"][1].update(chunk=0)), "user 'u1' has chunk 0 twice"),
    "overlap": (lambda f: _edit_index(f, lambda i: i["chunks"][1].update(rows=[1, 3])),
                "row 1 is a shot of chunks 0 and 1 of user 'u1'; a user's chunks must be disjoint"),
    "count": (lambda f: _edit_index(f, lambda i: i["chunks"].pop()), "'embeddings' has 4 rows but user_embeddings.json lists 3 chunks"),
    "dim": (lambda f: _edit_index(f, lambda i: i.update(dim=5)), "'embeddings' has 3 columns but user_embeddings.json says dim 5"),
    "other write": (lambda f: _write_tensor(f, {"embeddings": torch.zeros(4, 3)}, write_id="x"), "a different write_id"),
    "tensor name": (lambda f: _write_tensor(f, {"emb": torch.zeros(4, 3)}), "no tensor 'embeddings' (found: emb)"),
    "1-d": (lambda f: _write_tensor(f, {"embeddings": torch.zeros(12)}), "must be a 2-D float tensor"),
    "non-finite": (_nan_row, "1 of 4 embeddings have non-finite values (first: user 'u1' chunk 2)"),
    "truncated": (lambda f: open(os.path.join(f, EMBEDDINGS_FILE), "wb").write(b"\x10\x00"), "cannot read it as safetensors"),
}


@pytest.mark.parametrize("case", sorted(LOAD_ERRORS))
def test_load_errors_name_the_file_and_the_fault(tmp_path, case):
    folder = str(tmp_path / "emb")
    example_embeddings().save(folder)
    damage, message = LOAD_ERRORS[case]
    damage(folder)
    with pytest.raises(DataError) as error:
        UserEmbeddings.load(folder)
    assert message in str(error.value) and folder in str(error.value) and "\n" not in str(error.value)


# -------------------------------------------------------------------------------------- encoders
def test_unknown_encoder_and_option():
    with pytest.raises(UnknownNameError, match="unknown user encoder 'siglip'; choose one of clip, toy, vae, vlm"):
        get_user_encoder("siglip")
    with pytest.raises(Exception, match="user encoder 'vae' takes no option.s. max_new_tokens"):
        get_user_encoder("vae", model="x", max_new_tokens=3)


def test_clip_encoder_is_the_mean_normalised_feature_difference(tmp_path):
    from transformers import CLIPModel, CLIPProcessor

    folder = save_tiny_pickscore(str(tmp_path / "clip"))
    chunks = random_chunks([2, 3])
    encoder = get_user_encoder("clip", model=folder, device="cpu", dtype="float32", batch_size=3)
    embeddings = encoder.embed(chunks)
    assert embeddings.shape == (2, 16) and embeddings.dtype == torch.float32 and encoder.dim == 16

    model, processor = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)

    def feature(image):
        with torch.no_grad():
            output = model.get_image_features(pixel_values=processor(images=image, return_tensors="pt")["pixel_values"])
        output = output if torch.is_tensor(output) else output.pooler_output
        return output[0] / output[0].norm()

    for row, chunk in zip(embeddings, chunks):
        expected = sum(feature(shot.chosen) - feature(shot.rejected) for shot in chunk) / len(chunk)
        assert torch.allclose(row, expected, atol=1e-6)
    assert encoder.describe() == {"name": "clip", "model": folder, "processor": folder, "dtype": "float32"}


@pytest.mark.parametrize("resolution, cells", [(None, 8), (128, 8)])
def test_vae_encoder_is_the_pooled_latent_difference(tiny_model_dir, resolution, cells):
    from diffusers import AutoencoderKL

    model = tiny_model_dir("sd")  # 64 px, 8x VAE: 8x8 latents at 64 px, 16x16 at 128 px
    chunks = random_chunks([2, 1], size=32)
    encoder = get_user_encoder("vae", model=model, resolution=resolution, batch_size=3)
    embeddings = encoder.embed(chunks)
    assert embeddings.shape == (2, 4 * cells * cells) and encoder.dim == 4 * 64

    side = resolution or 64
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae").eval()

    def latent(image):  # square images: resize to side x side, [-1, 1], posterior mean x scaling factor
        pixels = torch.from_numpy(np.asarray(image.resize((side, side), Image.BILINEAR), dtype=np.float32) / 127.5 - 1)
        with torch.no_grad():
            return vae.encode(pixels.permute(2, 0, 1)[None]).latent_dist.mean[0] * vae.config.scaling_factor

    for row, chunk in zip(embeddings, chunks):
        difference = sum(latent(shot.chosen) - latent(shot.rejected) for shot in chunk) / len(chunk)
        step = side // 8 // cells  # average over step x step latent cells
        pooled = difference.reshape(4, cells, step, cells, step).mean(dim=(2, 4))
        assert torch.allclose(row, pooled.flatten(), atol=1e-5)


PROFILE = "User Profile: likes red"


@pytest.fixture(scope="module")
def tiny_vlms(tmp_path_factory):
    """Two tiny Qwen2.5-VL models: ``ends``, the judge of ``tiny_rewards`` that answers ``PROFILE`` and
    then its end-of-turn token, and ``runs``, the same with every weight moved by N(0, 1) noise, which
    never ends within the budget and whose hidden states depend on the images and the text."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    ends = save_tiny_unifiedreward(str(tmp_path_factory.mktemp("vlm-ends")), answer=PROFILE)
    runs = str(tmp_path_factory.mktemp("vlm-runs"))
    model = AutoModelForImageTextToText.from_pretrained(ends)
    perturb(model, scale=1.0)
    model.save_pretrained(runs)
    AutoProcessor.from_pretrained(ends).save_pretrained(runs)
    return {"ends": ends, "runs": runs}


@pytest.mark.parametrize("kind", ["ends", "runs"])
def test_vlm_encoder_is_the_last_generated_tokens_final_hidden_state(tiny_vlms, kind):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from diffalign.rewards.transformers_judge import chat_prompt

    tiny_vlm = tiny_vlms[kind]
    chunks = random_chunks([2, 2], size=56)
    encoder = get_user_encoder("vlm", model=tiny_vlm, device="cpu", dtype="float32", max_new_tokens=6)
    embeddings = encoder.embed(chunks)
    assert embeddings.shape == (2, 64) and embeddings.dtype == torch.float32 and len(encoder.texts) == 2
    assert encoder.describe() == {"name": "vlm", "model": tiny_vlm, "max_new_tokens": 6, "dtype": "float32"}

    processor, model = AutoProcessor.from_pretrained(tiny_vlm), AutoModelForImageTextToText.from_pretrained(tiny_vlm).eval()
    end = model.generation_config.eos_token_id
    for row, text, chunk in zip(embeddings, encoder.texts, chunks):
        prompt = chat_prompt(processor, profile_prompt([shot.prompt for shot in chunk]))
        inputs = processor(text=[prompt], images=[[im for shot in chunk for im in (shot.chosen, shot.rejected)]], return_tensors="pt")
        with torch.no_grad():
            sequence = model.generate(**inputs, do_sample=False, max_new_tokens=6)[0]
        length = inputs["input_ids"].shape[1]
        answer = sequence[length:].tolist()
        answer = answer[:answer.index(end) + 1] if end in answer else answer
        assert text == processor.decode(answer, skip_special_tokens=True)
        assert (answer[-1] == end, len(answer), text) == ((True, 2, PROFILE) if kind == "ends" else (False, 6, text))
        # the state that emitted the last token: a plain forward over everything before it, last position
        context = sequence[None, :length + len(answer) - 1]
        token_types = torch.zeros_like(context)
        token_types[:, :length] = inputs["mm_token_type_ids"]
        with torch.no_grad():
            hidden = model(input_ids=context, attention_mask=torch.ones_like(context), pixel_values=inputs["pixel_values"],
                           image_grid_thw=inputs["image_grid_thw"], mm_token_type_ids=token_types,
                           output_hidden_states=True).hidden_states[-1][0, -1]
        assert torch.allclose(row, hidden, atol=1e-4)
    batched = get_user_encoder("vlm", model=tiny_vlm, device="cpu", dtype="float32", max_new_tokens=6, batch_size=2)
    assert torch.allclose(batched.embed(chunks), embeddings, atol=1e-4) and batched.texts == encoder.texts  # left-padded batch


def test_vlm_last_step_is_each_samples_first_end_token(tiny_vlms):
    encoder = get_user_encoder("vlm", model=tiny_vlms["ends"], device="cpu", dtype="float32", max_new_tokens=4)
    end, pad = encoder.eos_ids.tolist()[0], 0
    new_tokens = torch.tensor([[5, end, pad, pad], [5, 6, 7, 8], [end, pad, pad, pad], [5, 6, end, end]])
    assert encoder.last_steps(new_tokens) == [1, 3, 0, 2]


def test_profile_prompt_interleaves_two_images_per_pair():
    content = profile_prompt(["a cat", "a dog", "a fox", "an owl"])
    assert sum(part["type"] == "image" for part in content) == 8
    text = "".join(part.get("text", "<image>") for part in content)
    assert text.index("a cat") < text.index("<image> This is the preferred") < text.index("a dog")
    assert "style, visual quality and aesthetics" in text and text.rstrip().endswith("User Profile: [description]")
    assert "Pair 4:\nPreferred image" in text


# -------------------------------------------------------------------------------------------- CLI
def embed(capsys, *argv) -> tuple[int, str, str]:
    code = main(["users", "embed", "--no-progress-bar", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_embeds_with_the_vae_encoder(user_pairs, tiny_model_dir, tmp_path, capsys):
    model, out = tiny_model_dir("sd"), str(tmp_path / "emb")
    argv = ["--data", user_pairs, "--out", out, "--encoder", "vae", "--model", model, "--seed", "3"]
    code, printed, _ = embed(capsys, *argv)
    assert code == 0
    assert printed.splitlines() == [
        f"embedded 2 users (3 chunks of 4 shots, D = 256) with the vae encoder into {out}; skipped 1 user with fewer than "
        f"4 usable pairs (u3); skipped 2 rows: 2 identical pairs (the same image twice) (first: {user_pairs}: line 17)"]
    loaded = UserEmbeddings.load(out)
    pairs = UserPairs.read(user_pairs, progress=False)
    assert loaded.chunks == chunk_user_pairs(pairs.rows_by_user, 4, seed=3)[0]
    assert loaded.skipped_users == {"u3": "3 usable pairs, fewer than 4 shots"} and loaded.data == user_pairs
    encoder = rebuild_user_encoder(loaded.encoder)  # the encoder the embeddings record
    assert encoder.describe() == loaded.encoder == {"name": "vae", "model": model, "revision": None, "resolution": 64,
                                                    "dtype": "float32"}
    expected = encoder.embed([[Shot(*pairs.shot(row)) for row in chunk.rows] for chunk in loaded.chunks])
    assert torch.allclose(loaded.embeddings, expected, atol=1e-6)
    assert embed(capsys, *argv)[0] == 0  # the same settings: written again, the same embeddings
    assert torch.equal(UserEmbeddings.load(out).embeddings, loaded.embeddings)
    code, _, err = embed(capsys, *argv[:-2], "--seed", "4")
    assert code == 2 and err.strip() == (f"diffalign users embed: error: --out {out} holds user embeddings made with other settings "
                                         "(seed 3 there, 4 now); choose another --out, or remove it to replace them")


def test_embed_user_pairs_with_no_user_large_enough(user_pairs, tiny_model_dir):
    pairs = UserPairs.read(user_pairs, progress=False)
    with pytest.raises(DataError, match="no user has 10 usable pairs, so there is nothing to embed .3 users, the most pairs: 9."):
        embed_user_pairs(pairs, get_user_encoder("vae", model=tiny_model_dir("sd")), shots=10)


def test_cli_user_errors_are_one_line(user_pairs, tiny_model_dir, tmp_path, capsys):
    model, out = tiny_model_dir("sd"), str(tmp_path / "emb")
    with pytest.raises(SystemExit) as exit_info:  # argparse: a required flag
        main(["users", "embed", "--out", out])
    assert exit_info.value.code == 2 and "the following arguments are required: --data" in capsys.readouterr().err
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    from diffalign.data.cache import CACHE_FILE

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / CACHE_FILE).write_text("{}")
    cases = {
        ("--data", str(tmp_path / "none.jsonl")): "is neither a local file or folder nor a hub dataset id",
        ("--data", str(cache)): f"{cache}: a latent cache holds no images, and the user encoders need them",
        ("--encoder", "siglip"): "unknown user encoder 'siglip'; choose one of clip, toy, vae, vlm",
        ("--shots", "0"): "--shots must be >= 1, got 0",
        ("--chunks-per-user", "0"): "--chunks-per-user must be >= 1, got 0",
        ("--max-new-tokens", "8"): "--max-new-tokens applies to --encoder vlm, not 'vae'",
        ("--model", ""): "--encoder vae needs --model",
        ("--model", str(tmp_path / "no-model")): "is neither a local diffusers pipeline folder nor a hub id",
        ("--out", str(taken)): f"--out {taken} already holds files that are not user embeddings",
        ("--resolution", "60"): "--resolution must be a positive multiple of the VAE's downsampling factor 8, got 60",
    }
    for (flag, value), message in cases.items():
        argv = {"--data": user_pairs, "--out": out, "--encoder": "vae", "--model": model, flag: value}
        argv = [item for key, val in argv.items() if val for item in (key, val)]
        code, _, err = embed(capsys, *argv)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (flag, err)
    assert not os.path.exists(out)
