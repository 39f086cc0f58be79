"""``diffalign score``, ``diffalign pairs`` and ``diffalign captions perturb``: argparse sub-commands wired
in by ``diffalign/cli.py``.

All return 0 on success and 2, with a one-line message on stderr, for errors a user can cause
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



# ------------------------------------------------------------------------------------------- captions
_RULES_ONLY = ("vocabulary",)
_LLM_ONLY = ("model", "base_url", "api_key_env", "prompt_template", "temperature", "max_tokens", "max_attempts", "timeout",
             "max_retries", "workers", "send_seed", "device", "dtype", "batch_size")
_LLM_DEFAULTS = {"temperature": 0.7, "max_tokens": 128, "max_attempts": 3, "timeout": 60.0, "max_retries": 5, "workers": 8,
                 "send_seed": True, "batch_size": 8}
_HTTP_ONLY = ("api_key_env", "timeout", "max_retries", "workers", "send_seed")
_LOCAL_ONLY = ("device", "dtype", "batch_size")
# settings recorded with every row -> the flag a resume mismatch names
_CAPTION_FLAGS = {"seed": "--seed", "families": "--families", "vocabulary": "--vocabulary", "model": "--model",
                  "prompt_template": "--prompt-template", "temperature": "--temperature", "max_tokens": "--max-tokens"}


def add_captions_command(subparsers) -> argparse.ArgumentParser:
    """``diffalign captions perturb``: mismatched captions for TPO (``diffalign.rewards.captions``)."""
    from diffalign.rewards.captions import DEFAULT_CHUNK, FAMILIES

    parser = subparsers.add_parser("captions", help="caption tools: perturbed (mismatched) captions for TPO",
                                   description="Caption tools. `diffalign captions perturb --help` for the options.")
    parser.set_defaults(func=lambda args: (parser.print_help(sys.stderr), 2)[1])
    commands = parser.add_subparsers(dest="captions_command", metavar="perturb")
    perturb = commands.add_parser(
        "perturb", help="write K subtly wrong captions per image (captioned_images jsonl)",
        description="Write, for every input row, K perturbed captions that are false for its image, as captioned_images "
                    "rows {image, prompt, negative_prompts} (TPO's data). The rules perturber swaps one word from word lists "
                    "of four families (content, attribute, spatial, context); the llm perturber asks a chat model. Rerunning "
                    "the same command keeps the rows already written and makes the rest.")
    files = perturb.add_argument_group("input and output")
    files.add_argument("--data", required=True, metavar="IN", help=".txt (one caption per line) or .jsonl of {prompt[, image]} rows, "
                    "e.g. the generations.jsonl of `diffalign generate`; image paths relative to the file's folder")
    files.add_argument("--out", required=True, metavar="OUT.jsonl", help="output jsonl (image paths relative to its folder); "
                    "rerunning into it resumes")
    files.add_argument("--prompts-only", action="store_true", help="accept rows without an image and write them as {prompt, "
                    "negative_prompts} (not a captioned_images training set); without it such rows are an error")
    files.add_argument("--overwrite", action="store_true", help="start over: remove --out first")
    files.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK, metavar="N", help=f"rows perturbed before they are "
                    f"written (default: {DEFAULT_CHUNK})")
    files.add_argument("--progress-bar", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar (default: on)")
    common = perturb.add_argument_group("perturbation")
    common.add_argument("--perturber", choices=("rules", "llm"), default="rules", help="default: rules")
    common.add_argument("--per-caption", type=int, default=1, metavar="K", help="distinct negatives per caption (default: 1)")
    common.add_argument("--seed", type=int, default=0, metavar="S",  help="decides the families, words and request seeds (default: 0)")
    common.add_argument("--families", metavar="LIST", help=f"comma-separated subset of {','.join(FAMILIES)} (default: all)")
    rules = perturb.add_argument_group("rules perturber")
    rules.add_argument("--vocabulary", metavar="NAME_OR_FILE", help="toy (the toy world's grammar), general (English word "
                       "lists, the toy words included) or a .json file of word lists (default: general)")
    llm = perturb.add_argument_group("llm perturber")
    llm.add_argument("--model", help="served model name (with --base-url) or local folder / hub id of a causal LM")
    llm.add_argument("--base-url", metavar="URL", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1; without it "
                     "--model runs locally with transformers")
    llm.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the API key (default: "
                     "DIFFALIGN_LLM_API_KEY, then OPENAI_API_KEY); the key is never printed or written")
    llm.add_argument("--prompt-template", metavar="FILE", help="prompt text with {caption} and optionally {family}, "
                     "{family_description} (default: the spec's skeleton)")
    llm.add_argument("--temperature", type=float, metavar="T",  help=f"sampling temperature, 0 = greedy (default: {_LLM_DEFAULTS['temperature']})")
    llm.add_argument("--max-tokens", type=int, metavar="N",  help=f"answer length budget (default: {_LLM_DEFAULTS['max_tokens']})")
    llm.add_argument("--max-attempts", type=int, metavar="N",  help="asks per negative before it is given up; a rejected answer is asked "
                     f"again (default: {_LLM_DEFAULTS['max_attempts']})")
    llm.add_argument("--timeout", type=float, metavar="SECONDS",  help=f"seconds per HTTP request (default: {_LLM_DEFAULTS['timeout']:g})")
    llm.add_argument("--max-retries", type=int, metavar="N",  help="HTTP attempts per request on 429 / 5xx / timeouts (default: "
                     f"{_LLM_DEFAULTS['max_retries']})")
    llm.add_argument("--workers", type=int, metavar="N",  help=f"concurrent HTTP requests (default: {_LLM_DEFAULTS['workers']})")
    llm.add_argument("--send-seed", action=argparse.BooleanOptionalAction, default=None, help="send each request's seed as "
                     "the OpenAI 'seed' field (default: on; --no-send-seed for endpoints that refuse it)")
    llm.add_argument("--device", help="local model: torch device (default: cuda if available)")
    llm.add_argument("--dtype", help="local model: float32 / float16 / bfloat16")
    llm.add_argument("--batch-size", type=int, metavar="N", help=f"local model: requests per generate call (default: {_LLM_DEFAULTS['batch_size']})")
    perturb.set_defaults(func=run_captions_perturb)
    return parser


def build_caption_perturber(args: argparse.Namespace):
    """The perturber ``--perturber`` names, with its flags; a flag of the other perturber is a UsageError."""
    given = lambda names: [name for name in names if getattr(args, name, None) is not None]  # noqa: E731
    flag = lambda name: "--" + name.replace("_", "-")  # noqa: E731
    if args.perturber == "rules":
        wrong = given(_LLM_ONLY)
        if wrong:
            raise UsageError(f"{flag(wrong[0])} applies to --perturber llm, not rules")
        from diffalign.rewards.caption_rules import RulePerturber

        return RulePerturber(args.vocabulary or "general", seed=args.seed, families=args.families)
    wrong = given(_RULES_ONLY)
    if wrong:
        raise UsageError(f"{flag(wrong[0])} applies to --perturber rules, not llm")
    if not args.model:
        raise UsageError("--perturber llm needs --model: the served model name (with --base-url) or a local causal LM")
    wrong = given(_LOCAL_ONLY if args.base_url else _HTTP_ONLY)
    if wrong:
        raise UsageError(f"{flag(wrong[0])} applies {'without' if args.base_url else 'with'} --base-url")
    from diffalign.rewards.caption_llm import HTTPChat, LLMPerturber, TransformersChat, _check_int, _check_number, read_prompt_template

    value = lambda name: getattr(args, name) if getattr(args, name, None) is not None else _LLM_DEFAULTS.get(name)  # noqa: E731
    _check_number("--temperature", value("temperature"), 0)
    _check_int("--max-tokens", value("max_tokens"), 1)
    _check_int("--max-attempts", value("max_attempts"), 1)
    template = read_prompt_template(args.prompt_template)
    if args.base_url:
        backend = HTTPChat(args.base_url, args.model, api_key_env=args.api_key_env, temperature=value("temperature"),
                           max_tokens=value("max_tokens"), timeout=value("timeout"), max_retries=value("max_retries"),
                           workers=value("workers"), send_seed=value("send_seed"))
    else:
        backend = TransformersChat(args.model, device=args.device, dtype=args.dtype, batch_size=value("batch_size"),
                                   temperature=value("temperature"), max_tokens=value("max_tokens"))
    return LLMPerturber(backend, seed=args.seed, families=args.families, template=template,
                        max_attempts=value("max_attempts"), model=args.model)


def run_captions_perturb(args: argparse.Namespace) -> int:
    return report_user_errors("captions perturb", lambda: _captions_perturb(args), debug=getattr(args, "debug", False))


def _captions_perturb(args: argparse.Namespace) -> int:
    from diffalign.rewards.captions import REJECT_REASONS, perturb_captions

    perturber = build_caption_perturber(args)
    summary = perturb_captions(perturber, args.data, args.out, per_caption=args.per_caption, prompts_only=args.prompts_only,
                               overwrite=args.overwrite, progress=args.progress_bar, chunk_size=args.chunk_size,
                               option_names=_CAPTION_FLAGS)
    header = ["perturber", "rows", "resumed", "written", "short", "no_negatives", "failed", "captions", "kept", "rejected",
              "retried", "seconds"]
    row = [args.perturber, summary.inputs, summary.resumed, summary.written, summary.short, summary.no_negatives,
           summary.failed, summary.captions, summary.kept, sum(summary.rejected.values()), summary.retried, f"{summary.seconds:.1f}"]
    print(_table(header, [[str(cell) for cell in row]]))
    if summary.rejected or summary.retried:
        reasons = ", ".join(f"{reason} {summary.rejected.get(reason, 0)}" for reason in REJECT_REASONS)
        print(f"rejected answers: {reasons}; retried: {summary.reasked} asked again after a rejected answer, "
              f"{summary.transport_retries} HTTP retries (429 / 5xx / timeouts)")
    if summary.short:
        print(f"{summary.short} rows have fewer than {args.per_caption} negatives (the caption allowed fewer distinct edits, "
              "or the answers kept being rejected)")
    if summary.no_negatives:
        print(f"{summary.no_negatives} rows got no negative and were not written (first: {summary.first_without_negatives}); "
              + ("no word of the vocabulary occurs in their captions" if args.perturber == "rules"
                 else "every answer was rejected: rerun to ask again, or raise --max-attempts"))
    if summary.failed:
        print(f"{summary.failed} rows were not written because a request failed (first: {summary.first_error}); rerun the "
              "same command to try them again", file=sys.stderr)
    print(f"wrote {summary.written} rows to {args.out}" + (f" ({summary.resumed} were there already)" if summary.resumed else ""))
    return 0
