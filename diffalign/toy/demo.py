"""``diffalign demo``: the whole alignment loop on the toy world, on a CPU, measured by the toy judge.

``run_demo`` runs these steps, each from its own module:

1. **Generate** (``generation``): ``candidates`` images per training prompt from the base toy model,
   each image its own seed, prompts from the training split only. The candidates use the preset's
   DDIM sampler with eta = 1 (stochastic steps: more diverse candidates, larger judge margins) and a
   guidance scale below the evaluation's: training the conditional model on guided samples and
   guiding again at sampling time compounds the guidance (colours drift off the palette).
2. **Pair** (``pairing``): the toy judge (``diffalign.toy.judge``, fixed before any training) scores
   every candidate; per prompt the best against the worst, kept only if strictly better
   (``diffalign.rewards.pairs.best_vs_worst``), written as the preference jsonl ``pairs.jsonl``.
   A method that trains on prompts alone (``self-npo``) skips steps 1-2: its data is the training
   prompts, written as ``prompts.txt``. A method that trains on captioned images (TPO: ``tdpo``,
   ``tkto``) takes ``candidates`` images per training prompt, the toy world's renders (default; a
   captioned dataset, as TPO assumes) or the base's own samples (``caption_images``), keeps each
   prompt as its image's true caption and adds rule-perturbed negative captions instead of judging
   them (``captioning``): no judge anywhere in its data path.
3. **Align** (``alignment``): ``diffalign.training.train`` with ``--method`` (any registered diffusion
   method whose data contract is image pairs, scored image pairs, chosen images or prompts) on that
   data, with the toy settings of the method (``alignment.TOY_TRAINING``).
4. **Evaluate** (``evaluation``): on held-out prompts (never seen in pretraining nor in alignment),
   base and aligned models generate from the *same* seeds; the judge scores both: mean reward
   before/after, and the win rate of aligned over base (ties count 1/2) with its standard error. For a
   method that trains a negative model (``self-npo``, ``diffusion-npo``) "aligned" is NPO-guided CFG
   (``alignment.aligned_pipeline``): the base as the positive branch, the trained model as the
   negative one, against the base's plain CFG at the same guidance scale.
5. **Bench** (``diffalign.toy.bench.demo_leaderboard``): the toy benchmark (UniGenBench's protocol on
   held-out captions, ``bench_prompts`` of them) of the base and the aligned model, and their
   two-row leaderboard (``bench/leaderboard/leaderboard.html``).
6. **Report** (``reporting``).

The evaluation protocol (prompts, seeds, sampler, judge) is fixed in ``evaluation``; no option of a
method changes it. The measured results, and the validation runs that chose the defaults, are in the
README's toy-world section; every run writes its own in ``report.md``.

Outputs in ``output_dir``: ``report.md``, ``report.json``, ``grid.png`` (base vs aligned, same
seeds), ``rewards.png`` (the judge rewards of base and aligned), ``curves.png`` (loss and implicit
accuracy over steps, matplotlib), ``pairs.jsonl`` + ``candidates/``,
``eval/`` (every evaluation image and ``eval.jsonl`` with its score) and ``model/`` (the aligned
pipeline, loadable with ``StableDiffusionPipeline.from_pretrained``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from diffalign.errors import UsageError
from diffalign.toy import world
from diffalign.toy.alignment import align, aligned_pipeline, check_method as _check_method, toy_train_config, training_record
from diffalign.toy.captioning import render_images, write_captioned_images
from diffalign.toy.evaluation import check_eval_split, evaluate, evaluation_prompts
from diffalign.toy.generation import candidate_sampling, generate_per_prompt
from diffalign.toy.judge import ToyJudge
from diffalign.toy.pairing import judge_and_pair
from diffalign.toy.preset import SAMPLING, TOY_MODEL_DIR, load_toy_pipeline
from diffalign.toy.reporting import StageClock, save_comparison_grid, save_reward_distributions, save_training_curves, write_report

FITTING_FORMATS = ("image_pairs", "scored_image_pairs", "chosen_images", "labelled_images", "prompts", "captioned_images",
                   "user_image_pairs")
CAPTION_IMAGES = ("renders", "samples")
CANDIDATE_SEED_STRIDE = 1_000_000  # candidates of --seed s start at seed s * 1_000_000


@dataclass
class DemoConfig:
    method: str = "diffusion-dpo"
    output_dir: str = "runs/demo"
    model: Optional[str] = None  # default: the shipped preset (diffalign/toy/assets/toy-sd)
    train_prompts: int = 320  # drawn from the training split (the rest of it serves --eval-split validation)
    candidates: int = 8  # K images per training prompt
    pairs_per_prompt: int = 1  # i-th best against i-th worst candidate, i < pairs_per_prompt (1: best vs worst)
    negatives_per_caption: int = 5  # captioned-image methods: rule-perturbed negatives per image (5: one per toy attribute)
    caption_images: str = "renders"  # captioned-image methods: the toy world's renders, or the base's own "samples"
    min_margin: float = 0.0  # a pair is kept only if its judge-score margin is > 0 and >= min_margin
    eval_prompts: int = 107  # held-out prompts (the whole held-out split)
    eval_seeds: int = 2  # images per held-out prompt, same seeds for base and aligned
    eval_split: str = "held-out"  # or "validation": unused training prompts, for choosing settings
    steps: Optional[int] = None  # default: the method's toy steps (alignment.TOY_TRAINING), else 300
    batch_size: int = 16
    learning_rate: Optional[float] = None  # default: TOY_TRAINING[method] or DEFAULT_TOY_LEARNING_RATE
    method_args: dict[str, Any] = field(default_factory=dict)  # overrides of TOY_TRAINING's
    candidate_guidance: Optional[float] = 2.5  # CFG scale for the candidates (below the evaluation's 3.0, see step 1); None: preset.SAMPLING's
    candidate_eta: Optional[float] = 1.0  # DDIM eta for the candidates (1: stochastic, more diverse); None: preset.SAMPLING's
    generation_batch: int = 64
    grid_prompts: int = 8
    bench_prompts: int = 60  # toy-bench prompts for the base-vs-aligned leaderboard (diffalign.toy.bench); 0 skips it
    seed: int = 0  # picks the training prompts and the candidates' seeds, and seeds the training unless train_seed is set
    train_seed: Optional[int] = None  # the training's seed alone (same pairs, other batches and noise)
    threads: Optional[int] = 1  # torch.set_num_threads (1: robust on shared machines, deterministic); None keeps torch's default
    progress: bool = True


def check_method(name: str):
    """The method class, or a ``ValueError`` listing the methods that fit the demo's data (image pairs,
    prompts, captioned images or user-tagged pairs)."""
    return _check_method(name, FITTING_FORMATS, data="image pairs, prompts, captioned images or user-tagged pairs")


def run_demo(config: DemoConfig) -> dict:
    """Run the steps and write the report; returns ``report.json``'s content."""
    import diffalign  # noqa: F401  (torchvision CPU shim)
    from diffalign.progress import library_progress_bars

    if check_method(config.method).data_format == "user_image_pairs":  # PPD: several toy users, one model
        from diffalign.toy.personalization import run_ppd_demo

        return run_ppd_demo(config)
    with library_progress_bars(config.progress):
        return _run_demo(config)


