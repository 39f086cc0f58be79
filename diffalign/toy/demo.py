"""``diffalign demo``: the whole alignment loop on the toy world, on a CPU, with measured gains.

1. **Generate**: ``candidates`` images per training prompt from the base toy model (each image its own
   seed; prompts from the training split only) with the preset's 20-step DDIM sampler, except eta = 1
   (stochastic steps: more diverse candidates, larger judge margins) and guidance scale 2.5 instead
   of the evaluation's 3.0. Training the conditional model on guided samples and then guiding again at
   sampling time compounds the guidance: plain SFT on the best of 8 candidates drawn at 3.0 fell to a
   0.28 validation win rate (colours drift off the palette). Averaged over training seeds on the
   validation split, candidates at 2.0 / 2.5 / 2.75 / 3.0 gave MaPO 0.647 / 0.667 / 0.625 / 0.609 and
   Diffusion-DPO 0.708 / 0.729 / 0.717 / 0.703.
2. **Judge**: score every candidate with the toy judge (``diffalign.toy.judge``, fixed before any
   training).
3. **Pairs**: per prompt the best against the worst candidate, kept only if strictly better
   (``diffalign.rewards.pairs.best_vs_worst``), written as the preference jsonl ``pairs.jsonl``.
4. **Align**: ``diffalign.training.train`` with ``--method`` (any registered diffusion method whose
   data contract is image pairs, scored image pairs or chosen images) on that jsonl.
5. **Evaluate**: on held-out prompts (never seen in pretraining nor in alignment), base and aligned
   models generate from the *same* seeds; the judge scores both. Reported: mean reward before/after,
   and the win rate of aligned over base (ties count 1/2), with its standard error.

The evaluation protocol (prompts, seeds, sampler, judge) is a constant of this module
(``EVAL_PROMPT_SEED``, ``EVAL_IMAGE_SEED``, ``preset.SAMPLING``); no option of a method changes it.

Measured with the shipped preset and these defaults (1 torch thread, 107 held-out prompts x 2
seeds): Diffusion-DPO wins 0.678 +- 0.032 (reward 0.8304 -> 0.8392) in 143 s, meeting the 0.65
target (training seeds 0-3 on the same pairs: mean 0.684); MaPO wins 0.579 +- 0.034 (0.8304 ->
0.8362) in 133 s, short of it (seeds 0-3: mean 0.609). MaPO has no reference model: its margin term
compares absolute denoising errors, a third of the pairs stay misordered, and it changes each image
more (per-image reward change s.d. 0.032 vs 0.023), so a similar mean gain wins fewer paired
comparisons. The settings (320 prompts, guidance 2.5, ``TOY_TRAINING``) and the runs that chose
them on the validation split are in the README's toy-world section.

Outputs in ``output_dir``: ``report.md``, ``report.json``, ``grid.png`` (base vs aligned, same
seeds), ``curves.png`` (loss and implicit accuracy over steps), ``pairs.jsonl`` + ``candidates/``,
``eval/`` (every evaluation image and ``eval.jsonl`` with its score) and ``model/`` (the aligned
pipeline, loadable with ``StableDiffusionPipeline.from_pretrained``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from diffalign.toy import world
from diffalign.toy.judge import WEIGHTS, ToyJudge, judge_terms
from diffalign.toy.preset import SAMPLING, TOY_MODEL_DIR, generate, load_toy_pipeline

EVAL_PROMPT_SEED = 20240601  # which held-out prompts, in which order
EVAL_IMAGE_SEED = 10_000_000  # evaluation image j of prompt i uses seed EVAL_IMAGE_SEED + 1000 * i + j
FITTING_FORMATS = ("image_pairs", "scored_image_pairs", "chosen_images")
EVAL_SPLITS = ("held-out", "validation")

# Training settings per method on the toy preset (everything else: the method's own defaults and the
# TrainConfig defaults). Chosen with ``--eval-split validation`` (training-split prompts that built no
# pair), never on the held-out prompts; the runs that chose them are listed in the README.
TOY_TRAINING: dict[str, dict[str, Any]] = {
    "diffusion-dpo": {"learning_rate": 2e-5, "method_args": {"beta": 5000.0, "caption_dropout": 0.0}},
    "mapo": {"learning_rate": 1e-5, "method_args": {}},
    "sft": {"learning_rate": 1e-5, "method_args": {}},
}
DEFAULT_TOY_LEARNING_RATE = 1e-5


@dataclass
class DemoConfig:
    method: str = "diffusion-dpo"
    output_dir: str = "runs/demo"
    model: Optional[str] = None  # default: the shipped preset (diffalign/toy/assets/toy-sd)
    train_prompts: int = 320  # drawn from the training split (433 captions; the other 113 serve --eval-split validation)
    candidates: int = 8  # K images per training prompt
    pairs_per_prompt: int = 1  # i-th best against i-th worst candidate, i < pairs_per_prompt (1: best vs worst)
    min_margin: float = 0.0  # a pair is kept only if its judge-score margin is > 0 and >= min_margin
    eval_prompts: int = 107  # held-out prompts (the split has 107)
    eval_seeds: int = 2  # images per held-out prompt, same seeds for base and aligned
    eval_split: str = "held-out"  # or "validation": unused training prompts, for choosing settings
    steps: int = 300
    batch_size: int = 16
    learning_rate: Optional[float] = None  # default: TOY_TRAINING[method] or DEFAULT_TOY_LEARNING_RATE
    method_args: dict[str, Any] = field(default_factory=dict)  # overrides of TOY_TRAINING's
    candidate_guidance: Optional[float] = 2.5  # CFG scale for the candidates (below the evaluation's 3.0, see step 1); None: preset.SAMPLING's
    candidate_eta: Optional[float] = 1.0  # DDIM eta for the candidates (1: stochastic, more diverse); None: preset.SAMPLING's
    generation_batch: int = 64
    grid_prompts: int = 8
    seed: int = 0  # picks the training prompts and the candidates' seeds, and seeds the training unless train_seed is set
    train_seed: Optional[int] = None  # the training's seed alone (same pairs, other batches and noise)
    threads: Optional[int] = 1  # torch.set_num_threads (1: robust on shared machines, deterministic); None keeps torch's default
    progress: bool = True


def check_method(name: str):
    """The method class, or a ``ValueError`` listing the methods that fit the demo's data."""
    from diffalign.methods.base import registered_methods

    methods = registered_methods()
    fitting = sorted(n for n, m in methods.items() if m.modality == "diffusion" and m.data_format in FITTING_FORMATS)
    if name not in fitting:
        reason = "is not a registered method" if name not in methods else f"does not train on image pairs ({methods[name].data_format})"
        raise ValueError(f"--method {name!r} {reason}; methods that fit the demo: {', '.join(fitting)}")
    return methods[name]


