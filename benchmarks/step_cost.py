"""Optimiser-step time and peak RSS of ``diffalign train`` per method, LoRA and full fine-tuning, from
images and from a latent cache, beside diffusers' Diffusion-DPO LoRA script, in one interleaved run.

    python -m diffalign.benchmarks.step_cost [--steps 6] [--repeats 2] [--batch 2] [--pairs 32]
        [--diffusers-script PATH/train_diffusion_dpo.py] [--workdir DIR] [--quick] [--family sd|sd3|flux]

Model: ``diffalign.tiny.build_sd_proportioned_pipeline`` (random weights, SD1.5's components and
config keys, a 19.9 M-parameter UNet at 32x32 latents whose VAE encoder costs ~0.6 of a UNet forward,
as SD1.5's does at 512 px), saved once to ``WORKDIR/model``. ``--family sd3`` / ``flux``: the tiny
SD3-like / FLUX-like pipeline of ``diffalign.tiny.build_tiny_pipeline`` at the same 256 px (32x32
latents, 256 image tokens; tiny transformers, so the VAE and the T5 encoder weigh more than on the
real models), saved to ``WORKDIR/model-FAMILY``; the diffusers script row is SD only. Data: ``--pairs`` synthetic 256 px PNG
pairs, written both as a diffalign jsonl (``data/pairs.jsonl``) and as a Pick-a-Pic-schema parquet
(``pickapic/train.parquet``: caption, jpg_0, jpg_1, label_0) that the diffusers script loads with
``load_dataset(folder, split="train")``. Both read the same image bytes.

Every configuration is one subprocess, started through ``diffalign.benchmarks.step_timer`` (a global
optimiser post-step hook; the target runs unmodified), one process at a time, with
``OMP_NUM_THREADS=MKL_NUM_THREADS=1`` and ``torch.set_num_threads(1)``; the configurations are
interleaved (A, B, C, A, B, C, ...) ``--repeats`` times, so load drift on a shared machine hits all
alike. Step time = the median over all repeats of the intervals between consecutive optimiser steps,
after the first ``--warmup`` intervals of each run (it includes data loading and logging); beside it
the same median of the process's CPU time per step (time spent waiting for a CPU taken by another
process does not count in it; cache and memory contention and a VM's stolen time still do), and the
run prints the load average it saw. Peak RSS = ``ru_maxrss`` of the child from ``os.wait4``, the
largest over the repeats (the benchmark process itself stays small: the model and data are built in
a separate subprocess, because Linux carries the parent's high-water RSS across ``exec`` into the
child's ``ru_maxrss``). The default run takes about 10 minutes on a 2-core CPU; there one
configuration's median moves by about 5-10% between repeats, so ratios near a limit need
``--repeats 4`` or more.

- diffalign from images: ``-m diffalign train --method M --data pairs.jsonl --lora-rank 8|0 ...``
  (VAE and text encoder run every step);
- diffalign from the latent cache: ``python -m diffalign cache`` once (timed apart, not in the step
  table), then the same command with ``--data CACHE``; "n/a" while the command does not exist;
- diffusers (``examples/research_projects/diffusion_dpo/train_diffusion_dpo.py``, LoRA only, never
  copied into this repo: pass its path), run unmodified with the same model folder, data, batch,
  rank 8 (alpha 8, gaussian init, to_q/k/v/out.0 as diffalign's), resolution, steps, seed, learning
  rate (constant, no warm-up) and ``--mixed_precision no``. Offline details: ``--report_to`` names an
  accelerate tracker whose package is not installed (accelerate then drops it, so no tracker runs,
  as in diffalign's runs; accelerate rejects "none"); the script imports ``wandb`` at module level
  but uses it only to log validation images with ``--report_to wandb``, so when wandb is not
  installed a stub package (``WORKDIR/shims/wandb``) is put on its ``PYTHONPATH``. This makes its
  peak RSS no larger than with the real wandb, i.e. the comparison is conservative for diffalign.

Targets the table checks (ratios of medians from this run):
LoRA Diffusion-DPO from the cache / the diffusers script: step <= 0.85, peak RSS <= 1.0;
from the cache / from images: step <= 0.85 (1 - ratio = the share of the step spent in the VAE and
text encoders); diffusion-dpo / sft from the cache <= 1.40 at the same images per step (SFT trains on
2 x --batch chosen images, as many as --batch pairs hold: DPO's policy forward and backward cost what
SFT's do, and its reference forward adds about a third, the floor 4/3); mapo / diffusion-dpo <= 0.80.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from diffalign.benchmarks.step_timer import step_intervals

METHODS = ("diffusion-dpo", "mapo", "sft")
RESOLUTION = 256
# accelerate trackers (LoggerType); one whose package is missing is dropped by accelerate = no tracker
UNUSED_TRACKER_CANDIDATES = ("dvclive", "aim", "clearml", "swanlab", "comet_ml", "mlflow")
SUBJECTS = "cat dog fox owl car house tree boat robot flower castle dragon".split()
STYLES = "photo painting sketch render watercolor poster".split()
COLOURS = "red green blue yellow purple orange white black".split()


@dataclass(frozen=True)
class Config:
    method: str
    lora: bool
    source: str  # "images" | "cache" | "diffusers"

    @property
    def name(self) -> str:
        if self.source == "diffusers":
            return "diffusers train_diffusion_dpo.py (LoRA 8)"
        return f"{self.method} {'LoRA 8' if self.lora else 'full'} from {self.source}"

    @property
    def slug(self) -> str:
        return f"{self.source}-{self.method}-{'lora' if self.lora else 'full'}"


# ------------------------------------------------------------------------------ preparation
def model_dir(workdir: str, family: str) -> str:
    return os.path.join(workdir, "model" if family == "sd" else f"model-{family}")


def prepare(workdir: str, pairs: int, family: str = "sd", seed: int = 0) -> None:
    """Fixture model and data (run in its own subprocess: see the module docstring on RSS)."""
    import io
    import random

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image, ImageDraw

    import diffalign  # noqa: F401
    from diffalign.tiny import build_sd_proportioned_pipeline, build_tiny_pipeline

    model = model_dir(workdir, family)
    if not os.path.isfile(os.path.join(model, "model_index.json")):
        if family == "sd":
            build_sd_proportioned_pipeline(seed=seed).save_pretrained(model)
        else:
            build_tiny_pipeline(family, latent_size=RESOLUTION // 8, seed=seed).save_pretrained(model)

    rng = random.Random(seed)
    noise = np.random.default_rng(seed)

    def image_bytes() -> bytes:
        low = noise.integers(0, 256, (4, 4, 3), dtype=np.uint8)  # a smooth colour field and a few shapes
        image = Image.fromarray(low).resize((RESOLUTION, RESOLUTION), Image.BICUBIC)
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x, y, size = rng.randrange(RESOLUTION), rng.randrange(RESOLUTION), rng.randrange(20, 90)
            box = (x - size // 2, y - size // 2, x + size // 2, y + size // 2)
            fill = tuple(rng.randrange(256) for _ in range(3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    data_dir, table_dir = os.path.join(workdir, "data"), os.path.join(workdir, "pickapic")
    os.makedirs(os.path.join(data_dir, "img"), exist_ok=True)
    os.makedirs(table_dir, exist_ok=True)
    records, columns = [], {"caption": [], "jpg_0": [], "jpg_1": [], "label_0": []}
    for index in range(pairs):
        caption = f"a {rng.choice(STYLES)} of a {rng.choice(COLOURS)} {rng.choice(SUBJECTS)} next to a {rng.choice(SUBJECTS)}"
        first, second = image_bytes(), image_bytes()
        label_0 = float(index % 2)  # both label orders, as in Pick-a-Pic
        chosen, rejected = (first, second) if label_0 == 1.0 else (second, first)
        paths = [f"img/{index:03d}_chosen.png", f"img/{index:03d}_rejected.png"]
        for path, content in zip(paths, (chosen, rejected)):
            with open(os.path.join(data_dir, path), "wb") as handle:
                handle.write(content)
        records.append({"prompt": caption, "chosen": paths[0], "rejected": paths[1]})
        for key, value in zip(columns, (caption, first, second, label_0)):
            columns[key].append(value)
    with open(os.path.join(data_dir, "pairs.jsonl"), "w") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in records)
    pq.write_table(pa.table(columns), os.path.join(table_dir, "train.parquet"))


def write_wandb_stub(workdir: str) -> str:
    """A ``wandb`` stand-in for the diffusers script's module-level import (never called: no validation)."""
    shims = os.path.join(workdir, "shims")
    os.makedirs(os.path.join(shims, "wandb"), exist_ok=True)
    with open(os.path.join(shims, "wandb", "__init__.py"), "w") as handle:
        handle.write('"""Stub for diffalign.benchmarks.step_cost: the script only uses wandb with --report_to wandb."""\n\n'
                     "class Image:\n    def __init__(self, *args, **kwargs):\n"
                     "        raise RuntimeError('wandb stub: install wandb to log images')\n")
    return shims


