"""Declared options (``diffalign.options``): one typed parser for flags and ``--config`` YAML, every
option's valid values checked before anything is loaded, and ``--help`` that shows them."""

import dataclasses

import pytest
import yaml

from diffalign.cli import main, parse_train_config
from diffalign.methods import registered_methods
from diffalign.options import OptionError
from diffalign.training.config import TrainConfig

MISSING_MODEL = ["--model", "/no/such/model", "--data", "/no/such/data"]
"""Reaching the model loader with these gives a different error: every case below must fail before."""


def train_error(capsys, argv) -> str:
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffalign train: error: "), err
    assert "Traceback" not in err
    return lines[0][len("diffalign train: error: "):]


def write_yaml(tmp_path, values, name="run.yaml") -> str:
    path = tmp_path / name
    path.write_text(values if isinstance(values, str) else yaml.safe_dump(values))
    return str(path)


# --------------------------------------------------------------------------------- YAML coercion
def test_yaml_values_are_typed_like_flags(tmp_path):
    path = write_yaml(tmp_path, "method: mapo\nmodel: m\ndata: d\nlearning_rate: 1e-4\nmax_steps: '7'\n"
                                "mixed_precision: 'no'\nrandom_flip: off\nlora_rank: 4\nlora_target_modules: to_q\nbeta: 1\n")
    assert yaml.safe_load(open(path))["learning_rate"] == "1e-4"  # what PyYAML makes of it
    config = parse_train_config(["--config", path])
    assert type(config.learning_rate) is float and config.learning_rate == 1e-4
    assert (config.max_steps, config.mixed_precision, config.random_flip) == (7, "no", False)
    assert config.lora_target_modules == ["to_q"]  # a scalar for a list option, as one flag value
    assert config.method == "mapo" and config.method_args == {"beta": 1.0}
    assert type(config.method_args["beta"]) is float


def test_yaml_method_options_flat_or_nested_and_flags_override(tmp_path):
    path = write_yaml(tmp_path, {"method": "smpo", "model": "m", "data": "d", "gamma": 5,
                                 "method_args": {"inversion_steps": 4}, "max_steps": 0})
    config = parse_train_config(["--config", path, "--max-steps", "3", "--exact-t"])
    assert config.max_steps == 3
    assert config.method_args == {"gamma": 5.0, "inversion_steps": 4, "exact_t": True}


@pytest.mark.parametrize("text, message", [
    ("max_steps: two", "run.yaml: max_steps must be an integer, got 'two'"),
    ("max_steps: 0", "run.yaml: max_steps must be >= 1, got 0"),
    ("max_steps: 2.5", "run.yaml: max_steps must be an integer, got '2.5'"),
    ("max_steps: null", "run.yaml: max_steps needs a value, got null"),
    ("learning_rate: .inf", "run.yaml: learning_rate must be a finite number, got inf"),
    ("mixed_precision: no", "run.yaml: mixed_precision must not be a boolean, got False (YAML reads unquoted yes, no"),
    ("model: [a, b]", "run.yaml: model must be a single value"),
    ("skip_bad_rows: maybe", "run.yaml: skip_bad_rows must be true or false, got 'maybe'"),
    ("caption_dropout: 2", "run.yaml: caption_dropout must be in [0, 1]; got 2.0"),
    ("learning_rat: 1", "run.yaml: unknown option 'learning_rat' (did you mean learning_rate?)"),
    ("loss_type: [sigmoid]", "run.yaml: unknown option 'loss_type' (neither a training option nor a diffusion-dpo option)"),
    ("method_args: {gamma: 1}", "run.yaml: method_args: diffusion-dpo has no option 'gamma'"),
    ("max_steps: [", "is not valid YAML"),
    ("method: text-dpo\nloss_type: [sigmoid, sft]\nloss_weights: [1, -0.5]", "run.yaml: loss_weights must be >= 0, got -0.5"),
])
def test_bad_yaml_values_name_the_file_and_key(capsys, tmp_path, text, message):
    path = write_yaml(tmp_path, text + "\n")
    error = train_error(capsys, ["--config", path, *MISSING_MODEL])
    assert message in error
    assert str(tmp_path) in error


