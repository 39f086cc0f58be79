"""The ``openai:MODEL@URL`` bench judge against a loopback stub of an OpenAI-compatible endpoint: answers
judged, slow answers timed out, 500s retried, malformed answers counted as failures, refusals stopping
the run, and the key sent in the header only, never written or printed."""

import ast
import base64
import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from diffalign.benchmarks.bench_judges import OpenAIJudge, build_judge, public_judge_spec
from diffalign.benchmarks.unigenbench_run import BenchSettings, run_bench
from diffalign.errors import UsageError
from diffalign.rewards.http_judge import JudgeRequestError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "..", "shared", "data", "unigenbench")
KEY = "sk-test-very-secret-0123"

pytestmark = pytest.mark.skipif(not os.path.isdir(DATA), reason=f"UniGenBench prompt files not found at {DATA}")


class Handler(BaseHTTPRequestHandler):
    """Behaves as the requested model name says: good, slow, flaky (two 500s, then good), malformed
    (an answer without the format), refuse (HTTP 401)."""

    def log_message(self, *args):
        pass

    def reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        server = self.server
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        content = payload["messages"][0]["content"]
        with server.lock:
            server.requests.append({"authorization": self.headers.get("Authorization"), "model": payload["model"],
                                    "content": content})
            server.count += 1
            count = server.count
        model = payload["model"]
        if model == "refuse":
            return self.reply(401, b'{"error": "invalid api key"}')
        if model == "flaky" and count <= 2:
            return self.reply(500, b'{"error": "overloaded"}')
        if model == "slow":
            time.sleep(0.6)
        names = ast.literal_eval(re.search(r"the checkpoints are (\[.*?\])\.\n", content[-1]["text"]).group(1))
        if model == "malformed":
            text = "The image looks fine to me."
        else:
            text = (f"<description><analysis>{[f'{name} is met' for name in names]!r}</analysis>"
                    f"<score>{[1] * len(names)!r}</score></description>")
        self.reply(200, json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode())


@pytest.fixture
def server():
    stub = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    stub.daemon_threads = True
    stub.lock, stub.requests, stub.count = threading.Lock(), [], 0
    thread = threading.Thread(target=stub.serve_forever, daemon=True)
    thread.start()
    stub.url = f"http://127.0.0.1:{stub.server_address[1]}/v1"
    yield stub
    stub.shutdown()
    stub.server_close()


@pytest.fixture
def images(tmp_path):
    """Upstream's layout for the first 3 EN prompts: {index}_{j}.png, 4 per prompt."""
    folder = tmp_path / "eval_data" / "en" / "model-a"
    folder.mkdir(parents=True)
    for index in range(3):
        for j in range(4):
            Image.new("RGB", (16, 16), (10 * index, 50 * j, 90)).save(folder / f"{index}_{j}.png")
    return str(folder)


def run(tmp_path, images, judge_spec=None, judge=None, **options):
    settings = BenchSettings(out=str(tmp_path / "run"), judge=judge_spec or judge.spec, prompts_dir=DATA, images=images,
                             limit=3, progress=False, **options)
    return run_bench(settings, judge=judge, write_report=False)


def written_files(folder) -> str:
    return "".join(open(os.path.join(root, name), encoding="utf-8", errors="replace").read()
                   for root, _, names in os.walk(folder) for name in names)