def unused_tracker() -> str | None:
    for name in UNUSED_TRACKER_CANDIDATES:
        if importlib.util.find_spec(name) is None:
            return name
    return None


def child_env(extra_path: str | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, env.get("PYTHONPATH")) if p)
    return env


def cache_command_available() -> bool:
    result = subprocess.run([sys.executable, "-m", "diffalign", "cache", "--help"], capture_output=True, env=child_env())
    return result.returncode == 0


def build_cache(workdir: str, log_dir: str, family: str) -> tuple[str, float]:
    """Run ``diffalign cache`` once (untimed in the step table); returns (cache path, seconds)."""
    cache = os.path.join(workdir, "cache" if family == "sd" else f"cache-{family}")
    command = [sys.executable, "-m", "diffalign", "cache", "--model", model_dir(workdir, family),
               "--data", os.path.join(workdir, "data", "pairs.jsonl"), "--output", cache, "--resolution", str(RESOLUTION),
               "--no-progress-bar"] + (["--overwrite"] if os.path.exists(cache) else [])
    started = time.perf_counter()
    with open(os.path.join(log_dir, "cache.log"), "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, env=child_env())
    return cache, time.perf_counter() - started


# ------------------------------------------------------------------------------ running
def target_command(config: Config, args, run_dir: str, cache: str | None) -> list[str]:
    model = model_dir(args.workdir, args.family)
    if config.source == "diffusers":
        return [os.path.abspath(args.diffusers_script),
                "--pretrained_model_name_or_path", model, "--dataset_name", os.path.join(args.workdir, "pickapic"),
                "--dataset_split_name", "train", "--cache_dir", os.path.join(args.workdir, "hf_datasets_cache"),
                "--output_dir", run_dir, "--seed", "0", "--resolution", str(RESOLUTION),
                "--train_batch_size", str(args.batch), "--max_train_steps", str(args.steps),
                "--checkpointing_steps", "100000", "--learning_rate", "1e-5", "--lr_scheduler", "constant",
                "--lr_warmup_steps", "0", "--rank", "8", "--mixed_precision", "no",
                "--dataloader_num_workers", "0", "--report_to", args.tracker]
    data = cache if config.source == "cache" else os.path.join(args.workdir, "data", "pairs.jsonl")
    batch = 2 * args.batch if config.method == "sft" else args.batch  # SFT: the same images per step as B pairs
    return ["-m", "diffalign", "train", "--method", config.method, "--model", model, "--data", data,
            "--resolution", str(RESOLUTION), "--train-batch-size", str(batch), "--max-steps", str(args.steps),
            "--lora-rank", "8" if config.lora else "0", "--output-dir", run_dir, "--no-progress-bar",
            "--learning-rate", "1e-5", "--checkpointing-steps", "100000", "--seed", "0"]


def run_timed(target: list[str], run_dir: str, env: dict, timeout: float) -> dict:
    """One training subprocess under step_timer: step stamps and the child's peak RSS (os.wait4)."""
    os.makedirs(run_dir, exist_ok=True)
    times = os.path.join(run_dir, "step_times.json")
    command = [sys.executable, "-m", "diffalign.benchmarks.step_timer", "--out", times, "--threads", "1", "--", *target]
    with open(os.path.join(run_dir, "log.txt"), "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        watchdog = threading.Timer(timeout, process.kill)
        watchdog.start()
        _, status, usage = os.wait4(process.pid, 0)
        watchdog.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
    result = {"rc": process.returncode, "peak_rss_mb": usage.ru_maxrss / 1024, "stamps": [], "cpu_stamps": [],
              "threads": None, "log": os.path.join(run_dir, "log.txt"), "load": os.getloadavg()[0]}
    if os.path.isfile(times):
        with open(times) as handle:
            recorded = json.load(handle)
        result.update(stamps=recorded["stamps"], cpu_stamps=recorded["cpu_stamps"], threads=recorded["threads"])
    return result


# ------------------------------------------------------------------------------ report
def summarise(runs: list[dict], warmup: int) -> dict | None:
    good = [run for run in runs if run["rc"] == 0 and len(run["stamps"]) > warmup + 1]
    if not good:
        return None
    pooled = lambda key: [interval for run in good for interval in step_intervals(run[key], warmup)]  # noqa: E731
    per_run = [1000 * statistics.median(step_intervals(run["stamps"], warmup)) for run in good]
    return {"step_ms": 1000 * statistics.median(pooled("stamps")), "cpu_ms": 1000 * statistics.median(pooled("cpu_stamps")),
            "run_medians_ms": per_run, "peak_rss_mb": max(run["peak_rss_mb"] for run in good)}


def ratio(numerator: dict | None, denominator: dict | None, key: str = "step_ms") -> float | None:
    if not numerator or not denominator:
        return None
    return numerator[key] / denominator[key]


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def print_report(configs: list[Config], results: dict, args, notes: dict) -> None:
    find = {(c.method, c.lora, c.source): results.get(c) for c in configs}
    get = lambda method, lora, source: find.get((method, lora, source))  # noqa: E731
    script = get("diffusion-dpo", True, "diffusers")

    print(f"\nfamily {args.family}: {args.steps} steps per run (median over {args.repeats} interleaved repeat(s), first {args.warmup} "
          f"interval(s) of each run dropped), batch {args.batch} pairs (SFT: {2 * args.batch} chosen images), {RESOLUTION} px, "
          f"fp32 CPU, 1 torch thread, OMP_NUM_THREADS=1, one process at a time\n")
    print("| configuration | median step (ms) | run medians (ms) | CPU time (ms) | peak RSS (MB) | cache / images | "
          "dpo / sft | mapo / dpo | / diffusers step | / diffusers RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for config in configs:
        summary = results.get(config)
        if summary is None:
            reason = notes.get(config.source, "failed (see the run logs)")
            print(f"| {config.name} | {reason} | | | | | | | | |")
            continue
        images = get(config.method, config.lora, "images")
        sft = get("sft", config.lora, config.source)
        dpo = get("diffusion-dpo", config.lora, config.source)
        cache_ratio = ratio(summary, images) if config.source == "cache" else None
        dpo_sft = ratio(summary, sft) if config.method == "diffusion-dpo" and config.source != "diffusers" else None
        mapo_dpo = ratio(summary, dpo) if config.method == "mapo" else None
        vs_script = config.source != "diffusers" and config.method == "diffusion-dpo" and config.lora
        runs = ", ".join(f"{value:.0f}" for value in summary["run_medians_ms"])
        print(f"| {config.name} | {summary['step_ms']:.0f} | {runs} | {summary['cpu_ms']:.0f} | {summary['peak_rss_mb']:.0f} | "
              f"{fmt(cache_ratio)} | "
              f"{fmt(dpo_sft)} | {fmt(mapo_dpo)} | {fmt(ratio(summary, script) if vs_script else None)} | "
              f"{fmt(ratio(summary, script, 'peak_rss_mb') if vs_script else None)} |")

    dpo_cache, dpo_images = get("diffusion-dpo", True, "cache"), get("diffusion-dpo", True, "images")
    targets = [  # (label, numerator, denominator, limit); None: shown for reference
        ("LoRA diffusion-dpo from cache / diffusers script, step", dpo_cache, script, 0.85),
        ("LoRA diffusion-dpo from cache / diffusers script, peak RSS", dpo_cache, script, 1.0),
        ("LoRA diffusion-dpo from images / diffusers script, step (for reference)", dpo_images, script, None),
    ]
    for lora in (True, False):
        tuning = "LoRA" if lora else "full"
        for method in METHODS:
            targets.append((f"{tuning} {method}: step from cache / from images", get(method, lora, "cache"),
                            get(method, lora, "images"), 0.85))
        targets.append((f"{tuning}: diffusion-dpo / sft step, from cache", get("diffusion-dpo", lora, "cache"),
                        get("sft", lora, "cache"), 1.40))
        targets.append((f"{tuning}: diffusion-dpo / sft step, from images (for reference)",
                        get("diffusion-dpo", lora, "images"), get("sft", lora, "images"), None))
        for source in ("cache", "images"):
            targets.append((f"{tuning}: mapo / diffusion-dpo step, from {source}", get("mapo", lora, source),
                            get("diffusion-dpo", lora, source), 0.80))
    print("\n| target | measured (wall-clock medians) | limit | met | same ratio of CPU-time medians |")
    print("|---|---|---|---|---|")
    for label, numerator, denominator, limit in targets:
        memory = label.endswith("peak RSS")
        value = ratio(numerator, denominator, "peak_rss_mb" if memory else "step_ms")
        cpu = None if memory else ratio(numerator, denominator, "cpu_ms")
        met = "" if limit is None or value is None else ("yes" if value <= limit else "NO")
        print(f"| {label} | {fmt(value)} | {'<= ' + fmt(limit) if limit else '-'} | {met} | {fmt(cpu) if not memory else '-'} |")

    removed = [(f"{'LoRA' if lora else 'full'} {method}", ratio(get(method, lora, "cache"), get(method, lora, "images")))
               for lora in (True, False) for method in METHODS]
    shares = ", ".join(f"{label} {100 * (1 - value):.0f}%" for label, value in removed if value is not None)
    print(f"\nshare of the step removed by the cache (VAE encoder + text encoder per step): {shares or 'n/a'}")
    for line in notes.get("footer", []):
        print(line)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="optimiser steps per run (default 6)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats of every configuration")
    parser.add_argument("--warmup", type=int, default=2, help="intervals dropped at the start of each run")
    parser.add_argument("--batch", type=int, default=2, help="pairs per step (SFT: twice as many chosen images)")
    parser.add_argument("--pairs", type=int, default=32, help="synthetic preference pairs in the dataset")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--tunings", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    parser.add_argument("--diffusers-script", help="path of diffusers' examples/research_projects/diffusion_dpo/"
                        "train_diffusion_dpo.py (its row is skipped without it)")
    parser.add_argument("--workdir", help="work folder (default: a new temporary folder); the model is reused if there")
    parser.add_argument("--timeout", type=float, default=900, help="seconds before a run is killed")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 steps, 1 repeat, 1 warm-up interval, LoRA only, 8 pairs")
    parser.add_argument("--family", default="sd", choices=["sd", "sd3", "flux"],
                        help="sd: the SD1.5-proportioned model (default); sd3 / flux: the tiny flow-matching models")
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.warmup, args.tunings, args.pairs = 4, 1, 1, ["lora"], 8
    if args.workdir is None:
        import tempfile

        args.workdir = tempfile.mkdtemp(prefix="step_cost_")
    args.workdir = os.path.abspath(args.workdir)
    if args.prepare:
        prepare(args.workdir, args.pairs, args.family)
        return
    if args.steps <= args.warmup + 1:
        parser.error("--steps must exceed --warmup + 1")
    if args.diffusers_script and not os.path.isfile(args.diffusers_script):
        parser.error(f"--diffusers-script {args.diffusers_script}: no such file")
    if args.diffusers_script and args.family != "sd":
        parser.error("--diffusers-script trains SD UNets: use it with --family sd")

    started = time.perf_counter()
    os.makedirs(args.workdir, exist_ok=True)
    subprocess.run([sys.executable, "-m", "diffalign.benchmarks.step_cost", "--prepare", "--workdir", args.workdir,
                    "--pairs", str(args.pairs), "--family", args.family], check=True, env=child_env())
    log_dir = os.path.join(args.workdir, "runs" if args.family == "sd" else f"runs-{args.family}")
    os.makedirs(log_dir, exist_ok=True)
    notes: dict = {"footer": []}

    cache = None
    if cache_command_available():
        try:
            cache, seconds = build_cache(args.workdir, log_dir, args.family)
            notes["footer"].append(f"`diffalign cache` of {args.pairs} pairs at {RESOLUTION} px: {seconds:.1f} s "
                                   "(once, not in the table)")
        except subprocess.CalledProcessError:
            notes["cache"] = f"n/a (`diffalign cache` failed: {os.path.join(log_dir, 'cache.log')})"
    else:
        notes["cache"] = "n/a (no `diffalign cache`)"

    configs = []
    if args.diffusers_script and "diffusion-dpo" in args.methods and "lora" in args.tunings:
        configs.append(Config("diffusion-dpo", True, "diffusers"))
    elif not args.diffusers_script and args.family == "sd":
        notes["footer"].append("diffusers script row skipped: pass --diffusers-script PATH/train_diffusion_dpo.py")
    for lora in (tuning == "lora" for tuning in args.tunings):
        for method in args.methods:
            configs.extend(Config(method, lora, source) for source in ("images", "cache"))

    script_env = child_env()
    if any(config.source == "diffusers" for config in configs):
        args.tracker = unused_tracker()
        if args.tracker is None:
            args.tracker = "tensorboard"
            notes["footer"].append("every accelerate tracker is installed here: the diffusers script logs to tensorboard")
        shims = write_wandb_stub(args.workdir) if importlib.util.find_spec("wandb") is None else None
        script_env = child_env(shims)
        notes["footer"].append(f"diffusers script: --report_to {args.tracker}"
                               f"{', wandb stub on PYTHONPATH (wandb not installed)' if shims else ''}")

    runs: dict[Config, list[dict]] = {config: [] for config in configs}
    for repeat in range(args.repeats):
        for config in configs:
            if config.source == "cache" and cache is None:
                continue
            run_dir = os.path.join(log_dir, f"{config.slug}-r{repeat}")
            env = script_env if config.source == "diffusers" else child_env()
            result = run_timed(target_command(config, args, run_dir, cache), run_dir, env, args.timeout)
            runs[config].append(result)
            status = "ok" if result["rc"] == 0 else f"FAILED rc={result['rc']} (log: {result['log']})"
            steps = step_intervals(result["stamps"], args.warmup)
            median = f"{1000 * statistics.median(steps):.0f} ms/step" if steps else "no steps"
            print(f"[repeat {repeat + 1}/{args.repeats}] {config.name}: {median}, peak RSS {result['peak_rss_mb']:.0f} MB, "
                  f"{len(result['stamps'])} steps, torch threads {result['threads']}, {status}", flush=True)

    results = {config: summarise(config_runs, args.warmup) for config, config_runs in runs.items()}
    loads = [run["load"] for config_runs in runs.values() for run in config_runs]
    if loads:
        notes["footer"].append(f"1-minute load average at the end of each run: {min(loads):.2f} to {max(loads):.2f} "
                               f"on {os.cpu_count()} CPUs (the benchmark's own run counts 1; more means other processes shared the CPUs)")
    print_report(configs, results, args, notes)
    print(f"benchmark process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB "
          f"(carried into each child's ru_maxrss at most); total {time.perf_counter() - started:.0f} s; work folder {args.workdir}")


if __name__ == "__main__":
    main()
