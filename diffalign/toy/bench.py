"""The toy benchmark: UniGenBench's protocol on the toy world, judged by the toy judge's terms.

``diffalign bench unigenbench --benchmark toy --judge toy --out RUN`` runs the whole benchmark path
(generate 4 images per prompt, judge every test point, aggregate, report, leaderboard) offline in
well under a minute on a CPU:

- **prompts**: the first ``BENCH_PROMPTS`` = 60 held-out captions in the demo's evaluation order
  (``evaluation.evaluation_prompts("held-out", ...)``): unseen attribute combinations, never trained
  on. 60 x 4 = 240 images of 32x32 take about 15 s to generate on one CPU core (20 DDIM steps, batch 16).
- **test points**: every caption names five attributes, and each is a test point and its own primary
  dimension (no sub-dimensions): ``Colour``, ``Shape``, ``Size``, ``Position``, ``Background``; the
  description of each is the caption's word for it ("red", "circle", ...). Themes group the prompts
  by shape, subthemes by background.
- **judge** ``toy``: the test point passes when its toy-judge term (``judge.judge_terms``) is
  ``>= PASS_THRESHOLD`` = 0.5. Each term is a Gaussian of the measured error, so 0.5 is its half
  height: the measurement lies within 1.18 sigma of the named value. That is closer than halfway to
  the nearest other value of the attribute for colour (a pass needs <= 53 RGB units from the named
  colour, palette colours are >= 119 apart), shape (fill ratio within 0.094 of the ideal, ideals
  >= 0.216 apart) and size (log-area within 0.41, small and large 1.1 apart), so a pass names the
  right value, never a neighbour; for position (within 4.7 px, neighbours 8 px apart) the bands of
  two neighbours overlap slightly. The "aesthetic" term is prompt-free and is no test point.
- **generation defaults**: the shipped preset (``preset.TOY_MODEL_DIR``) with its sampler
  (``preset.SAMPLING``: 20 steps, guidance 3) and the evaluation's first seed
  (``evaluation.EVAL_IMAGE_SEED``), so the bench's images are the demo evaluation's.

Registered through the ``diffalign.bench`` entry-point group (``pyproject.toml``), so that
``diffalign.benchmarks`` finds them without importing ``toy``.
"""

from __future__ import annotations

import json
from typing import Optional, Sequence

from diffalign.benchmarks.bench_judges import (
    Benchmark, JudgeOptions, Judgement, JudgeTask, TestpointJudge, open_image, register_benchmark, register_judge,
)
from diffalign.benchmarks.unigenbench_data import BenchPrompt
from diffalign.benchmarks.unigenbench_prompt import build_judge_prompt
from diffalign.toy import world
from diffalign.toy.evaluation import EVAL_IMAGE_SEED, evaluation_prompts
from diffalign.toy.judge import judge_terms
from diffalign.toy.preset import SAMPLING, TOY_MODEL_DIR

BENCH_PROMPTS = 60
PASS_THRESHOLD = 0.5
# test point -> toy-judge term
TESTPOINT_TERMS = {"Colour": "colour", "Shape": "shape", "Size": "size", "Position": "position", "Background": "background"}
TESTPOINTS = tuple(TESTPOINT_TERMS)
THEMES = tuple(f"{shape.capitalize()}s" for shape in world.SHAPES)
DEFINITIONS = {
    "Colour": "the shape has the named colour",
    "Shape": "the object is the named shape: a circle, a square or a triangle",
    "Size": "the shape has the named size, small or large, within the image",
    "Position": "the shape sits at the named place: on the left, on the right, at the top, at the bottom or in the center",
    "Background": "the background is plain and of the named colour",
}


def toy_prompts(prompts_dir: Optional[str], category: str) -> list[BenchPrompt]:
    """The benchmark's ``BENCH_PROMPTS`` held-out captions with their five test points each."""
    items = []
    for index, caption in enumerate(evaluation_prompts("held-out", BENCH_PROMPTS, [])):
        scene = world.parse_caption(caption)
        descriptions = (scene.colour, scene.shape, scene.size, scene.position, f"{scene.background} background")
        items.append(BenchPrompt(index, caption, TESTPOINTS, descriptions, f"{scene.shape.capitalize()}s",
                                 f"{scene.background.capitalize()} background"))
    return items


def toy_question(item: BenchPrompt, category: str) -> str:
    """The UniGenBench judge prompt with the toy test points' definitions, for a VLM judging the toy bench."""
    return build_judge_prompt(item, "en", DEFINITIONS)


TOY_BENCHMARK = register_benchmark(Benchmark(
    name="toy",
    categories=("toy",),
    primary_order=TESTPOINTS,
    sub_dimensions=TESTPOINTS,
    themes=THEMES,
    load_prompts=toy_prompts,
    judge_question=toy_question,
    uses_prompts_dir=False,
    generation_defaults={"model": str(TOY_MODEL_DIR), "guidance": SAMPLING["guidance_scale"],
                         "steps": SAMPLING["num_inference_steps"], "seed": EVAL_IMAGE_SEED, "batch_size": 16},
))


class ToyTestpointJudge(TestpointJudge):
    """Test point passes when its toy-judge term is >= ``PASS_THRESHOLD``; ``raw`` records the terms."""

    spec = "toy"
    batch_size = 16

    def judge_batch(self, tasks: Sequence[JudgeTask]) -> list[Judgement]:
        results = []
        for task in tasks:
            try:
                image = open_image(task.path)
            except OSError as error:
                results.append(Judgement(error=f"cannot read the image: {error}"))
                continue
            terms = judge_terms(image, task.item.prompt)
            values = {name: getattr(terms, TESTPOINT_TERMS[name]) for name in task.item.testpoints}
            scores = [int(value >= PASS_THRESHOLD) for value in values.values()]
            results.append(Judgement(scores, 1, None, json.dumps({name: round(value, 4) for name, value in values.items()})))
        return results


@register_judge("toy", benchmarks=("toy",))
def _build_toy_judge(argument: Optional[str], options: JudgeOptions) -> TestpointJudge:
    return ToyTestpointJudge()


def demo_leaderboard(output_dir, base_model: str, trained_model: str, method: str, negative_model: bool,
                     limit: Optional[int] = None, progress: bool = True) -> dict:
    """The toy bench of a demo's base and aligned models, and their two-row leaderboard, under
    ``output_dir/bench/``: ``base/`` and ``METHOD/`` (bench runs with ``report.html``) and
    ``leaderboard/``. The aligned row of a negative model (Self-NPO, Diffusion-NPO) is NPO-guided CFG
    with the base as the positive branch, as the demo evaluates it. Returns each row's Overall and the
    folder paths."""
    from pathlib import Path

    from diffalign.benchmarks.leaderboard import build_leaderboard
    from diffalign.benchmarks.unigenbench_run import BenchSettings, run_bench

    folder = Path(output_dir) / "bench"
    common = dict(judge="toy", benchmark="toy", limit=limit, progress=progress)
    aligned = (dict(model=base_model, negative_model=str(trained_model), label=f"{method} (NPO-guided)") if negative_model
               else dict(model=str(trained_model), label=method))
    rows = {"base": run_bench(BenchSettings(out=str(folder / "base"), model=base_model, label="base", **common)),
            method: run_bench(BenchSettings(out=str(folder / method), **aligned, **common))}
    build_leaderboard([str(folder / "base"), str(folder / method)], str(folder / "leaderboard"))
    return {"overall": {name: result["overall"] for name, result in rows.items()}, "leaderboard": str(folder / "leaderboard"),
            "prompts": rows["base"]["counts"]["prompts"]}