def test_flags_override_a_bad_file_value(tmp_path):
    path = write_yaml(tmp_path, {"model": "m", "data": "d", "max_steps": "two"})
    with pytest.raises(OptionError, match="max_steps must be an integer"):
        parse_train_config(["--config", path, "--max-steps", "3"])  # the file is parsed whole, like flags
    path = write_yaml(tmp_path, {"model": "m", "data": "d", "max_steps": 0})
    assert parse_train_config(["--config", path, "--max-steps", "3"]).max_steps == 3


# ---------------------------------------------------------------------------- numeric options
@pytest.mark.parametrize("argv, message", [
    (["--max-steps", "0"], "--max-steps must be >= 1, got 0"),
    (["--max-steps", "two"], "--max-steps must be an integer, got 'two'"),
    (["--max_steps", "-3"], "--max-steps must be >= 1, got -3"),
    (["--lora-rank", "-1"], "--lora-rank must be >= 0, got -1"),
    (["--lora-rank", "4", "--lora-alpha", "0"], "--lora-alpha must be > 0, got 0.0"),
    (["--lora-alpha", "8"], "--lora-alpha needs LoRA (--lora-rank >= 1)"),
    (["--lora-target-modules", "to_q"], "--lora-target-modules needs LoRA (--lora-rank >= 1)"),
    (["--reference", "adapters"], "--reference adapters needs LoRA (--lora-rank >= 1)"),
    (["--method", "mapo", "--reference", "copy"], "--reference is not used by mapo, which has no reference model"),
    (["--lr-scheduler", "constant", "--lr-warmup-steps", "10"], "--lr-warmup-steps needs a schedule with warm-up"),
    (["--optimizer", "adafactor", "--adam-beta1", "0.8"], "--adam-beta1 is not used by --optimizer adafactor"),
    (["--beta", "-100"], "--beta must be > 0, got -100.0"),
    (["--beta", "0"], "--beta must be > 0, got 0.0"),
    (["--beta", "nan"], "--beta must be a finite number, got nan"),
    (["--caption-dropout", "2"], "--caption-dropout must be in [0, 1]; got 2.0"),
    (["--caption-dropout", "-0.1"], "--caption-dropout must be in [0, 1]; got -0.1"),
    (["--train-batch-size", "0"], "--train-batch-size must be >= 1, got 0"),
    (["--gradient-accumulation-steps", "0"], "--gradient-accumulation-steps must be >= 1, got 0"),
    (["--checkpointing-steps", "0"], "--checkpointing-steps must be >= 1, got 0"),
    (["--checkpoints-total-limit", "0"], "--checkpoints-total-limit must be >= 1, got 0"),
    (["--learning-rate=inf"], "--learning-rate must be a finite number, got inf"),
    (["--learning-rate", "nan"], "--learning-rate must be a finite number, got nan"),
    (["--learning-rate", "0"], "--learning-rate must be > 0, got 0.0"),
    (["--learning-rate", "-1e-5"], "--learning-rate must be > 0, got -1e-05"),
    (["--learning-rate", "1e-8", "--lr-scheduler", "polynomial"], "--learning-rate must be > 1e-07 with --lr-scheduler polynomial"),
    (["--resolution", "100"], "--resolution must be a multiple of 8, >= 8; got 100"),
    (["--resolution", "0"], "--resolution must be a multiple of 8, >= 8; got 0"),
    (["--dataloader-num-workers", "-1"], "--dataloader-num-workers must be >= 0, got -1"),
    (["--max-grad-norm", "0"], "--max-grad-norm must be > 0, got 0.0"),
    (["--max-grad-norm", "nan"], "--max-grad-norm must be a finite number or inf, got nan"),
    (["--num-threads", "0"], "--num-threads must be >= 1, got 0"),
    (["--lr-warmup-steps", "-1"], "--lr-warmup-steps must be >= 0, got -1"),
    (["--max-train-samples", "0"], "--max-train-samples must be >= 1, got 0"),
    (["--seed", "-1"], "--seed must be in [0, 4294967295]; got -1"),
    (["--adam-beta1", "1"], "--adam-beta1 must be in [0, 1); got 1.0"),
    (["--adam-beta2", "-0.5"], "--adam-beta2 must be in [0, 1); got -0.5"),
    (["--adam-epsilon", "0"], "--adam-epsilon must be > 0, got 0.0"),
    (["--adam-weight-decay", "-0.1"], "--adam-weight-decay must be >= 0, got -0.1"),
    (["--mixed-precision", "fp32"], "--mixed-precision must be one of: no, fp16, bf16; got 'fp32'"),
    (["--attention", "flash"], "--attention must be one of: sdpa, xformers, native; got 'flash'"),
    (["--reference", "frozen"], "--reference must be one of: auto, copy, adapters; got 'frozen'"),
    (["--optimizer", "sgd"], "--optimizer must be one of: adamw, adafactor, adamw8bit; got 'sgd'"),
    (["--lr-scheduler", "piecewise_constant"], "--lr-scheduler must be one of: constant, constant_with_warmup, linear"),
    (["--report-to", "nothing"], "--report-to must be one of: all, aim, tensorboard"),
    (["--output-dir", ""], "--output-dir must not be empty"),
    (["--skip-bad-rows", "maybe"], "--skip-bad-rows must be true or false, got 'maybe'"),
    (["--no-progress-bar=1"], "--no-progress-bar takes no value, got '1'"),
    (["--max-steps"], "--max-steps needs a value"),
    (["--max-step", "3"], "unrecognized arguments: --max-step 3"),
    (["--method", "mapo", "--beta", "-0.1"], "--beta must be >= 0, got -0.1"),
    (["--method", "mapo", "--margin-scale", "0"], "--margin-scale must be > 0, got 0.0"),
    (["--method", "mapo", "--link-temperature", "-1"], "--link-temperature must be > 0, got -1.0"),
    (["--method", "sft", "--caption-dropout", "1.5"], "--caption-dropout must be in [0, 1]; got 1.5"),
    (["--method", "inpo", "--eta", "-0.1"], "--eta must be >= 0, got -0.1"),
    (["--method", "inpo", "--inversion-steps", "1"], "--inversion-steps must be >= 2, got 1"),
    (["--method", "inpo", "--beta", "0"], "--beta must be > 0, got 0.0"),
    (["--method", "inpo", "--invert-with", "ema"], "--invert-with must be one of: policy, reference; got 'ema'"),
    (["--method", "smpo", "--gamma", "0"], "--gamma must be > 0, got 0.0"),
    (["--method", "smpo", "--score-min", "0.5", "--score-max", "0.5"], "--score-max must be greater than --score-min (0.5), got 0.5"),
    (["--method", "smpo", "--score-max", "inf"], "--score-max must be a finite number, got inf"),
    (["--method", "text-dpo", "--beta", "0"], "--beta must be > 0, got 0.0"),
    (["--method", "text-dpo", "--label-smoothing", "0.5", "--loss-type", "robust"], "--label-smoothing must be in [0, 0.5); got 0.5"),
    (["--method", "text-dpo", "--label-smoothing", "0.1"], "--label-smoothing is only used by loss types cdpo, robust"),
    (["--method", "text-dpo", "--loss-type", "exo_pair"], "--label-smoothing must be > 0 with exo_pair"),
    (["--method", "text-dpo", "--loss-type", "simpo"], "--loss-type must be one of: sigmoid, cdpo"),
    (["--method", "text-dpo", "--loss-type", "sigmoid", "sigmoid"], "--loss-type must not repeat a loss"),
    (["--method", "text-dpo", "--loss-type", "sigmoid", "sft", "--loss-weights", "1"], "--loss-weights needs one weight per --loss-type (2), got 1"),
    (["--method", "text-dpo", "--loss-weights", "-1"], "--loss-weights must be >= 0, got -1.0"),
    (["--method", "text-dpo", "--loss-weights", "0"], "--loss-weights must not all be 0"),
    (["--method", "text-dpo", "--f-divergence", "js_divergence", "--loss-type", "apo_zero"], "--f-divergence js_divergence is only supported by"),
    (["--method", "text-dpo", "--f-alpha", "0"], "--f-alpha must be in (0, 1]; got 0.0"),
    (["--method", "text-dpo", "--f-alpha", "0.3"], "--f-alpha is only used with --f-divergence alpha_divergence"),
    (["--method", "text-dpo", "--discopop-tau", "0.1"], "--discopop-tau is only used with --loss-type discopop"),
    (["--method", "text-dpo", "--loss-type", "sft", "--f-divergence", "forward_kl"], "--f-divergence forward_kl is only supported by"),
    (["--method", "text-dpo", "--discopop-tau", "0"], "--discopop-tau must be > 0, got 0.0"),
    (["--method", "text-dpo", "--max-length", "0"], "--max-length must be >= 2, got 0"),
    (["--method", "text-ipo", "--beta", "-1"], "--beta must be > 0, got -1.0"),
    (["--method", "text-simpo", "--gamma", "-1"], "--gamma must be >= 0, got -1.0"),
    (["--method", "text-simpo", "--sft-weight", "-1"], "--sft-weight must be >= 0, got -1.0"),
    (["--method", "text-cpo", "--loss-type", "simpo"], "--loss-type must be one of: sigmoid, hinge, ipo; got 'simpo'"),
    (["--method", "text-cpo", "--loss-type", "hinge", "--label-smoothing", "0.1"], "--label-smoothing is only used by --loss-type sigmoid"),
    (["--method", "text-cpo", "--cpo-alpha", "-1"], "--cpo-alpha must be >= 0, got -1.0"),
    (["--method", "text-orpo", "--beta", "0"], "--beta must be > 0, got 0.0"),
    (["--method", "text-kto", "--desirable-weight", "0"], "--desirable-weight must be > 0, got 0.0"),
    (["--method", "text-kto", "--loss-type", "sigmoid"], "--loss-type must be one of: kto, apo_zero_unpaired; got 'sigmoid'"),
    (["--method", "text-lipo", "--beta", "0"], "--beta must be > 0, got 0.0"),
])
def test_invalid_options_exit_2_before_loading(capsys, argv, message):
    assert message in train_error(capsys, [*argv, *MISSING_MODEL])


