"""Test-point judges and benchmarks for ``diffalign bench``, and their registry.

**Judges.** A ``TestpointJudge`` gives every image of a ``JudgeTask`` a 0/1 verdict per test point.
``--judge SPEC`` names one:

- ``openai:MODEL@URL``: any OpenAI-compatible chat-completions endpoint (Gemini's compatibility
  endpoint, a vLLM server of ``CodeGoat24/UniGenBench-EvalModel-qwen3vl-32b-v1`` or the 72B) through
  ``diffalign.rewards.http_judge.HTTPJudge``, the client the reward models use: ``workers`` requests at
  once, each retried on 429 / 5xx / timeouts with exponential backoff (``REQUEST_ATTEMPTS``) under a
  per-request ``timeout``. The key comes from the environment (``api_key_env``, else
  ``DIFFALIGN_JUDGE_API_KEY`` or ``OPENAI_API_KEY``); it is sent in the ``Authorization`` header only,
  and the recorded spec drops any user name or password from the URL.
- ``transformers:PATH``: a local VLM through ``diffalign.rewards.transformers_judge.TransformersJudge``.
- names registered by plugins, such as the toy world's ``toy``.

Both VLM judges are ``PromptedJudge``s: they send the benchmark's judge prompt with the image, parse
the answer (``unigenbench_parse``) and, when it cannot be parsed or the request failed after its own
retries, ask again, up to ``max_retries`` times more (upstream's protocol: 10 retries, 11 attempts).
An image still without a verdict gets a ``Judgement`` with ``scores=None`` and the last reason in
``error``; the run counts and lists it. An endpoint that refuses a request outright (HTTP 401, 404,
an answer that is not a chat completion) stops the run: every other request would fail alike.

**Benchmarks.** A ``Benchmark`` names its prompts loader, its judge prompt, its dimensions and its
generation defaults. ``unigenbench`` is built in; other packages register theirs.

**Plugins.** Modules named in the ``diffalign.bench`` entry-point group are imported on the first
lookup (``diffalign.plugins.load_plugins``), and their ``@register_judge`` / ``register_benchmark``
calls add to the registry, e.g. in ``pyproject.toml``::

    [project.entry-points."diffalign.bench"]
    toy = "diffalign.toy.bench"

so that ``benchmarks`` never imports the higher ``toy`` package (DESIGN.md §2).
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

from PIL import Image

from diffalign.benchmarks.unigenbench_data import (
    CATEGORIES, IMAGES_PER_PROMPT, PRIMARY_ORDER, SUB_DIMENSIONS, THEMES, BenchPrompt, language_of, load_prompts,
)
from diffalign.benchmarks.unigenbench_parse import AnswerParseError, parse_judge_answer
from diffalign.benchmarks.unigenbench_prompt import build_judge_prompt
from diffalign.errors import UnknownNameError, UsageError
from diffalign.plugins import load_plugins
from diffalign.rewards.caption_llm import public_url

ENTRY_POINT_GROUP = "diffalign.bench"
REQUEST_ATTEMPTS = 5  # HTTP attempts per judge request on 429 / 5xx / timeouts (backoff 1, 2, 4, 8 s)
MAX_TOKENS = 4096  # answer budget, as upstream's evaluator


# -------------------------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class JudgeTask:
    """One image to judge: its file ``image`` (name inside the images folder) at ``path``, the benchmark
    prompt ``item`` it was generated from, and ``question``, the judge prompt text for a VLM judge."""

    image: str
    path: str
    item: BenchPrompt
    question: str


@dataclass
class Judgement:
    """A judge's verdict on one image: ``scores[i]`` (0 or 1) for test point ``i``, or ``None`` with the
    reason in ``error`` when no attempt gave a verdict; ``attempts`` made and the last answer ``raw``."""

    scores: Optional[list[int]] = None
    attempts: int = 0
    error: Optional[str] = None
    raw: str = ""


def open_image(path: str) -> Image.Image:
    """The RGB image at ``path``; an ``OSError`` (missing, unreadable) propagates."""
    with Image.open(path) as image:
        return image.convert("RGB")


# ------------------------------------------------------------------------------------------- judges
class TestpointJudge(ABC):
    """Gives each image a 0/1 verdict per test point of its prompt.

    Subclasses implement ``judge_batch``; ``judge`` runs batches of ``batch_size`` tasks on ``workers``
    threads and yields each task with its judgement as soon as its batch is done. ``spec`` is what a
    run records as the judge (no key, ever)."""

    __test__ = False  # not a pytest test class, whatever its name says
    spec: str = ""
    workers: int = 1
    batch_size: int = 1

    @abstractmethod
    def judge_batch(self, tasks: Sequence[JudgeTask]) -> list[Judgement]:
        """One judgement per task, in order."""

    def judge(self, tasks: Sequence[JudgeTask]) -> Iterator[tuple[JudgeTask, Judgement]]:
        batches = [tasks[start : start + self.batch_size] for start in range(0, len(tasks), self.batch_size)]
        if self.workers <= 1:
            for batch in batches:
                yield from zip(batch, self.judge_batch(batch))
            return
        pool = ThreadPoolExecutor(max_workers=self.workers)
        try:
            futures = {pool.submit(self.judge_batch, batch): batch for batch in batches}
            for future in as_completed(futures):
                yield from zip(futures[future], future.result())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


class PromptedJudge(TestpointJudge):
    """A VLM asked with each task's ``question`` and the image; its answers are parsed by
    ``unigenbench_parse.parse_judge_answer`` and re-asked up to ``max_retries`` times (module docstring)."""

    def __init__(self, max_retries: int = 10):
        self.max_retries = max_retries

    @abstractmethod
    def ask(self, requests: Sequence[tuple[Sequence[Image.Image], str]]) -> list:
        """The answer text to each ``(images, text)`` request, in order, or the exception of a request
        that failed after the backend's own retries (an error that will not go away is raised instead)."""

    def judge_batch(self, tasks: Sequence[JudgeTask]) -> list[Judgement]:
        results = [Judgement() for _ in tasks]
        images: dict[int, Image.Image] = {}
        for index, task in enumerate(tasks):
            try:
                images[index] = open_image(task.path)
            except OSError as error:
                results[index].error = f"cannot read the image: {error}"
        pending = list(images)
        for _ in range(self.max_retries + 1):
            if not pending:
                break
            answers = self.ask([([images[index]], tasks[index].question) for index in pending])
            failed = []
            for index, answer in zip(pending, answers):
                result = results[index]
                result.attempts += 1
                if isinstance(answer, Exception):
                    result.raw, result.error = "", f"the request failed: {answer}"
                    failed.append(index)
                    continue
                result.raw = answer
                try:
                    result.scores = parse_judge_answer(answer, len(tasks[index].item.testpoints))
                    result.error = None
                except AnswerParseError as error:
                    result.error = str(error)
                    failed.append(index)
            pending = failed
        return results


