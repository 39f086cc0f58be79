"""The bench run report (``report.md``/``report.html``) and the leaderboard, from synthetic
``unigenbench.json`` run folders whose numbers are worked out by hand below."""

from __future__ import annotations

import json
import os
import re

import pytest
from PIL import Image, ImageDraw

from diffalign.benchmarks.bench_report import read_run_result, write_run_report
from diffalign.benchmarks.leaderboard import build_leaderboard, sub_label
from diffalign.data.errors import DataError
from diffalign.errors import UserError, UsageError

PRIMARY_ORDER = ["Style", "Attribute", "Entity Layout", "Text Generation"]
PROMPTS = {"0": "a red <b>circle</b> & a square", "1": "a sign that says 'open'"}
# passed / total per sub-dimension. Attribute pools 1/2 + 2/2 = 3/4 = 75.00 (micro), Overall =
# (75 + 75 + 25 + 0) / 4 = 43.75.
SUB_COUNTS = {"Style": ("Style", 3, 4), "Attribute - Color": ("Attribute", 1, 2), "Attribute - Shape": ("Attribute", 2, 2),
              "Entity Layout - Two-Dimensional Space": ("Entity Layout", 1, 4), "Text Generation": ("Text Generation", 0, 4)}
EXTERNAL_RESOURCE = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


def _score(passed: int, total: int) -> float | None:
    return round(100.0 * passed / total, 2) if total else None


def make_run(folder, label="runs/base", judge="toy", category="en", benchmark="unigenbench", scale=None,
             failed=0, image_side=64, write_images=True):
    """A run folder as ``diffalign bench unigenbench`` leaves it: images, judgements.jsonl and
    unigenbench.json. ``scale`` ({primary: passed}) overrides a primary's passed count (total 4)."""
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    names = [f"{index}_{j}.png" for index in (0, 1) for j in (0, 1)]
    if write_images:
        for k, name in enumerate(names):
            image = Image.new("RGB", (image_side, image_side), (240, 240, 240))
            ImageDraw.Draw(image).ellipse((8, 8, image_side - 8 - 4 * k, image_side - 8), fill=(200, 40 * k, 30))
            image.save(os.path.join(folder, "images", name))
    subs = {name: {"primary": primary, "passed": passed, "total": total, "score": _score(passed, total)}
            for name, (primary, passed, total) in SUB_COUNTS.items()}
    if scale:  # replace the primary's sub-dimensions by one with the given count out of 4
        for primary, passed in scale.items():
            for name in [n for n, e in subs.items() if e["primary"] == primary]:
                del subs[name]
            subs[primary if primary != "Attribute" else "Attribute - Color"] = {
                "primary": primary, "passed": passed, "total": 4, "score": _score(passed, 4)}
    primary = {}
    for name in PRIMARY_ORDER:
        passed = sum(e["passed"] for e in subs.values() if e["primary"] == name)
        total = sum(e["total"] for e in subs.values() if e["primary"] == name)
        primary[name] = {"passed": passed, "total": total, "score": _score(passed, total)}
    overall = round(sum(e["score"] for e in primary.values()) / len(primary), 2)
    failed_images = [{"image": "1_1.png", "prompt_index": 1, "attempts": 11, "error": "the answer has no <score> tag"}][:failed]
    result = {
        "schema": 1, "benchmark": benchmark, "category": category, "judge": judge,
        "model": {"model": f"{label}/model", "lora": None, "negative_model": None, "label": label},
        "settings": {"images_per_prompt": 2, "seed": 0, "max_retries": 10, "workers": 4},
        "images_dir": "images",
        "counts": {"prompts": 2, "images": 4, "judged_images": 4 - failed, "failed_images": failed,
                   "testpoint_judgements": sum(e["total"] for e in primary.values())},
        "overall": overall, "primary_order": PRIMARY_ORDER, "primary": primary, "sub": subs,
        "themes": {"Art": {"overall": 50.0, "primary": {"Style": {"passed": 1, "total": 2, "score": 50.0}}},
                   "Design": {"overall": 33.33, "primary": {"Style": {"passed": 2, "total": 2, "score": 100.0},
                                                            "Text Generation": {"passed": 0, "total": 4, "score": 0.0}}}},
        "failed_images": failed_images,
        "examples": {"Style": {"passed": ["0_0.png", "0_1.png"], "failed": ["1_0.png"]}},
        "prompts": PROMPTS,
    }
    with open(os.path.join(folder, "unigenbench.json"), "w", encoding="utf-8") as handle:
        json.dump(result, handle)
    with open(os.path.join(folder, "judgements.jsonl"), "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"image": "0_0.png", "prompt_index": 0, "scores": [1, 0], "testpoints": ["Style", "Attribute - Color"],
                                 "attempts": 1, "error": None, "raw": ""}) + "\n")
    return str(folder)