@pytest.mark.parametrize("argv", [
    ["--method", "mapo", "--beta", "0", "--max-grad-norm", "inf", "--lora-rank", "4", "--lora-alpha", "8",
     "--caption-dropout", "1", "--resolution", "64", "--seed", "4294967295", "--optimizer", "adafactor"],
    ["--method", "diffusion-dpo", "--lora-rank", "4", "--reference", "adapters", "--lr-scheduler", "cosine",
     "--lr-warmup-steps", "10", "--learning-rate", "1e-8", "--scale-lr"],
])
def test_valid_options_reach_the_model_loader(capsys, argv):
    """Valid values get past the options (to the missing-model error)."""
    assert "neither a local diffusers pipeline folder" in train_error(capsys, [*argv, *MISSING_MODEL])


def test_text_dpo_option_combinations():
    config_class = registered_methods()["text-dpo"].config_class
    config_class(loss_type=["sigmoid", "sft"], f_divergence="js_divergence")  # sft ignores the divergence
    config_class(loss_type=["sigmoid"], f_divergence="alpha_divergence", f_alpha=0.3)
    config_class(loss_type=["robust", "sigmoid"], label_smoothing=0.1)  # used by robust
    config_class(loss_type=["exo_pair"], label_smoothing=1e-3)
    config_class(loss_type=["discopop"], discopop_tau=0.1)


