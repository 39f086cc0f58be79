"""Side-by-side: diffalign ``text-dpo`` (the shared training loop) vs TRL 1.16 ``DPOTrainer``.

Same tiny causal LM (built from a config, random weights, saved once), same data, same optimiser
(AdamW, constant learning rate, no weight decay, grad-norm clip 1.0), fp32, dropout off, no gradient
checkpointing. The dataset has exactly one batch of pairs, so every step of both runs sees the
same pairs whatever their samplers do, and the loss curves are directly comparable. Each
implementation runs in its own subprocess (peak memory = that process's max RSS on CPU, or
``torch.cuda.max_memory_allocated`` on a GPU). Step time is the median interval between
consecutive steps, after ``--warmup`` steps.

    python -m diffalign.benchmarks.text_dpo_vs_trl [--steps 30] [--batch 8] [--hidden 64] [--layers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time

WORDS = "the sky sun grass sea is are was blue green red yellow bright dark very quite and or but".split()


def _make_files(root: str, batch: int, hidden: int, layers: int) -> tuple[str, str]:
    import diffalign  # noqa: F401
    from diffalign.tiny import save_tiny_lm

    rng = random.Random(0)
    sentence = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    rows = [{"prompt": sentence(rng.randint(4, 12)), "chosen": " " + sentence(rng.randint(3, 20)),
             "rejected": " " + sentence(rng.randint(3, 20))} for _ in range(batch)]
    model = save_tiny_lm(os.path.join(root, "lm"), [r["prompt"] + r["chosen"] + r["rejected"] for r in rows] * 4,
                         hidden_size=hidden, layers=layers)
    data = os.path.join(root, "pairs.jsonl")
    with open(data, "w") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)
    return model, data


def _peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_diffalign(args) -> dict:
    import diffalign  # noqa: F401
    from diffalign.methods.base import register_method
    from diffalign.methods.text_dpo import TextDPO
    from diffalign.training.config import TrainConfig
    from diffalign.training.loop import train

    stamps: list[float] = []

    @register_method
    class TimedTextDPO(TextDPO):  # the benchmark's clock; the loss is text-dpo's
        name = "bench-text-dpo"
        summary = "text-dpo with a step clock (benchmark only)"

        def compute_loss(self, model, batch, generator=None):
            stamps.append(time.perf_counter())
            return super().compute_loss(model, batch, generator)

    output_dir = os.path.join(args.root, "diffalign")
    train(TrainConfig(method="bench-text-dpo", model=args.model, data=args.data, output_dir=output_dir,
                      max_steps=args.steps, train_batch_size=args.batch, learning_rate=args.lr, adam_weight_decay=0.0,
                      lr_scheduler="constant", checkpointing_steps=10**9, progress_bar=False, seed=0))
    with open(os.path.join(output_dir, "metrics.jsonl")) as handle:
        losses = [json.loads(line)["loss"] for line in handle]
    return {"losses": losses, "stamps": stamps, "peak_mb": _peak_memory_mb()}


def _run_trl(args) -> dict:
    import diffalign  # noqa: F401
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    stamps: list[float] = []
    losses: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *_, **__):
            stamps.append(time.perf_counter())

        def on_log(self, _args, _state, _control, logs=None, **__):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    config = DPOConfig(output_dir=os.path.join(args.root, "trl"), max_steps=args.steps, per_device_train_batch_size=args.batch,
                       learning_rate=args.lr, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0, bf16=False,
                       gradient_checkpointing=False, logging_steps=1, save_strategy="no", report_to=[], seed=0,
                       disable_tqdm=True, dataloader_num_workers=0, use_cpu=not _cuda())
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(args.model), args=config,
                         train_dataset=load_dataset("json", data_files=args.data, split="train"),
                         processing_class=AutoTokenizer.from_pretrained(args.model), callbacks=[Clock()])
    trainer.train()
    return {"losses": losses, "stamps": stamps, "peak_mb": _peak_memory_mb()}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _step_ms(stamps: list[float], warmup: int) -> float:
    intervals = [b - a for a, b in zip(stamps, stamps[1:])][warmup:]
    return 1000 * statistics.median(intervals)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--run", choices=["diffalign", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.run:
        result = _run_diffalign(args) if args.run == "diffalign" else _run_trl(args)
        with open(os.path.join(args.root, f"{args.run}.json"), "w") as handle:
            json.dump(result, handle)
        return

    root = tempfile.mkdtemp(prefix="text_dpo_vs_trl_")
    model, data = _make_files(root, args.batch, args.hidden, args.layers)
    results = {}
    for name in ("diffalign", "trl"):
        common = ["--steps", str(args.steps), "--batch", str(args.batch), "--lr", str(args.lr)]
        subprocess.run([sys.executable, "-m", "diffalign.benchmarks.text_dpo_vs_trl", "--run", name, "--root", root,
                        "--model", model, "--data", data, *common], check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(root, f"{name}.json")) as handle:
            results[name] = json.load(handle)

    ours, theirs = results["diffalign"], results["trl"]
    device = "cuda" if _cuda() else "cpu"
    print(f"text DPO, tiny Llama (hidden {args.hidden}, {args.layers} layers), batch {args.batch} pairs, {args.steps} steps, "
          f"fp32, {device}, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}\n")
    print("| implementation | median step (ms) | peak memory (MB) | loss step 1 | loss last step |")
    print("|---|---|---|---|---|")
    for name, result in (("diffalign text-dpo", ours), ("TRL 1.16 DPOTrainer", theirs)):
        print(f"| {name} | {_step_ms(result['stamps'], args.warmup):.1f} | {result['peak_mb']:.0f} | "
              f"{result['losses'][0]:.6f} | {result['losses'][-1]:.6f} |")
    differences = [abs(a - b) for a, b in zip(ours["losses"], theirs["losses"])]
    print("\n| step | diffalign loss | TRL loss | abs difference |")
    print("|---|---|---|---|")
    for step, (a, b, d) in enumerate(zip(ours["losses"], theirs["losses"], differences), start=1):
        if step <= 3 or step % max(1, args.steps // 6) == 0 or step == args.steps:
            print(f"| {step} | {a:.6f} | {b:.6f} | {d:.2e} |")
    print(f"\nmax |loss difference| over {len(differences)} steps: {max(differences):.2e}")


if __name__ == "__main__":
    main()
