"""``diffalign users embed``: PPD user embeddings, an argparse sub-command wired in by ``diffalign/cli.py``.

    diffalign users embed --data PAIRS --out DIR [--encoder vlm|clip|vae] [--model PATH_OR_ID] [--shots 4]
        [--chunks-per-user N] [--seed 0] [--device D] [--dtype T] [--batch-size B] [--max-new-tokens 1024]

Reads ``user_image_pairs`` data, cuts each user's usable pairs into disjoint chunks of K shots and
writes one embedding per chunk (``diffalign.data.user_embeddings`` for the rules and the files,
``diffalign.rewards.user_encoders`` for the encoders).

An ``--out`` folder that is missing or empty is written. One that already holds user embeddings made
with the same settings (encoder and its options, --shots, --data, --data-split, --seed,
--chunks-per-user) is written again: the embeddings are recomputed, so a changed source is picked up,
and with an unchanged one they come out the same. Any other non-empty ``--out`` (other settings, or
files that are not user embeddings) is refused, so nothing is overwritten by mistake.

Returns 0 on success and 2, with a one-line message on stderr, for errors a user can cause (every
``diffalign.errors.UserError``); any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from diffalign.errors import UsageError, report_user_errors
from diffalign.options import OptionError

# encoder option -> the encoders it applies to
_ENCODER_ONLY = {"processor": ("clip",), "resolution": ("vae",), "max_new_tokens": ("vlm",)}
_SHARED = ("model", "device", "dtype", "batch_size")
SHOWN_SKIPPED_USERS = 5


def add_users_command(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("users", help="PPD user embeddings from users' few-shot preference pairs",
                                   description="User tools for PPD. `diffalign users embed --help` for the options.")
    parser.set_defaults(func=lambda args: (parser.print_help(sys.stderr), 2)[1])
    commands = parser.add_subparsers(dest="users_command", metavar="embed")
    embed = commands.add_parser(
        "embed", help="one embedding per chunk of K of a user's labelled pairs",
        description="Group each user's labelled, non-tied pairs (user_image_pairs data) into disjoint chunks of --shots "
                    "pairs (shuffled per user with --seed; the last partial chunk is dropped; users with fewer pairs are "
                    "skipped and reported) and write one embedding per chunk to --out: user_embeddings.safetensors [chunks, "
                    "D] and user_embeddings.json (user, chunk and the source rows of its shots). Rerunning with the same "
                    "settings recomputes into the same --out; a non-empty --out made otherwise is refused.")
    files = embed.add_argument_group("data and output")
    files.add_argument("--data", required=True, metavar="PAIRS", help="user_image_pairs data: a jsonl of {prompt, chosen, "
                       "rejected, user} rows, or Pick-a-Pic v2 with user_id (parquet, save_to_disk folder, hub id)")
    files.add_argument("--data-split", default="train", metavar="SPLIT", help="split of a dataset with several (default: train)")
    files.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    files.add_argument("--skip-bad-rows", action="store_true", help="skip and count bad rows instead of failing")
    files.add_argument("--progress-bar", action=argparse.BooleanOptionalAction, default=True, help="show progress bars (default: on)")
    chunking = embed.add_argument_group("chunks")
    chunking.add_argument("--shots", type=int, default=4, metavar="K", help="pairs per chunk (default: 4, the paper's)")
    chunking.add_argument("--chunks-per-user", type=int, metavar="N", help="keep at most N chunks per user (default: all)")
    chunking.add_argument("--seed", type=int, default=0, metavar="S", help="seeds each user's shuffle (default: 0)")
    encoder = embed.add_argument_group("encoder")
    encoder.add_argument("--encoder", default="vlm", metavar="NAME", help="vlm (the paper's: a VLM's hidden state after writing "
                         "a user profile), clip (mean preferred-minus-dispreferred CLIP image feature) or vae (the diffusion "
                         "model's pooled latent difference; offline, the toy world's) (default: vlm)")
    encoder.add_argument("--model", metavar="PATH_OR_ID", help="vlm: an image-text-to-text model (default: "
                         "llava-hf/llava-onevision-qwen2-7b-ov-chat-hf); clip: a CLIPModel (default: openai/clip-vit-large-patch14); "
                         "vae: the diffusers pipeline whose vae/ to use (required)")
    encoder.add_argument("--processor", metavar="PATH_OR_ID", help="clip: the image processor (default: --model)")
    encoder.add_argument("--resolution", type=int, metavar="R", help="vae: image side before encoding (default: the model's own)")
    encoder.add_argument("--max-new-tokens", type=int, metavar="N", help="vlm: the profile's token budget (default: 1024)")
    encoder.add_argument("--batch-size", type=int, metavar="B", help="vlm: chunks per generate call (default: 1); clip, vae: "
                         "images per forward pass (default: 16, 8)")
    encoder.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    encoder.add_argument("--dtype", help="float32 / float16 / bfloat16 (default: vlm bfloat16 on cuda, clip float16 on cuda, "
                         "else float32; vae float32)")
    embed.set_defaults(func=run_users_embed)
    return parser


def run_users_embed(args: argparse.Namespace) -> int:
    return report_user_errors("users embed", lambda: _embed(args), debug=getattr(args, "debug", False))


def encoder_options(args: argparse.Namespace) -> dict:
    """The options of ``--encoder`` from the flags given; an unknown encoder or a flag of another encoder is
    a user error."""
    from diffalign.rewards.user_encoders import user_encoder_class

    user_encoder_class(args.encoder)
    options = {name: getattr(args, name) for name in (*_SHARED, *_ENCODER_ONLY) if getattr(args, name) is not None}
    for name, encoders in _ENCODER_ONLY.items():
        if name in options and args.encoder not in encoders:
            raise UsageError(f"--{name.replace('_', '-')} applies to --encoder {' or '.join(encoders)}, not {args.encoder!r}")
    if args.encoder == "vae" and "model" not in options:
        raise UsageError("--encoder vae needs --model: the diffusers pipeline folder or hub id whose vae/ to use")
    return options


def check_output(out: str, settings: dict | None = None) -> None:
    """Refuse a non-empty ``--out`` unless it holds user embeddings of ``settings`` (given: compare them;
    None: only check that it holds user embeddings at all)."""
    from diffalign.data.user_embeddings import read_settings

    if not os.path.exists(out):
        return
    if not os.path.isdir(out):
        raise UsageError(f"--out {out} is a file; give a folder")
    if not os.listdir(out):
        return
    there = read_settings(out)
    if there is None:
        raise UsageError(f"--out {out} already holds files that are not user embeddings; choose a new or empty folder")
    if settings is not None and there != settings:
        changed = "; ".join(f"{key} {there.get(key)!r} there, {value!r} now" for key, value in settings.items() if there.get(key) != value)
        raise UsageError(f"--out {out} holds user embeddings made with other settings ({changed}); choose another --out, "
                         "or remove it to replace them")


def _embed(args: argparse.Namespace) -> int:
    from diffalign.data.user_embeddings import UserPairs, embedding_settings
    from diffalign.progress import library_progress_bars
    from diffalign.rewards.user_encoders import embed_user_pairs, get_user_encoder

    for name, value in (("shots", args.shots), ("chunks_per_user", args.chunks_per_user)):
        if value is not None and value < 1:
            raise OptionError(name, f"must be >= 1, got {value}")
    options = encoder_options(args)
    check_output(args.out)
    pairs = UserPairs.read(args.data, args.data_split, args.skip_bad_rows, progress=args.progress_bar)
    with library_progress_bars(args.progress_bar):
        encoder = get_user_encoder(args.encoder, **options)
    check_output(args.out, embedding_settings(encoder.describe(), args.shots, args.data, args.data_split, args.seed,
                                              args.chunks_per_user))
    embeddings = embed_user_pairs(pairs, encoder, args.shots, args.seed, args.chunks_per_user, progress=args.progress_bar)
    embeddings.save(args.out)
    print(summary_line(embeddings, pairs.skipped, args.out))
    return 0


def summary_line(embeddings, skipped_rows, out: str) -> str:
    """One line: users and chunks embedded, D, the skipped users (counted, the first few named), the rows left out."""
    users = len(embeddings.users())
    line = (f"embedded {users} user{'s' if users != 1 else ''} ({len(embeddings)} chunks of {embeddings.shots} shots, "
            f"D = {embeddings.dim}) with the {embeddings.encoder['name']} encoder into {out}")
    skipped = list(embeddings.skipped_users)
    if skipped:
        named = ", ".join(skipped[:SHOWN_SKIPPED_USERS]) + (", ..." if len(skipped) > SHOWN_SKIPPED_USERS else "")
        line += f"; skipped {len(skipped)} user{'s' if len(skipped) != 1 else ''} with fewer than {embeddings.shots} usable pairs ({named})"
    if skipped_rows.total:
        line += f"; {skipped_rows.summary()}"
    return line
