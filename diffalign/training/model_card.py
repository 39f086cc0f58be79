"""The model card (``README.md``) every ``diffalign train`` export carries.

A Hugging Face model card is what the Hub, ``huggingface_hub.ModelCard.load`` and people opening the
folder read first: without it an exported folder says neither what it was trained from nor how to load
it. The card is built through ``huggingface_hub``'s ``ModelCard`` / ``ModelCardData`` (valid YAML
header, Hub metadata names) and written after the export, so a library's own card (peft writes one
beside an adapter) is replaced, never the other way round.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

CARD_FILE = "README.md"


def write_model_card(output_dir: str, config, method, *, family: Optional[str] = None, rows: int, skipped: Optional[dict[str, int]],
                     effective_batch_size: int, learning_rate: float, final_metrics: dict[str, Any]) -> str:
    """Write ``<output_dir>/README.md`` for the run's export; returns its path.

    Header: ``base_model`` (``--model``), ``library_name`` (``diffusers``; ``transformers`` for a full
    text model, ``peft`` for a text LoRA adapter), ``tags`` (``diffalign``, the method, ``lora``,
    ``text-to-image``/``diffusers`` for diffusion) and ``license`` copied from the base model's own card
    when ``--model`` is a local folder whose README.md has one (nothing is fetched; otherwise omitted).
    Body: the method and its one-line summary, its options with the model family's defaults filled in
    (``family``: ``MethodConfig.for_family``), the data (rows used and skipped),
    steps, effective batch size, learning rate, the final step's metrics, the last validation grid
    (with ``--validation-prompts``) and how to load the export.
    """
    from huggingface_hub import ModelCard, ModelCardData

    diffusion = method.modality == "diffusion"
    lora = config.lora_rank > 0
    library = "diffusers" if diffusion else ("peft" if lora else "transformers")
    tags = ["diffalign", method.name] + (["lora"] if lora else []) + (["text-to-image", "diffusers"] if diffusion else [])
    data = ModelCardData(base_model=config.model, library_name=library, tags=tags, license=_base_license(config.model))
    if diffusion:
        data.pipeline_tag = "text-to-image"

    options = json.dumps(method.config.for_family(family), indent=2, default=str)
    skipped = {reason: count for reason, count in (skipped or {}).items() if count}
    skipped_text = ", ".join(f"{count} {reason}" for reason, count in sorted(skipped.items())) or "none"
    metrics = [(name, value) for name, value in final_metrics.items() if name != "step"]
    metric_rows = "\n".join(f"| `{name}` | {_number(value)} |" for name, value in metrics)
    body = "\n".join([
        f"# {method.name} on {config.model}",
        "",
        f"Trained with diffalign `{method.name}`: {method.summary}",
        "",
        f"{'LoRA adapters (rank ' + str(config.lora_rank) + ')' if lora else 'Full fine-tuning'} of `{config.model}`.",
        "",
        "## Training",
        "",
        f"- Data: `{config.data}`: {rows} rows used, skipped: {skipped_text}",
        f"- Steps: {config.max_steps}",
        f"- Effective batch size: {effective_batch_size}",
        f"- Learning rate: {learning_rate:g} ({config.lr_scheduler} schedule)",
        "",
        "Method options:",
        "",
        "```json",
        options,
        "```",
        "",
        "## Final metrics (last step)",
        "",
        "| metric | value |",
        "| --- | --- |",
        metric_rows or "| (none) | |",
        "",
        *_validation_section(output_dir, config.max_steps),
        "## Usage",
        "",
        *(_negative_usage(config.model, output_dir) if method.negative_model else
          _user_usage(config.model, output_dir, config.method_args.get("user_embeddings")) if method.user_conditioned else
          ["```python", _usage(config.model, output_dir, diffusion, lora), "```"]),
        "",
    ])
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
    path = os.path.join(output_dir, CARD_FILE)
    card.save(path)
    return path


def _base_license(model: str) -> Optional[str]:
    """The license in a local base model folder's README.md header; None when absent or unreadable."""
    path = os.path.join(model, CARD_FILE) if isinstance(model, str) else ""
    if not path or not os.path.isfile(path):
        return None  # a hub id: the card is not fetched
    try:
        from huggingface_hub import ModelCard

        return ModelCard.load(path).data.license or None
    except Exception:  # a README that is no model card: no license, no error
        return None