class OpenAIJudge(PromptedJudge):
    """``openai:MODEL@URL``: a VLM behind an OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        model: the served model name (``gemini-2.5-pro``, vLLM's ``--served-model-name``).
        base_url: e.g. ``http://localhost:8080/v1`` or Gemini's ``https://generativelanguage.googleapis.com/v1beta/openai``.
        api_key_env: the environment variable holding the key (default: ``HTTPJudge``'s,
            ``DIFFALIGN_JUDGE_API_KEY`` then ``OPENAI_API_KEY``; keyless local servers need none).
        workers: concurrent requests (upstream runs 20 processes).
        max_retries: re-asks of an image after an unparsable answer or a failed request.
        timeout: seconds per HTTP request.
        request_attempts, retry_backoff: ``HTTPJudge``'s attempts per request and first backoff.
    """

    def __init__(self, model: str, base_url: str, api_key_env: Optional[str] = None, workers: int = 20, max_retries: int = 10,
                 timeout: float = 300.0, request_attempts: int = REQUEST_ATTEMPTS, retry_backoff: float = 1.0,
                 max_tokens: int = MAX_TOKENS):
        from diffalign.rewards.http_judge import HTTPJudge

        super().__init__(max_retries)
        api_key = None
        if api_key_env is not None:
            if api_key_env not in os.environ:
                raise UsageError(f"--api-key-env {api_key_env}: that environment variable is not set")
            api_key = os.environ[api_key_env]
        self.client = HTTPJudge(base_url, api_key=api_key, model=model, max_tokens=max_tokens, timeout=timeout,
                                max_retries=request_attempts, retry_backoff=retry_backoff, max_workers=workers)
        self.workers = workers
        self.spec = public_judge_spec(f"openai:{model}@{base_url}")

    def __repr__(self) -> str:
        return f"OpenAIJudge({self.spec!r})"

    def ask(self, requests: Sequence[tuple[Sequence[Image.Image], str]]) -> list:
        from diffalign.rewards.http_judge import JudgeRequestError, chat_payload

        answers: list = []
        for images, text in requests:
            try:
                answers.append(self.client.post(chat_payload(images, text, self.client.model, self.client.max_tokens)))
            except JudgeRequestError as error:
                if not error.transient:
                    raise
                answers.append(error)
        return answers


