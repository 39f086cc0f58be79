"""UnifiedReward judges end to end: a tiny Qwen2.5-VL through transformers, and an OpenAI-compatible
stub server on loopback through the HTTP backend."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import base64
import io
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import diffalign  # noqa: F401
import numpy as np
import pytest
import torch
from PIL import Image

from diffalign.rewards import get_scorer
from diffalign.rewards.http_judge import HTTPJudge, JudgeRequestError
from tiny_rewards import save_tiny_unifiedreward

RED, BLUE = Image.new("RGB", (64, 48), "red"), Image.new("RGB", (40, 40), (0, 0, 255))


@pytest.fixture(scope="module")
def tiny_judge_folder(tmp_path_factory):
    return save_tiny_unifiedreward(str(tmp_path_factory.mktemp("ur")), answer="Key elements checked. Final Score: 4\nImage 1 is better.")


def test_transformers_backend_pairwise_and_pointwise(tiny_judge_folder):
    judge = get_scorer("unifiedreward", model=tiny_judge_folder, device="cpu", max_new_tokens=8, batch_size=2, progress=False)
    result = judge.compare([RED, BLUE, RED], [BLUE, RED, RED], ["a red circle", "a blue square", "x"])
    assert result.preference.tolist() == [1, 1, 1] and result.unparsable == 0
    assert result.preference.dtype == torch.int64 and result.probability_a.isnan().all()
    scores = judge.score([RED, BLUE, RED], ["a red circle", "a blue square", "x"])
    assert scores.dtype == torch.float32 and scores.tolist() == [4.0, 4.0, 4.0]
    # the tiny judge always prefers the image shown first: both orders turn that into ties
    judge.both_orders = True
    assert judge.compare([RED], [BLUE], ["p"]).preference.tolist() == [0]


def test_transformers_backend_unparsable_answers_are_counted(tiny_judge_folder):
    think = get_scorer("unifiedreward-think", model=tiny_judge_folder, device="cpu", max_new_tokens=8, progress=False)
    result = think.compare([RED, BLUE], [BLUE, RED], ["p", "q"])  # no <answer> tags: ties, counted
    assert result.preference.tolist() == [0, 0] and result.unparsable == 2
    acs = get_scorer("unifiedreward-2.0", model=tiny_judge_folder, device="cpu", max_new_tokens=8, progress=False)
    assert acs.score([RED], ["p"]).isnan().all()


class StubServer:
    """An OpenAI-compatible /v1/chat/completions stub on 127.0.0.1 answering ``answer(images, text)``."""

    def __init__(self, answer, fail_first=0, status=503):
        self.answer, self.fail_first, self.status = answer, fail_first, status
        self.payloads, self.headers, self.lock = [], [], threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.payloads.append(body)
                    stub.headers.append(dict(self.headers))
                    failing = stub.fail_first > 0
                    stub.fail_first -= failing
                if failing or self.path != "/v1/chat/completions":
                    self.send_response(stub.status if failing else 404)
                    self.end_headers()
                    self.wfile.write(b"busy" if failing else b"no such route")
                    return
                content = body["messages"][0]["content"]
                images = [Image.open(io.BytesIO(base64.b64decode(part["image_url"]["url"].split(",", 1)[1])))
                          for part in content if part["type"] == "image_url"]
                reply = {"choices": [{"message": {"role": "assistant", "content": stub.answer(images, content[-1]["text"])}}]}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def brightness_answer(images, text):
    """Brighter is better; the answer format follows the instruction it was given."""
    means = [float(np.asarray(image.convert("L")).mean()) for image in images]
    if "Final Score:" in text and len(images) == 1:
        return f"bright (attribute): 1\nFinal Score: {1 + int(means[0] // 64)}"
    if "<answer>" in text:
        return f"<think>...</think><answer>Image {1 if means[0] >= means[1] else 2} is better</answer>"
    if "Alignment Score (1-5)" in text:
        return f"Alignment Score (1-5): {means[0] / 64:.3f}\nCoherence Score (1-5): 3\nStyle Score (1-5): 2.5"
    if "Alignment Score:" in text:
        share = means[0] / (means[0] + means[1])
        return "".join(f"{d} Score:\n Image 1: {share:.2f}\n Image 2: {1 - share:.2f}\n" for d in ("Alignment", "Coherence", "Style"))
    return "Image 1 is better." if means[0] > means[1] else "Image 2 is better." if means[0] < means[1] else "Both images are equally good."


@pytest.fixture
def server():
    stub = StubServer(brightness_answer)
    yield stub
    stub.close()


def gray(level):
    return Image.new("RGB", (32, 32), (level, level, level))


def test_http_pairwise_pointwise_payload_and_order(server):
    judge = get_scorer("unifiedreward", base_url=server.url, api_key="sk-secret-123", max_workers=4)
    a, b = [gray(200), gray(10), gray(90), gray(50)], [gray(10), gray(200), gray(90), gray(60)]
    result = judge.compare(a, b, ["p0", "p1", "p2", "p3"])
    assert result.preference.tolist() == [1, -1, 0, -1] and result.unparsable == 0
    assert judge.score([gray(250), gray(0), gray(130)], ["a", "b", "c"]).tolist() == [4.0, 1.0, 3.0]
    payload = server.payloads[0]
    assert payload["model"] == "UnifiedReward" and payload["temperature"] == 0 and payload["max_tokens"] == 4096
    kinds = [part["type"] for part in payload["messages"][0]["content"]]
    assert kinds == ["image_url", "image_url", "text"]  # images first, then the instruction
    assert payload["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert {h["Authorization"] for h in server.headers} == {"Bearer sk-secret-123"}
    assert "sk-secret" not in repr(judge.backend)


def test_http_think_and_2_0_formats(server):
    think = get_scorer("unifiedreward-think", base_url=server.url)
    assert think.compare([gray(10), gray(200)], [gray(200), gray(10)], ["p", "q"]).preference.tolist() == [-1, 1]
    v2 = get_scorer("unifiedreward-2.0", base_url=server.url, dimension="alignment")
    torch.testing.assert_close(v2.score([gray(128)], ["p"]), torch.tensor([2.0]))
    assert get_scorer("unifiedreward-2.0", base_url=server.url).score([gray(128)], ["p"]).tolist() == [2.5]
    result = v2.compare([gray(150)], [gray(50)], ["p"])
    assert result.preference.tolist() == [1] and result.probability_a.tolist() == pytest.approx([0.75])


def test_http_retries_5xx_then_succeeds_and_reports_failures():
    stub = StubServer(brightness_answer, fail_first=2)
    try:
        judge = HTTPJudge(stub.url, api_key="sk-secret-123", retry_backoff=0.01)
        assert judge.generate([([gray(10), gray(20)], "which?")]) == ["Image 2 is better."]
        assert len(stub.payloads) == 3
        failing = HTTPJudge(stub.url, api_key="sk-secret-123", max_retries=2, retry_backoff=0.01)
        stub.fail_first = 5
        with pytest.raises(JudgeRequestError, match="failed after 2 attempts: HTTP 503") as error:
            failing.generate([([gray(1)], "x")])
        assert "sk-secret" not in str(error.value)
        stub.fail_first = 0
        with pytest.raises(JudgeRequestError, match="HTTP 404"):
            HTTPJudge(stub.url + "/wrong", max_retries=1).generate([([gray(1)], "x")])
    finally:
        stub.close()


def test_http_endpoint_from_environment(server, monkeypatch):
    monkeypatch.setenv("DIFFALIGN_JUDGE_BASE_URL", server.url)
    monkeypatch.setenv("DIFFALIGN_JUDGE_API_KEY", "sk-env")
    judge = get_scorer("unifiedreward")
    assert judge.compare([gray(1)], [gray(255)], ["p"]).preference.tolist() == [-1]
    assert server.headers[-1]["Authorization"] == "Bearer sk-env"
    monkeypatch.delenv("DIFFALIGN_JUDGE_BASE_URL")
    with pytest.raises(ValueError, match="needs --model"):
        get_scorer("unifiedreward")


@pytest.mark.skipif(not os.environ.get("UNIFIEDREWARD_MODEL"), reason="set UNIFIEDREWARD_MODEL to a local UnifiedReward-qwen checkpoint to run")
def test_real_judge_prefers_matching_image():
    judge = get_scorer("unifiedreward", model=os.environ["UNIFIEDREWARD_MODEL"], max_new_tokens=512, progress=False)
    red = Image.new("RGB", (512, 512), "red")
    result = judge.compare([red], [Image.new("RGB", (512, 512), "blue")], ["a plain red square"])
    assert result.preference.tolist() == [1] and not math.isnan(float(judge.score([red], ["a plain red square"])[0]))