def _number(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _validation_section(output_dir: str, step: int) -> list[str]:
    """The last validation grid (``--validation-prompts``), linked relative to the card, if there is one."""
    grid = os.path.join("validation", f"step-{step}", "grid.png")
    if not os.path.isfile(os.path.join(output_dir, grid)):
        return []
    return ["## Validation images", "", f"Step 0 (the base model) above step {step}, the same prompts and seeds:", "",
            f"![validation images]({grid})", ""]


def _negative_usage(base: str, output_dir: str) -> list[str]:
    return [
        "This is a **negative model**: the negative branch of NPO-guided classifier-free guidance, "
        "eps = eps_neg(x, c_neg) + w (eps_pos(x, c) - eps_neg(x, c_neg)), not a model to sample from alone. "
        "Generate with it next to the base (or another positive model, `--merge-weight` moves its weight offset there):",
        "",
        "```bash",
        f"diffalign generate --model {base} --negative-model {output_dir} --prompts prompts.txt --out images",
        "```",
    ]


def _user_usage(base: str, output_dir: str, embeddings: Optional[str]) -> list[str]:
    embeddings = embeddings or "EMB"
    return [
        "This is a **PPD user adapter** (`user_adapter.safetensors`, IP-Adapter layout): a decoupled user cross-attention "
        "branch for the base model, conditioned on a user embedding (`diffalign users embed`). Generate for a user, an "
        "interpolation between two, or a new user's example pairs:",
        "",
        "```bash",
        f"diffalign generate --model {base} --user-adapter {output_dir} --user-embeddings {embeddings} --user USER "
        "--prompts prompts.txt --out images",
        f"diffalign generate --model {base} --user-adapter {output_dir} --user-embeddings {embeddings} --interpolate A B "
        "--alpha 0.5 --prompts prompts.txt --out images",
        f"diffalign generate --model {base} --user-adapter {output_dir} --user-shots shots.jsonl --prompts prompts.txt --out images",
        "```",
        "",
        "```python",
        "from diffalign.data.user_embeddings import UserEmbeddings",
        "from diffalign.pipelines import StableDiffusionPPDPipeline  # StableDiffusionXLPPDPipeline for SDXL",
        "",
        f"pipe = StableDiffusionPPDPipeline.from_pretrained({base!r})",
        f"pipe.load_user_adapter({output_dir!r})",
        f"user = UserEmbeddings.load({embeddings!r}).user_mean('USER')",
        "image = pipe('a prompt', user_embedding=user, user_scale=1.0).images[0]",
        "```",
    ]


def _usage(base: str, output_dir: str, diffusion: bool, lora: bool) -> str:
    if diffusion and lora:
        return ("from diffusers import DiffusionPipeline\n\n"
                f"pipe = DiffusionPipeline.from_pretrained({base!r})\n"
                f"pipe.load_lora_weights({output_dir!r})")
    if diffusion:
        return f"from diffusers import DiffusionPipeline\n\npipe = DiffusionPipeline.from_pretrained({output_dir!r})"
    if lora:
        return ("from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                f"base = AutoModelForCausalLM.from_pretrained({base!r})\n"
                f"model = PeftModel.from_pretrained(base, {output_dir!r})\n"
                f"tokenizer = AutoTokenizer.from_pretrained({output_dir!r})")
    return ("from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f"model = AutoModelForCausalLM.from_pretrained({output_dir!r})\n"
            f"tokenizer = AutoTokenizer.from_pretrained({output_dir!r})")


__all__ = ["CARD_FILE", "write_model_card"]