class TransformersTestpointJudge(PromptedJudge):
    """``transformers:PATH``: a local VLM (folder or hub id) with greedy decoding, ``batch_size`` images
    per ``generate`` call."""

    def __init__(self, model: str, device: Optional[str] = None, dtype: Optional[str] = None, batch_size: int = 4,
                 max_retries: int = 10, max_new_tokens: int = MAX_TOKENS):
        from diffalign.rewards.transformers_judge import TransformersJudge

        super().__init__(max_retries)
        self.vlm = TransformersJudge(model, device=device, dtype=dtype, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                     progress=False)
        self.batch_size = batch_size
        self.spec = f"transformers:{model}"

    def ask(self, requests: Sequence[tuple[Sequence[Image.Image], str]]) -> list:
        return self.vlm.generate(requests)


# -------------------------------------------------------------------------------------- benchmarks
@dataclass(frozen=True)
class Benchmark:
    """A UniGenBench-shaped benchmark: prompts with test points, ``images_per_prompt`` images each.

    Attributes:
        name: ``--benchmark`` value.
        categories: valid ``--category`` values, the first is the default.
        primary_order: the primary dimensions in leaderboard-column order.
        sub_dimensions: every sub-dimension (test-point name), grouped by primary.
        themes: the themes, in report order.
        load_prompts: ``(prompts_dir, category) -> list[BenchPrompt]`` (``prompts_dir`` is ``None`` when
            ``uses_prompts_dir`` is False).
        judge_question: ``(item, category) -> str``, the prompt a VLM judge is sent with the image.
        uses_prompts_dir: whether ``--prompts-dir`` is required (else refused).
        generation_defaults: defaults of the run's generation options (``model``, ``guidance``, ``steps``,
            ``seed``, ``batch_size``) where the benchmark has its own.
    """

    name: str
    categories: tuple[str, ...]
    primary_order: tuple[str, ...]
    sub_dimensions: tuple[str, ...]
    themes: tuple[str, ...]
    load_prompts: Callable[[Optional[str], str], list[BenchPrompt]]
    judge_question: Callable[[BenchPrompt, str], str]
    uses_prompts_dir: bool = True
    generation_defaults: dict[str, Any] = field(default_factory=dict)
    images_per_prompt: int = IMAGES_PER_PROMPT


UNIGENBENCH = Benchmark(
    name="unigenbench",
    categories=tuple(CATEGORIES),
    primary_order=PRIMARY_ORDER,
    sub_dimensions=tuple(SUB_DIMENSIONS),
    themes=tuple(THEMES),
    load_prompts=load_prompts,
    judge_question=lambda item, category: build_judge_prompt(item, language_of(category)),
)


# -------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class JudgeOptions:
    """What ``build_judge`` passes on to a judge (each judge takes the options that apply to it)."""

    workers: int = 20
    max_retries: int = 10
    timeout: float = 300.0
    batch_size: int = 4
    device: Optional[str] = None
    dtype: Optional[str] = None
    api_key_env: Optional[str] = None


@dataclass(frozen=True)
class JudgeEntry:
    """A registered judge: ``build(argument, options)``; ``check(argument)`` raises a ``UsageError`` for
    an argument that cannot work, loading nothing; ``usage`` shows the spec's form; ``benchmarks``
    names the benchmarks it can judge (``None``: any)."""

    scheme: str
    usage: str
    build: Callable[[Optional[str], JudgeOptions], TestpointJudge]
    check: Callable[[Optional[str]], None]
    benchmarks: Optional[tuple[str, ...]] = None


_JUDGES: dict[str, JudgeEntry] = {}
_BENCHMARKS: dict[str, Benchmark] = {"unigenbench": UNIGENBENCH}


def _no_argument(scheme: str) -> Callable[[Optional[str]], None]:
    def check(argument: Optional[str]) -> None:
        if argument is not None:
            raise UsageError(f"--judge {scheme} takes no argument, got {scheme}:{argument}")

    return check


