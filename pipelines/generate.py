"""Generation: images for a list of prompts, several per prompt, each from its own seed, into a folder
that ``diffalign score`` / ``diffalign pairs`` read back. ``diffalign generate`` is a thin layer over
``generate(GenerateSettings(...))``.

Seeds (``image_seeds``): image ``j`` of prompt ``i`` uses seed ``seed + 1000 * i + j`` and its own CPU
``torch.Generator``, so an image depends on (model, prompt, seed, settings), not on which other images
share its batch: two models asked with the same seed start from the same noise, and any image can be
regenerated alone. (Batched, the UNet's float arithmetic may round differently from batch size 1, so a
batch's PNGs equal the batch-of-one PNGs up to rounding, typically 1/255 in a few pixels; the default
batch size 1 reproduces a run exactly.)

Output folder (``diffalign.pipelines.generation_folder``): ``{prompt_index}_{j}.png`` images and a
``generations.jsonl`` listing (prompt, seed and settings per image). Rerunning the same command skips
the images that exist and are listed; rerunning into the same folder with other settings (or another
prompt at an index) stops before loading anything, naming the setting: ``overwrite=True`` starts over,
or use another folder. More prompts or images per prompt than the folder holds only add images.

Models: the positive model is a diffusers pipeline of a family diffalign trains (SD1.x/2.x, SDXL,
SD3.x; folder or hub id), optionally with a LoRA folder fused in (``lora``). The flow-matching
families (SD3.x) generate with their own diffusers pipeline and plain classifier-free guidance: the
negative model and the user adapter below are UNet pieces. With ``negative_model`` the negative branch of classifier-free
guidance runs a second UNet (NPO, research/diffusion_methods_B.md §1.4 and §2.4):
``eps = eps_neg(x, c_neg) + w (eps_pos(x, c) - eps_neg(x, c_neg))``. The negative is a pipeline whose
``unet/`` is the trained negative (a ``self-npo`` or full fine-tuned ``diffusion-npo`` output), or a LoRA
folder (``diffusion-npo --lora-rank``) fused onto ``negative_base`` (default: the positive ``model``).
Its weights are ``theta_neg = theta_negtrained + (1 - m) (theta_pos - theta_base)`` with ``m =
merge_weight`` (default 0, the official default) and ``theta_base`` the UNet of ``negative_base``; when
the positive is that base (no LoRA, same model) the correction is zero and is skipped.

Personalised (PPD): ``user_adapter`` (a ``diffalign train --method ppd`` output) with one user
embedding source, a user of ``user_embeddings``, an ``interpolate`` between two with ``alpha``, or
``user_shots`` embedded on the fly (``diffalign.pipelines.user_inputs``); ``user_scale`` is lambda.
"""


from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence, Union

import torch

from diffalign.data.errors import DataError
from diffalign.diffusion.families import FAMILIES, trained_pipelines
from diffalign.diffusion.seeds import SEED_STRIDE, image_seed, image_seeds  # noqa: F401  (the seed rule, re-exported)
from diffalign.errors import ModelLoadError, UsageError, UserError
from diffalign.pipelines.generation_folder import (
    OPTION_NAMES, RECORDS_FILE, check_same_settings, prepare_folder, read_listing, rewrite_listing, save_image,
)
from diffalign.pipelines.npo_merge import LORA_WEIGHT_NAME, fuse_lora_into_unet, load_unet, merge_negative_unet
from diffalign.pipelines.user_inputs import check_user_settings, recorded_user_settings, user_embedding
from diffalign.progress import library_progress_bars
from diffalign.rewards.base import resolve_device
from diffalign.rewards.records import RecordError, candidate_image_name, read_jsonl_rows, read_prompts_file

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_GUIDANCE = {name: family.default_guidance for name, family in FAMILIES.items()}
DEFAULT_STEPS = 25
MAX_SEED = 2**63 - 1
# model_index.json class names -> family; a pipeline saved by the NPO classes loads as its family
PIPELINE_FAMILIES = {
    **{class_name: name for name, family in FAMILIES.items() for class_name in family.pipeline_class_names},
    "StableDiffusionNPOPipeline": "sd", "StableDiffusionXLNPOPipeline": "sdxl",
}
FAMILY_NAMES = {name: family.title for name, family in FAMILIES.items()}
SCHEDULER_ALIASES = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}
PROMPT_FILE_EXTENSIONS = (".txt", ".jsonl")
OTHER_FILE_EXTENSIONS = (".json", ".csv", ".tsv", ".parquet", ".yaml", ".yml")


