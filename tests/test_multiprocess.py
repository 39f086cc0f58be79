"""Two CPU processes under accelerate (gloo) train one model and stay in sync (DESIGN.md §9)."""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_two_processes_stay_in_sync(tiny_model_dir, pair_jsonl, tmp_path):
    # ACCELERATE_USE_CPU + --multi_gpu is the launch that really starts a 2-process gloo group on CPU;
    # --cpu --num_processes 2 would silently run one process.
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "diffalign", "train", "--method", "diffusion-dpo", "--model", tiny_model_dir("sd"),
        "--data", pair_jsonl, "--resolution", "64", "--max-steps", "2", "--train-batch-size", "2",
        "--output-dir", str(tmp_path), "--no-progress-bar", "--learning-rate", "1e-4",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["world_size"] == 2
    first, second = summary["parameter_checksums"]
    assert first == second
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [1, 2]
    assert result.stdout.count("trained diffusion-dpo") == 1  # the summary line comes from the main process only
