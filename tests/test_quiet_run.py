"""What a run prints: with --no-progress-bar no library bars and no spurious warnings; --num-threads."""

import json
import subprocess
import sys


def test_no_progress_bar_and_threads(tiny_model_dir, pair_jsonl, tmp_path):
    command = [sys.executable, "-m", "diffalign", "train", "--method", "sft", "--model", tiny_model_dir("sd"),
               "--data", pair_jsonl, "--resolution", "64", "--max-steps", "1", "--train-batch-size", "2",
               "--output-dir", str(tmp_path), "--no-progress-bar", "--num-threads", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for noise in ("Writing model shards", "Loading", "kept in float32", "it/s"):
        assert noise not in result.stderr + result.stdout, noise
    assert json.loads((tmp_path / "train_summary.json").read_text())["torch_threads"] == 1
