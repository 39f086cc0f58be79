"""The LLM caption perturber: a chat model asked for a minimally edited, false caption.

The prompt follows the spec's skeleton (research/diffusion_methods_B.md §4.1): "Given this caption,
produce a minimally edited caption that is fluent, keeps most words, but makes the caption false for
the original image, using one of {content, attribute, spatial, context} edits; return only the
caption." Here each of a caption's K negatives names one family, the families taking turns from a
seeded offset, so that K negatives spread over the four kinds of edit. ``--prompt-template FILE``
replaces the text: ``{caption}`` (required), ``{family}`` and ``{family_description}`` are filled in
(by plain replacement, so other braces need no escaping).

Answers are cleaned (``parse_answer``: reasoning blocks, code fences, a leading "Caption:" label and
surrounding quotes are removed) and rejected, counted by reason and asked again (up to
``max_attempts`` asks per negative) when they are empty, unparsable (several lines, or far longer than
the caption), unchanged (equal to the caption after ``normalise_caption``: case, punctuation and
spacing do not count) or a duplicate of a negative already kept. Rejected answers are never written.

Backends, both answering a batch of ``ChatRequest``s in order:

- ``HTTPChat``: any OpenAI-compatible ``/chat/completions`` endpoint (vLLM, llama.cpp, OpenAI, Gemini's
  compatibility endpoint, ...) through ``diffalign.rewards.http_judge.HTTPJudge`` (its retries on 429 /
  5xx / timeouts with exponential backoff, its thread pool). The API key is read from an environment
  variable (default ``DIFFALIGN_LLM_API_KEY``, then ``OPENAI_API_KEY``), sent only in the
  ``Authorization`` header and never printed or recorded. A request that still fails after its retries
  marks its caption failed (not written; a rerun asks again); a refused request (401, 404, an answer
  that is not a chat completion), or a first round in which every request failed, stops the run.
- ``TransformersChat``: a local causal LM (folder or hub id) with its chat template when it has one,
  sampled with ``temperature`` (greedy at 0), the seed of each batch's first request fixing the
  sampling.

Each request carries a seed derived from ``seed``, the caption, the negative's slot and the attempt,
sent as the OpenAI ``seed`` field (``send_seed=False`` leaves it out for endpoints that refuse it), so
servers that honour it (vLLM, OpenAI) answer reproducibly.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Sequence

from diffalign.errors import ModelLoadError, UsageError
from diffalign.rewards.captions import FAMILY_DESCRIPTIONS, Perturbation, normalise_caption, parse_families

DEFAULT_PROMPT_TEMPLATE = (
    "Given this caption, produce a minimally edited caption that is fluent, keeps most words, but makes the caption "
    "false for the original image, using one {family} edit ({family_description}). Return only the caption.\n\n"
    "Caption: {caption}"
)
API_KEY_ENVS = ("DIFFALIGN_LLM_API_KEY", "OPENAI_API_KEY")
PLACEHOLDERS = ("{caption}", "{family}", "{family_description}")


@dataclass(frozen=True)
class ChatRequest:
    text: str
    seed: int


# -------------------------------------------------------------------------------------- the prompt
def read_prompt_template(path: Optional[str]) -> str:
    """The template of ``path`` (the default for None); it must hold ``{caption}``."""
    if path is None:
        return DEFAULT_PROMPT_TEMPLATE
    try:
        with open(path, encoding="utf-8") as handle:
            template = handle.read()
    except OSError as error:
        raise UsageError(f"cannot read --prompt-template {path}: {error.strerror or error}") from None
    return check_prompt_template(template, f"--prompt-template {path}")


def check_prompt_template(template: str, what: str = "the prompt template") -> str:
    if not isinstance(template, str) or "{caption}" not in template:
        raise UsageError(f"{what} must hold {{caption}} (where the caption goes); it may hold {{family}} and {{family_description}}")
    return template


def build_prompt(template: str, caption: str, family: str) -> str:
    return (template.replace("{family_description}", FAMILY_DESCRIPTIONS[family]).replace("{family}", family)
            .replace("{caption}", caption))


# ---------------------------------------------------------------------------------------- answers
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_LABEL = re.compile(r"^(?:[*_#>\s]*)(?:(?:edited|new|modified|perturbed|negative|false|altered|changed|mismatched|output)\s+)?"
                    r"(?:caption|answer|output)\s*[*_]*\s*:\s*", re.IGNORECASE)
_QUOTES = "\"'`“”‘’*_"


def parse_answer(answer: Optional[str], caption: str, kept: Sequence[str] = ()) -> tuple[Optional[str], Optional[str]]:
    """``(negative, None)`` for a usable answer, else ``(None, reason)`` with reason ``empty``,
    ``unparsable``, ``unchanged`` (equal to ``caption`` after normalisation) or ``duplicate`` (equal to
    one of ``kept``)."""
    text = _THINK.sub("", answer or "")
    if re.search(r"<think>", text, re.IGNORECASE):  # reasoning cut off by the token budget
        return None, "unparsable"
    text = re.sub(r"```[a-zA-Z]*", "", text)
    lines = []
    for line in text.splitlines():
        line = _LABEL.sub("", line.strip()).strip().strip(_QUOTES).strip()
        if line:
            lines.append(line)
    if not lines:
        return None, "empty"
    if len(lines) > 1 or len(lines[0]) > max(3 * len(caption), len(caption) + 100):
        return None, "unparsable"
    negative = " ".join(lines[0].split())
    if not normalise_caption(negative):
        return None, "empty"
    if normalise_caption(negative) == normalise_caption(caption):
        return None, "unchanged"
    if normalise_caption(negative) in {normalise_caption(other) for other in kept}:
        return None, "duplicate"
    return negative, None


def request_seed(seed: int, caption: str, slot: int, attempt: int) -> int:
    digest = hashlib.sha256(f"{seed}\0{caption}\0{slot}\0{attempt}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


# --------------------------------------------------------------------------------------- backends
def _api_key(env: Optional[str]) -> str:
    if env is not None:
        if not env or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env):
            raise UsageError(f"--api-key-env must name an environment variable, got {env!r}")
        if env not in os.environ:
            raise UsageError(f"--api-key-env {env}: that environment variable is not set")
        return os.environ[env]
    return next((os.environ[name] for name in API_KEY_ENVS if os.environ.get(name)), "EMPTY")


def public_url(url: str) -> str:
    """``url`` without a user name or password (what may be recorded and printed)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class HTTPChat:
    """Text-only chat completions through ``HTTPJudge`` (its retries, timeout and thread pool).

    Args:
        base_url: e.g. ``http://localhost:8000/v1``.
        model: the served model name.
        api_key_env: the environment variable holding the key (default ``DIFFALIGN_LLM_API_KEY``, then
            ``OPENAI_API_KEY``; "EMPTY" when neither is set, which keyless local servers accept).
        temperature, max_tokens: sampling of each answer.
        timeout, max_retries, retry_backoff, workers: ``HTTPJudge``'s ``timeout``, ``max_retries``,
            ``retry_backoff`` and ``max_workers``.
        send_seed: send each request's seed as the ``seed`` field.
    """

    def __init__(self, base_url: str, model: str, api_key_env: Optional[str] = None, temperature: float = 0.7,
                 max_tokens: int = 128, timeout: float = 60.0, max_retries: int = 5, retry_backoff: float = 1.0,
                 workers: int = 8, send_seed: bool = True):
        from diffalign.rewards.http_judge import HTTPJudge

        if not base_url or not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise UsageError(f"--base-url must be an http(s) URL such as http://localhost:8000/v1, got {base_url!r}")
        if not model:
            raise UsageError("--model is required with --perturber llm: the served model name (with --base-url) or a local model")
        _check_number("--timeout", timeout, 0, exclusive=True)
        _check_int("--max-retries", max_retries, 1)
        _check_int("--workers", workers, 1)
        self.client = HTTPJudge(base_url=base_url, api_key=_api_key(api_key_env), model=model, max_tokens=max_tokens,
                                timeout=timeout, max_retries=max_retries, retry_backoff=retry_backoff, max_workers=workers)
        self.model, self.temperature, self.max_tokens, self.send_seed = model, temperature, max_tokens, send_seed
        self.base_url = public_url(base_url)

    def __repr__(self) -> str:
        return f"HTTPChat(url={self.base_url!r}, model={self.model!r})"

    @property
    def retries(self) -> int:
        return self.client.retries

    def payload(self, request: ChatRequest) -> dict:
        body = {"model": self.model, "messages": [{"role": "user", "content": request.text}],
                "max_tokens": self.max_tokens, "temperature": self.temperature}
        if self.send_seed:
            body["seed"] = request.seed
        return body

    def complete(self, requests: Sequence[ChatRequest]) -> list:
        """The answer to each request, in order, or the ``JudgeRequestError`` of a request that failed after
        its retries; a refused request (not worth retrying) is raised at once."""
        from diffalign.rewards.http_judge import JudgeRequestError

        answers: list = [None] * len(requests)
        with ThreadPoolExecutor(max_workers=self.client.max_workers) as pool:
            futures = [pool.submit(self.client.post, self.payload(request)) for request in requests]
            for index, future in enumerate(futures):
                try:
                    answers[index] = future.result()
                except JudgeRequestError as error:
                    if not error.transient:
                        for other in futures:
                            other.cancel()
                        raise
                    answers[index] = error
        return answers


