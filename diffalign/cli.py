"""The ``diffalign`` command.

    diffalign train --method NAME --model PATH_OR_ID --data PATH_OR_ID [options] [--config run.yaml]
    diffalign methods
    diffalign cache --model PATH_OR_ID --data PATH_OR_ID --output DIR [--resolution R]
    accelerate launch -m diffalign train ...

``train`` flags are the fields of ``TrainConfig`` plus the chosen method's config fields
(``--beta``, ...); a ``--config`` YAML file gives the same keys (method options flat or under
``method_args``), and flags given on the command line override it. User errors (unknown method,
missing model or data, bad option) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from typing import Any, Optional, Sequence

USAGE_ERROR = 2


class UsageError(Exception):
    pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    import diffalign  # noqa: F401  (installs the torchvision CPU shim before any other import)

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return USAGE_ERROR
    if extra and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args, extra) if args.command == "train" else args.func(args)
    except UsageError as error:
        print(f"diffalign {args.command}: error: {error}", file=sys.stderr)
        return USAGE_ERROR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffalign", description="Preference alignment for diffusion models and LMs.")
    subparsers = parser.add_subparsers(dest="command")
    train_parser = subparsers.add_parser("train", help="train a model with a preference method", add_help=False)
    train_parser.set_defaults(func=run_train)
    methods_parser = subparsers.add_parser("methods", help="list the registered methods and data formats")
    methods_parser.set_defaults(func=run_methods)
    _add_cache_command(subparsers)
    _add_plugin_commands(subparsers)
    return parser


def _add_plugin_commands(subparsers) -> None:
    """Commands defined next to the code they drive (scorers, toy world)."""
    import importlib

    for module_name, functions in (
        ("diffalign.rewards.cli", ("add_score_command", "add_pairs_command")),
        ("diffalign.toy.cli", ("add_toy_command", "add_demo_command")),
    ):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        for function in functions:
            getattr(module, function)(subparsers)


# ------------------------------------------------------------------------------------------- methods
def run_methods(args) -> int:
    from diffalign.data import registered_formats
    from diffalign.methods import registered_methods

    methods = registered_methods()
    width = max(len(name) for name in methods)
    for name, method in methods.items():
        print(f"{name:<{width}}  {method.modality:<9}  {method.data_format:<18}  {method.summary}")
    formats = registered_formats()
    width = max(len(name) for name in formats)
    print("\ndata formats:")
    for name, data_format in formats.items():
        print(f"{name:<{width}}  {data_format.modality:<9}  {data_format.description}")
    return 0


# --------------------------------------------------------------------------------------------- cache
def _add_cache_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "cache", help="encode a diffusion data source once (VAE latents, text embeddings) for `train --data DIR`",
        description="Run the VAE once per image (posterior mean and std, and of the mirror image for random flips) "
                    "and the text encoders once per unique prompt, and write a folder that `diffalign train --data DIR` "
                    "reads like the source. Training from it never loads the VAE or the text encoders.",
    )
    parser.add_argument("--model", required=True, help="diffusers pipeline folder or hub id whose VAE and text encoders to use")
    parser.add_argument("--data", required=True, help="the data source (jsonl, txt, parquet, save_to_disk folder, hub id)")
    parser.add_argument("--output", required=True, help="the cache folder to write (must not exist, or be empty)")
    parser.add_argument("--format", default=None, help="data format to read the source as (default: from its fields: "
                        "image pairs, captioned images, single images or prompts); or give --method")
    parser.add_argument("--method", default=None, help="read the source as this method's data format")
    parser.add_argument("--resolution", type=int, default=None, help="training resolution (default: the model's own)")
    parser.add_argument("--random-flip", action=argparse.BooleanOptionalAction, default=True,
                        help="also store the mirror image's latents, for training with random flips (default: on)")
    parser.add_argument("--data-split", default="train", help="split of a dataset with several (default: train)")
    parser.add_argument("--max-train-samples", type=int, default=None, help="cache only the first N valid rows")
    parser.add_argument("--skip-bad-rows", action="store_true", help="skip and count bad rows instead of failing")
    parser.add_argument("--batch-size", type=int, default=8, help="images or prompts per encoder call (default: 8)")
    parser.add_argument("--shard-size", type=int, default=1024, help="rows per safetensors shard (default: 1024)")
    parser.add_argument("--revision", default=None, help="model revision on the hub")
    parser.add_argument("--num-threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing cache folder")
    parser.add_argument("--progress-bar", action=argparse.BooleanOptionalAction, default=True)
    parser.set_defaults(func=run_cache)


def run_cache(args) -> int:
    import time

    import torch

    from diffalign.data import DataError, read_table
    from diffalign.data.cache import build_cache, guess_format
    from diffalign.diffusion.fingerprint import encoder_fingerprint
    from diffalign.diffusion.model import DiffusionModel
    from diffalign.errors import ModelLoadError
    from diffalign.methods.base import UnknownMethodError, get_method_class
    from diffalign.training.progress import library_progress_bars

    started = time.time()
    if args.num_threads is not None:
        if args.num_threads < 1:
            raise UsageError(f"--num-threads must be >= 1, got {args.num_threads}")
        torch.set_num_threads(args.num_threads)
    try:
        data_format = args.format
        if args.method:
            data_format = get_method_class(args.method).data_format
        if data_format is None:
            data_format = guess_format(read_table(args.data, args.data_split))
        with library_progress_bars(args.progress_bar):
            model = DiffusionModel.from_pretrained(args.model, reference=None, resolution=args.resolution,
                                                   revision=args.revision)
            info = build_cache(
                model, args.data, args.output, data_format=data_format, encoders=encoder_fingerprint(args.model, args.revision),
                model_name=args.model, split=args.data_split, resolution=model.resolution, random_flip=args.random_flip,
                batch_size=args.batch_size, shard_size=args.shard_size, max_rows=args.max_train_samples,
                skip_bad_rows=args.skip_bad_rows, overwrite=args.overwrite, progress=args.progress_bar,
            )
    except (UnknownMethodError, ModelLoadError, DataError, KeyError) as error:
        raise UsageError(str(error).strip("'\"")) from error
    skipped = sum(info["source"]["skipped"].values())
    print(f"cached {info['source']['cached_rows']} rows of {args.data} as {data_format} ({info['images']} images, "
          f"{len(info['prompts'])} prompts, {skipped} rows skipped) at {info['resolution']} px in "
          f"{time.time() - started:.1f} s: {args.output}")
    return 0


# --------------------------------------------------------------------------------------------- train
def run_train(args, argv: Sequence[str]) -> int:
    from diffalign.data import DataError
    from diffalign.diffusion.attention import AttentionBackendError
    from diffalign.errors import ModelLoadError
    from diffalign.methods.base import UnknownMethodError
    from diffalign.training import train

    try:
        config = parse_train_config(argv)
        summary = train(config)
    except (UnknownMethodError, ModelLoadError, DataError, AttentionBackendError, FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from error
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return 0
    metrics = summary["final_metrics"]
    shown = ", ".join(f"{key}={value:.4g}" for key, value in metrics.items() if key in ("loss", "rewards/accuracies"))
    print(f"trained {summary['method']} for {summary['steps']} steps in {summary['seconds']} s ({shown}); "
          f"output: {summary['output_dir']}")
    return 0


def parse_train_config(argv: Sequence[str]):
    """``TrainConfig`` from defaults <- ``--config`` YAML <- command-line flags."""
    from diffalign.methods.base import get_method_class
    from diffalign.training.config import TrainConfig

    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--config")
    first.add_argument("--method")
    known, _ = first.parse_known_args(argv)
    file_values = _read_yaml(known.config) if known.config else {}
    method_name = known.method or file_values.get("method") or TrainConfig.method
    method_class = get_method_class(method_name)

    parser = argparse.ArgumentParser(prog="diffalign train", argument_default=argparse.SUPPRESS,
                                     description=f"Train with a preference method (options of {method_name!r} included).")
    parser.add_argument("--config", help="YAML file with any of the options below; flags override it")
    general = parser.add_argument_group("training options")
    _add_dataclass_flags(general, TrainConfig, skip={"method_args"})
    method_group = parser.add_argument_group(f"{method_name} options")
    _add_dataclass_flags(method_group, method_class.config_class)
    flags = vars(parser.parse_args(argv))
    flags.pop("config", None)

    train_fields = {field.name for field in dataclasses.fields(TrainConfig)}
    method_fields = {field.name for field in dataclasses.fields(method_class.config_class)}
    values = {key: value for key, value in file_values.items() if key != "method_args"}
    method_args = dict(file_values.get("method_args") or {})
    for key in list(values):
        if key in method_fields and key not in train_fields:
            method_args[key] = values.pop(key)
    unknown = sorted(set(values) - train_fields)
    if unknown:
        raise UsageError(f"{known.config}: unknown option(s) {', '.join(unknown)}")
    for key, value in flags.items():
        if key in method_fields and key not in train_fields:
            method_args[key] = value
        else:
            values[key] = value
    values["method"] = method_name
    for required in ("model", "data"):
        if not values.get(required):
            raise UsageError(f"--{required} is required")
    return TrainConfig(**values, method_args=method_args)


def _read_yaml(path: str) -> dict[str, Any]:
    import yaml

    try:
        with open(path) as handle:
            loaded = yaml.safe_load(handle) or {}
    except OSError as error:
        raise UsageError(f"cannot read --config {path}: {error.strerror}") from error
    if not isinstance(loaded, dict):
        raise UsageError(f"--config {path}: expected a mapping of option names to values")
    return {key.replace("-", "_"): value for key, value in loaded.items()}


def _add_dataclass_flags(group, cls, skip=frozenset()) -> None:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        flag = "--" + field.name.replace("_", "-")
        kind = _unwrap_optional(hints[field.name])
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = None
        help_text = f"default: {default}"
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        elif typing.get_origin(kind) is list:
            group.add_argument(flag, nargs="+", type=typing.get_args(kind)[0], help=help_text)
        else:
            group.add_argument(flag, type=kind, help=help_text)


def _unwrap_optional(kind):
    if typing.get_origin(kind) is typing.Union:
        arguments = [argument for argument in typing.get_args(kind) if argument is not type(None)]
        if len(arguments) == 1:
            return arguments[0]
    return kind


if __name__ == "__main__":
    raise SystemExit(main())
