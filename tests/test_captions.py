"""``diffalign captions perturb``: the rule perturber on the toy grammar, the LLM perturber against a
loopback stub of an OpenAI-compatible endpoint and a tiny local causal LM, and the runner's input,
output, resume and user errors."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import difflib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import diffalign  # noqa: F401
import pytest

from diffalign.cli import main
from diffalign.errors import ModelLoadError, UsageError
from diffalign.rewards.caption_llm import DEFAULT_PROMPT_TEMPLATE, HTTPChat, LLMPerturber, TransformersChat, build_prompt, parse_answer
from diffalign.rewards.caption_rules import GENERAL_VOCABULARY, TOY_VOCABULARY, RulePerturber, apply_edit, load_vocabulary
from diffalign.rewards.captions import FAMILIES, normalise_caption, perturb_captions
from diffalign.toy import world

TOY_FIELDS = {"colour": "attribute", "size": "attribute", "shape": "content", "position": "spatial", "background": "context"}


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


def cli(*argv):
    return main(["captions", "perturb", *map(str, argv)])


# --------------------------------------------------------------------------------- vocabularies
def test_toy_vocabulary_is_exactly_the_toy_grammar():
    grammar = {"colour": set(world.COLOURS), "size": set(world.SIZES), "shape": set(world.SHAPES),
               "position": set(world.POSITIONS), "background": set(world.BACKGROUNDS)}
    lists = {word_list.name: word_list for word_list in TOY_VOCABULARY.lists}
    assert set(lists) == set(grammar)
    for name, words in grammar.items():
        assert len(lists[name].groups) == 1 and set(lists[name].words) == words, name
        assert lists[name].family == TOY_FIELDS[name]
    assert lists["background"].template == "{} background"
    assert {word_list.family for word_list in TOY_VOCABULARY.lists} == set(FAMILIES)
    # the general vocabulary holds every toy word in the list of the same name, so toy captions perturb under it too
    general = {word_list.name: set(word_list.words) for word_list in GENERAL_VOCABULARY.lists}
    for name, words in grammar.items():
        assert words <= general[name], name


def test_vocabulary_checks_and_json_files(tmp_path):
    path = tmp_path / "v.json"
    path.write_text(json.dumps({"colour": {"family": "attribute", "words": ["red", "blue"]},
                                "sky": {"family": "context", "groups": [["cloudy", "clear"]], "template": "{} sky"}}))
    vocabulary = load_vocabulary(str(path))
    assert vocabulary.name.startswith("v.json#") and len(vocabulary.lists) == 2
    result = RulePerturber(vocabulary, families="context").perturb_one("a red kite in a cloudy sky", 5)
    assert result.negatives == ["a red kite in a clear sky"] and result.families == ["context"]
    for bad, message in [
        ("{", "is not valid JSON"),
        ('{"c": {"family": "colour", "words": ["red", "blue"]}}', "family must be one of"),
        ('{"c": {"family": "attribute", "words": ["red"]}}', "two or more distinct words"),
        ('{"c": {"family": "attribute", "words": ["red", "Red"]}}', "two or more distinct words"),
        ('{"c": {"family": "attribute", "groups": [["red", "blue"], ["red", "green"]]}}', "a word may be in one group only"),
        ('{"c": {"family": "attribute", "words": ["a", "b"], "template": "x"}}', "exactly once"),
        ('{"c": {"family": "attribute"}}', "either 'words'"),
    ]:
        path.write_text(bad)
        with pytest.raises(UsageError, match=message):
            load_vocabulary(str(path))
    with pytest.raises(UsageError, match="toy, general or a .json file"):
        load_vocabulary("nope")


# ------------------------------------------------------------------------------ rules perturber
def one_field_changed(caption, negative):
    """The name of the only toy-grammar field in which ``negative`` differs from ``caption``."""
    before, after = world.parse_caption(caption), world.parse_caption(negative)
    changed = [name for name in TOY_FIELDS if getattr(before, name) != getattr(after, name)]
    assert len(changed) == 1, (caption, negative, changed)
    return changed[0]


@pytest.mark.parametrize("seed", [0, 7])
def test_rules_change_exactly_one_attribute_of_every_toy_caption(seed):
    perturber = RulePerturber("toy", seed=seed)
    for caption in world.all_captions():
        result = perturber.perturb_one(caption, 4)
        assert len(result.negatives) == 4 and len(set(result.negatives)) == 4 and not result.rejected
        assert sorted(result.families) == sorted(FAMILIES)  # four negatives: one per family
        for negative, family in zip(result.negatives, result.families):
            assert normalise_caption(negative) != normalise_caption(caption)
            assert TOY_FIELDS[one_field_changed(caption, negative)] == family


def test_rules_enumerate_every_toy_edit_and_stay_short_beyond():
    caption = "a small red circle on the left on a white background"
    expected = 1 + 5 + 2 + 4 + 2  # size, colour, shape, position, background alternatives
    assert len(RulePerturber("toy").edits(caption)) == expected
    result = RulePerturber("toy").perturb_one(caption, 20)
    assert len(result.negatives) == expected == len(set(result.negatives))
    assert all(world.parse_caption(negative) for negative in result.negatives)
    assert caption not in result.negatives


def test_rules_general_vocabulary_changes_one_attribute_of_toy_captions():
    perturber = RulePerturber("general", seed=1)
    outside = 0
    for caption in world.all_captions()[::7]:
        edits = perturber.edits(caption)
        assert sorted({edit.attribute for edit in edits}) == sorted(TOY_FIELDS)  # one slot per toy attribute, no more
        for negative in perturber.perturb_one(caption, 6).negatives:
            assert normalise_caption(negative) != normalise_caption(caption)
            assert sum(apply_edit(caption, edit) == negative for edit in edits) == 1
            try:
                one_field_changed(caption, negative)
            except UsageError:  # a word outside the toy grammar ("orange"): still one word replaced (its article agrees)
                outside += 1
                words = [word if word != "an" else "a" for word in negative.split()]
                opcodes = [op for op in difflib.SequenceMatcher(a=caption.split(), b=words).get_opcodes() if op[0] != "equal"]
                assert len(opcodes) == 1 and opcodes[0][2] - opcodes[0][1] == 1, (caption, negative)
    assert outside


def test_rules_are_deterministic_and_seeded_per_caption():
    captions = world.all_captions()[:60]
    first = [r.negatives for r in RulePerturber("toy", seed=5).perturb(captions, 3)]
    again = [r.negatives for r in RulePerturber("toy", seed=5).perturb(captions[::-1], 3)][::-1]
    assert first == again  # a caption's negatives do not depend on its batch
    other = [r.negatives for r in RulePerturber("toy", seed=6).perturb(captions, 3)]
    assert other != first


def test_rules_on_free_text_keep_case_and_articles():
    perturber = RulePerturber("general", families=["attribute"])
    edits = {edit.new: edit for edit in perturber.edits("A red apple")}
    assert apply_edit("A red apple", edits["orange"]) == "An orange apple"
    assert apply_edit("Red apples", RulePerturber("general", families="attribute").edits("Red apples")[0]).split()[0][0].isupper()
    assert RulePerturber("general", families="content").perturb_one("an elephant", 9).negatives[0].startswith("a ")
    assert RulePerturber("general").perturb_one("zzz qqq", 3).negatives == []  # no word of the vocabulary: no negative
    # "on the left" is one position, not the relation "left"; "white background" a background, not a colour
    kinds = {(edit.attribute, edit.old) for edit in RulePerturber("general").edits("a dog on the left on a white background")}
    assert kinds == {("animal", "dog"), ("position", "on the left"), ("background", "white")}
    with pytest.raises(UsageError, match="--families must name one or more of"):
        RulePerturber("toy", families="colour")


# --------------------------------------------------------------------------------- LLM answers
def test_parse_answer_cleans_and_rejects():
    caption = "a red circle"
    assert parse_answer('Edited caption: "a blue circle"', caption) == ("a blue circle", None)
    assert parse_answer("<think>swap the colour</think>\n**a blue circle**", caption) == ("a blue circle", None)
    assert parse_answer("```\na  blue circle\n```", caption) == ("a blue circle", None)
    assert parse_answer("", caption) == (None, "empty")
    assert parse_answer(None, caption) == (None, "empty")
    assert parse_answer('"  "', caption) == (None, "empty")
    assert parse_answer("A Red Circle.", caption) == (None, "unchanged")
    assert parse_answer("a blue circle", caption, ["A blue circle!"]) == (None, "duplicate")
    assert parse_answer("Sure! Here it is:\na blue circle", caption) == (None, "unparsable")
    assert parse_answer("<think>still thinking", caption) == (None, "unparsable")
    assert parse_answer("x" * 200, caption) == (None, "unparsable")


def test_prompt_follows_the_spec_skeleton():
    text = build_prompt(DEFAULT_PROMPT_TEMPLATE, "a red circle", "spatial")
    assert "minimally edited caption" in text and "false for the original image" in text and "Return only the caption" in text
    assert "one spatial edit (" in text and text.endswith("Caption: a red circle")


class StubLLM:
    """An OpenAI-compatible chat-completions stub on 127.0.0.1. The caption (after "Caption: ") picks the
    behaviour; ``calls`` counts requests per (caption, family)."""

    def __init__(self):
        self.calls, self.headers, self.payloads, self.lock = {}, [], [], threading.Lock()
        self.healthy = False  # True: "broken" answers well too
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = body["messages"][0]["content"]
                caption = text.split("Caption: ", 1)[1]
                family = next(f for f in FAMILIES if f"one {f} edit" in text)
                with stub.lock:
                    stub.payloads.append(body)
                    stub.headers.append(dict(self.headers))
                    key = (caption, family)
                    stub.calls[key] = count = stub.calls.get(key, 0) + 1
                kind = caption.split()[0]
                good = f'Caption: "{caption} but {family}"'
                if kind == "broken" and not stub.healthy:
                    return self.reply(500, b"internal error")
                if kind == "forbidden":
                    return self.reply(401, b"bad key")
                if kind == "busy" and count == 1:
                    return self.reply(503, b"busy")
                if kind == "slow" and count == 1:
                    time.sleep(1.6)
                answer = {"empty": "", "echo": caption.upper() + ".", "chatty": f"Sure!\n{caption} but not",
                          "flaky": "" if count == 1 else good}.get(kind, good)
                self.reply(200, json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode())

            def reply(self, status, data):
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 64  # the default 5 drops connections of 8 concurrent workers: spurious retries

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    server = StubLLM()
    yield server
    server.close()


KINDS = ["good", "empty", "echo", "flaky", "broken", "busy", "slow", "chatty"]


def http_perturber(url, **options):
    backend = HTTPChat(url, "stub-model", timeout=0.8, max_retries=2, retry_backoff=0.01, workers=8)
    return LLMPerturber(backend, seed=0, max_attempts=2, **options)


def test_llm_perturber_against_a_stub_server_counts_everything(stub, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFALIGN_LLM_API_KEY", "sk-secret-caption")
    data = tmp_path / "captions.txt"
    data.write_text("".join(f"{kind} red circle\n" for kind in KINDS))
    out = tmp_path / "neg.jsonl"
    summary = perturb_captions(http_perturber(stub.url), str(data), str(out), per_caption=2, prompts_only=True, progress=False)
    assert (summary.inputs, summary.written, summary.no_negatives, summary.failed, summary.short) == (8, 4, 3, 1, 0), summary
    assert summary.kept == 8
    assert dict(summary.rejected) == {"empty": 4 + 2, "unchanged": 4, "unparsable": 4}  # flaky: 2 empty, then good
    assert summary.reasked == 2 * 4  # empty, echo, chatty, flaky asked again once per negative
    assert summary.transport_retries == 2 + 2 + 2  # broken (500, 2 attempts), busy (503 once), slow (timeout once)
    assert summary.retried == 14
    assert "failed after 2 attempts: HTTP 500" in summary.first_error
    rows = read_jsonl(out)
    assert [row["prompt"].split()[0] for row in rows] == ["good", "flaky", "busy", "slow"]
    for row in rows:
        assert "image" not in row and len(row["negative_prompts"]) == 2
        assert row["negative_prompts"] == [f"{row['prompt']} but {family}" for family in row["negative_families"]]
        assert row["perturbation"]["model"] == "stub-model" and row["perturbation"]["prompt_template"] == "default"
    assert all(header["Authorization"] == "Bearer sk-secret-caption" for header in stub.headers)
    assert "sk-secret" not in out.read_text()
    payload = stub.payloads[0]
    assert payload["messages"][0]["role"] == "user" and isinstance(payload["messages"][0]["content"], str)
    assert payload["temperature"] == 0.7 and isinstance(payload["seed"], int)

    # a rerun keeps the 4 rows, asks again for the rest, and fills in the failed one once the server is healthy
    stub.healthy = True
    again = perturb_captions(http_perturber(stub.url), str(data), str(out), per_caption=2, prompts_only=True, progress=False)
    assert (again.resumed, again.written, again.no_negatives, again.failed) == (4, 1, 3, 0)
    assert [row["input_index"] for row in read_jsonl(out)] == [0, 3, 4, 5, 6]  # rewritten in input order


def test_llm_cli_reports_counts_and_never_the_key(stub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MY_LLM_KEY", "sk-secret-caption")
    data = tmp_path / "captions.txt"
    data.write_text("good red circle\necho red circle\nbusy red circle\n")
    out = tmp_path / "neg.jsonl"
    template = tmp_path / "template.txt"
    template.write_text("Make this false: {family}")
    common = ["--data", data, "--out", out, "--perturber", "llm", "--model", "stub-model", "--prompts-only", "--no-progress-bar"]
    assert cli(*common, "--base-url", stub.url, "--api-key-env", "MY_LLM_KEY", "--per-caption", 2, "--max-attempts", 2,
               "--timeout", 5, "--max-retries", 3) == 0
    printed = capsys.readouterr()
    assert "rejected answers: empty 0, unparsable 0, unchanged 4, duplicate 0; retried: 2 asked again" in printed.out
    assert "2 HTTP retries" in printed.out and "wrote 2 rows" in printed.out and "1 rows got no negative" in printed.out
    assert "sk-secret" not in printed.out + printed.err + out.read_text()
    assert stub.headers[-1]["Authorization"] == "Bearer sk-secret-caption"
    # user errors: one line, exit code 2
    for extra, message in [
        (["--base-url", stub.url, "--api-key-env", "UNSET_KEY_VAR"], "--api-key-env UNSET_KEY_VAR: that environment variable is not set"),
        (["--base-url", stub.url, "--vocabulary", "toy"], "--vocabulary applies to --perturber rules"),
        (["--base-url", stub.url, "--device", "cpu"], "--device applies without --base-url"),
        (["--base-url", stub.url, "--per-caption", 2, "--seed", 1], "holds rows made with --seed 0, not 1 as now: pass --overwrite"),
        (["--base-url", "localhost:1"], "--base-url must be an http(s) URL"),
        (["--base-url", stub.url, "--prompt-template", template], "must hold {caption}"),
    ]:
        assert cli(*common, *extra) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("diffalign captions perturb: error: ") and message in err and err.count("\n") == 1, err
    # a refused request (401) stops the run; so does a first round in which every request failed
    for caption, message in [("forbidden red circle", "answered HTTP 401: bad key"), ("broken red circle", "failed after 2 attempts")]:
        data.write_text(caption + "\n")
        assert cli(*common, "--base-url", stub.url, "--max-retries", 2, "--timeout", 5, "--overwrite") == 2
        assert message in capsys.readouterr().err


def test_llm_perturber_with_a_local_causal_lm(tmp_path):
    from diffalign.tiny import save_tiny_lm

    folder = save_tiny_lm(str(tmp_path / "lm"), ["a red circle on a white background", "Caption: a blue square"] * 20)
    backend = TransformersChat(folder, device="cpu", batch_size=3, max_tokens=6, temperature=1.0)
    captions = ["a red circle", "a blue square"]
    results = LLMPerturber(backend, max_attempts=2).perturb(captions, 2)
    for result in results:
        assert len(result.negatives) + sum(result.rejected.values()) == 2 + result.reasked
        assert all(normalise_caption(negative) not in map(normalise_caption, captions) for negative in result.negatives)
    again = LLMPerturber(TransformersChat(folder, device="cpu", batch_size=3, max_tokens=6, temperature=1.0), max_attempts=2).perturb(captions, 2)
    assert [(r.negatives, r.rejected) for r in again] == [(r.negatives, r.rejected) for r in results]
    with pytest.raises(ModelLoadError, match="cannot load the caption model"):
        TransformersChat(str(tmp_path / "missing"), device="cpu")


# ------------------------------------------------------------------------------ runner and files
@pytest.fixture
def image_rows(tmp_path):
    """A jsonl of six toy captions with their rendered images under data/img/."""
    folder = tmp_path / "data"
    (folder / "img").mkdir(parents=True)
    rows = []
    for index, caption in enumerate(world.all_captions()[::90]):
        world.render(caption, seed=index).save(folder / "img" / f"{index}.png")
        rows.append({"image": f"img/{index}.png", "prompt": caption, "extra": index})
    path = folder / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_rules_cli_writes_captioned_images_and_resumes(image_rows, tmp_path, capsys):
    from diffalign.data import ImageOptions, get_format, read_table

    out = tmp_path / "tpo" / "captions.jsonl"
    args = ["--data", image_rows, "--out", out, "--vocabulary", "toy", "--per-caption", 3, "--no-progress-bar"]
    assert cli(*args) == 0
    assert "wrote 6 rows" in capsys.readouterr().out
    rows = read_jsonl(out)
    assert [row["input_index"] for row in rows] == list(range(6))
    for row in rows:
        assert row["image"].startswith(os.path.join("..", "data", "img"))
        assert os.path.isfile(out.parent / row["image"]) and len(row["negative_prompts"]) == 3
        assert {one_field_changed(row["prompt"], negative) for negative in row["negative_prompts"]}
    dataset, _ = get_format("captioned_images").build(read_table(str(out)), ImageOptions(resolution=32))
    assert len(dataset) == 6 and dataset[0]["negative_prompts"] == rows[0]["negative_prompts"]

    original = out.read_text()
    assert cli(*args) == 0 and out.read_text() == original  # nothing to do
    assert "written  short" in capsys.readouterr().out
    lines = original.splitlines(keepends=True)
    out.write_text("".join(lines[:2]) + lines[2][:25])  # a killed run: two rows and a cut-off line
    assert cli(*args) == 0 and out.read_text() == original  # the same rows again
    assert "(2 were there already)" in capsys.readouterr().out

    assert cli(*args[:-3], "--per-caption", 2, "--no-progress-bar") == 2
    assert "holds rows made with --per-caption 3, not 2 as now: pass --overwrite" in capsys.readouterr().err
    assert cli(*args, "--seed", 4, "--overwrite") == 0 and out.read_text() != original
    out.write_text('{"image": "x.png", "prompt": "p"}\n')
    assert cli(*args) == 2 and "is not a row diffalign captions perturb wrote" in capsys.readouterr().err
    # the input changed under the rows already written
    out.write_text(original)
    image_rows.write_text(image_rows.read_text().replace(world.all_captions()[0], "a large red circle on the left on a white background"))
    assert cli(*args) == 2 and "holds a row for input row 0" in capsys.readouterr().err


def test_generations_listing_shares_negatives_between_images_of_a_prompt(tmp_path):
    gen = tmp_path / "gen"
    gen.mkdir()
    captions = world.all_captions()[:2]
    listing = []
    for i, caption in enumerate(captions):
        for j in range(2):
            world.render(caption, seed=j).save(gen / f"{i}_{j}.png")
            listing.append({"prompt_index": i, "j": j, "prompt": caption, "seed": 1000 * i + j, "image": f"{i}_{j}.png", "model": "m"})
    (gen / "generations.jsonl").write_text("".join(json.dumps(row) + "\n" for row in listing))
    out = tmp_path / "tpo.jsonl"
    summary = perturb_captions(RulePerturber("toy"), str(gen / "generations.jsonl"), str(out), per_caption=2, progress=False)
    assert (summary.written, summary.captions) == (4, 2)
    rows = read_jsonl(out)
    assert [row["image"] for row in rows] == [os.path.join("gen", f"{i}_{j}.png") for i in range(2) for j in range(2)]
    assert rows[0]["negative_prompts"] == rows[1]["negative_prompts"] != rows[2]["negative_prompts"]


def test_input_errors_are_one_sentence(tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    txt = tmp_path / "p.txt"
    txt.write_text("a red circle\n")
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"prompt": "a red circle"}\n{nope\n')
    missing_image = tmp_path / "missing.jsonl"
    missing_image.write_text('{"prompt": "a red circle", "image": "gone.png"}\n')
    no_prompt = tmp_path / "np.jsonl"
    no_prompt.write_text('{"caption": "a red circle"}\n')
    for args, message in [
        (["--data", txt, "--out", out], "has no images, but captioned_images rows need one"),
        (["--data", tmp_path / "none.txt", "--out", out], "does not exist"),
        (["--data", tmp_path / "x.csv", "--out", out], "expected a .txt file"),
        (["--data", bad_json, "--out", out], "bad.jsonl:2: invalid JSON"),
        (["--data", missing_image, "--out", out], "1 of its images do not exist"),
        (["--data", no_prompt, "--out", out], "field 'prompt' must be a non-empty string"),
        (["--data", txt, "--out", out, "--prompts-only", "--per-caption", 0], "--per-caption must be an integer >= 1"),
        (["--data", txt, "--out", tmp_path / "out.txt", "--prompts-only"], "--out must be a .jsonl file"),
        (["--data", txt, "--out", out, "--prompts-only", "--families", "colour"], "--families must name one or more of"),
        (["--data", txt, "--out", out, "--prompts-only", "--vocabulary", "klingon"], "--vocabulary must be one of toy, general"),
        (["--data", txt, "--out", out, "--prompts-only", "--temperature", 0.5], "--temperature applies to --perturber llm"),
        (["--data", txt, "--out", out, "--perturber", "llm"], "--perturber llm needs --model"),
    ]:
        assert cli(*args, "--no-progress-bar") == 2, args
        err = capsys.readouterr().err
        assert err.startswith("diffalign captions perturb: error: ") and message in err and err.count("\n") == 1, err
    assert main(["captions"]) == 2 and "perturb" in capsys.readouterr().err
