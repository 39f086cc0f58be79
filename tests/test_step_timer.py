"""``diffalign.benchmarks.step_timer`` records one timestamp per optimiser step of an unmodified script."""

import json
import os
import subprocess
import sys

from diffalign.benchmarks.step_timer import step_intervals

TRAIN_SCRIPT = """
import sys
import torch

steps = int(sys.argv[1])
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(steps):
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
print("threads", torch.get_num_threads(), "name", __name__)
"""


def _run_timer(tmp_path, target: list[str], env_extra: dict | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "times.json"
    env = {**os.environ, **(env_extra or {})}
    result = subprocess.run([sys.executable, "-m", "diffalign.benchmarks.step_timer", "--out", str(out), "--", *target],
                            capture_output=True, text=True, timeout=120, env=env)
    return result, json.loads(out.read_text())


def test_one_stamp_per_step_of_a_script(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    result, times = _run_timer(tmp_path, [str(script), "5"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "threads 1 name __main__" in result.stdout
    assert len(times["stamps"]) == 5 and times["stamps"] == sorted(times["stamps"])
    assert times["threads"] == 1 and times["exit"] == "ok"
    assert len(step_intervals(times["stamps"], warmup=2)) == 2


def test_module_target_and_failure_still_write_stamps(tmp_path):
    (tmp_path / "timed_train_module.py").write_text(TRAIN_SCRIPT + "raise SystemExit(3)\n")
    result, times = _run_timer(tmp_path, ["-m", "timed_train_module", "3"], {"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 3
    assert len(times["stamps"]) == 3 and times["exit"] == "SystemExit(3)"
