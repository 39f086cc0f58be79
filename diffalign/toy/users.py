"""Toy users for PPD: people who want the caption drawn, but disagree about what else makes it good.

Every toy user scores an image as a weighted sum of four measurements of it, all in [0, ~1.5]:

- ``adherence``: the toy judge's score against the caption (``diffalign.toy.judge``): what every
  user wants, weight 0.4 for all of them;
- ``large``: the object's area over the area of a *large* shape of its kind (capped at 1.5): a taste
  for big shapes, whatever the caption says about size;
- ``high``: 1 - (the object's centre height / image side): a taste for shapes placed high;
- ``clean``: the judge's aesthetic term (pixels near the world's palette): a taste for clean rendering.

(``large`` and ``high`` are 0 when the judge finds no object.) The training users put the remaining
0.6 on one taste or split it between two; the held-out users mix them in proportions no training user
has, and are known to the model only through four example pairs. A user's pairs come from the same
base-model candidates as everyone's: per prompt, the candidate that user scores best against the one
it scores worst, so two users often disagree on the same prompt.

``ToyUserEncoder`` (``--encoder toy``) is the toy world's stand-in for PPD's VLM (spec §3.2: describe
the preferred and the dispreferred image, and their differences, then summarise): it describes each
image by what the toy judge measures in it (its six terms, the object's area over 100 pixels and its
centre as fractions of the side) and embeds a chunk as the mean over its shots of (description of the
preferred image - description of the dispreferred one). It knows nothing of any user's weights; like
the VLM it sees only the pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from PIL import Image

from diffalign.rewards.base import Scorer
from diffalign.rewards.user_encoders import Shot, UserEncoder, register_user_encoder
from diffalign.toy import world
from diffalign.toy.judge import IDEAL_AREA_FACTOR, WEIGHTS, measure

FEATURES = ("adherence", "large", "high", "clean")
ADHERENCE_WEIGHT = 0.4
LARGE_CAP = 1.5


@dataclass(frozen=True)
class ToyUser:
    name: str
    weights: dict[str, float]  # over FEATURES; they sum to 1

    def describe(self) -> str:
        return ", ".join(f"{feature} {weight:g}" for feature, weight in self.weights.items() if weight)

    def reward(self, features: dict[str, float]) -> float:
        """The weighted sum of an image's ``image_features``."""
        return sum(self.weights[feature] * value for feature, value in features.items())


def _user(name: str, **tastes: float) -> ToyUser:
    return ToyUser(name, {"adherence": ADHERENCE_WEIGHT, **{feature: tastes.get(feature, 0.0) for feature in FEATURES[1:]}})


TRAIN_USERS = (
    _user("big", large=0.6),
    _user("high", high=0.6),
    _user("clean", clean=0.6),
    _user("big+high", large=0.3, high=0.3),
    _user("high+clean", high=0.3, clean=0.3),
    _user("big+clean", large=0.3, clean=0.3),
)
HELD_OUT_USERS = (
    _user("mostly-big", large=0.45, clean=0.15),
    _user("all-three", large=0.2, high=0.2, clean=0.2),
)


def image_features(image: Image.Image, caption: str) -> dict[str, float]:
    """The four measurements of the module docstring."""
    terms, geometry = measure(image, caption)
    if geometry is None:
        large = high = 0.0
    else:
        shape = world.parse_caption(caption).shape
        large = min(geometry.area / (IDEAL_AREA_FACTOR[shape] * world.SIZES["large"] ** 2), LARGE_CAP)
        high = 1.0 - geometry.centre_y / world.RESOLUTION
    return {"adherence": terms.total, "large": large, "high": high, "clean": terms.aesthetic}


class ToyUserJudge(Scorer):
    """One toy user's reward: the weighted sum of ``image_features``."""

    name = "toy-user"

    def __init__(self, user: ToyUser):
        self.user = user

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        return torch.tensor([self.user.reward(image_features(image, prompt)) for image, prompt in zip(images, prompts)],
                            dtype=torch.float32)


def users_scores(users: Sequence[ToyUser], images: Sequence[Image.Image], prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Every user's ``ToyUserJudge`` scores of ``images``, each image measured once for all of them."""
    features = [image_features(image, prompt) for image, prompt in zip(images, prompts)]
    return {user.name: torch.tensor([user.reward(f) for f in features], dtype=torch.float32) for user in users}


def describe_image(image: Image.Image, caption: str) -> list[float]:
    """What the toy judge measures in an image: its six terms, the object's area / 100 and its centre
    (x, y) as fractions of the side (0 when there is no object)."""
    terms, geometry = measure(image, caption)
    shape = [0.0, 0.0, 0.0] if geometry is None else [geometry.area / 100.0, geometry.centre_x / world.RESOLUTION,
                                                       geometry.centre_y / world.RESOLUTION]
    return [getattr(terms, name) for name in WEIGHTS] + shape


@register_user_encoder
class ToyUserEncoder(UserEncoder):
    """u = 1/K sum_k (describe(x^w_k) - describe(x^l_k)) (module docstring); D = 9."""

    name = "toy"
    dim = len(WEIGHTS) + 3

    def embed(self, chunks: Sequence[Sequence[Shot]]) -> torch.Tensor:
        rows = []
        for number, chunk in enumerate(chunks):
            if not chunk:
                raise ValueError(f"chunk {number} has no shots")
            differences = [torch.tensor(describe_image(shot.chosen, shot.prompt)) - torch.tensor(describe_image(shot.rejected, shot.prompt))
                           for shot in chunk]
            rows.append(torch.stack(differences).mean(0))
        return torch.stack(rows).float() if rows else torch.zeros(0, self.dim)

    def describe(self) -> dict:
        return {"name": self.name}