# --------------------------------------------------------------------------------------- settings
@dataclass
class GenerateSettings:
    """What ``generate`` makes; ``None`` means the default named in the comment."""

    model: str
    prompts: Union[str, Sequence[str]]  # a .txt / .jsonl file, one literal prompt, or a list of prompts
    out: str
    images_per_prompt: int = 1
    guidance: Optional[float] = None  # 7.5 for SD1.x/2.x, 5.0 for SDXL (the NPO scripts')
    steps: int = DEFAULT_STEPS
    seed: int = 0
    lora: Optional[str] = None
    negative_model: Optional[str] = None
    negative_base: Optional[str] = None  # the base the negative was trained on; default: model
    merge_weight: Optional[float] = None  # 0 (the official default) with a negative model
    negative_prompt: Optional[str] = None  # the pipeline's own default: "" for SD, zero embeddings for SDXL
    batch_size: int = 1
    height: Optional[int] = None  # the model's own resolution
    width: Optional[int] = None
    scheduler: Optional[str] = None  # the model's own scheduler; a diffusers class name or an alias
    dtype: str = "float32"
    device: str = "auto"
    revision: Optional[str] = None  # of --model on the hub
    progress: bool = True
    overwrite: bool = False
    # PPD personalisation (diffalign.pipelines.user_inputs): an adapter and one source of the user embedding
    user_adapter: Optional[str] = None
    user_embeddings: Optional[str] = None
    user: Optional[str] = None
    interpolate: Optional[Sequence[str]] = None
    alpha: Optional[float] = None
    user_shots: Optional[str] = None
    user_scale: Optional[float] = None  # the adapter's training value (1)


def check_settings(settings: GenerateSettings) -> None:
    """One ``UsageError`` sentence for the first option value that cannot work; nothing is loaded."""
    def integer(name: str, value, low: int, high: Optional[int] = None) -> None:
        valid = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"
        if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
            raise UsageError(f"--{name} must be {valid}, got {value!r}")

    def number(name: str, value) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
            raise UsageError(f"--{name} must be a finite number, got {value!r}")

    for name in ("model", "out"):
        if not isinstance(getattr(settings, name), str) or not getattr(settings, name).strip():
            raise UsageError(f"--{name} must be a non-empty path or name, got {getattr(settings, name)!r}")
    integer("images-per-prompt", settings.images_per_prompt, 1, SEED_STRIDE)
    integer("steps", settings.steps, 1)
    integer("seed", settings.seed, 0, MAX_SEED)
    integer("batch-size", settings.batch_size, 1)
    number("guidance", settings.guidance)
    number("merge-weight", settings.merge_weight)
    for name in ("height", "width"):
        value = getattr(settings, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 8 or value % 8):
            raise UsageError(f"--{name} must be a positive multiple of 8 (the VAE's downsampling), got {value!r}")
    if settings.dtype not in DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {settings.dtype!r}")
    if settings.device not in DEVICES:
        raise UsageError(f"--device must be one of {', '.join(DEVICES)}, got {settings.device!r}")
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda, but torch sees no CUDA device: use --device cpu or auto")
    check_user_settings(settings)
    if settings.negative_model is None:
        for name in ("negative_base", "merge_weight"):
            if getattr(settings, name) is not None:
                raise UsageError(f"{OPTION_NAMES[name]} applies to the negative model: give --negative-model too, or leave it out")
    if is_lora_folder(settings.model):
        base = _card_base_model(settings.model)
        trained_from = f" ({base}, its model card says)" if base else ""
        raise UsageError(f"--model {settings.model} is a LoRA folder: pass the model it was trained from{trained_from} as "
                         "--model and this folder as --lora")
    if settings.scheduler is not None:
        scheduler_class(settings.scheduler)
    if settings.lora is not None:
        _check_lora_source("--lora", settings.lora)
    if settings.negative_model is not None and os.path.isdir(settings.negative_model):
        if not (os.path.isfile(os.path.join(settings.negative_model, "model_index.json")) or is_lora_folder(settings.negative_model)):
            raise UsageError(f"--negative-model {settings.negative_model} is a folder with neither model_index.json (a diffusers "
                             f"pipeline) nor {LORA_WEIGHT_NAME} (a LoRA)")
    if os.path.exists(settings.out) and not os.path.isdir(settings.out):
        raise UsageError(f"--out {settings.out} exists and is not a folder: give a folder to write the images to")