def test_configs_built_in_python_are_checked_too():
    with pytest.raises(OptionError, match="--max-steps must be >= 1, got 0"):
        TrainConfig(max_steps=0)
    with pytest.raises(OptionError, match=r"--learning-rate must be a number, got '1e-4'"):
        TrainConfig(learning_rate="1e-4")
    with pytest.raises(OptionError, match="--train-batch-size must be an integer, got True"):
        TrainConfig(train_batch_size=True)
    assert type(TrainConfig(learning_rate=1).learning_rate) is float
    config_class = registered_methods()["diffusion-dpo"].config_class
    with pytest.raises(OptionError, match="--beta must be a finite number, got nan"):
        config_class(beta=float("nan"))


# ---------------------------------------------------------------------------------- spellings
def test_readme_flag_spellings_keep_working():
    argv = ["--method", "inpo", "--model", "m", "--data", "d", "--max-steps", "3", "--no-progress-bar", "--lora-rank", "4",
            "--no-random-flip", "--no-center-crop", "--skip-bad-rows", "--scale-lr", "--gradient-checkpointing",
            "--train-batch-size", "2", "--gradient-accumulation-steps", "2", "--learning-rate", "1e-8", "--exact-t",
            "--output_dir", "out", "--report-to", "tensorboard", "--resume-from", "latest", "--eta", "0.05"]
    config = parse_train_config(argv)
    assert (config.max_steps, config.progress_bar, config.lora_rank, config.random_flip, config.center_crop) == (3, False, 4, False, False)
    assert (config.skip_bad_rows, config.scale_lr, config.gradient_checkpointing, config.output_dir) == (True, True, True, "out")
    assert config.method_args == {"exact_t": True, "eta": 0.05}
    config = parse_train_config(["--model", "m", "--data", "d", "--skip-bad-rows", "--no-skip-bad-rows", "--progress-bar=false"])
    assert (config.skip_bad_rows, config.progress_bar) == (False, False)
    with pytest.raises(OptionError, match="unrecognized arguments: --max 3"):
        parse_train_config(["--model", "m", "--data", "d", "--max", "3"])  # no abbreviations


