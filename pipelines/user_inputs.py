"""``diffalign generate``'s personalisation options (PPD): which user embedding conditions the images.

Exactly one source, with ``--user-adapter RUN`` (a ``diffalign train --method ppd`` output folder):

- ``--user U`` with ``--user-embeddings EMB``: the mean of user U's chunk embeddings in EMB (a
  ``diffalign users embed`` folder);
- ``--interpolate A B --alpha a`` with ``--user-embeddings EMB``: (1 - a) u_A + a u_B;
- ``--user-shots FILE``: a user's example pairs (a jsonl of ``{"prompt", "chosen", "rejected"}`` with
  image paths relative to the file, as ``diffalign pairs`` writes), embedded on the fly by the encoder
  the adapter was trained with (four pairs is what the adapter's embeddings were made from).

``--user-scale`` is lambda, the personalisation strength (default: the training value). Embeddings
made by another encoder than the adapter's training embeddings are refused by name: the branch would
read numbers from a space it never saw.
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional

import torch
from PIL import Image

from diffalign.data.user_embeddings import UserEmbeddings
from diffalign.errors import UsageError
from diffalign.rewards.records import RecordError, read_jsonl_rows
from diffalign.rewards.user_encoders import Shot

USER_OPTIONS = ("user_embeddings", "user", "interpolate", "alpha", "user_shots", "user_scale")


def check_user_settings(settings) -> None:
    """One ``UsageError`` sentence for personalisation options that cannot work together (nothing loaded)."""
    given = [name for name in USER_OPTIONS if getattr(settings, name) is not None]
    if settings.user_adapter is None:
        if given:
            raise UsageError(f"--{given[0].replace('_', '-')} personalises with a PPD adapter: give --user-adapter too, or leave it out")
        return
    if settings.negative_model is not None:
        raise UsageError("--user-adapter and --negative-model cannot be combined: generate with one of them")
    sources = [name for name in ("user", "interpolate", "user_shots") if getattr(settings, name) is not None]
    if len(sources) != 1:
        raise UsageError("--user-adapter needs exactly one of --user U, --interpolate A B (with --alpha) or --user-shots FILE"
                         + (f"; got {', '.join('--' + s.replace('_', '-') for s in sources)}" if sources else ""))
    if sources[0] in ("user", "interpolate") and settings.user_embeddings is None:
        raise UsageError(f"--{sources[0]} names users of --user-embeddings EMB (a `diffalign users embed` folder): give it too")
    if (settings.alpha is None) != (settings.interpolate is None):
        raise UsageError("--interpolate A B and --alpha go together: u = (1 - alpha) u_A + alpha u_B")
    if settings.interpolate is not None and len(settings.interpolate) != 2:
        raise UsageError(f"--interpolate takes two users, got {len(settings.interpolate)}")
    for name in ("alpha", "user_scale"):
        value = getattr(settings, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
            raise UsageError(f"--{name.replace('_', '-')} must be a finite number, got {value!r}")
    if settings.user_shots is not None and not os.path.isfile(settings.user_shots):
        raise UsageError(f"--user-shots {settings.user_shots}: no such file (a jsonl of a user's example pairs)")


def recorded_user_settings(settings, adapter_config: Optional[dict], absolute) -> dict[str, Any]:
    """The personalisation settings as ``generations.jsonl`` records them (None when not personalised)."""
    if settings.user_adapter is None:
        return {name: None for name in ("user_adapter", *USER_OPTIONS)}
    return {
        "user_adapter": absolute(settings.user_adapter),
        "user_embeddings": absolute(settings.user_embeddings),
        "user": settings.user,
        "interpolate": list(settings.interpolate) if settings.interpolate is not None else None,
        "alpha": float(settings.alpha) if settings.alpha is not None else None,
        "user_shots": absolute(settings.user_shots),
        "user_scale": float(settings.user_scale if settings.user_scale is not None else adapter_config.get("user_scale", 1.0)),
    }


def read_user_shots(path: str) -> list[Shot]:
    """The example pairs of a jsonl file (errors name the file and line)."""
    shots = []
    folder = os.path.dirname(os.path.abspath(path))
    for where, row in read_jsonl_rows(path):
        if not isinstance(row, dict) or not all(isinstance(row.get(key), str) for key in ("prompt", "chosen", "rejected")):
            raise RecordError(f"{where}: expected string fields 'prompt', 'chosen' and 'rejected' (image paths)")
        images = []
        for key in ("chosen", "rejected"):
            image_path = os.path.join(folder, row[key])
            try:
                with Image.open(image_path) as image:
                    images.append(image.convert("RGB"))
            except OSError as error:
                raise RecordError(f"{where}, field {key!r}: cannot read image {image_path} ({error})") from error
        shots.append(Shot(row["prompt"], *images))
    if not shots:
        raise RecordError(f"--user-shots {path} holds no pairs")
    return shots


def user_embedding(settings, adapter_config: dict) -> torch.Tensor:
    """u for ``settings`` (module docstring), checked against the adapter's ``user_adapter.json``; before
    any pipeline loads, so a wrong user or file stops the run first."""
    from diffalign.pipelines.personalized import interpolate_users, user_encoder_of

    if settings.user_shots is not None:
        shots = read_user_shots(settings.user_shots)
        return user_encoder_of(adapter_config).embed([shots])[0]
    embeddings = UserEmbeddings.load(settings.user_embeddings)
    trained_with = adapter_config.get("encoder")
    if trained_with is not None and embeddings.encoder != trained_with:
        raise UsageError(f"--user-embeddings {settings.user_embeddings} were made by encoder {embeddings.encoder}, but the "
                         f"adapter was trained on embeddings of {trained_with}: embed the users with that encoder")
    if embeddings.dim != adapter_config["embedding_dim"]:
        raise UsageError(f"--user-embeddings {settings.user_embeddings} hold {embeddings.dim}-value embeddings, the adapter "
                         f"takes {adapter_config['embedding_dim']}")
    if settings.interpolate is not None:
        first, second = settings.interpolate
        return interpolate_users(embeddings.user_mean(first), embeddings.user_mean(second), float(settings.alpha))
    return embeddings.user_mean(settings.user)
