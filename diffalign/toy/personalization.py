"""``diffalign demo --method ppd``: one personalised model for several toy users (``diffalign.toy.users``).

Steps (each measured by the users' own judges, never by the model):

1. **Candidates**: ``candidates`` images per training prompt from the base model, as in the other
   demos (``generation``).
2. **Users' pairs**: every user (training and held-out) scores the same candidates with their judge;
   per prompt, their best against their worst (``rewards.pairs.best_vs_worst``). The training users'
   pairs form one ``user_image_pairs`` jsonl (``pairs.jsonl``); each held-out user keeps ``SHOTS``
   pairs drawn at random (``heldout_shots.jsonl``), and nothing else.
3. **Embed**: ``diffalign users embed`` as a function with the toy encoder (``users.ToyUserEncoder``):
   the training users' pairs cut into chunks of ``SHOTS``, one embedding per chunk
   (``user_embeddings/``); each held-out user's one chunk (``heldout_embeddings/``).
4. **Align**: ``diffalign train --method ppd`` on the training users' pairs with their embeddings.
5. **Evaluate**, on held-out prompts with the same seeds for every model: the base, and the
   personalised model conditioned on each user (a training user: the mean of their chunks'
   embeddings; a held-out user: the embedding of their four shots). ``matrix[a][b]`` is the win rate
   over the base, by user b's judge, of the model conditioned on user a: the diagonal is each user's
   own win rate, the rest says whether a user gets *their* images rather than generally better ones.
6. **Interpolate** between two training users (``INTERPOLATION``): u = (1 - alpha) u_A + alpha u_B for
   alpha in ``ALPHAS``; both users' mean rewards against alpha (``interpolation.png``).

Outputs in ``output_dir``: ``report.md``, ``report.json``, ``matrix.png``, ``interpolation.png``,
``curves.png``, ``pairs.jsonl`` + ``candidates/``, the embeddings and ``model/`` (the user adapter).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch

from diffalign.errors import UsageError
from diffalign.toy.alignment import align, toy_train_config, training_record
from diffalign.toy.evaluation import EVAL_IMAGE_SEED, check_eval_split, evaluation_prompts, mean, win_rate
from diffalign.toy.generation import candidate_sampling, generate_per_prompt
from diffalign.toy.preset import SAMPLING
from diffalign.toy.reporting import save_training_curves
from diffalign.toy.users import HELD_OUT_USERS, TRAIN_USERS, ToyUser, ToyUserEncoder, users_scores

SHOTS = 4
INTERPOLATION = ("big", "high")
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
CANDIDATE_SEED_STRIDE = 1_000_000  # as the other demos: candidates of --seed s start at seed s * 1_000_000


def user_pairs(candidates, paths: Sequence[Path], users: Sequence[ToyUser], min_margin: float = 0.0,
               pairs_per_prompt: int = 1) -> dict[str, tuple]:
    """Per user, their best-vs-worst pair per prompt (i-th best vs i-th worst for i < ``pairs_per_prompt``)
    by their judge: ``{user: (pairs, statistics)}``."""
    from diffalign.rewards.pairs import best_vs_worst
    from diffalign.rewards.records import ImageRecord

    prompts = candidates.image_prompts
    records = [ImageRecord(str(path), prompt, f"candidate {index}") for index, (path, prompt) in enumerate(zip(paths, prompts))]
    scores = users_scores(users, candidates.images, prompts)
    return {user.name: best_vs_worst(records, scores[user.name], scorer_name=f"toy user {user.name}", min_margin=min_margin,
                                     pairs_per_prompt=pairs_per_prompt) for user in users}


def check_enough_pairs(pair_counts: dict[str, int]) -> None:
    """A training user needs two chunks of shots (a pair trains on a chunk that does not hold it), a
    held-out user one: a ``UsageError`` naming --train-prompts otherwise."""
    for user in TRAIN_USERS + HELD_OUT_USERS:
        needed = 2 * SHOTS if user in TRAIN_USERS else SHOTS
        if pair_counts[user.name] < needed:
            raise UsageError(f"toy user {user.name} has {pair_counts[user.name]} pairs, fewer than the {needed} it needs "
                             f"(chunks of {SHOTS} shots): raise --train-prompts (one pair per prompt at most)")


def write_user_pairs(path: Path, pairs_by_user: dict[str, list]) -> int:
    """One ``user_image_pairs`` jsonl (image paths relative to it, users interleaved prompt by prompt)."""
    rows = [{**pair.to_row(str(path.parent)), "user": user} for user, pairs in pairs_by_user.items() for pair in pairs]
    rows.sort(key=lambda row: row["prompt"])  # batches then mix users, as the spec's multi-user DPO does
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return len(rows)


def embed(data: Path, out: Path, seed: int, chunks_per_user=None, progress: bool = False):
    from diffalign.data.user_embeddings import UserPairs
    from diffalign.rewards.user_encoders import embed_user_pairs

    embeddings = embed_user_pairs(UserPairs.read(str(data), progress=progress), ToyUserEncoder(), shots=SHOTS, seed=seed,
                                  chunks_per_user=chunks_per_user)
    embeddings.save(str(out))
    return embeddings


def personalised_pipeline(base: str, adapter: Path):
    from diffalign.pipelines.personalized import StableDiffusionPPDPipeline

    pipe = StableDiffusionPPDPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
    pipe.load_user_adapter(str(adapter))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_ppd_demo(config) -> dict:
    """The steps of the module docstring with a ``DemoConfig``; returns ``report.json``'s content."""
    from diffalign.progress import library_progress_bars
    from diffalign.toy.alignment import check_method

    check_method(config.method, ("user_image_pairs",), data="user-tagged image pairs", demo="the personalisation demo")
    check_eval_split(config.eval_split)
    with library_progress_bars(config.progress):
        return _run(config)