# ----------------------------------------------------------------------------------------- help
def _squeezed(text: str) -> str:
    return "".join(text.split())  # argparse wraps help lines, breaking at spaces and hyphens


def _help(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("method", ["diffusion-dpo", "mapo", "smpo", "text-dpo", "text-kto"])
def test_help_lists_every_option_with_its_help_and_allowed_values(capsys, method):
    out = _help(capsys, ["--method", method])
    squeezed = _squeezed(out)
    method_class = registered_methods()[method].config_class
    assert "training options:" in out and f"{method} options:" in out
    for cls in (TrainConfig, method_class):
        for field in dataclasses.fields(cls):
            if field.name == "method_args":
                continue
            assert f"--{field.name.replace('_', '-')}" in out, field.name
            assert _squeezed(field.metadata["help"]) in squeezed, field.name
    assert _squeezed("--max-steps INT optimiser steps to train (>= 1; default: 100)") in squeezed
    assert _squeezed("--attention NAME") in squeezed and _squeezed("(one of: sdpa, xformers, native; default: sdpa)") in squeezed
    assert "--random-flip, --no-random-flip" in out and "--max_steps" not in out


# ------------------------------------------------------------------------------ declarations
REQUIRED_METHOD_OPTIONS = {"ppd": {"user_embeddings": "emb"}}  # options without a default (each test names the error)


@pytest.mark.parametrize("name", sorted(registered_methods()))
def test_official_defaults_are_valid_and_every_option_is_declared(name):
    config_class = registered_methods()[name].config_class
    required = REQUIRED_METHOD_OPTIONS.get(name, {})
    config_class(**required)  # the official defaults pass their own checks
    flags = [item for option, value in required.items() for item in (f"--{option.replace('_', '-')}", value)]
    parse_train_config(["--method", name, "--model", "m", "--data", "d", *flags])  # and the parser builds without clashes
    for cls in (TrainConfig, config_class):
        for field in dataclasses.fields(cls):
            assert field.metadata.get("help"), f"{cls.__name__}.{field.name} has no help line"
    TrainConfig()


def test_choices_match_what_the_code_accepts():
    from accelerate.utils import LoggerType
    from diffusers.optimization import SchedulerType

    from diffalign.diffusion.attention import ATTENTION_BACKENDS
    from diffalign.training import config, optim

    assert config.ATTENTION_BACKENDS == ATTENTION_BACKENDS
    assert config.OPTIMIZERS == optim.OPTIMIZERS
    assert set(config.LR_SCHEDULERS) <= {kind.value for kind in SchedulerType}
    assert set(config.REPORT_TO) <= {kind.value for kind in LoggerType}