def check_eval_split(split: str) -> None:
    """A ``ValueError`` naming the valid splits unless ``split`` is one of ``EVAL_SPLITS``."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"--eval-split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")


def win_rate(after: list[float], before: list[float]) -> dict[str, float]:
    """Wins, losses, ties of ``after`` over ``before`` (paired), the win rate (ties 1/2) and its standard error."""
    wins = sum(a > b for a, b in zip(after, before))
    losses = sum(a < b for a, b in zip(after, before))
    n = len(after)
    ties = n - wins - losses
    rate = (wins + 0.5 * ties) / n if n else float("nan")
    return {"win_rate": rate, "wins": wins, "losses": losses, "ties": ties,
            "win_rate_stderr": math.sqrt(rate * (1 - rate) / n) if n else float("nan")}


def _mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else float("nan")


def _term_means(images, prompts) -> dict[str, float]:
    terms = [judge_terms(image, prompt) for image, prompt in zip(images, prompts)]
    return {name: _mean(getattr(t, name) for t in terms) for name in WEIGHTS}


class _Clock:
    def __init__(self):
        self.started = time.perf_counter()
        self.stages: dict[str, float] = {}
        self._last = self.started

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.stages[name] = round(now - self._last, 2)
        self._last = now

    @property
    def total(self) -> float:
        return round(time.perf_counter() - self.started, 2)


def make_pairs(pipe, prompts: list[str], config: DemoConfig, output: Path, judge: ToyJudge) -> tuple[Path, dict]:
    """Steps 1-3: candidates, scores, best-vs-worst pairs; returns the jsonl path and statistics."""
    from diffalign.rewards.pairs import best_vs_worst, write_pairs
    from diffalign.rewards.records import ImageRecord

    k = config.candidates
    all_prompts = [p for p in prompts for _ in range(k)]
    seeds = [config.seed * 1_000_000 + 1000 * i + j for i in range(len(prompts)) for j in range(k)]
    sampling = {}
    if config.candidate_guidance is not None:
        sampling["guidance_scale"] = config.candidate_guidance
    if config.candidate_eta is not None:
        sampling["eta"] = config.candidate_eta
    images = generate(pipe, all_prompts, seeds, batch_size=config.generation_batch, progress=config.progress, desc="candidates", **sampling)
    folder = output / "candidates"
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for index, (image, prompt) in enumerate(zip(images, all_prompts)):
        path = folder / f"{index // k:04d}_{index % k}.png"
        image.save(path)
        records.append(ImageRecord(str(path), prompt, f"candidate {index}"))
    scores = judge.score(images, all_prompts)
    pairs, _ = best_vs_worst(records, scores, scorer_name="toy", min_margin=config.min_margin, pairs_per_prompt=config.pairs_per_prompt)
    jsonl = output / "pairs.jsonl"
    write_pairs(pairs, str(jsonl))
    margins = [p.chosen_score - p.rejected_score for p in pairs]
    return jsonl, {
        "train_prompts": len(prompts),
        "candidates_per_prompt": k,
        "candidate_sampling": {**SAMPLING, **sampling},
        "candidate_reward_mean": float(scores.mean()),
        "pairs": len(pairs),
        "prompts_without_pair": len(prompts) - len({p.prompt for p in pairs}),
        "mean_pair_margin": _mean(margins),
    }


def align(config: DemoConfig, base: str, data: Path, output: Path) -> dict:
    """Step 4: ``diffalign.training.train`` on the pairs; returns its summary."""
    from diffalign.training import TrainConfig, train

    toy = TOY_TRAINING.get(config.method, {})
    method_args = {**toy.get("method_args", {}), **config.method_args}
    learning_rate = config.learning_rate or toy.get("learning_rate", DEFAULT_TOY_LEARNING_RATE)
    train_config = TrainConfig(
        method=config.method,
        model=base,
        data=str(data),
        output_dir=str(output / "model"),
        overwrite=True,  # the demo's own folder: a second demo into the same --output-dir replaces its model
        method_args=method_args,
        resolution=world.RESOLUTION,
        random_flip=False,  # a flip turns "on the left" into "on the right"
        center_crop=True,
        learning_rate=learning_rate,
        lr_scheduler="constant_with_warmup",
        lr_warmup_steps=max(1, config.steps // 10),
        max_steps=config.steps,
        train_batch_size=config.batch_size,
        seed=config.seed if config.train_seed is None else config.train_seed,
        checkpointing_steps=config.steps,
        checkpoints_total_limit=1,
        progress_bar=config.progress,
    )
    summary = train(train_config)
    summary["learning_rate"] = learning_rate
    summary["method_args"] = method_args
    return summary


def evaluation_prompts(split: str, n: int, pair_prompts: list[str]) -> list[str]:
    """``held-out``: the held-out split (the reported evaluation). ``validation``: training-split
    prompts that built no pair, for choosing training settings without looking at held-out results."""
    check_eval_split(split)
    train, held_out = world.split_prompts()
    if split == "held-out":
        pool = held_out
    else:
        used = set(pair_prompts)
        pool = [p for p in train if p not in used]
    if not pool:
        raise ValueError("no validation prompts left: every training prompt built pairs (lower --train-prompts)")
    return world.sample_prompts(pool, n, seed=EVAL_PROMPT_SEED)


def evaluate(base_pipe, aligned_pipe, prompts: list[str], config: DemoConfig, output: Path, judge: ToyJudge) -> dict:
    """Step 5: evaluation prompts, same seeds for both models; every image saved with its score."""
    all_prompts = [p for p in prompts for _ in range(config.eval_seeds)]
    seeds = [EVAL_IMAGE_SEED + 1000 * i + j for i in range(len(prompts)) for j in range(config.eval_seeds)]
    base_images = generate(base_pipe, all_prompts, seeds, batch_size=config.generation_batch, progress=config.progress, desc="eval base")
    aligned_images = generate(aligned_pipe, all_prompts, seeds, batch_size=config.generation_batch, progress=config.progress, desc="eval aligned")
    before = judge.score(base_images, all_prompts).tolist()
    after = judge.score(aligned_images, all_prompts).tolist()

    folder = output / "eval"
    for name in ("base", "aligned"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    with open(folder / "eval.jsonl", "w", encoding="utf-8") as handle:
        for index, (prompt, seed) in enumerate(zip(all_prompts, seeds)):
            base_images[index].save(folder / "base" / f"{index:04d}.png")
            aligned_images[index].save(folder / "aligned" / f"{index:04d}.png")
            handle.write(json.dumps({"prompt": prompt, "seed": seed, "base": f"base/{index:04d}.png", "aligned": f"aligned/{index:04d}.png",
                                     "base_score": before[index], "aligned_score": after[index]}) + "\n")
    result = {
        "n_prompts": len(prompts),
        "n_comparisons": len(all_prompts),
        "reward_before": _mean(before),
        "reward_after": _mean(after),
        **win_rate(after, before),
        "terms_before": _term_means(base_images, all_prompts),
        "terms_after": _term_means(aligned_images, all_prompts),
    }
    _save_grid(output, all_prompts, base_images, aligned_images, before, after, config)
    return result


def _save_grid(output, prompts, base_images, aligned_images, before, after, config) -> None:
    from diffalign.toy.plots import comparison_grid

    step = max(1, config.eval_seeds)
    picks = list(range(0, len(prompts), step))[: config.grid_prompts]  # first seed of the first prompts
    grid = comparison_grid([prompts[i] for i in picks], [base_images[i] for i in picks], [aligned_images[i] for i in picks],
                           [before[i] for i in picks], [after[i] for i in picks])
    grid.save(output / "grid.png")


def _save_curves(output: Path, metrics_path: Path, method: str) -> None:
    from diffalign.toy.plots import curves

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()] if metrics_path.is_file() else []
    series = {"loss": [(r["step"], r.get("loss")) for r in rows]}
    series["implicit accuracy (rewards/accuracies)"] = [(r["step"], r.get("rewards/accuracies")) for r in rows]
    curves(series, title=f"{method} training on the toy world").save(output / "curves.png")


def write_report(output: Path, report: dict) -> None:
    (output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    e = report
    terms = "\n".join(f"| {name} | {e['terms_before'][name]:.3f} | {e['terms_after'][name]:.3f} |" for name in WEIGHTS)
    md = f"""# diffalign demo: {e['method']} on the toy world

