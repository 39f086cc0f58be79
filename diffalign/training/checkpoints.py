"""Atomic checkpoints: a crash mid-write never leaves a broken latest checkpoint.

``accelerator.save_state`` writes into ``checkpoints/.tmp-step-N``; only once every process has
finished does the main process add ``trainer_state.json`` and rename the folder to
``checkpoints/step-N`` (a single atomic rename on POSIX). ``latest`` is the highest complete
``step-N``; leftover temporary folders are ignored and removed.

``trainer_state.json`` holds the step and the run's identity (``diffalign.training.run_folder.run_identity``:
the settings a resume must share), which ``run_folder`` compares before resuming; which checkpoint a
run resumes from, and what it may do with its output folder, is decided there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Optional

from diffalign.data.errors import disk_space_errors

CHECKPOINT_PATTERN = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.json"


def checkpoints_dir(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints as (step, path), oldest first."""
    folder = checkpoints_dir(output_dir)
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        match = CHECKPOINT_PATTERN.match(name)
        path = os.path.join(folder, name)
        if match and os.path.isfile(os.path.join(path, STATE_FILE)):
            found.append((int(match.group(1)), path))
    return sorted(found)


def read_state(checkpoint: str) -> dict:
    with open(os.path.join(checkpoint, STATE_FILE)) as handle:
        return json.load(handle)


def save_checkpoint(accelerator, output_dir: str, step: int, state: dict, total_limit: Optional[int] = None) -> str:
    """Write the accelerate state and ``state`` as ``checkpoints/step-<step>``; keep at most ``total_limit``."""
    folder = checkpoints_dir(output_dir)
    final = os.path.join(folder, f"step-{step:08d}")
    temporary = os.path.join(folder, f".tmp-step-{step:08d}")
    if accelerator.is_main_process:
        os.makedirs(folder, exist_ok=True)
        shutil.rmtree(temporary, ignore_errors=True)
    accelerator.wait_for_everyone()
    # a full disk: one sentence naming the folder, free and needed bytes; the partial checkpoint removed
    with disk_space_errors(folder, lambda: _state_bytes(accelerator), f"the step {step} checkpoint",
                           cleanup=lambda: shutil.rmtree(temporary, ignore_errors=True),
                           hint="free some space, lower --checkpoints-total-limit or choose another --output-dir"):
        accelerator.save_state(temporary)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _write_json_durably(os.path.join(temporary, STATE_FILE), state)
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(temporary, final)
            _prune(output_dir, total_limit)
    accelerator.wait_for_everyone()
    return final


def _state_bytes(accelerator) -> int:
    """About the bytes of ``accelerator.save_state``: the prepared models' state dicts and optimizer states."""
    import torch

    total = 0
    for model in getattr(accelerator, "_models", []):
        total += sum(t.numel() * t.element_size() for t in model.state_dict().values() if torch.is_tensor(t))
    for optimizer in getattr(accelerator, "_optimizers", []):
        for state in optimizer.state_dict().get("state", {}).values():
            total += sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t))
    return total


def _write_json_durably(path: str, payload: dict) -> None:
    with open(path, "w") as handle:
        json.dump(payload, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())


def _prune(output_dir: str, total_limit: Optional[int]) -> None:
    folder = checkpoints_dir(output_dir)
    for name in os.listdir(folder):
        if name.startswith(".tmp-step-"):
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
    if total_limit is None:
        return
    found = list_checkpoints(output_dir)
    for _, path in found[: max(0, len(found) - total_limit)]:
        shutil.rmtree(path)