class TransformersChat:
    """A local causal LM: chat template when the tokenizer has one, sampling at ``temperature``.

    Args:
        model: local folder or hub id of a causal LM with its tokenizer.
        device, dtype: default CUDA + bfloat16 when available, else CPU float32.
        batch_size: requests per ``generate`` call (left-padded).
        temperature, max_tokens: sampling of each answer (``temperature`` 0: greedy).
    """

    retries = 0

    def __init__(self, model: str, device: Optional[str] = None, dtype: Optional[str] = None, batch_size: int = 8,
                 temperature: float = 0.7, max_tokens: int = 128):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from diffalign.rewards.base import resolve_device, resolve_dtype

        if not model:
            raise UsageError("--model is required with --perturber llm: the served model name (with --base-url) or a local model")
        _check_int("--batch-size", batch_size, 1)
        self.device = resolve_device(device)
        self.dtype = torch.bfloat16 if dtype is None and self.device.type == "cuda" else resolve_dtype(dtype, self.device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModelForCausalLM.from_pretrained(model, dtype=self.dtype)
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"cannot load the caption model {model!r}: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from error
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.to(self.device).eval()
        self.name, self.batch_size, self.temperature, self.max_tokens = model, batch_size, temperature, max_tokens

    def _text(self, request: ChatRequest) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": request.text}], add_generation_prompt=True, tokenize=False)
        return request.text + "\n"

    def complete(self, requests: Sequence[ChatRequest]) -> list:
        import torch

        answers: list = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            inputs = self.tokenizer([self._text(request) for request in chunk], return_tensors="pt", padding=True,
                                    add_special_tokens=not getattr(self.tokenizer, "chat_template", None)).to(self.device)
            sampling = {"do_sample": True, "temperature": self.temperature} if self.temperature > 0 else {"do_sample": False}
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []), torch.inference_mode():
                torch.manual_seed(chunk[0].seed)
                output = self.model.generate(**inputs, max_new_tokens=self.max_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                             **sampling)
            answers += self.tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return answers


