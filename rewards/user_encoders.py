"""User encoders for PPD: K labelled pairs of one user -> one embedding vector.

PPD (Dang et al., arXiv 2501.06655; spec ``research/diffusion_methods_B.md`` §3.2) embeds a user from
K = 4 (caption, preferred image, dispreferred image) shots. Three encoders, by name
(``get_user_encoder``):

- ``vlm``: the paper's. A vision-language model reads the K pairs (2K images) and writes a user
  profile, greedily; the embedding is the final layer's hidden state at the last generated token
  (D = the language model's hidden size: 3584 for LLaVA-OneVision-Qwen2-7B).
- ``clip``: CLIP image features; u = mean over shots of (normalised feature of the preferred image -
  normalised feature of the dispreferred one) (D = CLIP's projection size).
- ``vae``: the diffusion model's own VAE; u = mean over shots of the average-pooled difference of
  their latent means (D = latent channels x at most 8 x 8). Offline and cheap: the toy world's encoder.

Each ``embed(chunks)`` returns float32 [len(chunks), D] on the CPU; ``describe()`` is what
``diffalign.data.user_embeddings`` records as the ``encoder`` of the embeddings, and
``rebuild_user_encoder`` makes the same encoder from it (to embed a new user's shots at inference).
``embed_user_pairs`` is ``diffalign users embed`` as a function: chunk a source's users, embed each chunk.
"""

from __future__ import annotations

import inspect
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

import torch
from PIL import Image

from diffalign.data.errors import DataError
from diffalign.data.images import to_rgb, training_transform
from diffalign.data.user_embeddings import UserChunk, UserEmbeddings, UserPairs, chunk_user_pairs
from diffalign.errors import ModelLoadError, UnknownNameError, UsageError
from diffalign.options import OptionError
from diffalign.plugins import load_plugins
from diffalign.rewards.base import batched, resolve_device, resolve_dtype


@dataclass
class Shot:
    """One labelled pair of a user: the caption, the preferred and the dispreferred image."""

    prompt: str
    chosen: Image.Image
    rejected: Image.Image


class UserEncoder(ABC):
    """Embeds chunks of shots; ``dim`` is D. ``texts``: what the encoder wrote for each chunk of the last
    ``embed`` call (the VLM's user profiles), None for encoders that write nothing."""

    name: ClassVar[str]
    dim: int
    texts: Optional[list[str]] = None

    @abstractmethod
    def embed(self, chunks: Sequence[Sequence[Shot]]) -> torch.Tensor:
        """float32 [len(chunks), D] on the CPU, one row per chunk."""

    @abstractmethod
    def describe(self) -> dict:
        """``{"name": ..., **options}``: the constructor options that change the embeddings (the model and
        dtype, not the device or batch size), so that ``rebuild_user_encoder`` makes the same encoder."""


_ENCODERS: dict[str, type[UserEncoder]] = {}


def register_user_encoder(cls: type[UserEncoder]) -> type[UserEncoder]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    _ENCODERS[cls.name] = cls
    return cls


def registered_user_encoders() -> dict[str, type[UserEncoder]]:
    load_plugins(ENTRY_POINT_GROUP)
    return dict(sorted(_ENCODERS.items()))


ENTRY_POINT_GROUP = "diffalign.user_encoders"
"""Encoders of other packages (the toy world's ``toy``) register from modules named in this entry-point
group (``diffalign.plugins``)."""


def user_encoder_class(name: str) -> type[UserEncoder]:
    """The encoder class registered as ``name``; an ``UnknownNameError`` naming the registered ones."""
    load_plugins(ENTRY_POINT_GROUP)
    if name not in _ENCODERS:
        raise UnknownNameError(f"unknown user encoder {name!r}; choose one of {', '.join(sorted(_ENCODERS))}")
    return _ENCODERS[name]


def get_user_encoder(name: str, **options) -> UserEncoder:
    """The encoder registered as ``name``, built with ``options``; an unknown name or option is a user error."""
    cls = user_encoder_class(name)
    parameters = inspect.signature(cls).parameters
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        takes = f"it takes {', '.join(parameters)}" if parameters else "it takes no options"
        raise UsageError(f"user encoder {name!r} takes no option(s) {', '.join(unknown)}; {takes}")
    return cls(**options)