def register_judge(scheme: str, usage: Optional[str] = None, check: Optional[Callable[[Optional[str]], None]] = None,
                   benchmarks: Optional[tuple[str, ...]] = None):
    """Decorator registering ``build(argument, options) -> TestpointJudge`` under ``scheme`` (the part of
    ``--judge`` before the first ``:``); ``check`` validates the argument (default: no argument allowed);
    ``benchmarks`` restricts it to those benchmarks."""

    def decorate(build):
        if scheme in _JUDGES and _JUDGES[scheme].build is not build:
            raise ValueError(f"judge {scheme!r} is already registered")
        _JUDGES[scheme] = JudgeEntry(scheme, usage or scheme, build, check or _no_argument(scheme), benchmarks)
        return build

    return decorate


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    if benchmark.name in _BENCHMARKS and _BENCHMARKS[benchmark.name] is not benchmark:
        raise ValueError(f"benchmark {benchmark.name!r} is already registered")
    _BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def registered_judges() -> dict[str, JudgeEntry]:
    load_plugins(ENTRY_POINT_GROUP)  # importing each named module runs its registrations
    return dict(sorted(_JUDGES.items()))


def registered_benchmarks() -> dict[str, Benchmark]:
    load_plugins(ENTRY_POINT_GROUP)
    return dict(sorted(_BENCHMARKS.items()))


def get_benchmark(name: str) -> Benchmark:
    benchmarks = registered_benchmarks()
    if name not in benchmarks:
        raise UnknownNameError(f"--benchmark must be one of {', '.join(benchmarks)}, got {name!r} (benchmarks of other packages "
                               f"are found through the {ENTRY_POINT_GROUP!r} entry-point group)")
    return benchmarks[name]


def check_judge_spec(spec: str) -> tuple[JudgeEntry, Optional[str]]:
    """The registered judge a ``--judge`` spec names and its argument, checked; nothing is loaded."""
    judges = registered_judges()
    scheme, separator, argument = (spec or "").partition(":")
    if scheme not in judges:
        raise UnknownNameError(f"--judge {spec!r} names no judge; give one of {', '.join(entry.usage for entry in judges.values())}")
    entry = judges[scheme]
    entry.check(argument if separator else None)
    return entry, argument if separator else None


def public_judge_spec(spec: str) -> str:
    """``spec`` as a run records it: an ``openai:`` URL without user name or password, others as given."""
    match = _OPENAI_ARGUMENT.fullmatch(spec[len("openai:"):]) if spec.startswith("openai:") else None
    return f"openai:{match.group('model')}@{public_url(match.group('url'))}" if match else spec


def build_judge(spec: str, options: JudgeOptions = JudgeOptions()) -> TestpointJudge:
    """The judge a ``--judge`` spec names (module docstring), built with ``options``."""
    entry, argument = check_judge_spec(spec)
    return entry.build(argument, options)


_OPENAI_ARGUMENT = re.compile(r"(?P<model>[^@\s]+)@(?P<url>https?://\S+)")


def _check_openai(argument: Optional[str]) -> None:
    if argument is None or not _OPENAI_ARGUMENT.fullmatch(argument):
        raise UsageError(f"--judge openai:{argument or ''} must read openai:MODEL@URL, e.g. "
                         "openai:gemini-2.5-pro@https://generativelanguage.googleapis.com/v1beta/openai or "
                         "openai:UniGenBench-EvalModel-qwen3vl-32b-v1@http://localhost:8080/v1")


@register_judge("openai", usage="openai:MODEL@URL", check=_check_openai)
def _build_openai(argument: Optional[str], options: JudgeOptions) -> TestpointJudge:
    match = _OPENAI_ARGUMENT.fullmatch(argument or "")
    return OpenAIJudge(match.group("model"), match.group("url"), api_key_env=options.api_key_env, workers=options.workers,
                       max_retries=options.max_retries, timeout=options.timeout)


def _check_transformers(argument: Optional[str]) -> None:
    if not argument:
        raise UsageError("--judge transformers:PATH needs the folder or hub id of the judge model after the colon")


@register_judge("transformers", usage="transformers:PATH", check=_check_transformers)
def _build_transformers(argument: Optional[str], options: JudgeOptions) -> TestpointJudge:
    return TransformersTestpointJudge(argument, device=options.device, dtype=options.dtype, batch_size=options.batch_size,
                                      max_retries=options.max_retries)
