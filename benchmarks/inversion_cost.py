"""Cost per optimiser step of ``smpo`` and ``inpo`` relative to ``diffusion-dpo`` (same model, batch, seeds).

    python -m diffalign.benchmarks.inversion_cost [--families sd sdxl] [--pairs 2] [--steps 30] [--lora-rank 0]

Each method trains a fresh copy of the same tiny pipeline (``diffalign.tiny``, saved once and loaded
through ``DiffusionModel.from_pretrained``) for ``--warmup`` + ``--steps`` optimiser steps on the same
batch, the three methods' steps interleaved; step i draws its caption dropout, timesteps and noise from
the same seed for every method, so all three see the same timesteps. Reported per method: mean seconds per step (compute_loss + backward +
AdamW step), the ratio to diffusion-dpo, the mean number of no-grad UNet image-forwards the inversion made
per pair, and the spec §6.2 unit-cost estimate from those counts: (3 x 2 grad + 2 reference + inversion
forwards) / 8, a grad forward+backward counting 3 forward units (4 with gradient checkpointing).

On the tiny CPU models the per-call overhead weighs more than on SDXL on a GPU, so the measured ratios
are this machine's, not a prediction for SDXL; the unit estimate is the device-independent part.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

import diffalign  # noqa: F401
from diffalign.diffusion.model import DiffusionModel, LoraSettings
from diffalign.methods import get_method_class
from diffalign.tiny import build_tiny_pipeline

METHODS = ("diffusion-dpo", "inpo", "smpo")


def make_batch(pairs: int, resolution: int, with_scores: bool) -> dict:
    generator = torch.Generator().manual_seed(1234)
    batch = {
        "prompts": [f"a red circle number {index}" for index in range(pairs)],
        "chosen_pixels": torch.rand(pairs, 3, resolution, resolution, generator=generator) * 2 - 1,
        "rejected_pixels": torch.rand(pairs, 3, resolution, resolution, generator=generator) * 2 - 1,
    }
    if with_scores:
        batch["chosen_scores"] = 0.2 + 0.05 * torch.rand(pairs, generator=generator)
        batch["rejected_scores"] = 0.2 - 0.05 * torch.rand(pairs, generator=generator)
    return batch


class Runner:
    """One method training its own fresh copy of the model with AdamW."""

    def __init__(self, name: str, model_dir: str, args):
        method_class = get_method_class(name)
        self.method = method_class(method_class.config_class())
        lora = LoraSettings(args.lora_rank) if args.lora_rank else None
        self.model = DiffusionModel.from_pretrained(
            model_dir, reference="adapters" if lora else "copy", lora=lora,
            gradient_checkpointing=args.gradient_checkpointing, resolution=args.resolution,
        )
        self.optimizer = torch.optim.AdamW([p for p in self.model.unet.parameters() if p.requires_grad], lr=1e-6)
        self.seconds: list[float] = []
        self.forwards: list[float] = []

    def step(self, batch: dict, seed: int, record: bool) -> None:
        started = time.perf_counter()
        output = self.method.compute_loss(self.model, batch, torch.Generator().manual_seed(seed))
        output.loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if record:
            self.seconds.append(time.perf_counter() - started)
            forwards = output.metrics.get("inversion/image_forwards", torch.tensor(0.0)).item()
            self.forwards.append(forwards / len(batch["prompts"]))


def measure(model_dir: str, args) -> dict[str, dict]:
    """Steps of the three methods interleaved (load drift on a shared machine hits all alike)."""
    runners = {name: Runner(name, model_dir, args) for name in METHODS}
    batch = make_batch(args.pairs, args.resolution, with_scores=True)
    for step in range(args.warmup + args.steps):
        for runner in runners.values():
            runner.step(batch, seed=step, record=step >= args.warmup)
    grad_units = 4 if args.gradient_checkpointing else 3
    results = {}
    for name, runner in runners.items():
        forwards = statistics.fmean(runner.forwards)
        results[name] = {
            "seconds": statistics.fmean(runner.seconds),
            "inversion_forwards_per_pair": forwards,
            "unit_cost": (2 * grad_units + 2 + forwards) / (2 * grad_units + 2),
        }
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["sd", "sdxl"], choices=["sd", "sdxl"])
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--latent-size", type=int, default=8)
    parser.add_argument("--lora-rank", type=int, default=0)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    args.resolution = 8 * args.latent_size
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.pairs} pairs/step, "
          f"{args.steps} timed steps, latents {args.latent_size}x{args.latent_size}, "
          f"{'LoRA rank ' + str(args.lora_rank) if args.lora_rank else 'full fine-tuning'}"
          f"{', gradient checkpointing' if args.gradient_checkpointing else ''}")
    print(f"{'family':6} {'method':13} {'s/step':>8} {'x DPO':>6} {'inv fwd/pair':>12} {'unit est.':>9}")
    for family in args.families:
        with tempfile.TemporaryDirectory() as model_dir:
            build_tiny_pipeline(family, latent_size=args.latent_size).save_pretrained(model_dir)
            results = measure(model_dir, args)
        baseline = results["diffusion-dpo"]["seconds"]
        for name, result in results.items():
            print(f"{family:6} {name:13} {result['seconds']:8.4f} {result['seconds'] / baseline:6.2f} "
                  f"{result['inversion_forwards_per_pair']:12.2f} {result['unit_cost']:9.2f}")


if __name__ == "__main__":
    main()