def scheduler_class(name: str):
    """The diffusers scheduler class of a class name (``DDIMScheduler``) or an alias (``ddim``, ``dpm++``, ...)."""
    import diffusers

    class_name = SCHEDULER_ALIASES.get(name.lower(), name)
    found = getattr(diffusers, class_name, None) if class_name.endswith("Scheduler") else None
    if found is None:
        raise UsageError(f"--scheduler must be a diffusers scheduler class (DDIMScheduler, ...) or one of "
                         f"{', '.join(SCHEDULER_ALIASES)}, got {name!r}")
    return found


def is_lora_folder(path: str) -> bool:
    """A local folder holding ``pytorch_lora_weights.safetensors`` and no ``model_index.json``."""
    return (os.path.isdir(path) and os.path.isfile(os.path.join(path, LORA_WEIGHT_NAME))
            and not os.path.isfile(os.path.join(path, "model_index.json")))


def _card_base_model(folder: str) -> Optional[str]:
    """The ``base_model`` of a folder's model card (``README.md``, as ``diffalign train`` writes it), if any."""
    path = os.path.join(folder, "README.md")
    if not os.path.isfile(path):
        return None
    try:
        from huggingface_hub import ModelCard

        base = ModelCard.load(path).data.base_model
    except Exception:  # an unreadable card only loses the hint
        return None
    return base if isinstance(base, str) else None


def _check_lora_source(option: str, source: str) -> None:
    from diffalign.hub import is_hub_id, require_cached_when_offline

    if os.path.isdir(source):
        if not is_lora_folder(source):
            raise UsageError(f"{option} {source} holds no {LORA_WEIGHT_NAME}: give the folder a LoRA training run exported")
    elif is_hub_id(source):
        require_cached_when_offline(source, LORA_WEIGHT_NAME)
    else:
        raise UsageError(f"{option} {source} is neither a LoRA folder nor a hub id (owner/name)")


# ---------------------------------------------------------------------------------------- prompts
def read_prompts(value: Union[str, Sequence[str]]) -> list[str]:
    """The prompts of a ``.txt`` file (non-empty lines, stripped, as ``diffalign score --prompts`` counts
    them) or a ``.jsonl`` file (``{"prompt": ...}`` per line), ``[value]`` for a literal prompt, or a list
    of prompts as given. A value that looks like a path (a file extension such as .txt, or a separator and
    no spaces) but is no file is an error, never a prompt."""
    if not isinstance(value, str):
        prompts = list(value)
        if not prompts or not all(isinstance(prompt, str) for prompt in prompts):
            raise UsageError("prompts must be a non-empty list of strings")
        return prompts
    lowered = value.lower()
    if os.path.isdir(value):
        raise UsageError(f"--prompts {value} is a folder: give a .txt file (one prompt per line), a .jsonl file "
                         '({"prompt": ...} per line) or the prompt text')
    if os.path.isfile(value):
        if lowered.endswith(".jsonl"):
            prompts = _read_prompts_jsonl(value)
        elif lowered.endswith(OTHER_FILE_EXTENSIONS):
            raise UsageError(f"--prompts {value}: read .txt (one prompt per line) or .jsonl ({{\"prompt\": ...}} per line) "
                             "files; convert it to one of those")
        else:
            prompts = read_prompts_file(value)
        if not prompts:
            raise DataError(f"prompts file {value} has no prompts")
        return prompts
    looks_like_path = lowered.endswith(PROMPT_FILE_EXTENSIONS + OTHER_FILE_EXTENSIONS) or (
        any(sep in value for sep in ("/", os.sep)) and not any(char.isspace() for char in value))
    if looks_like_path:
        raise UsageError(f"--prompts {value}: no such file (give a .txt or .jsonl file that exists, or the prompt text)")
    if not value.strip():
        raise UsageError("--prompts must be a prompt file or a non-empty prompt text")
    return [value]


def _read_prompts_jsonl(path: str) -> list[str]:
    """The ``prompt`` of each row of a jsonl file; errors name the file and line."""
    prompts = []
    try:
        for where, row in read_jsonl_rows(path):
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise RecordError(f"{where}: missing string field 'prompt'")
            prompts.append(row["prompt"])
    except OSError as error:
        raise RecordError(f"cannot read prompts file {path}: {error.strerror or error}") from error
    return prompts


