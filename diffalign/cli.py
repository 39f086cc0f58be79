"""The ``diffalign`` command.

    diffalign train --method NAME --model PATH_OR_ID --data PATH_OR_ID [options] [--config run.yaml]
    diffalign methods
    diffalign cache --model PATH_OR_ID --data PATH_OR_ID --output DIR [--resolution R]
    diffalign generate --model PATH_OR_ID --prompts FILE_OR_TEXT --out DIR [--negative-model NEG] [options]
    diffalign captions perturb --data IN --out OUT.jsonl [--perturber rules|llm] [--per-caption K] [options]
    accelerate launch -m diffalign train ...

``train`` flags are the fields of ``TrainConfig`` plus the chosen method's config fields
(``--beta``, ...); a ``--config`` YAML file gives the same keys (method options flat or under
``method_args``), and flags given on the command line override it. One parser (transformers'
``HfArgumentParser``) types flags and file values alike, and each option's declared valid values
(``diffalign.options``) are checked before anything is loaded. User errors (unknown method, missing
model or data, bad option: every ``diffalign.errors.UserError``) print one line and exit with code 2;
any other exception is a bug and shows its traceback. ``diffalign --debug COMMAND`` (or
``DIFFALIGN_DEBUG=1``) shows the traceback of user errors too.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import typing
from typing import Any, Optional, Sequence

from diffalign.errors import USER_ERROR_EXIT_CODE, UsageError, report_user_errors


def main(argv: Optional[Sequence[str]] = None) -> int:
    import diffalign  # noqa: F401  (installs the torchvision CPU shim before any other import)

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return USER_ERROR_EXIT_CODE
    if extra and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return report_user_errors(args.command, lambda: args.func(args, extra) if args.command == "train" else args.func(args),
                              debug=args.debug)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffalign", description="Preference alignment for diffusion models and LMs.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of user errors too (or set DIFFALIGN_DEBUG=1); "
                        "errors that are bugs always show theirs")
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
        ("diffalign.rewards.cli", ("add_score_command", "add_pairs_command", "add_captions_command")),
        ("diffalign.toy.cli", ("add_toy_command", "add_demo_command")),
        ("diffalign.pipelines.cli", ("add_generate_command",)),
        ("diffalign.rewards.user_cli", ("add_users_command",)),
        ("diffalign.benchmarks.cli", ("add_bench_command",)),
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

    from diffalign.data import read_table
    from diffalign.data.cache import build_cache, guess_format
    from diffalign.diffusion.fingerprint import encoder_fingerprint
    from diffalign.diffusion.model import DiffusionModel
    from diffalign.methods.base import get_method_class
    from diffalign.progress import library_progress_bars

    started = time.time()
    if args.num_threads is not None:
        if args.num_threads < 1:
            raise UsageError(f"--num-threads must be >= 1, got {args.num_threads}")
        torch.set_num_threads(args.num_threads)
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
    skipped = sum(info["source"]["skipped"].values())
    print(f"cached {info['source']['cached_rows']} rows of {args.data} as {data_format} ({info['images']} images, "
          f"{len(info['prompts'])} prompts, {skipped} rows skipped) at {info['resolution']} px in "
          f"{time.time() - started:.1f} s: {args.output}")
    return 0


# --------------------------------------------------------------------------------------------- train
def run_train(args, argv: Sequence[str]) -> int:
    from diffalign.training import train

    summary = train(parse_train_config(argv))
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return 0
    metrics = summary["final_metrics"]
    shown = ", ".join(f"{key}={value:.4g}" for key, value in metrics.items() if key in ("loss", "rewards/accuracies"))
    resumed = f" (resumed at step {summary['resumed_from_step']}, {summary['steps']} in all)" if summary["resumed_from_step"] else ""
    print(f"trained {summary['method']} for {summary['trained_steps']} steps{resumed} in {summary['seconds']} s ({shown}); "
          f"output: {summary['output_dir']}")
    return 0


def parse_train_config(argv: Sequence[str]):
    """``TrainConfig`` from defaults <- ``--config`` YAML <- command-line flags.

    One parser types every value: ``train_option_parser`` (transformers' ``HfArgumentParser`` over
    ``TrainConfig`` and the method's config). A YAML value is turned into the flag it stands for
    (``learning_rate: 1e-4`` -> ``--learning_rate=1e-4``) and parsed by that parser, so the file gets
    exactly the command line's types and errors; flags override the file. The configs' own
    ``__post_init__`` then check the ranges (``diffalign.options``). Every invalid value is an
    ``OptionError`` (a ``UserError``), naming the option (and the file for a value from it), raised
    before anything is loaded; ``--help`` prints every option and exits.
    """
    from diffalign.methods.base import get_method_class
    from diffalign.options import OptionError
    from diffalign.training.config import TrainConfig

    first = _RaisingArgumentParser(add_help=False, allow_abbrev=False)
    first.add_argument("--config")
    first.add_argument("--method")
    known, _ = first.parse_known_args(argv)
    path = known.config
    file_values, file_method_args = _read_yaml(path) if path else ({}, {})
    method_name = known.method if known.method is not None else file_values.get("method")
    method_name = TrainConfig.method if method_name is None else str(method_name)
    method_class = get_method_class(method_name)

    parser = train_option_parser(method_class.config_class, method_name)
    from_flags = parser.parse_flags(argv)  # first, so that --help works whatever the file holds
    from_file = parser.parse_file(path, file_values, file_method_args) if path else {}
    given = {**from_file, **from_flags, "method": method_name}
    for required in ("model", "data"):
        if not given.get(required):
            raise OptionError(None, f"--{required} is required")
    method_args = {name: value for name, value in given.items() if name in parser.method_fields}
    values = {name: value for name, value in given.items() if name in parser.train_fields}
    try:
        method_class.config_class(**method_args)  # checked here too, not only when training starts
        config = TrainConfig(**values, method_args=method_args)
        if config.reference != "auto" and not method_class.needs_reference:
            raise OptionError("reference", f"is not used by {method_name}, which has no reference model")
        if config.reference != "auto" and method_class.ema_reference:
            raise OptionError("reference", f"is not used by {method_name}, whose reference is an EMA of the trained model")
        if config.reference != "auto" and method_class.user_conditioned:
            raise OptionError("reference", f"is not used by {method_name}, whose reference is the same model with its user "
                                           "branch off")
        return config
    except OptionError as error:
        if error.option in from_file and error.option not in from_flags:
            raise OptionError(error.option, error.detail, source=path) from None
        raise


def _read_yaml(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(options, method_args)`` of a ``--config`` file, keys with ``_`` for ``-``."""
    import yaml

    from diffalign.options import OptionError

    try:
        with open(path) as handle:
            loaded = yaml.safe_load(handle)
    except OSError as error:
        raise OptionError(None, f"cannot read --config {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise OptionError(None, f"--config {path} is not valid YAML: {getattr(error, 'problem', None) or error}{where}") from None

    def mapping(value, what: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
            raise OptionError(None, f"--config {path}: expected {what} of option names to values")
        return {key.replace("-", "_"): item for key, item in value.items()}

    values = mapping(loaded, "a mapping")
    method_args = mapping(values.pop("method_args", None), "method_args: to be a mapping")
    return values, method_args


_NOT_GIVEN = object()


def train_option_parser(method_config_class, method_name: str):
    """The ``diffalign train`` parser of ``TrainConfig`` and ``method_config_class`` (help lines, groups)."""
    return _train_option_parser_class()(method_config_class, method_name)


class _RaisingArgumentParser(argparse.ArgumentParser):
    """Raises ``OptionError`` where argparse would print usage and exit."""

    def error(self, message):
        raise _argparse_error(message)


def _argparse_error(message: str):
    """argparse's message as an ``OptionError``: ``argument --max_steps/--max-steps: invalid int value:
    'two'`` -> ``--max-steps must be an integer, got 'two'``."""
    import re

    from diffalign.options import OptionError

    match = re.fullmatch(r"argument (--[\w-]+)(?:/[\w/-]+)?: (.*)", message, flags=re.DOTALL)
    if not match:
        return OptionError(None, message)
    name, problem = match.group(1)[2:].replace("-", "_"), match.group(2)
    kinds = {"int": "an integer", "float": "a number"}
    for pattern, detail in (
        (r"invalid (\w+) value: (.*)", lambda m: f"must be {kinds.get(m.group(1), 'a ' + m.group(1))}, got {m.group(2)}"),
        (r"Truthy value expected: got (.*?) but expected one of .*", lambda m: f"must be true or false, got {m.group(1)!r}"),
        (r"expected one argument", lambda m: "needs a value"),
        (r"expected at least one argument", lambda m: "needs at least one value"),
        (r"ignored explicit argument (.*)", lambda m: f"takes no value, got {m.group(1)}"),
    ):
        found = re.fullmatch(pattern, problem, flags=re.DOTALL)
        if found:
            return OptionError(name, detail(found))
    return OptionError(name, f"is not valid: {problem}")


@functools.lru_cache(maxsize=None)
def _train_option_parser_class():
    """Built on first use: importing transformers takes seconds, and only ``train`` needs it."""
    import copy
    import re
    import shutil
    import types

    from transformers import HfArgumentParser
    from transformers.hf_argparser import string_to_bool

    from diffalign.options import OptionError, allowed_values, field_kind
    from diffalign.training.config import TrainConfig

    metavars = {int: "INT", float: "FLOAT", str: "TEXT"}

    def is_bool_flag(action) -> bool:
        return action.type is string_to_bool

    class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
        """Dashed spellings only (``--max-steps``; ``--max_steps`` works too), ``--x, --no-x`` for
        switches, the default after the allowed values."""

        def __init__(self, prog):
            super().__init__(prog, max_help_position=36, width=min(shutil.get_terminal_size().columns, 120))

        def _format_action_invocation(self, action):
            if not action.option_strings:
                return super()._format_action_invocation(action)
            spellings = [option for option in action.option_strings if "_" not in option] or action.option_strings
            if is_bool_flag(action):
                return ", ".join([*spellings, *(f"--no-{option[2:]}" for option in spellings)])
            if action.nargs == 0:
                return ", ".join(spellings)
            arguments = self._format_args(action, self._get_default_metavar_for_optional(action))
            return ", ".join(f"{option} {arguments}" for option in spellings)

        def _get_help_string(self, action):
            notes = [getattr(action, "allowed", None)]
            default = action.default
            if action.option_strings and default not in (None, "", argparse.SUPPRESS) and action.dest not in ("help", "config"):
                if isinstance(default, bool):
                    shown = "on" if default else "off"
                elif isinstance(default, (list, tuple)):
                    shown = " ".join(str(item) for item in default)
                else:
                    shown = str(default)
                notes.append(f"default: {shown.replace('%', '%%')}")
            notes = [note for note in notes if note]
            return (action.help or "") + (f" ({'; '.join(notes)})" if notes else "")

    class TrainOptionParser(HfArgumentParser):
        """``HfArgumentParser`` over ``TrainConfig`` ("training options") and a method config ("<method>
        options"). Its argparse ``type`` per field coerces both flags and ``--config`` values; errors
        raise ``OptionError`` instead of exiting."""

        def __init__(self, method_config_class, method_name: str):
            super().__init__(
                [], prog="diffalign train", formatter_class=HelpFormatter, allow_abbrev=False,
                usage="diffalign train --method NAME --model PATH_OR_ID --data PATH_OR_ID [options] [--config run.yaml]",
                description=f"Train a model with a preference method; the options of {method_name!r} are included "
                            "(`diffalign train --method NAME --help` for another method's). Every option can also be a "
                            "key of the --config file.",
            )
            self.add_argument("--config", metavar="FILE", help="YAML file with any of the options below as keys (method "
                              "options flat or under method_args:); flags given on the command line override it")
            self.dataclass_types = [TrainConfig, method_config_class]
            self.method_name = method_name
            if hasattr(self, "_negative_number_matcher"):  # also read -1e-5 and -inf as values, not as options
                self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$|^-inf$", re.IGNORECASE)
            self.train_fields = self._add_fields(TrainConfig, "training options")
            self.method_fields = self._add_fields(method_config_class, f"{method_name} options")
            clash = set(self.train_fields) & set(self.method_fields)
            if clash:
                raise TypeError(f"{method_config_class.__qualname__} redefines training options {sorted(clash)}")

        def error(self, message):
            raise _argparse_error(message)

        # ------------------------------------------------------------------------------- building
        def _add_fields(self, cls, title: str) -> dict[str, Any]:
            group = self.add_argument_group(title)
            added = {}
            for field in dataclasses.fields(cls):
                if not field.init or field.metadata.get("cli", True) is False:
                    continue
                kind, _ = field_kind(cls, field.name)
                shown = copy.copy(field)  # HfArgumentParser rewrites field.type: leave the class's field alone
                shown.type = typing.get_type_hints(cls)[field.name]
                metadata = {"help": field.metadata.get("help", "").replace("%", "%%")}
                if kind is not bool:
                    item = typing.get_args(kind)[0] if typing.get_origin(kind) is list else kind
                    metadata["metavar"] = field.metadata.get("metavar") or (
                        "NAME" if "choices" in field.metadata else metavars.get(item, "VALUE"))
                shown.metadata = types.MappingProxyType(metadata)
                self._parse_dataclass_field(group, shown)
                allowed = allowed_values(field.metadata)
                self._option_string_actions["--" + field.name].allowed = (
                    f"{'each ' if typing.get_origin(kind) is list else ''}{allowed}".replace("%", "%%") if allowed else None)
                self._finish(group, field.name, kind)
                added[field.name] = field
            return added

        def _finish(self, group, name: str, kind) -> None:
            """Dashed aliases where the installed transformers adds none, and a hidden ``--no-x`` for
            every switch (transformers adds a visible one for switches that default to on)."""
            actions = [action for action in self._actions if action.dest == name]
            for action in actions:
                for option_string in list(action.option_strings):
                    dashed = "--" + option_string[2:].replace("_", "-")
                    if dashed not in self._option_string_actions:
                        action.option_strings.append(dashed)
                        self._option_string_actions[dashed] = action
                if action.type is not string_to_bool and kind is bool:
                    action.help = argparse.SUPPRESS
            if kind is bool and len(actions) == 1:
                group.add_argument(f"--no-{name.replace('_', '-')}", f"--no_{name}", action="store_false", dest=name,
                                   default=argparse.SUPPRESS, help=argparse.SUPPRESS)

        # -------------------------------------------------------------------------------- parsing
        def parse_flags(self, tokens: Sequence[str]) -> dict[str, Any]:
            """The options given in ``tokens`` (typed), without ``--config``; absent ones are left out."""
            dests = {action.dest for action in self._actions if action.dest not in (argparse.SUPPRESS, "help")}
            namespace = self.parse_args(list(tokens), argparse.Namespace(**{dest: _NOT_GIVEN for dest in dests}))
            given = {dest: value for dest, value in vars(namespace).items() if value is not _NOT_GIVEN}
            given.pop("config", None)
            return given

        def parse_file(self, path: str, values: dict[str, Any], method_args: dict[str, Any]) -> dict[str, Any]:
            """The ``--config`` file's options, each typed by this parser as the flag it stands for."""
            import difflib

            given = {}
            for key in method_args:
                if key not in self.method_fields:
                    raise OptionError(None, f"method_args: {self.method_name} has no option {key!r}; its options: "
                                            f"{', '.join(self.method_fields) or 'none'}", source=path)
            for key in values:
                if key not in self.train_fields and key not in self.method_fields:
                    close = difflib.get_close_matches(key, [*self.train_fields, *self.method_fields], n=1)
                    hint = f"did you mean {close[0]}?" if close else f"neither a training option nor a {self.method_name} option"
                    raise OptionError(None, f"unknown option {key!r} ({hint})", source=path)
            for key, value in [*values.items(), *method_args.items()]:
                try:
                    given[key] = self._parse_value(key, value)
                except OptionError as error:
                    raise OptionError(key, error.detail, source=path) from None
            return given

        def _parse_value(self, key: str, value: Any) -> Any:
            cls = TrainConfig if key in self.train_fields else self.dataclass_types[1]
            kind, optional = field_kind(cls, key)
            if value is None:
                if optional:
                    return None
                raise OptionError(key, "needs a value, got null")
            is_list = typing.get_origin(kind) is list
            items = value if isinstance(value, list) and is_list else [value]
            if isinstance(value, (list, dict)) and not is_list:
                raise OptionError(key, f"must be a single value, got {value!r}")
            if not items:
                raise OptionError(key, "needs at least one value")
            texts = []
            for item in items:
                if isinstance(item, (list, dict)):
                    raise OptionError(key, f"must be a list of single values, got {value!r}")
                if isinstance(item, bool) and kind is not bool:
                    raise OptionError(key, f"must not be a boolean, got {item!r} (YAML reads unquoted yes, no, on, off, "
                                           "true and false as booleans: quote the value)")
                texts.append(str(item).lower() if isinstance(item, bool) else str(item))
            if is_list:  # one --key=item per item, so that no item is mistaken for an option
                return [item for text in texts for item in self.parse_flags([f"--{key}={text}"])[key]]
            return self.parse_flags([f"--{key}={texts[0]}"])[key]

    return TrainOptionParser

if __name__ == "__main__":
    raise SystemExit(main())
