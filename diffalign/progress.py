"""``--no-progress-bar`` also silences the libraries' own bars (diffusers' "Loading pipeline components"
and "Writing model shards", transformers' "Loading weights", datasets' and the hub's), restoring
their previous state afterwards."""

from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def library_progress_bars(enabled: bool) -> Iterator[None]:
    if enabled:
        yield
        return
    import datasets
    import diffusers.utils.logging as diffusers_logging
    import huggingface_hub.utils as hub_utils
    import transformers.utils.logging as transformers_logging

    switches = [
        (diffusers_logging.is_progress_bar_enabled(), diffusers_logging.disable_progress_bar, diffusers_logging.enable_progress_bar),
        (transformers_logging.is_progress_bar_enabled(), transformers_logging.disable_progress_bar,
         transformers_logging.enable_progress_bar),
        (not datasets.are_progress_bars_disabled(), datasets.disable_progress_bars, datasets.enable_progress_bars),
        (not hub_utils.are_progress_bars_disabled(), hub_utils.disable_progress_bars, hub_utils.enable_progress_bars),
    ]
    for _, disable, _ in switches:
        disable()
    try:
        yield
    finally:
        for was_enabled, _, enable in switches:
            if was_enabled:
                enable()