def rebuild_user_encoder(description: dict, **overrides) -> UserEncoder:
    """The encoder a ``describe()`` (the ``encoder`` of stored ``UserEmbeddings``) names, with ``overrides``
    (device, dtype, batch_size, ...): how new users' shots are embedded like the stored ones."""
    options = {key: value for key, value in description.items() if key != "name"}
    return get_user_encoder(description["name"], **{**options, **overrides})


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise OptionError("batch_size", f"must be >= 1, got {batch_size}")


def _flat_images(chunks: Sequence[Sequence[Shot]]) -> list[Image.Image]:
    """The images of every shot of every chunk in the order chosen, rejected, chosen, rejected, ..."""
    return [to_rgb(image) for chunk in chunks for shot in chunk for image in (shot.chosen, shot.rejected)]


def _mean_over_shots(chunks: Sequence[Sequence[Shot]], differences: torch.Tensor) -> torch.Tensor:
    """[chunks, D]: each chunk's mean of its shots' rows of ``differences`` [total shots, D]."""
    sizes = [len(chunk) for chunk in chunks]
    if not sizes:
        return differences.new_zeros(0, differences.shape[-1])
    return torch.stack([part.mean(0) for part in differences.split(sizes)])


def _check_chunks(chunks: Sequence[Sequence[Shot]]) -> None:
    for number, chunk in enumerate(chunks):
        if not chunk:
            raise ValueError(f"chunk {number} has no shots")


