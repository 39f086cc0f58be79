"""``diffalign toy pretrain`` and ``diffalign demo`` (wired into ``diffalign.cli``)."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields


def add_toy_command(subparsers) -> None:
    from diffalign.toy.pretrain import PretrainConfig
    from diffalign.toy.preset import TOY_MODEL_DIR

    toy = subparsers.add_parser("toy", help="the toy world: rebuild the shipped tiny model")
    toy_commands = toy.add_subparsers(dest="toy_command")
    toy.set_defaults(func=lambda args: (toy.print_help(), 2)[1])
    pretrain = toy_commands.add_parser(
        "pretrain", help="pretrain the tiny SD-like preset on the toy world (diffalign.toy.pretrain's recipe)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults = PretrainConfig()
    pretrain.add_argument("--output", default=str(TOY_MODEL_DIR), help="folder of the diffusers pipeline to write")
    for name in ("seed", "images_per_caption", "vae_steps", "vae_batch", "unet_steps", "unet_batch", "max_captions", "threads"):
        pretrain.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    for name in ("vae_lr", "kl_weight", "unet_lr", "caption_dropout"):
        pretrain.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    pretrain.set_defaults(func=run_pretrain)


def _config_from_args(config_class, args, **overrides):
    """``config_class`` with every field that has a parsed flag of the same name, then ``overrides``."""
    options = {f.name: getattr(args, f.name) for f in fields(config_class) if hasattr(args, f.name)}
    return config_class(**{**options, **overrides})


def run_pretrain(args) -> int:
    from diffalign.toy.pretrain import PretrainConfig, pretrain

    config = _config_from_args(PretrainConfig, args)
    summary = pretrain(args.output, config)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    print(f"pretrained the toy preset in {summary['seconds']:.1f} s ({summary['size_bytes'] / 1e6:.2f} MB): {args.output}")
    return 0


def _key_value(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.replace("-", "_"), parsed


def add_demo_command(subparsers) -> None:
    from diffalign.toy.demo import DemoConfig
    from diffalign.toy.evaluation import EVAL_SPLITS

    defaults = DemoConfig()
    demo = subparsers.add_parser(
        "demo", help="the whole alignment loop on the toy world, on a CPU: generate, judge, pair, align, evaluate",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument("--method", default=defaults.method, help="a registered diffusion method that trains on image pairs, prompts or captioned images")
    demo.add_argument("--output-dir", default=defaults.output_dir)
    demo.add_argument("--model", default=None, help="base pipeline folder (default: the shipped toy preset)")
    for name in ("train_prompts", "candidates", "eval_prompts", "eval_seeds", "batch_size", "generation_batch", "grid_prompts",
                 "bench_prompts", "seed"):
        demo.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    demo.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the method's toy setting, 300 for most, "
                      "1200 for ppd)")
    demo.add_argument("--eval-split", default=defaults.eval_split, choices=EVAL_SPLITS,
                      help="held-out: the reported evaluation; validation: unused training prompts (for choosing settings)")
    demo.add_argument("--candidate-guidance", type=float, default=defaults.candidate_guidance,
                      help="CFG scale of the candidates (the evaluation always uses the preset's sampling)")
    demo.add_argument("--candidate-eta", type=float, default=defaults.candidate_eta, help="DDIM eta of the candidates")
    demo.add_argument("--pairs-per-prompt", type=int, default=defaults.pairs_per_prompt,
                      help="pairs per training prompt: i-th best vs i-th worst candidate (1: best vs worst)")
    demo.add_argument("--negatives-per-caption", type=int, default=defaults.negatives_per_caption,
                      help="captioned-image methods (tdpo, tkto): rule-perturbed negative captions per sample")
    demo.add_argument("--caption-images", default=defaults.caption_images, choices=("renders", "samples"),
                      help="captioned-image methods: the toy world's renders of the training prompts (exactly true "
                           "captions) or the base model's own samples")
    demo.add_argument("--min-margin", type=float, default=defaults.min_margin,
                      help="keep a pair only if its judge-score margin is at least this")
    demo.add_argument("--learning-rate", type=float, default=None, help="default: the toy setting of the method")
    demo.add_argument("--train-seed", type=int, default=None,
                      help="seed of the training alone (default: --seed); the prompts and candidates stay those of --seed")
    demo.add_argument("--threads", type=int, default=defaults.threads, help="torch threads (0: torch's default)")
    demo.add_argument("--method-arg", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                      help="a method option, e.g. --method-arg beta=2500 (repeatable)")
    demo.add_argument("--no-progress-bar", "--no-progress", dest="no_progress", action="store_true",
                      help="hide the progress bars")
    demo.set_defaults(func=run_demo_command)


def run_demo_command(args) -> int:
    from diffalign.toy.demo import DemoConfig, run_demo

    config = _config_from_args(DemoConfig, args, method_args=dict(args.method_arg), progress=not args.no_progress)
    report = run_demo(config)  # a UserError: one line and exit code 2 (diffalign.cli.main)
    if "users" in report:  # PPD: one line per user
        for name, user in report["users"].items():
            print(f"{report['method']} for {user['kind']} user {name}: win rate {user['win_rate']:.3f} over the base by their own "
                  f"judge, reward {user['reward_before']:.4f} -> {user['reward_after']:.4f}")
        print(f"report: {args.output_dir}/report.md")
        print(f"total time: {report['seconds']:.1f} s")
        return 0
    print(f"{report['method']}: reward {report['reward_before']:.4f} -> {report['reward_after']:.4f}, "
          f"win rate {report['win_rate']:.3f} on {report['n_prompts']} {report['eval_split']} prompts ({report['n_comparisons']} images each)")
    print(f"report: {args.output_dir}/report.md")
    print(f"total time: {report['seconds']:.1f} s")
    return 0