# ------------------------------------------------------------------------------------ the records
def _local_or_id(source: Optional[str]) -> Optional[str]:
    """A local path as an absolute path (a rerun from another folder names the same model), a hub id as is."""
    if source is None:
        return None
    return os.path.abspath(source) if os.path.exists(source) else source


def _family_of(model: str, revision: Optional[str], option: str) -> str:
    from diffalign.diffusion.model import read_model_index

    index = read_model_index(model, revision)
    family = PIPELINE_FAMILIES.get(index.get("_class_name"))
    if family is None:
        raise ModelLoadError(f"{option} {model} is a {index.get('_class_name')}; diffalign generates with "
                             f"{', '.join(trained_pipelines())} models")
    return family


def resolve_settings(settings: GenerateSettings) -> tuple[str, dict[str, Any]]:
    """``(family, the recorded settings)`` with every default resolved from the model's configs (nothing
    loaded but model_index.json and the unet/ and vae/ configs)."""
    from diffalign.diffusion.model import default_resolution, read_model_index

    family = _family_of(settings.model, settings.revision, "--model")
    for option, value in (("--negative-model", settings.negative_model), ("--user-adapter", settings.user_adapter)):
        if value is not None and not FAMILIES[family].ddpm_unet:
            raise UsageError(f"{option} is a UNet piece (SD1.x/2.x, SDXL); {FAMILY_NAMES[family]} models generate with "
                             "plain classifier-free guidance")
    if settings.negative_model is not None:
        if not is_lora_folder(settings.negative_model):
            negative_family = _family_of(settings.negative_model, None, "--negative-model")
            if negative_family != family:
                raise UsageError(f"--negative-model {settings.negative_model} is an {FAMILY_NAMES[negative_family]} model but "
                                 f"--model {settings.model} is an {FAMILY_NAMES[family]} model: the negative must be of the "
                                 "model's family")
        if settings.negative_base is not None and _family_of(settings.negative_base, None, "--negative-base") != family:
            raise UsageError(f"--negative-base {settings.negative_base} is not an {FAMILY_NAMES[family]} model as --model is")
    if settings.negative_model is not None and settings.negative_base is None and settings.merge_weight not in (None, 0):
        trained_on = _card_base_model(settings.negative_model) if is_lora_folder(settings.negative_model) else None
        if trained_on and _local_or_id(trained_on) != _local_or_id(settings.model):
            print(f"note: the negative LoRA {settings.negative_model} was trained from {trained_on} (its model card) but is "
                  f"fused onto --model {settings.model}; give --negative-base {trained_on} for --merge-weight to apply",
                  file=sys.stderr)
    size = None
    if settings.height is None or settings.width is None:
        size = default_resolution(settings.model, settings.revision)
    if settings.scheduler is not None:
        scheduler = scheduler_class(settings.scheduler).__name__
    else:
        scheduler = read_model_index(settings.model, settings.revision).get("scheduler", [None, None])[1]
    negative = settings.negative_model is not None
    recorded = {
        "model": _local_or_id(settings.model),
        "revision": settings.revision,
        "lora": _local_or_id(settings.lora),
        "negative_model": _local_or_id(settings.negative_model),
        "negative_base": _local_or_id(settings.negative_base or settings.model) if negative else None,
        "merge_weight": float(settings.merge_weight or 0.0) if negative else None,
        "negative_prompt": settings.negative_prompt,
        "guidance": float(settings.guidance if settings.guidance is not None else DEFAULT_GUIDANCE[family]),
        "steps": settings.steps,
        "scheduler": scheduler,
        "height": settings.height if settings.height is not None else size,
        "width": settings.width if settings.width is not None else size,
        "dtype": settings.dtype,
    }
    adapter = None
    if settings.user_adapter is not None:
        from diffalign.pipelines.personalized import read_user_adapter_config

        adapter = read_user_adapter_config(settings.user_adapter)
        if adapter.get("family") not in (None, family):
            raise UsageError(f"--user-adapter {settings.user_adapter} was trained on an {FAMILY_NAMES[adapter['family']]} model "
                             f"but --model {settings.model} is an {FAMILY_NAMES[family]} model")
    recorded.update(recorded_user_settings(settings, adapter, _local_or_id))
    return family, recorded