Evaluation prompts ({e['eval_split']} split): {e['n_prompts']} ({e['n_comparisons']} images per model, the same seeds for base and aligned), judged by the toy judge.

| | base | aligned |
|---|---|---|
| mean reward | {e['reward_before']:.4f} | {e['reward_after']:.4f} |

**Win rate of aligned over base: {e['win_rate']:.3f}** (+- {e['win_rate_stderr']:.3f} s.e.; {e['wins']} wins, {e['losses']} losses, {e['ties']} ties; ties count 1/2).

Judge terms (means, higher is better):

| term | base | aligned |
|---|---|---|
{terms}

Training data: {e['pairs']['train_prompts']} training prompts x {e['pairs']['candidates_per_prompt']} candidates -> {e['pairs']['pairs']} best-vs-worst pairs (mean judge margin {e['pairs']['mean_pair_margin']:.3f}).
Training: {e['train']['steps']} steps of `{e['method']}`, lr {e['train']['learning_rate']:g}, options {json.dumps(e['train']['method_args'])}.
Time: {e['seconds']:.1f} s in all ({', '.join(f'{k} {v:.1f} s' for k, v in e['stage_seconds'].items())}), torch threads {e['torch_threads']}.

![base vs aligned](grid.png)

![training curves](curves.png)
"""
    (output / "report.md").write_text(md)


def run_demo(config: DemoConfig) -> dict:
    """Run the five steps and write the report; returns ``report.json``'s content."""
    import diffalign  # noqa: F401  (torchvision CPU shim)
    from diffalign.training.progress import library_progress_bars

    with library_progress_bars(config.progress):
        return _run_demo(config)


