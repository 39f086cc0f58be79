"""The shared training loop on accelerate. It knows nothing method-specific: the modality loads the
model and reads the method's data format, the model's encode step turns each collated batch into model
inputs (outside autocast, so the VAE runs in float32), the method computes a loss from them, and the
model exports the result.

Per optimiser step: ``gradient_accumulation_steps`` micro-batches (gradients synchronised across
processes on the last one only), each loss divided by the accumulation steps, gradient norm clipped,
one optimiser and scheduler step, metrics reduced over micro-batches and processes (below) and appended
to ``metrics.jsonl``. Checkpoints are atomic and a resumed run continues exactly the sequence an
uninterrupted one would have produced (``diffalign.training.sampling``). With ``--validation-prompts``
the main process draws validation images before training, every ``--validation-steps`` and at the end
(``diffalign.training.validation``); it restores the RNG state, so the training run is unchanged.

Metrics are exact on any number of processes and accumulation steps: every metric of a micro-batch is a
(value x count, count) pair, ``count`` being how many things the value is the mean of
(``ObjectiveOutput.metric_counts``; 1, i.e. one micro-batch mean, unless the objective says otherwise,
e.g. KTO's ``rewards/chosen`` counts the micro-batch's desirable examples). A step logs
sum(value x count) / sum(count) over its micro-batches and processes, so a metric a micro-batch lacks
(no desirable example) is averaged over the examples that have it, never diluted by a 0. The processes
first gather the union of their metric names and all reduce one (names, 2) tensor in that order, each
contributing (0, 0) for a name it lacks; a metric no micro-batch of any process had is left out of the
step's record. The method's ``step_metrics`` then derives step-level metrics (KTO's margins). ``loss`` is
the mean of the micro-batch losses over micro-batches and processes (count 1 each); ``lr`` and
``grad_norm`` are the scheduler's and the clipped norm's.
"""

from __future__ import annotations

import dataclasses
import contextlib
import gc
import json
import os
import time
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from diffalign.data.errors import disk_space_errors
from diffalign.errors import UsageError, UserError
from diffalign.options import OptionError
from diffalign.methods.base import get_method_class
from diffalign.training.checkpoints import save_checkpoint
from diffalign.training.config import REPORT_TO_NONE, TrainConfig
from diffalign.training.metrics_log import MetricsLog
from diffalign.training.model_card import CARD_FILE, write_model_card
from diffalign.training.run_folder import closing_run_folders, open_run_folder
from diffalign.training.diffusion_modality import DiffusionModality
from diffalign.training.text_modality import TextModality
from diffalign.training.threads import configure_threads
from diffalign.training.validation import Validator, log_text
from diffalign.progress import library_progress_bars
from diffalign.training.optim import build_lr_scheduler, build_optimizer, effective_learning_rate
from diffalign.training.sampling import EpochIndexed, ShardedEpochBatches, step_generator

MODALITIES = {"diffusion": DiffusionModality, "text": TextModality}
MIXED_PRECISION_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class NonFiniteLossError(UserError, FloatingPointError):
    pass


def build_method(config: TrainConfig):
    """The method named by ``config.method`` with its config built from ``config.method_args``."""
    method_class = get_method_class(config.method)
    known = {field.name for field in dataclasses.fields(method_class.config_class)}
    unknown = sorted(set(config.method_args) - known)
    if unknown:
        raise UsageError(f"method {config.method!r} has no option(s) {', '.join(unknown)}; its options: {', '.join(sorted(known)) or 'none'}")
    return method_class(method_class.config_class(**config.method_args))


def train(config: TrainConfig) -> dict[str, Any]:
    """Train ``config.method`` on ``config.model`` and ``config.data``; returns a summary.

    Writes ``<output_dir>/metrics.jsonl``, ``checkpoints/step-N``, ``run_config.json``,
    ``data_report.json``, the export (see the modality's ``export``) and its model card ``README.md``;
    with ``--validation-prompts``, ``validation/step-N/`` (``diffalign.training.validation``).
    """
    with library_progress_bars(config.progress_bar), closing_run_folders():  # the output folder's lock released
        return _train(config)