# ---------------------------------------------------------------------------------------- loading
@contextlib.contextmanager
def _loading(what: str) -> Iterator[None]:
    """Loading errors as one ``ModelLoadError`` sentence naming ``what`` (user errors pass through)."""
    from diffalign.hub import hub_unavailable_as_error

    try:
        with hub_unavailable_as_error(what):
            yield
    except UserError:
        raise
    except (OSError, ValueError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelLoadError(f"could not load {what}: {detail}") from error


def load_pipeline(settings: GenerateSettings, family: str, recorded: dict[str, Any], device: torch.device):
    """The generation pipeline (``StableDiffusionNPOPipeline`` / ``StableDiffusionXLNPOPipeline``, or with
    ``user_adapter`` the PPD pipelines of ``diffalign.pipelines.personalized``; a flow-matching family's
    own diffusers pipeline): the positive model with its LoRA fused in, the negative UNet where one is given (else plain classifier-
    free guidance), in ``settings.dtype`` on ``device``, its own progress bar off. Weights are combined in
    float32 and cast afterwards."""
    from diffalign.diffusion.model import cast
    from diffalign.pipelines.stable_diffusion_npo import StableDiffusionNPOPipeline
    from diffalign.pipelines.stable_diffusion_xl_npo import StableDiffusionXLNPOPipeline

    extra = {} if family != "sd" else {"safety_checker": None, "requires_safety_checker": False}
    if not FAMILIES[family].ddpm_unet:
        pipeline_class = FAMILIES[family].pipeline_class()
    elif settings.user_adapter is not None:
        from diffalign.pipelines.personalized import StableDiffusionPPDPipeline, StableDiffusionXLPPDPipeline

        pipeline_class = StableDiffusionXLPPDPipeline if family == "sdxl" else StableDiffusionPPDPipeline
    else:
        pipeline_class = StableDiffusionXLNPOPipeline if family == "sdxl" else StableDiffusionNPOPipeline
        extra["negative_unet"] = None  # a pipeline saved with a negative_unet/ must not guide with it unasked
    with _loading(f"--model {settings.model!r}"):
        pipeline = pipeline_class.from_pretrained(settings.model, revision=settings.revision, **extra)
    if settings.lora is not None:
        with _loading(f"--lora {settings.lora!r}"):
            pipeline.load_lora_weights(settings.lora, weight_name=LORA_WEIGHT_NAME)
        pipeline.fuse_lora()
        pipeline.unload_lora_weights()
    if settings.scheduler is not None:
        pipeline.scheduler = scheduler_class(settings.scheduler).from_config(pipeline.scheduler.config)
    if settings.negative_model is not None:
        pipeline.negative_unet = negative_unet(settings, recorded, pipeline.unet)
    if settings.user_adapter is not None:
        with _loading(f"--user-adapter {settings.user_adapter!r}"):
            pipeline.load_user_adapter(settings.user_adapter)
    dtype = DTYPES[settings.dtype]
    for name, component in pipeline.components.items():
        if isinstance(component, torch.nn.Module) and not (name == "negative_unet" and component is pipeline.unet):
            cast(component, dtype).to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def negative_unet(settings: GenerateSettings, recorded: dict[str, Any], positive_unet):
    """The negative branch's UNet: ``theta_negtrained + (1 - m) (theta_pos - theta_base)``
    (``diffalign.pipelines.npo_merge``), with ``theta_negtrained`` the negative pipeline's UNet or the
    negative LoRA fused onto the base. The correction is skipped where it is zero (m = 1, or the positive
    is the base: no LoRA and the same model); and where the result is the positive UNet itself (the
    negative model is ``--model``), that very module is returned, so that both branches run as one
    batched forward, bit for bit plain classifier-free guidance."""
    base = settings.negative_base or settings.model
    base_revision = settings.revision if recorded["negative_base"] == recorded["model"] else None
    merge_weight = recorded["merge_weight"]
    positive_is_base = settings.lora is None and recorded["negative_base"] == recorded["model"]
    negative_is_model = recorded["negative_model"] == recorded["model"]
    if negative_is_model and settings.lora is None and (positive_is_base or merge_weight == 1.0):
        return positive_unet
    needs_merge = merge_weight != 1.0 and not positive_is_base
    lora_negative = is_lora_folder(settings.negative_model)
    base_unet = None
    if needs_merge or lora_negative:
        with _loading(f"the unet/ of {base!r}"):
            base_unet = load_unet(base, revision=base_revision)
    if lora_negative:
        with _loading(f"--negative-model {settings.negative_model!r}"):
            negative = fuse_lora_into_unet(base_unet, settings.negative_model, weight_name=LORA_WEIGHT_NAME)
    else:
        with _loading(f"the unet/ of {settings.negative_model!r}"):
            negative = load_unet(settings.negative_model)
    if needs_merge:
        negative = merge_negative_unet(negative, base_unet, positive_unet, merge_weight)
    return negative.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------- the runner
def generate(settings: GenerateSettings) -> dict[str, Any]:
    """Generate the images of ``settings`` that ``settings.out`` does not hold yet (module docstring).

    Returns a summary: ``generated`` and ``skipped`` (images that existed) counts, ``images`` (this run's
    images in all), ``out``, ``records`` (the generations.jsonl path), ``seconds`` and ``settings`` (the
    recorded settings)."""
    started = time.perf_counter()
    check_settings(settings)
    prompts = read_prompts(settings.prompts)
    last_seed = image_seed(settings.seed, len(prompts) - 1, settings.images_per_prompt - 1)
    if last_seed > MAX_SEED:
        raise UsageError(f"--seed {settings.seed} is too large: the last image's seed {last_seed} exceeds {MAX_SEED}")
    family, recorded = resolve_settings(settings)
    out = settings.out
    listing = read_listing(out, settings.overwrite)
    check_same_settings(out, listing, recorded, prompts, functools.partial(image_seed, settings.seed))

    wanted = [(i, j) for i in range(len(prompts)) for j in range(settings.images_per_prompt)]
    missing = [key for key in wanted if key not in listing.rows]
    summary = {"generated": 0, "skipped": len(wanted) - len(missing), "images": len(wanted), "out": out,
               "records": os.path.join(out, RECORDS_FILE), "settings": recorded}
    if missing:
        user = None
        if settings.user_adapter is not None:
            from diffalign.pipelines.personalized import read_user_adapter_config

            user = user_embedding(settings, read_user_adapter_config(settings.user_adapter))
        device = resolve_device(None if settings.device == "auto" else settings.device)
        with library_progress_bars(settings.progress):
            pipeline = load_pipeline(settings, family, recorded, device)
        prepare_folder(out, settings.overwrite)
        if listing.stale:
            rewrite_listing(out, listing)
        summary["generated"] = _generate_missing(pipeline, settings, recorded, prompts, missing, str(device), user)
    elif listing.stale:
        rewrite_listing(out, listing)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary


def _generate_missing(pipeline, settings: GenerateSettings, recorded: dict[str, Any], prompts: list[str],
                      missing: list[tuple[int, int]], device: str, user: Optional[torch.Tensor] = None) -> int:
    """Generate the ``missing`` images in batches, appending each one's row after its PNG is in place;
    ``user``: the user embedding of a personalised pipeline."""
    from tqdm.auto import tqdm

    records_path = os.path.join(settings.out, RECORDS_FILE)
    generated = 0
    with tqdm(total=len(missing), desc="generate", unit="image", disable=not settings.progress) as bar, \
            open(records_path, "a", encoding="utf-8") as records:
        for start in range(0, len(missing), settings.batch_size):
            batch = missing[start : start + settings.batch_size]
            seeds = [image_seed(settings.seed, i, j) for i, j in batch]
            call = dict(
                prompt=[prompts[i] for i, _ in batch],
                generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
                num_inference_steps=recorded["steps"],
                guidance_scale=recorded["guidance"],
                height=recorded["height"],
                width=recorded["width"],
                output_type="pil",
            )
            if recorded["negative_prompt"] is not None:
                call["negative_prompt"] = [recorded["negative_prompt"]] * len(batch)
            if user is not None:
                call.update(user_embedding=user, user_scale=recorded["user_scale"])
            images = pipeline(**call).images
            for (i, j), seed, image in zip(batch, seeds, images):
                name = candidate_image_name(i, j)
                save_image(image, settings.out, name)
                row = {"prompt_index": i, "j": j, "prompt": prompts[i], "seed": seed, "image": name, **recorded, "device": device}
                records.write(json.dumps(row) + "\n")
                records.flush()
                generated += 1
                bar.update(1)
    return generated

