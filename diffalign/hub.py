"""Models from the Hugging Face hub: one sentence, not a retry loop and a traceback, when a hub id is
not available (``HF_HUB_OFFLINE`` set and not in the local cache, or the hub unreachable)."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

from diffalign.errors import ModelLoadError

OFFLINE_ERRORS = ("LocalEntryNotFoundError", "OfflineModeIsEnabled")


def is_hub_id(model: str) -> bool:
    return model.count("/") == 1 and not model.startswith((".", "/")) and not os.path.exists(model)


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _unavailable(model: str, reason: str) -> ModelLoadError:
    return ModelLoadError(f"model {model!r} is not in the local hub cache and {reason}: download it first "
                          f"(hf download {model}) or pass a local folder")


def require_cached_when_offline(model: str, filename: str, revision: Optional[str] = None) -> None:
    """With ``HF_HUB_OFFLINE`` set, fail at once when ``filename`` of the hub id ``model`` is not cached."""
    if not (is_hub_id(model) and hub_offline()):
        return
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = isinstance(try_to_load_from_cache(model, filename, revision=revision), str)
    except Exception:  # not a valid repo id: the loader says so
        return
    if not cached:
        raise _unavailable(model, "HF_HUB_OFFLINE is set")


@contextlib.contextmanager
def hub_unavailable_as_error(model: str) -> Iterator[None]:
    """Turn the hub client's "not cached while offline / cannot connect" errors into one ``ModelLoadError``."""
    try:
        yield
    except Exception as error:
        chain = [error, error.__cause__, error.__context__]
        if any(type(link).__name__ in OFFLINE_ERRORS for link in chain):
            raise _unavailable(model, "HF_HUB_OFFLINE is set" if hub_offline() else "the hub cannot be reached") from error
        raise
