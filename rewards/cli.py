"""``diffalign score`` and ``diffalign pairs``: argparse sub-commands wired in by ``diffalign/cli.py``.

Both return 0 on success and 2, with a one-line message on stderr, for errors a user can cause
(missing files, a bad checkpoint, an unknown scorer or option, an unreachable judge endpoint: every
``diffalign.errors.UserError``); any other exception is a bug and propagates with its traceback.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import sys
import time

from diffalign.errors import UsageError, report_user_errors
from diffalign.rewards.base import PairwiseScorer, Scorer, get_scorer, registered_scorers
from diffalign.rewards.pairs import PairStats, best_vs_worst, rank_and_sift, write_pairs
from diffalign.rewards.records import ImageListing, read_image_listing
from diffalign.rewards.scoring import score_records

# command-line flag -> scorer keyword (passed only when given)
_SCORER_FLAGS = {
    "checkpoint": "local .pt file, 'v2.0' / 'v2.1', or 'repo_id:filename' (hpsv2)",
    "architecture": "open_clip model name or .json config (hpsv2; default ViT-H-14)",
    "model": "local folder or hub id of the model (pickscore, unifiedreward*)",
    "processor": "local folder or hub id of the processor (pickscore)",
    "base_url": "OpenAI-compatible endpoint, e.g. http://localhost:8080/v1 (unifiedreward*; or DIFFALIGN_JUDGE_BASE_URL)",
    "served_model": "model name on the endpoint (default UnifiedReward)",
    "device": "torch device (default cuda if available)",
    "dtype": "float32 / float16 / bfloat16",
}


def _option_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scorer", required=True, help="registered scorer name (hpsv2, pickscore, unifiedreward, unifiedreward-2.0, unifiedreward-think, toy, ...)")
    parser.add_argument("--images", required=True, help="folder of images or .jsonl listing ({'image': path, 'prompt': text} per line)")
    prompts = parser.add_mutually_exclusive_group()
    prompts.add_argument("--prompts", help="text file, one prompt per non-empty line; with a folder, every image must be named {prompt_index}_{j}.{ext} (prompt_index from 0, j the candidate)")
    prompts.add_argument("--prompt", help="one prompt for every image")
    parser.add_argument("--out", required=True, help="output .jsonl")
    for flag, help_text in _SCORER_FLAGS.items():
        parser.add_argument("--" + flag.replace("_", "-"), dest=flag, help=help_text)
    parser.add_argument("--batch-size", type=int, help="images (or judge requests) per forward pass")
    parser.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE", help="extra scorer option (JSON value), repeatable, e.g. point_scale=10")
    parser.add_argument("--skip-invalid", action="store_true", help="skip and count unreadable images instead of stopping")


def add_score_command(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("score", help="score images with a reward model", description="Score images (pointwise) and write one jsonl row per image.")
    _add_common_arguments(parser)
    parser.set_defaults(func=run_score)
    return parser


def add_pairs_command(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("pairs", help="build preference pairs from scored candidates", description="Turn several candidates per prompt into chosen/rejected preference pairs.")
    _add_common_arguments(parser)
    parser.add_argument("--method", choices=("best-worst", "rank-sift"), default="best-worst", help="best vs worst by pointwise score, or UnifiedReward pair ranking + point sifting")
    parser.add_argument("--min-margin", type=float, default=0.0, help="keep a pair only if chosen_score - rejected_score >= this (and > 0)")
    parser.add_argument("--both-orders", action="store_true", help="rank-sift: judge each pair in both orders")
    parser.set_defaults(func=run_pairs)
    return parser


def build_scorer(args: argparse.Namespace) -> Scorer | PairwiseScorer:
    """The scorer named by ``--scorer`` with the flags it was given; unknown options are a UsageError."""
    options = {flag: getattr(args, flag) for flag in _SCORER_FLAGS if getattr(args, flag) is not None}
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--option expects KEY=VALUE, got {item!r}")
        options[key.replace("-", "_")] = _option_value(value)
    factories = registered_scorers()
    if args.scorer not in factories:
        raise UsageError(f"unknown scorer {args.scorer!r}; registered scorers: {', '.join(factories)}")
    parameters = inspect.signature(factories[args.scorer]).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        unknown = sorted(set(options) - set(parameters))
        if unknown:
            raise UsageError(f"scorer {args.scorer!r} takes no option(s) {', '.join(unknown)}; it takes {', '.join(parameters) or 'none'}")
    return get_scorer(args.scorer, **options)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = [header, *rows]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"


def run_score(args: argparse.Namespace) -> int:
    return report_user_errors("score", lambda: _score(args), debug=getattr(args, "debug", False))


def run_pairs(args: argparse.Namespace) -> int:
    return report_user_errors("pairs", lambda: _pairs(args), debug=getattr(args, "debug", False))


def _report_prompts_without_images(args: argparse.Namespace, listing: ImageListing) -> None:
    """One line naming the prompts of ``--prompts FILE`` that no image in the folder belongs to."""
    missing = listing.prompts_without_images
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (f", ... ({len(missing) - 10} more)" if len(missing) > 10 else "")
        print(f"{len(missing)} of {listing.prompt_count} prompts in {args.prompts} have no image in {args.images} (prompt {'index' if len(missing) == 1 else 'indices'} {shown})")


def _score(args: argparse.Namespace) -> int:
    listing = read_image_listing(args.images, args.prompts, args.prompt)
    records = listing.records
    scorer = build_scorer(args)
    if not isinstance(scorer, Scorer):
        raise UsageError(f"scorer {args.scorer!r} is pairwise only; build pairs or win rates with it instead")
    started = time.perf_counter()
    scores, skipped = score_records(scorer, records, skip_invalid=args.skip_invalid)
    elapsed = time.perf_counter() - started
    root = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(root, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        for index, (record, value) in enumerate(zip(records, scores.tolist())):
            if index in skipped.indices:
                continue
            row = {"image": os.path.relpath(record.path, root), "prompt": record.prompt, "score": None if math.isnan(value) else value, "scorer": args.scorer}
            handle.write(json.dumps(row) + "\n")
    for error in skipped.errors:
        print(f"skipped {error}", file=sys.stderr)
    valid = scores[~scores.isnan()]
    unparsable = len(records) - len(skipped) - len(valid)
    stats = [valid.mean().item(), valid.std().item() if len(valid) > 1 else math.nan, valid.min().item(), valid.max().item()] if len(valid) else [math.nan] * 4
    header = ["scorer", "images", "scored", "unparsable", "skipped", "mean", "std", "min", "max", "seconds"]
    row = [args.scorer, len(records), len(valid), unparsable, len(skipped), *map(_fmt, stats), f"{elapsed:.1f}"]
    print(_table(header, [[str(cell) for cell in row]]))
    report_scale = getattr(scorer, "report_scale", 1.0)
    if report_scale != 1.0 and len(valid):
        print(f"mean x {report_scale:g} (benchmark scale): {stats[0] * report_scale:.2f}")
    _report_prompts_without_images(args, listing)
    print(f"wrote {len(records) - len(skipped)} rows to {args.out}")
    return 0


def _print_pair_stats(args: argparse.Namespace, stats: PairStats, listing: ImageListing) -> None:
    header = ["scorer", "method", "prompts", "pairs", "too_few_images", "below_margin", "no_decisive_pair", "unscored_images", "unparsable_verdicts", "skipped_images"]
    row = [args.scorer, args.method, stats.prompts, stats.pairs, stats.too_few_images, stats.below_margin, stats.no_decisive_pair, stats.unscored_images, stats.unparsable_verdicts, stats.skipped_images]
    print(_table(header, [[str(cell) for cell in row]]))
    _report_prompts_without_images(args, listing)
    print(f"wrote {stats.pairs} pairs to {args.out}")


def _pairs(args: argparse.Namespace) -> int:
    listing = read_image_listing(args.images, args.prompts, args.prompt)
    records = listing.records
    scorer = build_scorer(args)
    if not isinstance(scorer, Scorer):
        raise UsageError(f"scorer {args.scorer!r} gives no pointwise scores; both methods need them")
    if args.method == "best-worst":
        if args.both_orders:
            raise UsageError("--both-orders applies to --method rank-sift")
        scores, skipped = score_records(scorer, records, skip_invalid=args.skip_invalid)
        for error in skipped.errors:
            print(f"skipped {error}", file=sys.stderr)
        pairs, stats = best_vs_worst(records, scores, args.scorer, args.min_margin)
        stats.unscored_images -= len(skipped)
        stats.skipped_images = len(skipped)
    else:
        if not isinstance(scorer, PairwiseScorer):
            raise UsageError(f"--method rank-sift needs a scorer that ranks pairs and scores points (e.g. unifiedreward); {args.scorer!r} does not rank pairs")
        pairs, stats = rank_and_sift(records, scorer, scorer, args.scorer, args.min_margin, args.both_orders, args.skip_invalid)
    # prompts with no image at all are prompts with too few images, as are those with one
    stats.prompts += len(listing.prompts_without_images)
    stats.too_few_images += len(listing.prompts_without_images)
    write_pairs(pairs, args.out)
    _print_pair_stats(args, stats, listing)
    return 0