def _read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


# ------------------------------------------------------------------------------------ run report
def test_markdown_report_numbers(tmp_path):
    run = make_run(tmp_path / "run", failed=1)
    write_run_report(run)
    md = _read(os.path.join(run, "report.md"))
    assert "**Overall: 43.75**" in md
    assert "| **Style** | 3 | 4 | **75.00** |" in md
    assert "| **Attribute** | 3 | 4 | **75.00** |" in md
    assert "| &nbsp;&nbsp;Attribute - Color | 1 | 2 | 50.00 |" in md
    assert "| &nbsp;&nbsp;Attribute - Shape | 2 | 2 | 100.00 |" in md
    assert "| **Entity Layout** | 1 | 4 | **25.00** |" in md
    assert "| **Text Generation** | 0 | 4 | **0.00** |" in md
    # Style's sub-dimension is the primary itself: not repeated as a sub row
    assert md.count("Style |") == 1
    # themes: Design has Style 100 and Text 0 over 2 + 4 judgements, no Attribute/Layout test points
    assert "| Design | 33.33 | 100.00 | – | – | 0.00 | 6 |" in md
    assert "| theme | Overall | Style | Attribute | Layout | Text | judgements |" in md
    assert "> **Warning:** 1 of 4 images failed judgement after 11 attempts each" in md
    assert "| `1_1.png` | a sign that says 'open' | 11 | the answer has no <score> tag |" in md
    assert "- passed [`0_0.png`](images/0_0.png): a red <b>circle</b> & a square" in md


def test_no_failure_warning_without_failed_images(tmp_path):
    run = make_run(tmp_path / "run", failed=0)
    write_run_report(run)
    assert "Warning" not in _read(os.path.join(run, "report.md"))
    page = _read(os.path.join(run, "report.html"))
    assert 'class="warning"' not in page and "Failed judgements" not in page


def test_html_report_is_self_contained_and_complete(tmp_path):
    run = make_run(tmp_path / "run", failed=1, image_side=512)
    write_run_report(run)
    page = _read(os.path.join(run, "report.html"))
    assert not EXTERNAL_RESOURCE.search(page)
    assert "<link" not in page and "@import" not in page
    for primary in PRIMARY_ORDER:
        assert f'<td class="name">{primary}</td>' in page
    assert "Overall (%)" in page and ">43.75<" in page
    assert page.count("data:image/svg+xml;base64,") == 1  # the chart
    # 3 Style examples embedded as downscaled JPEG thumbnails (512 px -> 256 px)
    assert page.count("data:image/jpeg;base64,") == 3
    # user strings are escaped: the prompt's tags are text, not markup
    assert "a red &lt;b&gt;circle&lt;/b&gt; &amp; a square" in page and "<b>circle</b>" not in page
    assert 'class="warning"' in page and "the answer has no &lt;score&gt; tag" in page
    # the verdicts from judgements.jsonl mark each test point of 0_0.png
    assert "✓ Style" in page and "✗ Attribute - Color" in page


def test_report_small_images_stay_lossless_and_missing_images_are_marked(tmp_path):
    run = make_run(tmp_path / "run", image_side=48)
    os.remove(os.path.join(run, "images", "1_0.png"))
    write_run_report(run)
    page = _read(os.path.join(run, "report.html"))
    assert page.count("data:image/png;base64,") == 2
    assert "image not found" in page