def _train(config: TrainConfig) -> dict[str, Any]:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if config.mixed_precision not in MIXED_PRECISION_DTYPES:
        raise ValueError(f"--mixed-precision must be one of {', '.join(MIXED_PRECISION_DTYPES)}")
    if config.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise UsageError("--mixed-precision fp16 needs a CUDA GPU (CPU autocast does not cover it); use bf16 or no")
    method = build_method(config)
    if config.validation_prompts is not None and method.modality != "diffusion":
        raise OptionError("validation_prompts", f"is for diffusion methods; {config.method} trains a {method.modality} model")
    validator = Validator(config, method.negative_model) if config.validation_prompts is not None else None
    modality = MODALITIES[method.modality]()
    report_to = None if config.report_to in (None, REPORT_TO_NONE) else config.report_to
    accelerator = Accelerator(mixed_precision=config.mixed_precision, log_with=report_to,
                              project_dir=config.output_dir)
    set_seed(config.seed)
    threads = configure_threads(config.num_threads, int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes)))
    started = time.time()
    # the output folder, the resume checkpoint and its settings checked (and the folder locked) before any work
    run = open_run_folder(config, method.config, accelerator)

    dataset, collate = modality.build_dataset(config, method)
    model = modality.load_model(config, method)
    method.prepare_model(model)
    model.place(accelerator.device, MIXED_PRECISION_DTYPES[config.mixed_precision])
    if validator is not None:
        validator.attach(model)
    skipped = getattr(dataset, "skipped", None)

    learning_rate = effective_learning_rate(config, accelerator.num_processes)
    module = model.trainable_module()
    optimizer = build_optimizer(config, module.parameters(), learning_rate)
    lr_scheduler = build_lr_scheduler(config, optimizer)
    prepared, optimizer = accelerator.prepare(module, optimizer)
    accelerator.register_for_checkpointing(lr_scheduler)
    for component in model.checkpointed_modules():  # an EMA reference: after the scheduler, in a fixed order
        accelerator.register_for_checkpointing(component)
    model.set_trainable_module(prepared)

    start_step = run.start_step
    if run.checkpoint is not None:
        accelerator.load_state(run.checkpoint)
        accelerator.print(f"resumed from {run.checkpoint} at step {start_step}")

    if accelerator.is_main_process:
        _write_run_files(config, method, accelerator, dataset, skipped, learning_rate, run, getattr(model, "family", None))
        if skipped is not None and skipped.total:
            print(f"data: {skipped.summary()}")
    metrics_log = MetricsLog(config.output_dir, start_step) if accelerator.is_main_process else None
    if report_to:
        accelerator.init_trackers("diffalign", config=_flat_config(config))
    if validator is not None and start_step == 0:  # the base model's images (a resumed run has them)
        base_metrics = validator.run(0, accelerator, accelerator.unwrap_model(prepared), accelerator.autocast)
        if base_metrics and metrics_log is not None:
            metrics_log.write({"step": 0, **base_metrics})
        if base_metrics and report_to:
            accelerator.log(base_metrics, step=0)

    accumulation = config.gradient_accumulation_steps
    batches = iter(DataLoader(
        EpochIndexed(dataset),
        batch_sampler=ShardedEpochBatches(len(dataset), config.train_batch_size, accelerator.process_index,
                                          accelerator.num_processes, config.seed, start=start_step * accumulation),
        collate_fn=collate,
        num_workers=config.dataloader_num_workers,
    ))
    progress = tqdm(total=config.max_steps, initial=start_step, desc=f"{config.method}",
                    disable=not (config.progress_bar and accelerator.is_local_main_process))
    record: dict[str, Any] = {}
    for step in range(start_step, config.max_steps):
        run.check_launcher(accelerator, f"before step {step + 1}")  # an orphaned worker stops
        totals: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for micro_step in range(accumulation):
            batch = next(batches)
            generator = step_generator(config.seed, step, micro_step, accelerator.process_index)
            sync = micro_step == accumulation - 1
            inputs = model.encode_batch(batch, generator, **method.encode_options())  # outside autocast: the VAE in fp32
            with accelerator.autocast(), (contextlib.nullcontext() if sync else accelerator.no_sync(prepared)):
                output = method.compute_loss(model, inputs, generator)
                if not torch.isfinite(output.loss):
                    raise NonFiniteLossError(
                        f"step {step + 1}, micro-batch {micro_step + 1}: the loss is {output.loss.item()} "
                        f"(prompts: {batch.get('prompts', '?')!r:.200}); lower the learning rate or use fp32/bf16"
                    )
                accelerator.backward(output.loss / accumulation)
            add_metrics(totals, {"loss": output.loss.detach(), **output.metrics}, output.metric_counts)
        grad_norm = accelerator.clip_grad_norm_(prepared.parameters(), config.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        method.after_optimizer_step(model)

        record = {"step": step + 1, **dict(sorted(method.step_metrics(reduce_metrics(totals, accelerator)).items())),
                  "lr": lr_scheduler.get_last_lr()[0], "grad_norm": float(grad_norm)}
        if validator is not None and validator.due(step + 1):
            record.update(validator.run(step + 1, accelerator, accelerator.unwrap_model(prepared), accelerator.autocast))
        if metrics_log is not None:
            metrics_log.write(record)
        if report_to:
            accelerator.log({key: value for key, value in record.items() if key != "step"}, step=step + 1)
        progress.update(1)
        progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
        if (step + 1) % config.checkpointing_steps == 0 or step + 1 == config.max_steps:
            save_checkpoint(accelerator, config.output_dir, step + 1, {"step": step + 1, "identity": run.identity},
                            config.checkpoints_total_limit)
    progress.close()

    run.check_launcher(accelerator, "before the export")
    unwrapped = accelerator.unwrap_model(prepared)
    checksums = accelerator.gather(_parameter_checksum(unwrapped).reshape(1)).tolist()
    if accelerator.is_main_process:
        with disk_space_errors(config.output_dir, lambda: _float32_bytes(unwrapped), "the trained model",
                               hint="free some space or choose another --output-dir"):
            model.export(config.output_dir, unwrapped)
            if CARD_FILE not in run.kept:  # after the export (which may write its own card); never a user's README.md
                write_model_card(
                    config.output_dir, config, method, family=getattr(model, "family", None), rows=len(dataset), skipped=skipped.counts if skipped is not None else {},
                    effective_batch_size=config.train_batch_size * config.gradient_accumulation_steps * accelerator.num_processes,
                    learning_rate=learning_rate, final_metrics=record)
                if report_to:
                    with open(os.path.join(config.output_dir, CARD_FILE), encoding="utf-8") as handle:
                        log_text(accelerator, "model_card", handle.read())
    accelerator.wait_for_everyone()
    # free the DDP wrapper (its gradient reducer holds the process group) while every process is still
    # here: freed after end_training, at return, gloo's destructor can wait forever on a peer that has exited
    model.set_trainable_module(unwrapped)
    del prepared, optimizer
    accelerator.free_memory()
    gc.collect()
    accelerator.end_training()
    summary = {
        "method": config.method,
        "steps": config.max_steps,
        "resumed_from_step": start_step,
        "trained_steps": config.max_steps - start_step,
        "world_size": accelerator.num_processes,
        "torch_threads": threads,
        "parameter_checksums": checksums,
        "final_metrics": record,
        "seconds": round(time.time() - started, 2),
        "output_dir": config.output_dir,
    }
    if accelerator.is_main_process:
        summary["files"] = run.summary_files()  # what the run wrote here (--overwrite may remove them)
        with open(os.path.join(config.output_dir, "train_summary.json"), "w") as handle:
            json.dump(summary, handle, indent=2)
    run.close()
    return summary


def add_metrics(totals: dict[str, tuple[torch.Tensor, torch.Tensor]], metrics: dict[str, torch.Tensor],
                counts: dict[str, Any] | None = None) -> None:
    """Add one micro-batch's ``metrics`` to ``totals``: name -> (sum of value x count, sum of count).

    ``counts`` maps a name to how many things its value is the mean of (a number or a scalar tensor);
    a name not in it counts 1. A count of 0 adds nothing, whatever the value (the NaN mean of an empty
    subset). Everything stays a float32 tensor on the value's device (no host sync per micro-batch).
    """
    counts = counts or {}
    for name, value in metrics.items():
        value = torch.as_tensor(value).detach().float()
        count = torch.as_tensor(counts.get(name, 1.0), device=value.device).detach().float()
        weighted = torch.where(count > 0, value * count, torch.zeros_like(value))
        if name in totals:
            total, seen = totals[name]
            totals[name] = (total + weighted, seen + count)
        else:
            totals[name] = (weighted, count)


def reduce_metrics(totals: dict[str, tuple[torch.Tensor, torch.Tensor]], accelerator=None) -> dict[str, float]:
    """Each metric's value for the step: sum(value x count) / sum(count) over the micro-batches in
    ``totals`` and, with an ``accelerator`` of several processes, over all processes.

    Every process must call this (it holds two collectives). The processes gather the union of their
    metric names first and reduce one (names, 2) tensor in sorted-name order, a process contributing
    (0, 0) for a name it lacks, so the all-reduce always sees the same shape and order. A metric whose
    total count is 0 is left out. Returns name -> float, names sorted.
    """
    names = sorted(totals)
    distributed = accelerator is not None and accelerator.num_processes > 1
    if distributed:
        from accelerate.utils import gather_object

        names = sorted(set(gather_object(names)))
    if not names:
        return {}
    device = accelerator.device if accelerator is not None else torch.device("cpu")
    stacked = torch.stack([
        torch.stack([totals[name][0].to(device), totals[name][1].to(device)]) if name in totals
        else torch.zeros(2, device=device)
        for name in names
    ])
    if distributed:
        stacked = accelerator.reduce(stacked, reduction="sum")
    return {name: total / count for name, (total, count) in zip(names, stacked.tolist()) if count > 0}


def _float32_bytes(module: torch.nn.Module) -> int:
    """About the bytes of the export: the trained parameters in float32 (LoRA: the adapters only)."""
    trained = [p for p in module.parameters() if p.requires_grad] or list(module.parameters())
    return sum(p.numel() * 4 for p in trained)


def _parameter_checksum(module: torch.nn.Module) -> torch.Tensor:
    """Sum of all trainable parameters in float64: equal on every process iff they stayed in sync."""
    total = torch.zeros((), dtype=torch.float64, device=next(module.parameters()).device)
    for parameter in module.parameters():
        if parameter.requires_grad:
            total += parameter.detach().double().sum()
    return total


def _flat_config(config: TrainConfig) -> dict:
    flat = {key: value for key, value in dataclasses.asdict(config).items() if key != "method_args"}
    flat.update({f"method.{key}": value for key, value in config.method_args.items()})
    return {key: (value if isinstance(value, (int, float, str, bool)) else str(value)) for key, value in flat.items()}


def _write_run_files(config, method, accelerator, dataset, skipped, learning_rate, folder, family) -> None:
    run = {
        "train_config": dataclasses.asdict(config),
        "method_config": dataclasses.asdict(method.config),
        "method_config_resolved": method.config.for_family(family),  # family defaults filled in (beta None -> 1000, ...)
        "world_size": accelerator.num_processes,
        "effective_learning_rate": learning_rate,
        "effective_batch_size": config.train_batch_size * config.gradient_accumulation_steps * accelerator.num_processes,
        "resumed_from": folder.resumed_from,  # None for a new run; each resume writes its own file, none is overwritten
        "identity": folder.identity,
    }
    with open(os.path.join(config.output_dir, folder.run_config_name), "w") as handle:
        json.dump(run, handle, indent=2, default=str)
    report = {"rows": len(dataset), "skipped": skipped.counts if skipped is not None else {},
              "skipped_first_examples": skipped.examples if skipped is not None else {}}
    with open(os.path.join(config.output_dir, "data_report.json"), "w") as handle:
        json.dump(report, handle, indent=2)


__all__ = ["NonFiniteLossError", "add_metrics", "build_method", "reduce_metrics", "train"]
