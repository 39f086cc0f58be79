"""Captioning: the data of the caption-preference methods (TPO: ``tdpo``, ``tkto``) with no judge.

Images of the training prompts, each kept with its prompt as its true caption: the toy world's
renders (``render_images``: a captioned dataset whose captions are exactly true, what TPO assumes),
or the base model's own samples (whose captions are only as true as the base is good). Negatives
come from the rules perturber on the toy grammar
(``diffalign.rewards.caption_rules``, vocabulary ``toy``): each negative is a toy caption that differs
from the true one in exactly one attribute. Written as the ``captioned_images`` jsonl
(``{image, prompt, negative_prompts}``) the trainers read, through ``samples.jsonl`` (``{image,
prompt}``) and ``diffalign captions perturb``'s runner. No score is computed anywhere on this path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from diffalign.toy import world
from diffalign.toy.generation import Generated, image_seeds


def render_images(prompts: Sequence[str], per_prompt: int, first_seed: int) -> Generated:
    """``per_prompt`` renders of each prompt (``world.render``, jitter from the image's seed), as ``Generated``."""
    seeds = image_seeds(len(prompts), per_prompt, first_seed)
    captions = [prompt for prompt in prompts for _ in range(per_prompt)]
    images = [world.render(caption, seed=seed) for caption, seed in zip(captions, seeds)]
    return Generated(list(prompts), per_prompt, seeds, images, {"renderer": "diffalign.toy.world.render"})


def write_captioned_images(samples: Generated, paths: Sequence[str | Path], jsonl: str | Path, negatives: int,
                           seed: int, progress: bool = True) -> dict:
    """``jsonl``: every image of ``samples`` with its prompt and ``negatives`` rule-perturbed captions;
    returns the statistics the demo reports under ``captions``."""
    from diffalign.rewards.caption_rules import RulePerturber
    from diffalign.rewards.captions import perturb_captions

    jsonl = Path(jsonl)
    listing = jsonl.with_name("samples.jsonl")
    with open(listing, "w") as handle:
        for path, prompt in zip(paths, samples.image_prompts):
            handle.write(json.dumps({"image": os.path.relpath(path, jsonl.parent), "prompt": prompt}) + "\n")
    summary = perturb_captions(RulePerturber("toy", seed=seed), str(listing), str(jsonl), per_caption=negatives,
                               overwrite=True, progress=progress)
    return {
        "train_prompts": len(samples.prompts),
        "images_per_prompt": samples.per_prompt,
        "sample_sampling": samples.sampling,
        "negatives_per_caption": negatives,
        "negatives_written": summary.kept,
    }
