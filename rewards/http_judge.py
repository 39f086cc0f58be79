"""VLM judge backend over an OpenAI-compatible chat-completions endpoint (e.g. a vLLM server).

Matches how UnifiedReward is served (github.com/CodeGoat24/UnifiedReward ``vllm_qwen/vllm_request.py``,
spec ``research/rewards_bench.md`` §2.1): one user message whose content lists the images first, each
re-encoded as an RGB JPEG (quality 95) ``data:`` URL, then the text. We send ``temperature: 0`` for
deterministic verdicts, retry 429 / 5xx / connection errors with exponential backoff, and run
requests on a thread pool, returning answers in request order.

The base URL and key come from the arguments or the environment (``DIFFALIGN_JUDGE_BASE_URL`` /
``DIFFALIGN_JUDGE_API_KEY``, falling back to ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``). The key is sent
only in the ``Authorization`` header and never appears in messages, errors or ``repr``.
"""

from __future__ import annotations

import base64
import inspect
import io
import json
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from PIL import Image

from diffalign.data.images import to_rgb
from diffalign.errors import UsageError, UserError

JudgeRequest = tuple[Sequence[Image.Image], str]

RETRY_STATUS = {429, 500, 502, 503, 504}


class JudgeRequestError(UserError, RuntimeError):
    """The endpoint refused a request or answered with something that is not a chat completion.

    ``transient`` is True when the request kept failing with errors worth retrying later (429 / 5xx,
    timeouts, refused connections) until the attempts ran out, False when the endpoint refused it
    outright (another HTTP status, an answer that is not a chat completion)."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


def image_data_url(image: Image.Image, quality: int = 95) -> str:
    buffer = io.BytesIO()
    to_rgb(image).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def chat_payload(images: Sequence[Image.Image], text: str, model: str, max_tokens: int) -> dict:
    """The chat-completions body: images first, then the text, greedy decoding."""
    content = [{"type": "image_url", "image_url": {"url": image_data_url(image)}} for image in images]
    content.append({"type": "text", "text": text})
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0}


class HTTPJudge:
    """Client of an OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        base_url: e.g. ``http://localhost:8080/v1`` (``/chat/completions`` is appended).
        api_key: bearer token; vLLM servers started without ``--api-key`` accept any value.
        model: the served model name (vLLM ``--served-model-name``; UnifiedReward's scripts use ``UnifiedReward``).
        max_tokens: generation budget per answer.
        timeout: seconds per HTTP request.
        max_retries: attempts per request on 429 / 5xx / connection errors.
        retry_backoff: first wait in seconds, doubled after each failed attempt (capped at 60 s).
        max_workers: concurrent requests.

    ``post(payload)`` sends any chat-completions body (the caption perturber sends text-only ones);
    ``retries`` counts the attempts repeated after a retryable failure, over all requests.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        model: str = "UnifiedReward",
        max_tokens: int = 4096,
        timeout: float = 300.0,
        max_retries: int = 10,
        retry_backoff: float = 1.0,
        max_workers: int = 16,
    ):
        base_url = base_url or os.environ.get("DIFFALIGN_JUDGE_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise UsageError("no judge endpoint: pass base_url or set DIFFALIGN_JUDGE_BASE_URL")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._api_key = api_key or os.environ.get("DIFFALIGN_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.model = model
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.max_workers = max_workers
        self.retries = 0
        self._retries_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"HTTPJudge(url={self.url!r}, model={self.model!r})"

    def post(self, payload: dict) -> str:
        """The answer text (``choices[0].message.content``, "" when null) to one chat-completions body."""
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self._api_key}"}
        last_error = "no attempt made"
        for attempt in range(self.max_retries):
            if attempt:
                with self._retries_lock:
                    self.retries += 1
                time.sleep(min(self.retry_backoff * 2 ** (attempt - 1), 60.0))
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    reply = json.loads(response.read())
            except urllib.error.HTTPError as error:
                detail = error.read()[:300].decode(errors="replace")
                if error.code not in RETRY_STATUS:
                    raise JudgeRequestError(f"{self.url} answered HTTP {error.code}: {detail}") from None
                last_error = f"HTTP {error.code}: {detail}"
                continue
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                last_error = str(getattr(error, "reason", error))
                continue
            except json.JSONDecodeError as error:
                raise JudgeRequestError(f"{self.url} answered with invalid JSON: {error}") from None
            try:
                return reply["choices"][0]["message"]["content"] or ""
            except (KeyError, IndexError, TypeError):
                raise JudgeRequestError(f"{self.url} answered without choices[0].message.content") from None
        raise JudgeRequestError(f"{self.url} failed after {self.max_retries} attempts: {last_error}", transient=True)

    def generate(self, requests: Sequence[JudgeRequest]) -> list[str]:
        """Answers in request order; requests run concurrently on ``max_workers`` threads."""
        from tqdm.auto import tqdm

        payloads = [chat_payload(images, text, self.model, self.max_tokens) for images, text in requests]
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            return list(tqdm(pool.map(self.post, payloads), total=len(payloads), desc="judge", leave=False, disable=len(payloads) < 2))


# the options of an ``HTTPJudge`` beyond the endpoint, the key, the served model and the token budget
HTTP_OPTIONS = tuple(name for name in inspect.signature(HTTPJudge).parameters if name not in ("base_url", "api_key", "model", "max_tokens"))