def test_read_run_result_errors(tmp_path):
    with pytest.raises(DataError, match="has no unigenbench.json"):
        read_run_result(str(tmp_path))
    (tmp_path / "unigenbench.json").write_text("{not json")
    with pytest.raises(DataError, match="unigenbench.json is not valid JSON"):
        read_run_result(str(tmp_path))
    (tmp_path / "unigenbench.json").write_text(json.dumps({"schema": 2}))
    with pytest.raises(DataError, match="has schema 2, not 1"):
        read_run_result(str(tmp_path))
    (tmp_path / "unigenbench.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="holds a JSON list, not the object"):
        read_run_result(str(tmp_path))
    run = make_run(tmp_path / "run")
    result = json.loads(_read(os.path.join(run, "unigenbench.json")))
    del result["primary"]["Attribute"]
    with open(os.path.join(run, "unigenbench.json"), "w") as handle:
        json.dump(result, handle)
    with pytest.raises(DataError, match=r"field primary\['Attribute'\] must hold"):
        read_run_result(run)


def test_corrupt_judgements_line_is_named(tmp_path):
    run = make_run(tmp_path / "run")
    with open(os.path.join(run, "judgements.jsonl"), "a") as handle:
        handle.write("{broken\n")
    with pytest.raises(UserError, match="judgements.jsonl:2: invalid JSON"):
        write_run_report(run)


# ------------------------------------------------------------------------------------ leaderboard
def _three_runs(tmp_path, **overrides):
    # Style passed 4, 1, 2 of 4 -> Overall (100+75+25+0)/4 = 50.00, (25+75+25+0)/4 = 31.25, (50+...)/4 = 37.50
    return [make_run(tmp_path / name, label=label, scale={"Style": passed}, **overrides)
            for name, label, passed in (("a", "runs/a", 4), ("b", "runs/b", 1), ("c", "runs/c", 2))]


def test_leaderboard_order_and_columns(tmp_path):
    runs = _three_runs(tmp_path)
    out = tmp_path / "board"
    build_leaderboard(runs, str(out))
    md = _read(out / "leaderboard.md")
    header = "| # | model | Overall | Style | Attribute | Layout | Text | judgements | failed images |"
    assert header in md
    rows = [line for line in md.splitlines() if re.match(r"\| \d+ \|", line)]
    assert rows == ["| 1 | runs/a | **50.00** | 100.00 | 75.00 | 25.00 | 0.00 | 16 | 0 |",
                    "| 2 | runs/c | **37.50** | 50.00 | 75.00 | 25.00 | 0.00 | 16 | 0 |",
                    "| 3 | runs/b | **31.25** | 25.00 | 75.00 | 25.00 | 0.00 | 16 | 0 |"]
    # sub-dimension detail: one table per primary with sub-dimensions, upstream short labels
    assert "### Attribute\n\n| model | Overall | Color | Shape |" in md
    assert "| runs/a | 75.00 | 50.00 | 100.00 |" in md
    assert "### Entity Layout\n\n| model | Overall | 2D |" in md
    assert "### Style" not in md
    board = json.loads(_read(out / "leaderboard.json"))
    assert [row["label"] for row in board["rows"]] == ["runs/a", "runs/c", "runs/b"]
    assert [row["overall"] for row in board["rows"]] == [50.0, 37.5, 31.25]
    assert board["primary_order"] == PRIMARY_ORDER and board["mixed"] is False


def test_leaderboard_html_sortable_and_self_contained(tmp_path):
    out = tmp_path / "board"
    build_leaderboard(_three_runs(tmp_path), str(out))
    page = _read(out / "leaderboard.html")
    assert not EXTERNAL_RESOURCE.search(page)
    assert '<table class="sortable">' in page and "<script>" in page and "addEventListener" in page
    headers = re.findall(r"<th[^>]*>([^<]*)</th>", page.split("</thead>")[0])
    assert headers == ["#", "model", "Overall", "Style", "Attribute", "Layout", "Text", "judgements", "failed images"]
    assert page.index(">runs/a<") < page.index(">runs/c<") < page.index(">runs/b<")
    assert 'data-value="50.0"' in page


def test_leaderboard_refuses_mixed_judges_unless_asked(tmp_path):
    a = make_run(tmp_path / "a", label="runs/a", judge="openai:gemini-2.5-pro@http://host/v1")
    b = make_run(tmp_path / "b", label="runs/b", judge="transformers:/models/qwen")
    with pytest.raises(UsageError) as error:
        build_leaderboard([a, b], str(tmp_path / "board"))
    message = str(error.value)
    assert a in message and b in message and "judge" in message and "--allow-mixed" in message
    assert not (tmp_path / "board").exists()
    build_leaderboard([a, b], str(tmp_path / "board"), allow_mixed=True)
    page = _read(tmp_path / "board" / "leaderboard.html")
    assert "transformers:/models/qwen" in page and "openai:gemini-2.5-pro@http://host/v1" in page
    assert json.loads(_read(tmp_path / "board" / "leaderboard.json"))["mixed"] is True


def test_leaderboard_refuses_mixed_categories_and_benchmarks(tmp_path):
    a = make_run(tmp_path / "a", category="en")
    b = make_run(tmp_path / "b", category="zh")
    with pytest.raises(UsageError, match="category 'en' vs 'zh'"):
        build_leaderboard([a, b], str(tmp_path / "board"))
    c = make_run(tmp_path / "c", benchmark="toy", category="en")
    with pytest.raises(UsageError, match="benchmark 'unigenbench' vs 'toy'"):
        build_leaderboard([a, c], str(tmp_path / "board"))


def test_leaderboard_input_errors(tmp_path):
    with pytest.raises(UsageError, match="at least one run folder"):
        build_leaderboard([], str(tmp_path / "board"))
    run = make_run(tmp_path / "a")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=f"{re.escape(str(empty))} has no unigenbench.json"):
        build_leaderboard([run, str(empty)], str(tmp_path / "board"))
    (empty / "unigenbench.json").write_text("[1, 2")
    with pytest.raises(DataError, match="unigenbench.json is not valid JSON"):
        build_leaderboard([run, str(empty)], str(tmp_path / "board"))
    with pytest.raises(UsageError, match="is given twice"):
        build_leaderboard([run, run + "/"], str(tmp_path / "board"))