def start_demo(config: DemoConfig):
    """What every demo does first: torch threads, the output folder, the base pipeline and the training
    prompts; returns ``(clock, output, base, base_pipe, prompts)`` with the clock's "load" stage done."""
    if config.steps is not None and config.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {config.steps}")
    if config.threads:
        torch.set_num_threads(config.threads)
    clock = StageClock()
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    base = str(config.model or TOY_MODEL_DIR)
    base_pipe = load_toy_pipeline(base)
    train_split, _ = world.split_prompts()
    prompts = world.sample_prompts(train_split, config.train_prompts, seed=config.seed)
    clock.lap("load")
    return clock, output, base, base_pipe, prompts


def _run_demo(config: DemoConfig) -> dict:
    method = check_method(config.method)
    check_eval_split(config.eval_split)
    if config.caption_images not in CAPTION_IMAGES:
        raise UsageError(f"--caption-images must be one of {', '.join(CAPTION_IMAGES)}, got {config.caption_images!r}")
    clock, output, base, base_pipe, prompts = start_demo(config)
    judge = ToyJudge()

    data_stats = {}
    if method.data_format == "prompts":  # no preference data: the training prompts alone
        data = output / "prompts.txt"
        data.write_text("".join(f"{prompt}\n" for prompt in prompts))
        data_stats["train_prompts"] = len(prompts)
    elif method.data_format == "captioned_images":  # images with true and perturbed captions, no judge
        if config.caption_images == "renders":
            candidates = render_images(prompts, config.candidates, config.seed * CANDIDATE_SEED_STRIDE)
        else:
            candidates = generate_per_prompt(base_pipe, prompts, config.candidates, config.seed * CANDIDATE_SEED_STRIDE,
                                             batch_size=config.generation_batch, progress=config.progress, desc="samples",
                                             **candidate_sampling(config.candidate_guidance, config.candidate_eta))
        data = output / "captions.jsonl"
        data_stats["captions"] = write_captioned_images(candidates, candidates.save(output / "candidates"), data,
                                                        config.negatives_per_caption, config.seed, config.progress)
        clock.lap("generate+perturb")
    else:
        candidates = generate_per_prompt(base_pipe, prompts, config.candidates, config.seed * CANDIDATE_SEED_STRIDE,
                                         batch_size=config.generation_batch, progress=config.progress, desc="candidates",
                                         **candidate_sampling(config.candidate_guidance, config.candidate_eta))
        paths = candidates.save(output / "candidates")
        data = output / "pairs.jsonl"
        pair_stats = data_stats["pairs"] = judge_and_pair(candidates, paths, judge, data, min_margin=config.min_margin,
                                                          pairs_per_prompt=config.pairs_per_prompt)
        clock.lap("generate+judge")
        if pair_stats["pairs"] == 0:
            raise UsageError("no candidate pair differed in reward: nothing to align on (raise --candidates)")

    train_config = toy_train_config(config.method, base, data, output / "model", steps=config.steps,
                                    batch_size=config.batch_size, seed=config.seed if config.train_seed is None else config.train_seed,
                                    learning_rate=config.learning_rate, method_args=config.method_args, progress=config.progress)
    train_summary = align(train_config)
    clock.lap("align")
    save_training_curves(output / "curves.png", output / "model" / "metrics.jsonl", f"{config.method} training on the toy world")

    aligned_pipe = aligned_pipeline(method, base_pipe, output / "model")
    evaluation = evaluate(base_pipe, aligned_pipe, evaluation_prompts(config.eval_split, config.eval_prompts, prompts), judge,
                          seeds_per_prompt=config.eval_seeds, batch_size=config.generation_batch, progress=config.progress)
    evaluation.save(output / "eval")
    summary = evaluation.summary()
    save_comparison_grid(output / "grid.png", evaluation, config.grid_prompts)
    save_reward_distributions(output / "rewards.png", evaluation)
    clock.lap("evaluate")
    bench = None
    if config.bench_prompts:
        from diffalign.toy.bench import demo_leaderboard

        bench = demo_leaderboard(output, base, output / "model", config.method, method.negative_model,
                                 limit=config.bench_prompts, progress=config.progress)
        clock.lap("bench")

    headline = ("win_rate", "reward_before", "reward_after", "n_prompts")
    report = {
        "method": config.method,
        **{k: summary[k] for k in headline},
        **{k: v for k, v in summary.items() if k not in headline},
        "eval_split": config.eval_split,
        "judge": "toy",
        "base_model": base,
        "sampling": SAMPLING,
        "aligned_sampling": "NPO-guided CFG: base positive, trained negative" if method.negative_model else "the trained model",
        **data_stats,
        "train": training_record(train_summary),
        **({"bench": bench} if bench else {}),
        "config": asdict(config),
        "torch_threads": torch.get_num_threads(),
        "stage_seconds": clock.stages,
        "seconds": clock.total,
    }
    write_report(output, report)
    return report
