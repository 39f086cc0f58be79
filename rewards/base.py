"""The scorer interface shared by HPSv2, UnifiedReward, PickScore and the toy judge.

- A pointwise ``Scorer`` maps (image, prompt) pairs to one float each: ``score(images, prompts)``
  returns a float32 tensor of shape (N,). Higher is better.
- A ``PairwiseScorer`` judges two images for the same prompt: ``compare(images_a, images_b, prompts)``
  returns a ``PairwiseResult``.

Scorers register by name (``@register_scorer``) so the CLI and the pair builder can find them. The
registry imports the built-in scorer modules lazily, on the first lookup, so that importing
``diffalign.rewards`` stays cheap. Scorers of other packages (the toy judge, third-party plugins) are
found through the ``diffalign.scorers`` entry-point group, the way pytest finds its plugins: each entry
names a module whose import registers its scorers, e.g. in the plugin's ``pyproject.toml``::

    [project.entry-points."diffalign.scorers"]
    toy = "diffalign.toy.judge"

so ``rewards`` never imports a higher package (DESIGN.md §2: the higher one registers itself).

Helpers shared by the implementations: ``batched`` (fixed-size chunks with a tqdm bar),
``resolve_device`` / ``resolve_dtype`` and ``compare_both_orders`` (with ``merge_orders`` /
``mean_preference``), which judges every pair in both orders to cancel a judge's position bias.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator, Sequence, TypeVar

import torch
from PIL import Image

from diffalign.errors import UnknownNameError, UsageError
from diffalign.plugins import load_plugins

T = TypeVar("T")


class Scorer(ABC):
    """Pointwise reward: higher is better."""

    name: ClassVar[str]

    @abstractmethod
    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        """Float32 tensor of shape (len(images),); ``prompts[i]`` belongs to ``images[i]``."""


@dataclass
class PairwiseResult:
    """Per-pair verdicts of a pairwise judge.

    Attributes:
        preference: int64 (N,), 1 if A wins, -1 if B wins, 0 for a tie (or an unparsable verdict).
        probability_a: float32 (N,), P(A preferred) where the judge gives one, else NaN.
        unparsable: how many verdicts could not be parsed (counted as ties).
    """

    preference: torch.Tensor
    probability_a: torch.Tensor
    unparsable: int = 0


class PairwiseScorer(ABC):
    """Judges which of two images better fits the prompt."""

    name: ClassVar[str]

    @abstractmethod
    def compare(
        self, images_a: Sequence[Image.Image], images_b: Sequence[Image.Image], prompts: Sequence[str]
    ) -> PairwiseResult: ...


# ----------------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Callable[..., Scorer | PairwiseScorer]] = {}

# Modules whose import registers scorers: the built-in ones, then those named by installed packages'
# entry points in this group.
_BUILTIN_MODULES = ("diffalign.rewards.hpsv2", "diffalign.rewards.pickscore", "diffalign.rewards.unifiedreward")
ENTRY_POINT_GROUP = "diffalign.scorers"
_builtins_loaded = False


def register_scorer(name: str):
    """Decorator registering a scorer class (or factory) under ``name``."""

    def decorate(factory):
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"scorer name {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def _load_builtin_scorers() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    load_plugins(ENTRY_POINT_GROUP)  # importing each named module runs its @register_scorer decorators


def registered_scorers() -> dict[str, Callable[..., Scorer | PairwiseScorer]]:
    _load_builtin_scorers()
    return dict(sorted(_REGISTRY.items()))


def get_scorer(name: str, **options) -> Scorer | PairwiseScorer:
    """Build the scorer registered as ``name`` with its options (checkpoint, device, ...)."""
    _load_builtin_scorers()
    if name not in _REGISTRY:
        raise UnknownNameError(
            f"unknown scorer {name!r}; registered scorers: {', '.join(sorted(_REGISTRY)) or 'none'} (scorers of other packages "
            f"are found through the {ENTRY_POINT_GROUP!r} entry-point group: is the package that provides it installed?)"
        )
    return _REGISTRY[name](**options)


# ------------------------------------------------------------------------------------------ helpers


def batched(items: Sequence[T], batch_size: int, desc: str | None = None, progress: bool = True) -> Iterator[Sequence[T]]:
    """Consecutive chunks of ``batch_size`` items, with a tqdm bar counting items when ``progress``."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    with tqdm(total=len(items), desc=desc, unit="img", disable=not progress or len(items) <= batch_size, leave=False) as bar:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            yield chunk
            bar.update(len(chunk))


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` picks CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` gives float16 on CUDA and float32 elsewhere; strings such as ``"bf16"`` are accepted."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; choose one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def check_lengths(**sequences: Sequence) -> int:
    """The common length of the named sequences; a ``ValueError`` naming them when they differ."""
    lengths = {name: len(values) for name, values in sequences.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError("length mismatch: " + ", ".join(f"{name}={n}" for name, n in lengths.items()))
    return next(iter(lengths.values()))


def mean_preference(ab: PairwiseResult, ba: PairwiseResult) -> torch.Tensor:
    """Float preference for A in [-1, 1] averaged over both presentation orders (``ba`` judged B first)."""
    return (ab.preference - ba.preference).float() / 2


def merge_orders(ab: PairwiseResult, ba: PairwiseResult) -> PairwiseResult:
    """One verdict per pair from both orders: the sign of the mean preference, so a judge that always
    picks the first image yields ties; probabilities average P(A) over the two orders (NaN if absent)."""
    preference = torch.sign(mean_preference(ab, ba)).long()
    probability_a = (ab.probability_a + (1 - ba.probability_a)) / 2
    return PairwiseResult(preference, probability_a.float(), ab.unparsable + ba.unparsable)


def compare_both_orders(
    judge: PairwiseScorer | Callable[[Sequence[Image.Image], Sequence[Image.Image], Sequence[str]], PairwiseResult],
    images_a: Sequence[Image.Image],
    images_b: Sequence[Image.Image],
    prompts: Sequence[str],
    merge: Callable[[PairwiseResult, PairwiseResult], T] = merge_orders,
) -> T:
    """Judge every pair as (A, B) and as (B, A) and merge the two results with ``merge(ab, ba)``: by
    default one verdict per pair (``merge_orders``). ``judge`` is a ``PairwiseScorer`` or a function
    with the signature of its ``compare``. The one place that judges both orders against position bias."""
    compare = judge.compare if isinstance(judge, PairwiseScorer) else judge
    return merge(compare(images_a, images_b, prompts), compare(images_b, images_a, prompts))