def _run(config) -> dict:
    from diffalign.toy.demo import start_demo

    clock, output, base, base_pipe, prompts = start_demo(config)
    candidates = generate_per_prompt(base_pipe, prompts, config.candidates, config.seed * CANDIDATE_SEED_STRIDE,
                                     batch_size=config.generation_batch, progress=config.progress, desc="candidates",
                                     **candidate_sampling(config.candidate_guidance, config.candidate_eta))
    paths = candidates.save(output / "candidates")
    clock.lap("generate")

    picked = user_pairs(candidates, paths, TRAIN_USERS + HELD_OUT_USERS, config.min_margin, config.pairs_per_prompt)
    pairs = {name: found for name, (found, _) in picked.items()}
    pair_counts = {name: stats.pairs for name, (_, stats) in picked.items()}
    check_enough_pairs(pair_counts)
    data = output / "pairs.jsonl"
    write_user_pairs(data, {user.name: pairs[user.name] for user in TRAIN_USERS})
    shots = {user.name: random.Random(f"{config.seed}/{user.name}").sample(pairs[user.name], SHOTS) for user in HELD_OUT_USERS}
    held_out_data = output / "heldout_shots.jsonl"
    write_user_pairs(held_out_data, shots)
    clock.lap("judge+pair")

    embeddings = embed(data, output / "user_embeddings", config.seed, progress=config.progress)
    held_out_embeddings = embed(held_out_data, output / "heldout_embeddings", config.seed, chunks_per_user=1)
    clock.lap("embed")

    method_args = {"user_embeddings": str(output / "user_embeddings"), **config.method_args}
    train_config = toy_train_config(config.method, base, data, output / "model", steps=config.steps, batch_size=config.batch_size,
                                    seed=config.seed if config.train_seed is None else config.train_seed,
                                    learning_rate=config.learning_rate, method_args=method_args, progress=config.progress)
    train_summary = align(train_config)
    clock.lap("align")
    save_training_curves(output / "curves.png", output / "model" / "metrics.jsonl", f"{config.method} training on the toy world")

    user_embedding = {user.name: embeddings.user_mean(user.name) for user in TRAIN_USERS}
    user_embedding.update({user.name: held_out_embeddings.user_mean(user.name) for user in HELD_OUT_USERS})
    eval_prompts = evaluation_prompts(config.eval_split, config.eval_prompts, prompts)
    evaluation = evaluate_users(base_pipe, personalised_pipeline(base, output / "model"), eval_prompts, user_embedding,
                                config.eval_seeds, config.generation_batch, config.progress)
    clock.lap("evaluate")
    interpolation = interpolate(evaluation["pipe"], eval_prompts, user_embedding, config.eval_seeds, config.generation_batch,
                                config.progress)
    clock.lap("interpolate")

    report = {
        "method": config.method,
        "eval_split": config.eval_split,
        "n_prompts": len(eval_prompts),
        "n_comparisons": len(eval_prompts) * config.eval_seeds,
        "users": {user.name: {"kind": "train" if user in TRAIN_USERS else "held-out", "weights": user.weights,
                              "pairs": pair_counts[user.name] if user in TRAIN_USERS else SHOTS,
                              **evaluation["per_user"][user.name]} for user in TRAIN_USERS + HELD_OUT_USERS},
        "matrix": evaluation["matrix"],
        "matrix_summary": matrix_summary(evaluation["matrix"]),
        "interpolation": interpolation,
        "embeddings": {"encoder": embeddings.encoder, "shots": SHOTS, "train_chunks": len(embeddings)},
        "sampling": SAMPLING,
        "train": training_record(train_summary),
        "config": asdict(config),
        "torch_threads": torch.get_num_threads(),
        "stage_seconds": clock.stages,
        "seconds": clock.total,
    }
    write_ppd_report(output, report)
    return report