# ------------------------------------------------------------------------------------------- clip
@register_user_encoder
class CLIPUserEncoder(UserEncoder):
    """u = 1/K sum_k ( f(x^w_k) / |f(x^w_k)| - f(x^l_k) / |f(x^l_k)| ), f = ``CLIPModel.get_image_features``
    (the projected image embedding), x^w_k / x^l_k the preferred / dispreferred image of shot k.

    The direction in CLIP space from what the user rejects to what they choose, averaged over the shots.
    It is not normalised: its length says how consistently the shots point one way (four pairs that
    agree give a long vector, pairs that cancel a short one), which the user branch may use, and it keeps
    u linear in the shots, as interpolation between users is. Captions are not used: the preferred and
    dispreferred image of a pair share theirs.

    Args:
        model: ``CLIPModel`` folder or hub id.
        processor: ``CLIPProcessor`` / image processor folder or hub id (default: ``model``).
        device, dtype, batch_size: images per forward pass.
    """

    name = "clip"

    def __init__(self, model: str = "openai/clip-vit-large-patch14", processor: Optional[str] = None,
                 device: str | torch.device | None = None, dtype: str | torch.dtype | None = None, batch_size: int = 16):
        from transformers import AutoImageProcessor, CLIPModel

        _check_batch_size(batch_size)
        self.model_name, self.processor_name = model, processor or model
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        try:
            self.processor = AutoImageProcessor.from_pretrained(self.processor_name)
            self.model = CLIPModel.from_pretrained(model, dtype=self.dtype)
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"cannot load CLIP model {model!r} / processor {self.processor_name!r}: {error}") from error
        self.model.to(self.device).eval().requires_grad_(False)
        self.batch_size = batch_size
        self.dim = self.model.config.projection_dim

    @torch.inference_mode()
    def image_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[N, D] float32 unit vectors: CLIP's projected image features, L2-normalised."""
        features = []
        for chunk in batched(list(images), self.batch_size, progress=False):
            pixels = self.processor(images=list(chunk), return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
            output = self.model.get_image_features(pixel_values=pixels)
            output = output if torch.is_tensor(output) else output.pooler_output  # transformers >= 5 returns an output
            features.append(torch.nn.functional.normalize(output.float(), dim=-1).cpu())
        return torch.cat(features) if features else torch.zeros(0, self.dim)

    def embed(self, chunks: Sequence[Sequence[Shot]]) -> torch.Tensor:
        _check_chunks(chunks)
        features = self.image_features(_flat_images(chunks))
        return _mean_over_shots(chunks, features[0::2] - features[1::2])

    def describe(self) -> dict:
        return {"name": self.name, "model": self.model_name, "processor": self.processor_name, "dtype": str(self.dtype).removeprefix("torch.")}


# -------------------------------------------------------------------------------------------- vae
@register_user_encoder
class VAEUserEncoder(UserEncoder):
    """u = 1/K sum_k flatten( pool( s * (E[z | x^w_k] - E[z | x^l_k]) ) ), with E[z | x] the VAE posterior
    mean, s its ``scaling_factor`` (the latents' scale the UNet sees; the ``shift_factor``, where a VAE
    has one, cancels in the difference) and pool an average pooling to at most 8 x 8 cells.

    Images are resized (shorter side, bilinear) and centre-cropped to ``resolution``, the model's own by
    default (UNet sample size x VAE downsampling), as training's transform does without the flip.

    Why it is meaningful: the latent map is a coarse picture of the image, so what separates a user's
    chosen images from their rejected ones in layout, size, position and colour shows up directly, cell
    by cell, in the pooled difference (one user's shots say "more mass up top", another's "bigger
    shape"). Its limits: it sees only pixels, not meaning: a taste for a subject, a style or prompt
    fidelity that does not move the same cells in every pair averages out; and pairs of different
    prompts add their layouts' differences, which only the shots' mean tames. Use the vlm encoder for
    real users.

    Args:
        model: diffusers pipeline folder or hub id; only its ``vae/`` is loaded.
        resolution: image side before encoding (a multiple of the VAE's downsampling factor).
        device, dtype (default float32: SDXL's VAE overflows in float16), batch_size: images per
        forward pass, revision: of ``model`` on the hub.
    """

    name = "vae"
    MAX_CELLS = 8

    def __init__(self, model: str, resolution: Optional[int] = None, device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = "float32", batch_size: int = 8, revision: Optional[str] = None):
        from diffusers import AutoencoderKL

        from diffalign.diffusion.model import default_resolution

        _check_batch_size(batch_size)
        self.model_name, self.revision = model, revision
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.resolution = resolution if resolution is not None else default_resolution(model, revision)
        try:
            self.vae = AutoencoderKL.from_pretrained(model, subfolder="vae", revision=revision, torch_dtype=self.dtype)
        except Exception as error:  # a folder without vae/, no access, ...
            raise ModelLoadError(f"could not load vae/ of {model!r}: {error}") from error
        self.vae.to(self.device).eval().requires_grad_(False)
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        if self.resolution < factor or self.resolution % factor:
            raise OptionError("resolution", f"must be a positive multiple of the VAE's downsampling factor {factor}, got {self.resolution}")
        cells = min(self.resolution // factor, self.MAX_CELLS)
        self.cells = cells
        self.batch_size = batch_size
        self.dim = self.vae.config.latent_channels * cells * cells

    @torch.inference_mode()
    def latent_means(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[N, C, R/f, R/f] float32: the posterior means of the resized, centre-cropped images, times the scaling factor."""
        unused = random.Random(0)  # training_transform draws nothing with centre crops and no flips
        means = []
        for chunk in batched(list(images), self.batch_size, progress=False):
            pixels = torch.stack([training_transform(image, self.resolution, unused, center_crop=True, random_flip=False)
                                  for image in chunk])
            mean = self.vae.encode(pixels.to(self.device, self.dtype)).latent_dist.mean
            means.append(mean.float().cpu() * self.vae.config.scaling_factor)
        return torch.cat(means)

    def embed(self, chunks: Sequence[Sequence[Shot]]) -> torch.Tensor:
        _check_chunks(chunks)
        if not chunks:
            return torch.zeros(0, self.dim)
        latents = self.latent_means(_flat_images(chunks))
        pooled = torch.nn.functional.adaptive_avg_pool2d(latents[0::2] - latents[1::2], self.cells)
        return _mean_over_shots(chunks, pooled.flatten(1))

    def describe(self) -> dict:
        return {"name": self.name, "model": self.model_name, "revision": self.revision, "resolution": self.resolution,
                "dtype": str(self.dtype).removeprefix("torch.")}


# -------------------------------------------------------------------------------------------- vlm
def profile_prompt(captions: Sequence[str]) -> list[dict]:
    """Chat content asking for a user profile from K pairs (spec §3.2, in our words): per pair its
    caption, the preferred image and the dispreferred one (2K images), then the task: judge style,
    visual quality and aesthetics, describe each pair and its differences, and sum them up as a
    "User Profile", in a fixed answer layout."""
    count = len(captions)
    content: list[dict] = [{"type": "text", "text": f"Below are {count} pairs of images that one person compared. In each "
                                                     "pair they preferred the first image over the second."}]
    for number, caption in enumerate(captions, start=1):
        content += [{"type": "text", "text": f"\n\nPair {number}. The caption: {caption}\n"}, {"type": "image"},
                    {"type": "text", "text": " This is the preferred image.\n"}, {"type": "image"},
                    {"type": "text", "text": " This is the dispreferred image."}]
    layout = "\n\n".join(f"Pair {number}:\nPreferred image: [description]\nDispreferred image: [description]\n"
                         f"Differences: [description]" for number in range(1, count + 1))
    content.append({"type": "text", "text": (
        "\n\nJudge the images by their style, visual quality and aesthetics. For every pair, describe the preferred "
        "image and the dispreferred image, and explain how they differ in style, visual quality and aesthetics. When "
        "all pairs are done, sum up what the differences say about this person's taste as a user profile. Answer in "
        f"exactly this layout:\n\n{layout}\n\nUser Profile: [description]")})
    return content


@register_user_encoder
class VLMUserEncoder(UserEncoder):
    """A VLM writes a user profile of the K shots (``profile_prompt``, greedy decoding, at most
    ``max_new_tokens`` tokens); u = the final layer's hidden state at the last generated token.

    Precisely, as the co-author's extraction code (Asap7772/personalized-t2i ``pick_a_pick_user_emb.py``)
    takes it: the last entry of ``generate(..., output_hidden_states=True, return_dict_in_generate=True)
    .hidden_states`` for the sample (its last decoding step: the state that emitted the last token, the
    end-of-turn token when the answer ended within budget), final layer, last position. In a batch, each
    sample's own last step is used (a finished sample's later steps only pad it). D = the language
    model's hidden size; not normalised (spec §3.2: the classifier used it raw).

    Loaded by transformers' ``AutoProcessor`` + ``AutoModelForImageTextToText`` (LLaVA-OneVision in its
    ``-hf`` form, Qwen2.5-VL, ...), shared with the VLM judges (``transformers_judge.load_image_text_model``).

    Args:
        model: folder or hub id (default: the paper's LLaVA-OneVision-Qwen2-7B chat model, HF format).
        device, dtype: default CUDA + bfloat16 when available, else CPU float32.
        batch_size: chunks per ``generate`` call (left-padded); max_new_tokens: the profile's budget.
    """

    name = "vlm"

    def __init__(self, model: str = "llava-hf/llava-onevision-qwen2-7b-ov-chat-hf", device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = None, batch_size: int = 1, max_new_tokens: int = 1024):
        from diffalign.rewards.transformers_judge import load_image_text_model

        _check_batch_size(batch_size)
        if max_new_tokens < 1:
            raise OptionError("max_new_tokens", f"must be >= 1, got {max_new_tokens}")
        self.model_name = model
        self.processor, self.model, self.device, self.dtype = load_image_text_model(model, device, dtype, role="user encoder")
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.dim = self.model.config.get_text_config().hidden_size
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = torch.tensor([] if eos is None else [eos] if isinstance(eos, int) else list(eos), dtype=torch.long)

    @torch.inference_mode()
    def embed(self, chunks: Sequence[Sequence[Shot]]) -> torch.Tensor:
        from diffalign.rewards.transformers_judge import chat_prompt

        _check_chunks(chunks)
        embeddings, self.texts = [], []
        for batch in batched(list(chunks), self.batch_size, progress=False):
            texts = [chat_prompt(self.processor, profile_prompt([shot.prompt for shot in chunk])) for chunk in batch]
            images = [_flat_images([chunk]) for chunk in batch]
            inputs = self.processor(text=texts, images=images, padding=True, return_tensors="pt").to(self.device)
            output = self.model.generate(**inputs, do_sample=False, max_new_tokens=self.max_new_tokens,
                                         output_hidden_states=True, return_dict_in_generate=True)
            new_tokens = output.sequences[:, inputs["input_ids"].shape[1]:].cpu()
            for sample, last in enumerate(self.last_steps(new_tokens)):
                embeddings.append(output.hidden_states[last][-1][sample, -1].float().cpu())
                self.texts.append(self.processor.decode(new_tokens[sample, :last + 1], skip_special_tokens=True))
        return torch.stack(embeddings) if embeddings else torch.zeros(0, self.dim)

    def last_steps(self, new_tokens: torch.Tensor) -> list[int]:
        """Per sample, the decoding step that produced its last token: its first end-of-sequence token,
        or the last step when it never ended."""
        ended = torch.isin(new_tokens, self.eos_ids)
        return [int(row.nonzero()[0]) if row.any() else new_tokens.shape[1] - 1 for row in ended]

    def describe(self) -> dict:
        return {"name": self.name, "model": self.model_name, "max_new_tokens": self.max_new_tokens,
                "dtype": str(self.dtype).removeprefix("torch.")}



# ------------------------------------------------------------------------------------ the embed step
CHUNKS_PER_CALL = 8  # chunks whose images are decoded and embedded at a time


def embed_user_pairs(pairs: UserPairs, encoder: UserEncoder, shots: int = 4, seed: int = 0,
                     chunks_per_user: Optional[int] = None, progress: bool = False) -> UserEmbeddings:
    """``diffalign users embed`` as a function: cut ``pairs`` into chunks (``chunk_user_pairs``) and
    embed each chunk's shots with ``encoder``. A ``DataError`` when no user has ``shots`` usable pairs;
    a ``UsageError`` when the encoder gives non-finite values (float16 overflow)."""
    from tqdm.auto import tqdm

    chunks, skipped_users = chunk_user_pairs(pairs.rows_by_user, shots, seed, chunks_per_user)
    if not chunks:
        raise DataError(f"{pairs.data}: no user has {shots} usable pairs, so there is nothing to embed "
                        f"({len(skipped_users)} users, the most pairs: {max(map(len, pairs.rows_by_user.values()), default=0)}); "
                        "lower the shots per chunk or add pairs")
    rows, texts = [], []
    with tqdm(total=len(chunks), desc=f"embedding users ({encoder.name})", unit="chunk", disable=not progress, leave=False) as bar:
        for start in range(0, len(chunks), CHUNKS_PER_CALL):
            group = chunks[start:start + CHUNKS_PER_CALL]
            rows.append(encoder.embed([[Shot(*pairs.shot(row)) for row in chunk.rows] for chunk in group]))
            texts += encoder.texts if encoder.texts is not None else [None] * len(group)
            bar.update(len(group))
    embeddings = torch.cat(rows)
    finite = torch.isfinite(embeddings).all(dim=1)
    if not finite.all():
        first = chunks[int((~finite).nonzero()[0])]
        raise UsageError(f"the {encoder.name} encoder gave non-finite embeddings for {int((~finite).sum())} of {len(chunks)} "
                         f"chunks (first: user {first.user!r} chunk {first.chunk}); in float16 it may overflow: use float32")
    chunks = [UserChunk(chunk.user, chunk.chunk, chunk.rows, text) for chunk, text in zip(chunks, texts)]
    return UserEmbeddings(embeddings, chunks, encoder.describe(), shots, data=pairs.data, split=pairs.split, seed=seed,
                          chunks_per_user=chunks_per_user, skipped_users=skipped_users)