def _run_demo(config: DemoConfig) -> dict:
    check_method(config.method)
    check_eval_split(config.eval_split)
    if config.threads:
        torch.set_num_threads(config.threads)
    clock = _Clock()
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    base = str(config.model or TOY_MODEL_DIR)
    judge = ToyJudge()
    base_pipe = load_toy_pipeline(base)
    train_split, _ = world.split_prompts()
    prompts = world.sample_prompts(train_split, config.train_prompts, seed=config.seed)
    clock.lap("load")

    data, pair_stats = make_pairs(base_pipe, prompts, config, output, judge)
    clock.lap("generate+judge")
    if pair_stats["pairs"] == 0:
        raise RuntimeError("no candidate pair differed in reward: nothing to align on (raise --candidates)")
    train_summary = align(config, base, data, output)
    clock.lap("align")
    _save_curves(output, output / "model" / "metrics.jsonl", config.method)

    aligned_pipe = load_toy_pipeline(output / "model")
    eval_prompts = evaluation_prompts(config.eval_split, config.eval_prompts, prompts)
    evaluation = evaluate(base_pipe, aligned_pipe, eval_prompts, config, output, judge)
    clock.lap("evaluate")
    report = {
        "method": config.method,
        **{k: evaluation[k] for k in ("win_rate", "reward_before", "reward_after", "n_prompts")},
        **{k: v for k, v in evaluation.items() if k not in ("win_rate", "reward_before", "reward_after", "n_prompts")},
        "eval_split": config.eval_split,
        "judge": "toy",
        "base_model": base,
        "sampling": SAMPLING,
        "pairs": pair_stats,
        "train": {"steps": train_summary["steps"], "learning_rate": train_summary["learning_rate"],
                  "method_args": train_summary["method_args"], "batch_size": config.batch_size,
                  "final_metrics": train_summary["final_metrics"], "seconds": train_summary["seconds"]},
        "config": asdict(config),
        "torch_threads": torch.get_num_threads(),
        "stage_seconds": clock.stages,
    }
    report["seconds"] = clock.total
    write_report(output, report)
    return report
