"""Reporting: what a toy demo writes besides its model: ``report.json``, ``report.md``, ``grid.png``,
``rewards.png`` and ``curves.png``, and the stage timings they quote.

``write_report`` takes the report as a dict: the keys of ``Evaluation.summary()`` plus ``method``,
``eval_split``, ``seconds``, ``stage_seconds`` and ``torch_threads``, and optionally ``pairs`` (the
pairing statistics) and ``train`` (steps, learning rate, method options), each quoted in
``report.md`` when present.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Mapping

from diffalign.toy.evaluation import Evaluation
from diffalign.toy.judge import WEIGHTS

TRAINING_CURVES = {"loss": "loss", "implicit accuracy (rewards/accuracies)": "rewards/accuracies"}  # panel title: metrics.jsonl key


class StageClock:
    """Seconds per named stage (``lap`` ends the current one) and in all."""

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


def save_comparison_grid(path: str | Path, evaluation: Evaluation, n_prompts: int = 8) -> None:
    """Base above aligned for the first seed of the first ``n_prompts`` evaluation prompts, with scores."""
    from diffalign.toy.plots import comparison_grid

    prompts = evaluation.base.image_prompts
    picks = list(range(0, len(prompts), max(1, evaluation.base.per_prompt)))[:n_prompts]
    grid = comparison_grid([prompts[i] for i in picks], [evaluation.base.images[i] for i in picks],
                           [evaluation.aligned.images[i] for i in picks], [evaluation.before[i] for i in picks],
                           [evaluation.after[i] for i in picks])
    grid.save(path)


def save_reward_distributions(path: str | Path, evaluation: Evaluation) -> None:
    """Histograms of the judge rewards of every base and aligned evaluation image (same bins, means marked)."""
    from diffalign.toy.plots import reward_distributions

    reward_distributions(evaluation.before, evaluation.after,
                         title=f"judge rewards of the {len(evaluation.before)} evaluation images, base vs aligned").save(path)


def save_training_curves(path: str | Path, metrics_path: str | Path, title: str, metrics: Mapping[str, str] = TRAINING_CURVES) -> None:
    """One panel per ``metrics`` entry (title: key in the training's ``metrics.jsonl``) over steps;
    entries the training never logged (no implicit accuracy for self-npo, tkto, ...) get no panel."""
    from diffalign.toy.plots import curves

    metrics_path = Path(metrics_path)
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()] if metrics_path.is_file() else []
    series = {label: [(r["step"], r.get(key)) for r in rows] for label, key in metrics.items()}
    curves(series, title=title).save(path)


def report_markdown(report: Mapping) -> str:
    """``report.md``: the evaluation, the judge terms, the training data and run when reported, the time."""
    e = report
    terms = "\n".join(f"| {name} | {e['terms_before'][name]:.3f} | {e['terms_after'][name]:.3f} |" for name in WEIGHTS)
    training = []
    if "pairs" in e:
        training.append(f"Training data: {e['pairs']['train_prompts']} training prompts x {e['pairs']['candidates_per_prompt']} candidates -> "
                        f"{e['pairs']['pairs']} best-vs-worst pairs (mean judge margin {e['pairs']['mean_pair_margin']:.3f}).\n")
    if "captions" in e:
        c = e["captions"]
        source = "renders" if "renderer" in c["sample_sampling"] else "base samples"
        training.append(f"Training data: {c['train_prompts']} training prompts x {c['images_per_prompt']} {source}, each with "
                        f"its prompt and {c['negatives_per_caption']} rule-perturbed captions ({c['negatives_written']} "
                        "negatives), no judge.\n")
    if "pairs" not in e and "train_prompts" in e:
        training.append(f"Training data: {e['train_prompts']} training prompts, no images and no preference labels.\n")
    if e.get("aligned_sampling", "the trained model") != "the trained model":
        training.append(f"Aligned = {e['aligned_sampling']} (same guidance scale and seeds as the base's plain CFG).\n")
    if "bench" in e:
        overall = e["bench"]["overall"]
        training.append(f"Toy bench ({e['bench']['prompts']} held-out captions x 4 images, test points colour, shape, size, "
                        f"position, background): Overall {', '.join(f'{name} {value:.2f}' for name, value in overall.items())}; "
                        "leaderboard in `bench/leaderboard/leaderboard.html`.\n")
    if "train" in e:
        training.append(f"Training: {e['train']['steps']} steps of `{e['method']}`, lr {e['train']['learning_rate']:g}, "
                        f"options {json.dumps(e['train']['method_args'])}.\n")
    return f"""# diffalign demo: {e['method']} on the toy world

Evaluation prompts ({e['eval_split']} split): {e['n_prompts']} ({e['n_comparisons']} images per model, the same seeds for base and aligned), judged by the toy judge.

| | base | aligned |
|---|---|---|
| mean reward | {e['reward_before']:.4f} | {e['reward_after']:.4f} |

**Win rate of aligned over base: {e['win_rate']:.3f}** (+- {e['win_rate_stderr']:.3f} s.e.; {e['wins']} wins, {e['losses']} losses, {e['ties']} ties; ties count 1/2).

Judge terms (means, higher is better):

| term | base | aligned |
|---|---|---|
{terms}

{''.join(training)}Time: {e['seconds']:.1f} s in all ({', '.join(f'{k} {v:.1f} s' for k, v in e['stage_seconds'].items())}), torch threads {e['torch_threads']}.

![base vs aligned](grid.png)

![judge rewards, base vs aligned](rewards.png)

![training curves](curves.png)
"""


def write_report(output: str | Path, report: Mapping) -> None:
    """``report.json`` (``report`` as is) and ``report.md`` (``report_markdown``) in ``output``."""
    output = Path(output)
    (output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (output / "report.md").write_text(report_markdown(report))