def test_leaderboard_disambiguates_repeated_labels_by_folder(tmp_path):
    a = make_run(tmp_path / "first", label="runs/same", scale={"Style": 4})
    b = make_run(tmp_path / "second", label="runs/same", scale={"Style": 0})
    c = make_run(tmp_path / "x" / "second", label="runs/same", scale={"Style": 2})
    build_leaderboard([a, b, c], str(tmp_path / "board"))
    labels = [row["label"] for row in json.loads(_read(tmp_path / "board" / "leaderboard.json"))["rows"]]
    assert labels == ["runs/same (first)", f"runs/same ({c})", f"runs/same ({b})"]


@pytest.mark.parametrize("name, label", [
    ("Attribute - Quantity", "Quantity"),
    ("Action - Full-body (Character/Anthropomorphic)", "Full Body"),
    ("Action - Non-contact Interaction", "Non Contact"),
    ("Entity Layout - Three-Dimensional Space", "3D"),
    ("Relationship - Composition", "Composition"),
])
def test_sub_labels(name, label):
    assert sub_label(name) == label


def test_run_without_overall_reports_dashes_and_ranks_last(tmp_path):
    """A primary with no test point (total 0) has no score, so the run has no Overall (contract)."""
    empty = make_run(tmp_path / "empty", label="runs/empty")
    path = os.path.join(empty, "unigenbench.json")
    result = json.loads(_read(path))
    result["sub"]["Text Generation"] = {"primary": "Text Generation", "passed": 0, "total": 0, "score": None}
    result["primary"]["Text Generation"] = {"passed": 0, "total": 0, "score": None}
    result["overall"] = None
    with open(path, "w") as handle:
        json.dump(result, handle)
    write_run_report(empty)
    md = _read(os.path.join(empty, "report.md"))
    assert "**Overall: –**" in md and "| **Text Generation** | 0 | 0 | **–** |" in md
    build_leaderboard([empty, make_run(tmp_path / "full", label="runs/full")], str(tmp_path / "board"))
    rows = json.loads(_read(tmp_path / "board" / "leaderboard.json"))["rows"]
    assert [(row["label"], row["overall"]) for row in rows] == [("runs/full", 43.75), ("runs/empty", None)]
