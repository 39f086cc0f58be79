"""``metrics.jsonl``: one JSON object per optimiser step (``step``, ``loss``, ``lr``, method metrics)."""

from __future__ import annotations

import json
import math
import os


class MetricsLog:
    def __init__(self, output_dir: str, resume_step: int = 0):
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self._truncate_after(resume_step)

    def _truncate_after(self, step: int) -> None:
        """Keep the lines of steps <= ``step``: a resumed run rewrites what came after its checkpoint,
        so the file ends up as the uninterrupted run's. A last line cut short by a crash is dropped. The
        run folder's lock (``run_folder``) makes the run the file's only writer."""
        if not os.path.exists(self.path):
            return
        with open(self.path) as handle:
            kept = [line for line in handle if _step(line) is not None and _step(line) <= step]
        with open(self.path, "w") as handle:
            handle.writelines(line if line.endswith("\n") else line + "\n" for line in kept)

    def write(self, record: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps({key: _plain(value) for key, value in record.items()}) + "\n")


def _step(line: str):
    """The step of a record line; None for a blank line or one cut short by a crash mid-write (dropped)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
