"""The toy world's grammar, renderer, prompt splits and judge."""

import dataclasses
import itertools

import numpy as np
import pytest

import diffalign  # noqa: F401  (torchvision CPU shim first)
from diffalign.rewards import base as rewards
from diffalign.toy import judge, world


def test_grammar_round_trips_and_rejects_unknown_captions():
    scenes = world.all_scenes()
    assert len(scenes) == 2 * 6 * 3 * 5 * 3
    for scene in scenes:
        assert world.parse_caption(scene.caption) == scene
    assert world.parse_caption("  A small RED circle on the left on a white   background ").colour == "red"
    with pytest.raises(ValueError, match="not in the toy grammar"):
        world.parse_caption("a corgi astronaut")
    with pytest.raises(ValueError, match="not in the toy grammar"):
        world.parse_caption("a small pink circle on the left on a white background")


def test_render_is_deterministic_by_seed_and_jitters_across_seeds():
    caption = "a large blue triangle at the top on a gray background"
    a, b, c = world.render(caption, 3), world.render(caption, 3), world.render(caption, 4)
    assert a.size == (world.RESOLUTION, world.RESOLUTION) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert world.render(caption, 0, resolution=64).size == (64, 64)


def test_splits_are_disjoint_fixed_and_cover_every_attribute():
    train, held_out = world.split_prompts()
    assert set(train).isdisjoint(held_out)
    assert len(train) + len(held_out) == len(world.all_captions())
    assert len(held_out) >= 64
    assert (train, held_out) == world.split_prompts()
    for attribute in ("size", "colour", "shape", "position", "background"):
        values = {getattr(world.parse_caption(c), attribute) for c in train}
        assert values == {getattr(s, attribute) for s in world.all_scenes()}
    assert world.sample_prompts(held_out, 10, seed=1) == world.sample_prompts(held_out, 10, seed=1)
    assert len(set(world.sample_prompts(held_out, 10, seed=1))) == 10


def test_palette_keeps_the_margin_the_judge_relies_on():
    shape_colours = list(world.COLOURS.values())
    distances = [np.linalg.norm(np.subtract(a, b)) for a, b in itertools.combinations(shape_colours, 2)]
    distances += [np.linalg.norm(np.subtract(a, b)) for a in shape_colours for b in world.BACKGROUNDS.values()]
    assert min(distances) > 2 * judge.FOREGROUND_DISTANCE - 5


def test_judge_is_registered_and_scores_renders_high():
    scorer = rewards.get_scorer("toy")
    assert isinstance(scorer, judge.ToyJudge)
    captions = world.all_captions()[::9]
    images = [world.render(c, seed=i) for i, c in enumerate(captions)]
    scores = scorer.score(images, captions)
    assert scores.dtype.is_floating_point and scores.shape == (len(captions),)
    assert float(scores.mean()) > 0.93 and float(scores.min()) > 0.8
    assert scorer.score(images, captions).tolist() == scores.tolist()


@pytest.mark.parametrize("attribute", ["colour", "shape", "position", "size", "background"])
def test_judge_penalises_every_wrong_attribute(attribute):
    values = {"colour": world.COLOURS, "shape": world.SHAPES, "position": world.POSITIONS, "size": world.SIZES, "background": world.BACKGROUNDS}[attribute]
    margins = []
    for scene in world.all_scenes()[::23]:
        right = judge.judge_terms(world.render(scene, 0), scene.caption).total
        for value in values:
            if value != getattr(scene, attribute):
                wrong = judge.judge_terms(world.render(dataclasses.replace(scene, **{attribute: value}), 0), scene.caption).total
                margins.append(right - wrong)
    assert min(margins) > 0.05, f"a wrong {attribute} scored almost as well as the right one"


def test_judge_gives_no_object_zero_adherence_and_noise_a_low_aesthetic():
    caption = "a small red circle in the center on a white background"
    blank = world.render(caption, 0).point(lambda _: 245)
    terms = judge.judge_terms(blank, caption)
    assert terms.colour == terms.shape == terms.position == terms.size == 0.0
    assert terms.background > 0.99
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    from PIL import Image

    assert judge.judge_terms(Image.fromarray(noise), caption).aesthetic < 0.3
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        judge.ToyJudge().score([blank, blank], [caption])