def evaluate_users(base_pipe, pipe, prompts: Sequence[str], user_embedding: dict[str, torch.Tensor], seeds: int,
                   batch_size: int, progress: bool) -> dict:
    """Per user: the personalised images (same seeds as the base's), every user's judge on them, the
    win rates over the base (``matrix[conditioned on][judged by]``) and the mean rewards."""
    users = TRAIN_USERS + HELD_OUT_USERS
    judges = [user.name for user in users]
    options = dict(batch_size=batch_size, progress=progress)
    base = generate_per_prompt(base_pipe, prompts, seeds, EVAL_IMAGE_SEED, desc="eval base", **options)
    base_scores = {name: score.tolist() for name, score in users_scores(users, base.images, base.image_prompts).items()}
    matrix, per_user = {}, {}
    for conditioned, embedding in user_embedding.items():
        images = generate_per_prompt(pipe, prompts, seeds, EVAL_IMAGE_SEED, desc=f"eval {conditioned}", user_embedding=embedding,
                                     **options)
        scores = {name: score.tolist() for name, score in users_scores(users, images.images, images.image_prompts).items()}
        matrix[conditioned] = {judged: win_rate(scores[judged], base_scores[judged])["win_rate"] for judged in judges}
        own = win_rate(scores[conditioned], base_scores[conditioned])
        per_user[conditioned] = {"win_rate": own["win_rate"], "win_rate_stderr": own["win_rate_stderr"],
                                 "reward_before": mean(base_scores[conditioned]), "reward_after": mean(scores[conditioned])}
    return {"matrix": matrix, "per_user": per_user, "pipe": pipe}


def matrix_summary(matrix: dict[str, dict[str, float]]) -> dict:
    """The diagonal's mean against the off-diagonal's, and for how many judges (columns) the model
    conditioned on their own user beats every other user's conditioning."""
    names = list(matrix)
    diagonal = [matrix[name][name] for name in names]
    off = [matrix[a][b] for a in names for b in names if a != b]
    own_best = [b for b in names if all(matrix[b][b] > matrix[a][b] for a in names if a != b)]
    return {"diagonal_mean": mean(diagonal), "off_diagonal_mean": mean(off), "own_best": own_best, "judges": len(names)}


