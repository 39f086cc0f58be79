"""``diffalign generate``: an argparse sub-command wired in by ``diffalign/cli.py``, a thin layer over
``diffalign.pipelines.generate.generate`` (the options are the fields of ``GenerateSettings``).

Returns 0 on success and 2, with a one-line message on stderr, for errors a user can cause (a bad
option value, a missing prompts file or model, an output folder made with other settings: every
``diffalign.errors.UserError``); any other exception is a bug and propagates with its traceback.
"""

from __future__ import annotations

import argparse

from diffalign.errors import report_user_errors


def add_generate_command(subparsers) -> argparse.ArgumentParser:
    from diffalign.pipelines.generate import DEFAULT_STEPS, DEVICES, DTYPES, RECORDS_FILE, SCHEDULER_ALIASES, SEED_STRIDE

    parser = subparsers.add_parser(
        "generate", help="generate images for prompts (plain or NPO-guided classifier-free guidance)",
        description=f"Generate --images-per-prompt images per prompt into --out as {{prompt_index}}_{{j}}.png with a "
                    f"{RECORDS_FILE} listing (prompt, seed, settings per image), the layout `diffalign score` and "
                    f"`diffalign pairs` read. Image j of prompt i uses seed --seed + {SEED_STRIDE} * i + j. Rerunning "
                    "the same command generates only the images that are missing.",
    )
    model = parser.add_argument_group("model")
    model.add_argument("--model", required=True, help="diffusers SD1.x/2.x, SDXL, SD3.x or FLUX.1 pipeline folder or hub id (the positive model)")
    model.add_argument("--lora", metavar="DIR", help="LoRA folder (pytorch_lora_weights.safetensors, as `diffalign train "
                       "--lora-rank` exports it) fused into --model")
    model.add_argument("--revision", help="revision of --model on the hub")
    model.add_argument("--negative-model", metavar="NEG", help="NPO: the negative branch's model, a pipeline folder or hub "
                       "id whose unet/ is the trained negative (self-npo, full diffusion-npo), or a LoRA folder "
                       "(diffusion-npo --lora-rank) fused onto --negative-base; without it: plain classifier-free guidance")
    model.add_argument("--negative-base", metavar="BASE", help="the model the negative was trained from (default: --model)")
    model.add_argument("--merge-weight", type=float, metavar="M", help="negative weights = trained negative + (1 - M) "
                       "(positive - base); 1 uses the trained negative as is (default: 0, the official default)")
    personal = parser.add_argument_group("personalisation (PPD)")
    personal.add_argument("--user-adapter", metavar="RUN", help="a `diffalign train --method ppd` output folder (user_adapter.safetensors)")
    personal.add_argument("--user-embeddings", metavar="EMB", help="a `diffalign users embed` folder, for --user and --interpolate")
    personal.add_argument("--user", metavar="U", help="generate for user U of --user-embeddings (the mean of its chunks' embeddings)")
    personal.add_argument("--interpolate", nargs=2, metavar=("A", "B"), help="generate for (1 - alpha) u_A + alpha u_B")
    personal.add_argument("--alpha", type=float, metavar="a", help="the interpolation weight of user B")
    personal.add_argument("--user-shots", metavar="FILE", help="a user's example pairs (jsonl: prompt, chosen, rejected), embedded "
                          "on the fly with the adapter's encoder")
    personal.add_argument("--user-scale", type=float, metavar="LAMBDA", help="personalisation strength (default: the training "
                          "value, 1; 0 is the base model)")
    sampling = parser.add_argument_group("prompts and sampling")
    sampling.add_argument("--prompts", "--prompt", dest="prompts", required=True, metavar="FILE_OR_TEXT",
                          help='.txt file (one prompt per non-empty line), .jsonl file ({"prompt": ...} per line) or one prompt')
    sampling.add_argument("--negative-prompt", metavar="TEXT", help="conditioning of the negative branch (default: the "
                          "pipeline's: the empty prompt for SD, zero embeddings for SDXL)")
    sampling.add_argument("--images-per-prompt", type=int, default=1, metavar="K", help=f"1 to {SEED_STRIDE} (default: 1)")
    sampling.add_argument("--guidance", type=float, metavar="W", help="guidance scale w in eps_neg + w (eps_pos - eps_neg), "
                          "any real value (default: 7.5 for SD, 5 for SDXL)")
    sampling.add_argument("--steps", type=int, default=DEFAULT_STEPS, metavar="N", help=f"denoising steps (default: {DEFAULT_STEPS})")
    sampling.add_argument("--seed", type=int, default=0, metavar="S", help="seed of image 0 of prompt 0 (default: 0)")
    sampling.add_argument("--scheduler", metavar="NAME", help="diffusers scheduler class or one of "
                          f"{', '.join(SCHEDULER_ALIASES)} (default: the model's own)")
    sampling.add_argument("--height", type=int, help="image height, a multiple of 8 (default: the model's resolution)")
    sampling.add_argument("--width", type=int, help="image width, a multiple of 8 (default: the model's resolution)")
    run = parser.add_argument_group("output and device")
    run.add_argument("--out", required=True, metavar="DIR", help="output folder (created; rerunning into it resumes)")
    run.add_argument("--overwrite", action="store_true", help=f"start over: remove {RECORDS_FILE} and the {{i}}_{{j}} "
                     "images in --out first (other files stay)")
    run.add_argument("--batch-size", type=int, default=1, metavar="B", help="images per pipeline call (default: 1; larger is "
                     "faster on a GPU, and equal to batch 1 up to float rounding)")
    run.add_argument("--dtype", default="float32", choices=tuple(DTYPES), help="weights dtype (default: float32)")
    run.add_argument("--device", default="auto", choices=DEVICES, help="default: cuda when available, else cpu")
    run.add_argument("--progress-bar", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar (default: on)")
    parser.set_defaults(func=run_generate)
    return parser


def settings_from_args(args: argparse.Namespace):
    from diffalign.pipelines.generate import GenerateSettings

    return GenerateSettings(
        model=args.model, prompts=args.prompts, out=args.out, images_per_prompt=args.images_per_prompt,
        guidance=args.guidance, steps=args.steps, seed=args.seed, lora=args.lora, negative_model=args.negative_model,
        negative_base=args.negative_base, merge_weight=args.merge_weight, negative_prompt=args.negative_prompt,
        batch_size=args.batch_size, height=args.height, width=args.width, scheduler=args.scheduler, dtype=args.dtype,
        device=args.device, revision=args.revision, progress=args.progress_bar, overwrite=args.overwrite,
        user_adapter=args.user_adapter, user_embeddings=args.user_embeddings, user=args.user, interpolate=args.interpolate,
        alpha=args.alpha, user_shots=args.user_shots, user_scale=args.user_scale,
    )


def run_generate(args: argparse.Namespace) -> int:
    return report_user_errors("generate", lambda: _generate(args), debug=getattr(args, "debug", False))


def _generate(args: argparse.Namespace) -> int:
    from diffalign.pipelines.generate import generate

    summary = generate(settings_from_args(args))
    print(f"generated {summary['generated']} images, skipped {summary['skipped']} that existed, in {summary['seconds']:.1f} s: "
          f"{summary['out']} (listing: {summary['records']})")
    return 0
