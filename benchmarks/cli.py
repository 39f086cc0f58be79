"""``diffalign bench unigenbench`` and ``diffalign bench leaderboard``: argparse sub-commands wired in by
``diffalign/cli.py``, thin layers over ``unigenbench_run.run_bench`` and ``leaderboard.build_leaderboard``.

Both return 0 on success and 2, with a one-line message on stderr, for errors a user can cause (a bad
option, a missing prompt file or image, a run folder made otherwise, an endpoint that refuses the
requests: every ``diffalign.errors.UserError``); any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse

from diffalign.errors import USER_ERROR_EXIT_CODE, report_user_errors


def add_bench_command(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench", help="benchmark a model: UniGenBench (or the toy bench) judged per test point, and leaderboards",
        description="Benchmark text-to-image models: `diffalign bench unigenbench` generates and judges a benchmark run, "
                    "`diffalign bench leaderboard` puts runs side by side.",
    )
    parser.set_defaults(func=lambda args: _print_help(parser))
    commands = parser.add_subparsers(dest="bench_command")
    _add_unigenbench(commands)
    _add_leaderboard(commands)
    return parser


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return USER_ERROR_EXIT_CODE


def _add_unigenbench(commands) -> None:
    from diffalign.benchmarks.unigenbench_data import CATEGORIES
    from diffalign.pipelines.generate import DEVICES, DTYPES

    parser = commands.add_parser(
        "unigenbench", help="generate 4 images per prompt, judge every test point, report the scores",
        description="UniGenBench (600 prompts, 10 primary and 27 sub-dimensions; arXiv:2508.20751): generate 4 images per "
                    "prompt into RUN/images as {index}_{j}.png (or judge --images DIR), judge each against its prompt's "
                    "test points, and write RUN/unigenbench.json, RUN/report.md and RUN/report.html. Rerunning the same "
                    "command resumes: only missing images are generated and only unjudged images judged. `--benchmark toy "
                    "--judge toy` runs the same protocol offline on the toy world.",
    )
    bench = parser.add_argument_group("benchmark and judge")
    bench.add_argument("--benchmark", default="unigenbench", metavar="NAME", help="unigenbench, or a registered one such as toy "
                       "(default: unigenbench)")
    bench.add_argument("--prompts-dir", metavar="DIR", help="folder with test_prompts_{en,en_long,zh,zh_long}.csv (upstream's "
                       "data/ folder); required for unigenbench")
    bench.add_argument("--category", metavar="NAME", help=f"{' | '.join(CATEGORIES)} for unigenbench (default: en; the toy bench has "
                       "one, toy)")
    bench.add_argument("--judge", required=True, metavar="SPEC", help="openai:MODEL@URL (any OpenAI-compatible endpoint: "
                       "Gemini, vLLM), transformers:PATH (a local VLM) or toy")
    bench.add_argument("--api-key-env", metavar="NAME", help="environment variable holding the endpoint's key (default: "
                       "DIFFALIGN_JUDGE_API_KEY, then OPENAI_API_KEY); the key is never written or printed")
    bench.add_argument("--workers", type=int, default=20, metavar="N", help="concurrent judge requests (default: 20, as upstream)")
    bench.add_argument("--max-retries", type=int, default=10, metavar="N", help="re-asks of an image whose answer cannot be parsed or "
                       "whose request failed (default: 10, so 11 attempts)")
    bench.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS", help="seconds per judge request (default: 300)")
    bench.add_argument("--judge-batch-size", type=int, default=4, metavar="B", help="images per generate call of a transformers judge "
                       "(default: 4)")
    bench.add_argument("--retry-failed", action="store_true", help="also re-judge images whose judgement failed in an "
                       "earlier run into --out")
    bench.add_argument("--limit", type=int, metavar="N", help="judge only the first N prompts (smoke runs; recorded)")
    model = parser.add_argument_group("model (leave out with --images)")
    model.add_argument("--model", help="diffusers SD1.x/2.x or SDXL pipeline folder or hub id (the toy bench defaults to the "
                       "shipped toy model)")
    model.add_argument("--lora", metavar="DIR", help="LoRA folder fused into --model")
    model.add_argument("--negative-model", metavar="NEG", help="NPO: the negative branch's model or LoRA folder")
    model.add_argument("--negative-base", metavar="BASE", help="the model the negative was trained from (default: --model)")
    model.add_argument("--merge-weight", type=float, metavar="M", help="NPO merge weight (default: 0)")
    model.add_argument("--images", metavar="DIR", help="judge the images in DIR, named {index}_{j}.png as in upstream's "
                       "eval_data/<category>/<model>/, instead of generating")
    model.add_argument("--label", help="the run's name on a leaderboard (default: from --lora, --model or --images)")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--guidance", type=float, metavar="W", help="guidance scale (default: the benchmark's, else 7.5 for "
                          "SD, 5 for SDXL)")
    sampling.add_argument("--steps", type=int, metavar="N", help="denoising steps (default: the benchmark's, else 25)")
    sampling.add_argument("--seed", type=int, metavar="S", help="image j of prompt i uses seed S + 1000 i + j (default: 0; "
                          "toy: the demo evaluation's)")
    sampling.add_argument("--resolution", type=int, metavar="PX", help="image height and width (default: the model's own)")
    run = parser.add_argument_group("output and device")
    run.add_argument("--out", required=True, metavar="RUN", help="run folder (created; rerunning into it resumes)")
    run.add_argument("--batch-size", type=int, metavar="B", help="images per pipeline call (default: 1; toy: 16)")
    run.add_argument("--dtype", default="float32", choices=tuple(DTYPES), help="weights dtype "
                     "(default: float32)")
    run.add_argument("--device", default="auto", choices=DEVICES, help="default: cuda when available")
    run.add_argument("--progress-bar", action=argparse.BooleanOptionalAction, default=True, help="show progress bars "
                     "(default: on)")
    parser.set_defaults(func=run_unigenbench)


def _add_leaderboard(commands) -> None:
    parser = commands.add_parser(
        "leaderboard", help="a leaderboard (md + html) of several bench runs",
        description="Put bench runs side by side: Overall and each primary dimension (with sub-dimension detail), in "
                    "DIR/leaderboard.md and a sortable DIR/leaderboard.html. Runs judged by different judges or on "
                    "different categories are refused unless --allow-mixed.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="bench run folders (each with unigenbench.json)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the leaderboard files")
    parser.add_argument("--allow-mixed", action="store_true", help="allow runs of different judges, benchmarks or categories")
    parser.set_defaults(func=run_leaderboard)


def settings_from_args(args: argparse.Namespace):
    from diffalign.benchmarks.unigenbench_run import BenchSettings

    return BenchSettings(
        out=args.out, judge=args.judge, benchmark=args.benchmark, category=args.category, prompts_dir=args.prompts_dir,
        images=args.images, model=args.model, lora=args.lora, negative_model=args.negative_model,
        negative_base=args.negative_base, merge_weight=args.merge_weight, guidance=args.guidance, steps=args.steps,
        seed=args.seed, resolution=args.resolution, dtype=args.dtype, device=args.device, batch_size=args.batch_size,
        workers=args.workers, max_retries=args.max_retries, timeout=args.timeout, judge_batch_size=args.judge_batch_size,
        api_key_env=args.api_key_env, limit=args.limit, label=args.label, retry_failed=args.retry_failed,
        progress=args.progress_bar,
    )


def run_unigenbench(args: argparse.Namespace) -> int:
    return report_user_errors("bench unigenbench", lambda: _unigenbench(args), debug=getattr(args, "debug", False))


def _unigenbench(args: argparse.Namespace) -> int:
    from diffalign.benchmarks.unigenbench_run import print_summary, run_bench

    results = run_bench(settings_from_args(args))
    print_summary(results, args.out)
    return 0


def run_leaderboard(args: argparse.Namespace) -> int:
    return report_user_errors("bench leaderboard", lambda: _leaderboard(args), debug=getattr(args, "debug", False))


def _leaderboard(args: argparse.Namespace) -> int:
    from diffalign.benchmarks.leaderboard import build_leaderboard

    build_leaderboard(list(args.runs), args.out, allow_mixed=args.allow_mixed)
    print(f"leaderboard of {len(args.runs)} runs: {args.out}")
    return 0