def _check_int(flag: str, value, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise UsageError(f"{flag} must be an integer >= {low}, got {value!r}")


def _check_number(flag: str, value, low: float, exclusive: bool = False) -> None:
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low or (exclusive and value == low):
        raise UsageError(f"{flag} must be a number {'>' if exclusive else '>='} {low:g}, got {value!r}")


# -------------------------------------------------------------------------------------- perturber
class LLMPerturber:
    """Negatives from a chat model (module docstring).

    Args:
        backend: an ``HTTPChat``, a ``TransformersChat`` or anything with ``complete(requests) -> answers``
            (an answer may be an exception: that caption failed) and a ``retries`` count.
        seed: decides each caption's family order and each request's seed.
        families: the families to ask for (default all four).
        template: the prompt (``DEFAULT_PROMPT_TEMPLATE``); ``{caption}`` required.
        max_attempts: asks per negative, the first included, before it is given up.
        temperature, max_tokens: recorded in the settings (the backend samples with them).
        model: the model name recorded in the settings.
    """

    name = "llm"

    def __init__(self, backend, seed: int = 0, families: Optional[Sequence[str] | str] = None,
                 template: str = DEFAULT_PROMPT_TEMPLATE, max_attempts: int = 3, model: Optional[str] = None):
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise UsageError(f"--seed must be an integer, got {seed!r}")
        _check_int("--max-attempts", max_attempts, 1)
        self.backend, self.seed, self.max_attempts = backend, seed, max_attempts
        self.families = parse_families(families)
        self.template = check_prompt_template(template)
        self.model = model or getattr(backend, "model", None) or getattr(backend, "name", None)

    def settings(self) -> dict:
        template = "default" if self.template == DEFAULT_PROMPT_TEMPLATE else "sha256:" + hashlib.sha256(self.template.encode("utf-8")).hexdigest()[:12]
        return {"model": self.model, "families": list(self.families), "seed": self.seed, "prompt_template": template,
                "temperature": getattr(self.backend, "temperature", None), "max_tokens": getattr(self.backend, "max_tokens", None)}

    @property
    def transport_retries(self) -> int:
        return getattr(self.backend, "retries", 0)

    def slot_families(self, caption: str, k: int) -> list[str]:
        """The family asked for in each of ``caption``'s ``k`` slots: the families in turn from a seeded offset."""
        offset = int.from_bytes(hashlib.sha256(f"{self.seed}\0{caption}".encode("utf-8")).digest()[:4], "big")
        return [self.families[(offset + slot) % len(self.families)] for slot in range(k)]

    def perturb(self, captions: Sequence[str], k: int) -> list[Perturbation]:
        results = [Perturbation() for _ in captions]
        kept: list[dict[int, str]] = [{} for _ in captions]
        families = [self.slot_families(caption, k) for caption in captions]
        for attempt in range(self.max_attempts):
            owners = [(i, slot) for i, caption in enumerate(captions) if results[i].error is None
                      for slot in range(k) if slot not in kept[i]]
            if not owners:
                break
            requests = [ChatRequest(build_prompt(self.template, captions[i], families[i][slot]),
                                    request_seed(self.seed, captions[i], slot, attempt)) for i, slot in owners]
            answers = self.backend.complete(requests)
            if attempt == 0 and answers and all(isinstance(answer, Exception) for answer in answers):
                raise answers[0]  # the endpoint answers nothing: stop rather than mark every caption failed
            for (i, slot), answer in zip(owners, answers):
                result = results[i]
                if attempt:
                    result.reasked += 1
                if result.error is not None:
                    continue
                if isinstance(answer, Exception):
                    result.error = str(answer)
                    continue
                negative, reason = parse_answer(answer, captions[i], list(kept[i].values()))
                if reason is not None:
                    result.rejected[reason] += 1
                else:
                    kept[i][slot] = negative
        for i, result in enumerate(results):
            slots = sorted(kept[i])
            result.negatives = [kept[i][slot] for slot in slots]
            result.families = [families[i][slot] for slot in slots]
        return results