def test_answers_are_judged_and_the_key_stays_secret(tmp_path, images, server, monkeypatch, capsys):
    monkeypatch.setenv("DIFFALIGN_JUDGE_API_KEY", KEY)
    results = run(tmp_path, images, f"openai:good@{server.url}", workers=3)
    assert results["counts"]["judged_images"] == 12 and results["counts"]["failed_images"] == 0
    assert results["judge"] == f"openai:good@{server.url}"
    assert len(server.requests) == 12 and {request["authorization"] for request in server.requests} == {f"Bearer {KEY}"}
    content = server.requests[0]["content"]
    assert [part["type"] for part in content] == ["image_url", "text"]
    assert content[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    base64.b64decode(content[0]["image_url"]["url"].split(",", 1)[1], validate=True)
    assert "Checkpoints Defination:" in content[1]["text"]
    captured = capsys.readouterr()
    assert KEY not in written_files(tmp_path / "run") + captured.out + captured.err
    judge = build_judge(f"openai:good@{server.url}")
    assert KEY not in repr(judge) + judge.spec + repr(judge.client)


def test_the_key_can_come_from_a_named_variable(tmp_path, images, server, monkeypatch):
    monkeypatch.setenv("MY_GEMINI_KEY", "key-from-my-variable")
    run(tmp_path, images, f"openai:good@{server.url}", api_key_env="MY_GEMINI_KEY")
    assert {request["authorization"] for request in server.requests} == {"Bearer key-from-my-variable"}
    monkeypatch.delenv("MY_GEMINI_KEY")
    with pytest.raises(UsageError, match="--api-key-env MY_GEMINI_KEY: that environment variable is not set"):
        run(tmp_path / "again", images, f"openai:good@{server.url}", api_key_env="MY_GEMINI_KEY")


def test_recorded_spec_drops_credentials_from_the_url():
    assert public_judge_spec("openai:m@https://user:pw@host.example/v1") == "openai:m@https://host.example/v1"
    assert public_judge_spec("transformers:/models/judge") == "transformers:/models/judge"


def test_slow_answers_hit_the_timeout_and_count_as_failures(tmp_path, images, server):
    judge = OpenAIJudge("slow", server.url, workers=12, max_retries=1, timeout=0.2, request_attempts=1, retry_backoff=0)
    started = time.perf_counter()
    results = run(tmp_path, images, judge=judge)
    assert time.perf_counter() - started < 5
    assert results["counts"]["judged_images"] == 0 and results["counts"]["failed_images"] == 12
    failed = results["failed_images"][0]
    assert failed["attempts"] == 2 and failed["error"].startswith("the request failed:") and "timed out" in failed["error"]
    assert results["overall"] is None and results["primary"]["Style"]["total"] == 0


def test_server_errors_are_retried(tmp_path, images, server):
    judge = OpenAIJudge("flaky", server.url, workers=1, max_retries=0, request_attempts=3, retry_backoff=0)
    results = run(tmp_path, images, judge=judge)
    assert results["counts"]["judged_images"] == 12 and judge.client.retries == 2 and len(server.requests) == 14
    rows = [json.loads(line) for line in open(tmp_path / "run" / "judgements.jsonl", encoding="utf-8")]
    assert {row["attempts"] for row in rows} == {1}  # the 500s were retried inside one attempt


def test_server_errors_that_persist_are_counted(tmp_path, images, server):
    judge = OpenAIJudge("flaky", server.url, workers=1, max_retries=0, request_attempts=1, retry_backoff=0)
    results = run(tmp_path, images, judge=judge)
    assert results["counts"]["failed_images"] == 2 and results["counts"]["judged_images"] == 10
    assert "failed after 1 attempts: HTTP 500" in results["failed_images"][0]["error"]


def test_malformed_answers_are_asked_again_then_counted(tmp_path, images, server):
    judge = OpenAIJudge("malformed", server.url, workers=4, max_retries=2, retry_backoff=0)
    results = run(tmp_path, images, judge=judge)
    assert results["counts"]["failed_images"] == 12 and len(server.requests) == 36
    rows = [json.loads(line) for line in open(tmp_path / "run" / "judgements.jsonl", encoding="utf-8")]
    assert {(row["attempts"], row["error"], row["raw"]) for row in rows} == {
        (3, "the answer has no <analysis>...</analysis> block", "The image looks fine to me.")}


def test_a_refusing_endpoint_stops_the_run(tmp_path, images, server, monkeypatch, capsys):
    from diffalign.cli import main

    monkeypatch.setenv("DIFFALIGN_JUDGE_API_KEY", KEY)
    with pytest.raises(JudgeRequestError, match="answered HTTP 401"):
        run(tmp_path, images, judge=OpenAIJudge("refuse", server.url, workers=2))
    code = main(["bench", "unigenbench", "--judge", f"openai:refuse@{server.url}", "--prompts-dir", DATA, "--images", images,
                 "--limit", "1", "--out", str(tmp_path / "cli"), "--no-progress-bar"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.count("\n") == 1 and captured.err.startswith("diffalign bench unigenbench: error: ")
    assert "answered HTTP 401" in captured.err and KEY not in captured.err + captured.out
