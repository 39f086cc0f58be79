"""The ``diffalign`` command: methods listing, train with flags and YAML, clear user errors (exit 2)."""

import json
import subprocess
import sys

import pytest
import yaml

from diffalign.cli import main, parse_train_config
from diffalign.errors import UserError


def test_methods_lists_every_registered_method(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("diffusion-dpo", "mapo", "sft"):
        assert name in out


@pytest.mark.parametrize("argv, message", [
    (["train", "--method", "nope", "--model", "m", "--data", "d"], "unknown method 'nope'"),
    (["train", "--method", "mapo", "--model", "/no/such/model", "--data", "d"], "neither a local diffusers pipeline folder"),
    (["train", "--method", "mapo", "--data", "d"], "--model is required"),
    (["train", "--method", "text-dpo", "--model", "/no/such/lm", "--data", "d"], "could not load the causal LM"),
])
def test_user_errors_exit_2(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_user_errors_share_one_base():
    """Every error a user can cause is a ``UserError`` and keeps the built-in type it had."""
    from diffalign.data.cache import CacheMismatchError
    from diffalign.data.errors import DataError, DiskFullError
    from diffalign.diffusion.attention import AttentionBackendError
    from diffalign.errors import ModelLoadError, ModelNotFoundError, UnknownNameError, UsageError
    from diffalign.methods.base import UnknownMethodError
    from diffalign.options import OptionError
    from diffalign.rewards.hpsv2 import CheckpointError
    from diffalign.rewards.http_judge import JudgeRequestError
    from diffalign.rewards.records import RecordError
    from diffalign.training.loop import NonFiniteLossError
    from diffalign.training.run_folder import LauncherGoneError, RunFolderError

    for error, builtin in [
        (UsageError, ValueError), (UnknownNameError, KeyError), (ModelLoadError, ValueError), (ModelNotFoundError, FileNotFoundError),
        (OptionError, ValueError), (DataError, ValueError), (CacheMismatchError, ValueError), (DiskFullError, OSError),
        (RunFolderError, ValueError), (LauncherGoneError, ValueError), (NonFiniteLossError, FloatingPointError),
        (AttentionBackendError, RuntimeError), (UnknownMethodError, KeyError), (CheckpointError, ValueError),
        (JudgeRequestError, RuntimeError), (RecordError, ValueError),
    ]:
        assert issubclass(error, UserError) and issubclass(error, builtin), error
    assert str(UnknownNameError("unknown data format 'x'")) == "unknown data format 'x'"  # not quoted like a KeyError


def test_cache_user_errors_exit_2(capsys, tmp_path):
    assert main(["cache", "--model", "m", "--data", "d", "--output", str(tmp_path / "c"), "--method", "nope"]) == 2
    assert capsys.readouterr().err.startswith("diffalign cache: error: unknown method 'nope'; registered methods:")


def test_debug_shows_the_traceback_of_user_errors(monkeypatch, capsys):
    argv = ["train", "--method", "nope", "--model", "m", "--data", "d"]
    with pytest.raises(UserError, match="unknown method 'nope'"):
        main(["--debug", *argv])
    monkeypatch.setenv("DIFFALIGN_DEBUG", "1")
    with pytest.raises(UserError, match="unknown method 'nope'"):
        main(argv)
    monkeypatch.setenv("DIFFALIGN_DEBUG", "0")
    assert main(argv) == 2


def test_a_bug_is_not_a_user_error(monkeypatch, capsys):
    """A plain ValueError from inside diffalign propagates (the console script prints its traceback)."""
    import diffalign.methods

    def broken():
        raise ValueError("internal bug")

    monkeypatch.setattr(diffalign.methods, "registered_methods", broken)
    with pytest.raises(ValueError, match="internal bug"):
        main(["methods"])
    assert "error:" not in capsys.readouterr().err


def test_a_bug_prints_its_traceback_and_exits_1():
    code = ("import diffalign.cli, diffalign.methods\n"
            "def broken():\n    raise ValueError('internal bug')\n"
            "diffalign.methods.registered_methods = broken\n"
            "raise SystemExit(diffalign.cli.main(['methods']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr and done.stderr.rstrip().endswith("ValueError: internal bug")


def test_missing_data_path_exits_2(capsys, tiny_model_dir, tmp_path):
    argv = ["train", "--method", "sft", "--model", tiny_model_dir("sd"), "--data", str(tmp_path / "missing"),
            "--output-dir", str(tmp_path / "out"), "--resolution", "64"]
    assert main(argv) == 2
    assert "data" in capsys.readouterr().err


def test_yaml_config_and_flag_override(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"method": "diffusion-dpo", "model": "m", "data": "d", "learning_rate": 2e-5,
                                    "beta": 2000, "max_steps": 7}))
    config = parse_train_config(["--config", str(path), "--max-steps", "9", "--lora-rank", "4"])
    assert (config.method, config.learning_rate, config.max_steps, config.lora_rank) == ("diffusion-dpo", 2e-5, 9, 4)
    assert config.method_args == {"beta": 2000}
    config = parse_train_config(["--config", str(path), "--beta", "5000"])
    assert config.method_args == {"beta": 5000.0}


def test_unknown_yaml_key_is_an_error(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": "m", "data": "d", "learning_rat": 1}))
    assert main(["train", "--config", str(path)]) == 2


def test_train_through_the_cli(tiny_model_dir, pair_jsonl, tmp_path, capsys):
    argv = ["train", "--method", "mapo", "--model", tiny_model_dir("sd"), "--data", pair_jsonl, "--resolution", "64",
            "--max-steps", "2", "--train-batch-size", "2", "--output-dir", str(tmp_path), "--beta", "0.2",
            "--no-progress-bar"]
    assert main(argv) == 0
    assert "trained mapo for 2 steps" in capsys.readouterr().out
    run = json.loads((tmp_path / "run_config.json").read_text())
    assert run["method_config"]["beta"] == 0.2
    assert (tmp_path / "model_index.json").exists()
