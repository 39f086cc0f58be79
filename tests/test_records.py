"""Which image goes with which prompt in ``diffalign score`` / ``diffalign pairs``: the ``{prompt_index}_{j}.{ext}``
folder layout, matched by name and never by count, and its user errors (exit 2, one line, no traceback)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json

import diffalign  # noqa: F401
import pytest

from diffalign.cli import main
from diffalign.rewards.records import RecordError, candidate_image_name, parse_candidate_image_name, read_image_listing
from diffalign.toy import world

PROMPTS = world.all_captions()[:3]


@pytest.fixture
def generated(tmp_path):
    """3 toy prompts x 4 candidates named {i}_{j}.png (the diffalign generate layout), and the prompts file
    (with a blank line, which does not count)."""
    folder = tmp_path / "gen"
    folder.mkdir()
    for i, prompt in enumerate(PROMPTS):
        for j in range(4):
            world.render(prompt, seed=j).save(folder / candidate_image_name(i, j))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{PROMPTS[0]}\n\n{PROMPTS[1]}\n{PROMPTS[2]}\n")
    return folder, prompts


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


def score(folder, out, *prompt_args):
    return main(["score", "--scorer", "toy", "--images", str(folder), *prompt_args, "--out", str(out)])


def test_candidate_image_name_and_its_parser_round_trip():
    assert candidate_image_name(0, 3) == "0_3.png" and candidate_image_name(12, 0, ext="jpg") == "12_0.jpg"
    for i, j, ext in ((0, 0, "png"), (7, 11, "webp"), (123, 4, "JPEG")):
        assert parse_candidate_image_name(candidate_image_name(i, j, ext)) == (i, j)
    assert parse_candidate_image_name("0007_1.png") == (7, 1)  # zero-padded names (the toy demo's) read too
    for name in ("img0.png", "0_1", "0_1.txt", "0-1.png", "a_0_1.png", "0_1_2.png", "-1_0.png", "0_1.png.bak", "0_ 1.png"):
        assert parse_candidate_image_name(name) is None, name
    for bad in ((-1, 0), (0, -1), (1.0, 0)):
        with pytest.raises(ValueError):
            candidate_image_name(*bad)
    with pytest.raises(ValueError, match="extension"):
        candidate_image_name(0, 0, ext="txt")


def test_deleting_a_prompts_candidates_shifts_no_other_image(generated, tmp_path, capsys):
    folder, prompts = generated
    for j in range(4):
        (folder / f"0_{j}.png").unlink()
    out = tmp_path / "scores.jsonl"
    assert score(folder, out, "--prompts", str(prompts)) == 0
    rows = read_jsonl(out)
    assert [row["image"] for row in rows] == [os.path.join("gen", f"{i}_{j}.png") for i in (1, 2) for j in range(4)]
    for row in rows:  # each image keeps its own prompt
        assert row["prompt"] == PROMPTS[int(os.path.basename(row["image"]).split("_")[0])]
    assert f"1 of 3 prompts in {prompts} have no image in {folder} (prompt index 0)" in capsys.readouterr().out

    pairs = tmp_path / "pairs.jsonl"
    assert main(["pairs", "--scorer", "toy", "--images", str(folder), "--prompts", str(prompts), "--out", str(pairs)]) == 0
    printed = capsys.readouterr().out
    header, values = printed.splitlines()[:2]
    stats = dict(zip(header.split(), values.split()))
    assert (stats["prompts"], stats["pairs"], stats["too_few_images"]) == ("3", "2", "1")
    assert "(prompt index 0)" in printed
    assert [row["prompt"] for row in read_jsonl(pairs)] == PROMPTS[1:]
    for row in read_jsonl(pairs):
        assert {os.path.basename(row["chosen"])[0], os.path.basename(row["rejected"])[0]} == {str(PROMPTS.index(row["prompt"]))}


def test_candidates_are_ordered_by_j_and_gaps_are_fine(tmp_path):
    folder = tmp_path / "gen"
    folder.mkdir()
    for name in ("1_10.png", "0_2.jpg", "1_2.png", "0_0.png", "01_3.webp"):
        world.render(PROMPTS[0]).save(folder / name)
    prompts = tmp_path / "p.txt"
    prompts.write_text("first\nsecond\n")
    listing = read_image_listing(str(folder), str(prompts))
    assert [os.path.basename(r.path) for r in listing.records] == ["0_0.png", "0_2.jpg", "1_2.png", "01_3.webp", "1_10.png"]
    assert [r.prompt for r in listing.records] == ["first"] * 2 + ["second"] * 3
    assert listing.prompts_without_images == [] and listing.prompt_count == 2


@pytest.mark.parametrize(
    "names, message",
    [
        (["0_0.png", "img1.png", "img2.png"], "img1.png (and 1 other image file(s)) is not named {prompt_index}_{j}.{ext}, which --prompts needs to match images to prompts (prompt_index: 0..2"),
        (["0_0.png", "3_0.png"], "3_0.png names prompt index 3, but {prompts} has 3 prompt(s) (indices 0..2, its non-empty lines counted from 0)"),
        (["0_1.png", "0_1.jpg"], "0_1.png and {folder}/0_1.jpg are both candidate 1 of prompt 0: keep one image per (prompt_index, j)"),
    ],
    ids=["bad-name", "out-of-range", "duplicate"],
)
def test_ambiguous_folders_are_refused(tmp_path, capsys, names, message):
    folder = tmp_path / "gen"
    folder.mkdir()
    for name in names:
        world.render(PROMPTS[0]).save(folder / name)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    message = message.format(prompts=prompts, folder=folder, prompt_index="{prompt_index}", j="{j}", ext="{ext}")
    for command in ("score", "pairs"):
        out = tmp_path / f"{command}.jsonl"
        assert main([command, "--scorer", "toy", "--images", str(folder), "--prompts", str(prompts), "--out", str(out)]) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith(f"diffalign {command}: error: {folder}/")
        assert message in captured.err and len(captured.err.strip().splitlines()) == 1 and "Traceback" not in captured.err
        assert not out.exists()
    with pytest.raises(RecordError):
        read_image_listing(str(folder), str(prompts))


def test_one_prompt_for_a_folder_takes_any_names(tmp_path, capsys):
    folder = tmp_path / "gen"
    folder.mkdir()
    for name in ("img10.png", "img2.png", "0_1.jpg", "0_1.png", "zz.webp"):
        world.render(PROMPTS[0]).save(folder / name)
    out = tmp_path / "s.jsonl"
    assert score(folder, out, "--prompt", PROMPTS[0]) == 0
    rows = read_jsonl(out)
    assert [os.path.basename(row["image"]) for row in rows] == ["0_1.jpg", "0_1.png", "img2.png", "img10.png", "zz.webp"]
    assert {row["prompt"] for row in rows} == {PROMPTS[0]}
    assert "no image" not in capsys.readouterr().out