def interpolate(pipe, prompts: Sequence[str], user_embedding: dict[str, torch.Tensor], seeds: int, batch_size: int,
                progress: bool) -> dict:
    """Both interpolation users' mean rewards on the images for u = (1 - alpha) u_A + alpha u_B."""
    from diffalign.pipelines.personalized import interpolate_users

    first, second = INTERPOLATION
    users = [user for user in TRAIN_USERS if user.name in INTERPOLATION]
    rewards = {name: [] for name in INTERPOLATION}
    for alpha in ALPHAS:
        embedding = interpolate_users(user_embedding[first], user_embedding[second], alpha)
        images = generate_per_prompt(pipe, prompts, seeds, EVAL_IMAGE_SEED, batch_size=batch_size, progress=progress,
                                     desc=f"alpha {alpha}", user_embedding=embedding)
        for name, score in users_scores(users, images.images, images.image_prompts).items():
            rewards[name].append(mean(score.tolist()))
    return {"users": list(INTERPOLATION), "alphas": list(ALPHAS), "rewards": rewards}


def write_ppd_report(output: Path, report: dict) -> None:
    """``report.json``, ``report.md``, ``matrix.png`` and ``interpolation.png``."""
    from diffalign.toy.plots import interpolation_curves, win_rate_matrix

    (output / "report.json").write_text(json.dumps(report, indent=2))
    names = list(report["matrix"])
    win_rate_matrix(names, [[report["matrix"][a][b] for b in names] for a in names]).save(output / "matrix.png")
    curves = report["interpolation"]
    baselines = {user: report["users"][user]["reward_before"] for user in curves["users"]}
    interpolation_curves(curves["alphas"], curves["rewards"], baselines, *curves["users"]).save(output / "interpolation.png")
    lines = [f"# {report['method']} on the toy world: one model, {len(names)} users", "",
             f"{report['n_prompts']} {report['eval_split']} prompts x {report['n_comparisons'] // max(report['n_prompts'], 1)} "
             "seeds, the same seeds for the base and every conditioned model; each user's own judge.", "",
             "| user | kind | tastes | pairs | win rate over base (own judge) | mean reward base -> personalised |",
             "|---|---|---|---|---|---|"]
    for name, user in report["users"].items():
        tastes = ", ".join(f"{k} {v:g}" for k, v in user["weights"].items() if v)
        lines.append(f"| {name} | {user['kind']} | {tastes} | {user['pairs']} | {user['win_rate']:.3f} +- {user['win_rate_stderr']:.3f} | "
                     f"{user['reward_before']:.4f} -> {user['reward_after']:.4f} |")
    lines += ["", "Cross-user matrix: win rate over the base of the model conditioned on the row's user, judged by the "
              "column's user.", "", "| conditioned on \\ judged by | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for a in names:
        lines.append(f"| {a} | " + " | ".join(f"**{report['matrix'][a][b]:.3f}**" if a == b else f"{report['matrix'][a][b]:.3f}"
                                              for b in names) + " |")
    summary = report["matrix_summary"]
    lines += ["", f"Diagonal mean {summary['diagonal_mean']:.3f} against off-diagonal mean {summary['off_diagonal_mean']:.3f}; "
              f"the model conditioned on the judge's own user beats every other conditioning for {len(summary['own_best'])} of "
              f"{summary['judges']} judges ({', '.join(summary['own_best']) or 'none'}).",
              "", "![cross-user matrix](matrix.png)", ""]
    lines += ["", f"Interpolation {curves['users'][0]} -> {curves['users'][1]}: mean reward of each against alpha "
              "(`interpolation.png`).", "", "![interpolation](interpolation.png)", "", "| alpha | " + " | ".join(curves["users"]) + " |", "|---|---|---|"]
    for index, alpha in enumerate(curves["alphas"]):
        lines.append(f"| {alpha:g} | " + " | ".join(f"{curves['rewards'][u][index]:.4f}" for u in curves["users"]) + " |")
    train = report["train"]
    lines += ["", f"Training: {train['steps']} steps, batch {train['batch_size']}, lr {train['learning_rate']:g}, "
              f"options {train['method_args']}; {train['seconds']:.0f} s.",
              f"Embeddings: {report['embeddings']['encoder']} encoder, {report['embeddings']['shots']} shots per chunk, "
              f"{report['embeddings']['train_chunks']} training chunks.",
              f"Total {report['seconds']:.0f} s with {report['torch_threads']} torch thread(s); stages: {report['stage_seconds']}.", ""]
    (output / "report.md").write_text("\n".join(lines))
