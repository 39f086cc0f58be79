"""UniGenBench evaluator: the prompt loader, the judge prompt, the answer parser, retries and failure
accounting, the aggregation against published numbers, and whole runs with fake judges."""

import ast
import csv
import io
import json
import os
import re
import shutil

import pytest
from PIL import Image

from diffalign.benchmarks.bench_judges import JudgeTask, PromptedJudge
from diffalign.benchmarks.unigenbench_data import (
    PRIMARY_ORDER, SUB_DIMENSIONS, THEMES, BenchPrompt, load_prompts, parse_sub_dims, primary_of,
)
from diffalign.benchmarks.unigenbench_parse import AnswerParseError, parse_judge_answer
from diffalign.benchmarks.unigenbench_prompt import build_judge_prompt
from diffalign.benchmarks.unigenbench_run import BenchSettings, run_bench
from diffalign.benchmarks.unigenbench_scores import JudgedImage, aggregate, overall_score
from diffalign.data.errors import DataError
from diffalign.errors import UsageError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "..", "shared", "data", "unigenbench")
CATEGORIES = ("en", "en_long", "zh", "zh_long")

pytestmark = pytest.mark.skipif(not os.path.isdir(DATA), reason=f"UniGenBench prompt files not found at {DATA}")


@pytest.fixture(scope="module")
def prompts():
    return {category: load_prompts(DATA, category) for category in CATEGORIES}


# ------------------------------------------------------------------------------------------ loader
def test_every_file_has_600_contiguous_rows(prompts):
    for category in CATEGORIES:
        assert [item.index for item in prompts[category]] == list(range(600)), category


def test_en_long_row_509_is_repaired():
    with open(os.path.join(DATA, "test_prompts_en_long.csv"), encoding="utf-8", newline="") as handle:
        cell = list(csv.DictReader(handle))[509]["sub_dims_en"]
    with pytest.raises(json.JSONDecodeError):
        json.loads(cell)
    value, repaired = parse_sub_dims(cell)
    assert repaired
    assert value["Testpoints"] == ["Action - Full-body (Character/Anthropomorphic)", "Grammar - Negation", "Attribute - Color",
                                   "Attribute - Material", "Attribute - Expression"]
    assert parse_sub_dims('{"Testpoints": ["Style"]}') == ({"Testpoints": ["Style"]}, False)


def test_en_long_row_509_matches_zh_long(prompts):
    en, zh = prompts["en_long"][509], prompts["zh_long"][509]
    assert len(en.testpoints) == len(en.descriptions) == 5
    assert en.testpoints == zh.testpoints


def test_english_and_chinese_name_the_same_dimensions(prompts):
    assert len(SUB_DIMENSIONS) == 27 and len(set(SUB_DIMENSIONS.values())) == 27
    assert {primary_of(name) for name in SUB_DIMENSIONS} == set(PRIMARY_ORDER)
    for short_or_long in ("", "_long"):
        for en, zh in zip(prompts["en" + short_or_long], prompts["zh" + short_or_long]):
            assert (en.testpoints, en.theme, en.subtheme) == (zh.testpoints, zh.theme, zh.subtheme), en.index
            assert len(zh.descriptions) == len(zh.testpoints)
    seen = {name for category in CATEGORIES for item in prompts[category] for name in item.testpoints}
    assert seen == set(SUB_DIMENSIONS)


def test_themes_are_normalised_to_5_themes_and_20_subthemes(prompts):
    items = prompts["en"]
    themes = {}
    for item in items:
        themes.setdefault(item.theme, {}).setdefault(item.subtheme, 0)
        themes[item.theme][item.subtheme] += 1
    assert {theme: sum(counts.values()) for theme, counts in themes.items()} == {
        "Art": 157, "Film & Story": 150, "Illustration": 113, "Design": 110, "Creative Divergence": 70}
    assert sum(len(counts) for counts in themes.values()) == 20 == sum(len(subthemes) for subthemes in THEMES.values())
    assert themes == {
        "Art": {"Graphic Art": 40, "Photography Art": 43, "Sculptural Art": 57, "Other": 17},
        "Film & Story": {"Animation": 51, "Realism": 52, "Sci-Fi": 47},
        "Illustration": {"Content Illustration": 70, "Copywriting Illustration": 43},
        "Design": {"Advertising/E-commerce Design": 16, "Design Assets": 8, "Fashion Design": 15, "Game Design": 9,
                   "IP Design": 11, "Logo/Icon Design": 13, "Poster Design": 9, "Spatial Design": 13, "UI Design": 16},
        "Creative Divergence": {"Imaginative Thinking": 53, "Other": 17},
    }


def primary_totals(items):
    totals = dict.fromkeys(PRIMARY_ORDER, 0)
    for item in items:
        for name in item.testpoints:
            totals[primary_of(name)] += 1
    return totals


def test_counts_per_primary_dimension(prompts):
    # research/rewards_bench.md §3.3, in the order Style, WK, Attribute, Action, Relationship, Compound, Grammar, Layout, Logic, Text
    order = ("Style", "World Knowledge", "Attribute", "Action", "Relationship", "Compound", "Grammar", "Entity Layout",
             "Logical Reasoning", "Text Generation")
    short = dict(zip(order, (250, 158, 234, 263, 197, 194, 187, 134, 109, 87)))
    long = dict(zip(order, (301, 173, 1311, 622, 464, 343, 197, 315, 102, 92)))
    assert primary_totals(prompts["en"]) == primary_totals(prompts["zh"]) == short
    assert primary_totals(prompts["en_long"]) == primary_totals(prompts["zh_long"]) == long
    assert sum(short.values()) == 1813 and sum(long.values()) == 3920
    sub = {}
    for item in prompts["en"]:
        for name in item.testpoints:
            sub[name] = sub.get(name, 0) + 1
    assert sub["Attribute - Quantity"] == 36 and sub["Compound - Imagination"] == 98 and sub["Text Generation"] == 87


def write_csv(folder, name, rows, header=("index", "prompt_en", "sub_dims_en")):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def sub_dims(**changes):
    value = {"Primary Categories": "Art", "Secondary Categories": "Art-Graphic Art", "Subjects": "Animal",
             "Sentence Structure": "Descriptive", "Testpoints": ["Style"], "Testpoint Description": ["ink painting"]}
    value.update(changes)
    return json.dumps(value)


@pytest.mark.parametrize("rows, named", [
    ([(0, "a fox", sub_dims()), (2, "a cat", sub_dims())], "line 3: index must be 1"),
    ([(0, "a fox", sub_dims(Testpoints=["Style", "Colour"], **{"Testpoint Description": ["a", "b"]}))],
     "row 0 (line 2): unknown test point 'Colour'"),
    ([(0, "a fox", sub_dims(Testpoints=["Style", "World Knowledge"]))], "row 0 (line 2): sub_dims_en lists 2 Testpoints but 1"),
    ([(0, "a fox", "{not json")], "row 0 (line 2): sub_dims_en is not a JSON object"),
    ([(0, "a fox", sub_dims(**{"Primary Categories": "Poetry"}))], "unknown theme 'Poetry'"),
    ([(0, "a fox", sub_dims(**{"Secondary Categories": "UI Design"}))], "subtheme 'UI Design'"),
    ([(0, "", sub_dims())], "row 0 (line 2): prompt_en is empty"),
])
def test_malformed_rows_name_the_file_and_row(tmp_path, rows, named):
    write_csv(tmp_path, "test_prompts_en.csv", rows)
    with pytest.raises(DataError, match=re.escape(named)) as error:
        load_prompts(str(tmp_path), "en")
    assert "test_prompts_en.csv" in str(error.value)


def test_missing_files_and_categories(tmp_path):
    with pytest.raises(DataError, match="has no test_prompts_zh.csv, the prompt file of --category zh"):
        load_prompts(str(tmp_path), "zh")
    with pytest.raises(DataError, match="--category must be one of en, en_long, zh, zh_long"):
        load_prompts(DATA, "fr")
    write_csv(tmp_path, "test_prompts_en.csv", [(0, "a fox", sub_dims())], header=("index", "prompt", "sub_dims_en"))
    with pytest.raises(DataError, match="has no column 'prompt_en'"):
        load_prompts(str(tmp_path), "en")


# ---------------------------------------------------------------------------------- judge prompt
ITEM_EN = BenchPrompt(3, "Two pandas in spacesuits, in the style of ink painting.", ("Style", "Attribute - Quantity"),
                      ("ink painting", "two pandas"), "Creative Divergence", "Imaginative Thinking")
ITEM_ZH = BenchPrompt(3, "古典水墨画风格，两只穿着宇航服的熊猫。", ("Style", "Attribute - Quantity"), ("古典水墨画风格", "两只熊猫"),
                      "Creative Divergence", "Imaginative Thinking")

GOLDEN_EN = """You are a precise and objective image-description system. You are given the prompt an image was generated from, the generated image, and a list of checkpoints with explanations. Decide for every checkpoint whether the image meets it.

Step 1: The generation prompt is 「Two pandas in spacesuits, in the style of ink painting.」 and the checkpoints are ['Style', 'Attribute - Quantity'].
Checkpoints Defination:
「
Style: the image is in the named art, painting, photography or design style, or in the manner of the named artist
Attribute - Quantity: each counted entity appears exactly the named number of times, counts of three or more included
」
Checkpoints Description:
「
Style: ink painting
Attribute - Quantity: two pandas
」
Analyse the image against each checkpoint on its own.

Step 2: Score each checkpoint 1 if the image meets it and 0 if it does not.

Constraints:
1. Describe only what is directly visible in the image.
2. Do not interpret, speculate or invent a background story.
3. Leave out any detail you are not sure of.
4. Do not describe abstract entities or emotions.

Output format:
<description><prompt>the generation prompt</prompt><checkpoint>the checkpoint list</checkpoint><analysis>[analysis of checkpoint 1, analysis of checkpoint 2, ...]</analysis><score>[score of checkpoint 1, score of checkpoint 2, ...]</score></description>
Write the analyses and the scores as Python lists of exactly 2 items each, one per checkpoint in the order given: the analyses as quoted strings, the scores as the integers 0 or 1."""

GOLDEN_ZH = """你是一个精确、客观的图像描述系统。你会收到一段用于生成图像的提示词、据此生成的图像，以及一组附带说明的考点。请逐一判断图像是否满足每个考点。

第一步：生成提示词为「古典水墨画风格，两只穿着宇航服的熊猫。」，考点为 ['风格', '属性-数量']。
考点说明：
「
风格：图像呈现所指定的艺术、绘画、摄影或设计风格，或指定艺术家的画风
属性-数量：每种被计数的实体数量准确，三个及以上的数量同样要准确
」
考点描述说明：
「
风格：古典水墨画风格
属性-数量：两只熊猫
」
请针对每个考点单独分析图像。

第二步：图像满足某个考点记 1 分，不满足记 0 分。

约束：
1. 只描述图像中直接可见的内容。
2. 不做解读或推测，也不编造背景故事。
3. 不确定的细节不要写。
4. 不描述抽象的实体或情绪。

输出格式：
<description><prompt>生成提示词</prompt><checkpoint>考点列表</checkpoint><analysis>[考点1的分析, 考点2的分析, ...]</analysis><score>[考点1的得分, 考点2的得分, ...]</score></description>
分析与得分都写成 Python 列表，各 2 项，按所给考点的顺序一一对应：分析为带引号的字符串，得分为整数 0 或 1。"""


def test_judge_prompt_golden_english():
    assert build_judge_prompt(ITEM_EN, "en") == GOLDEN_EN


def test_judge_prompt_golden_chinese():
    assert build_judge_prompt(ITEM_ZH, "zh") == GOLDEN_ZH


def test_judge_prompt_has_a_definition_for_every_dimension(prompts):
    from diffalign.benchmarks.unigenbench_prompt import DEFINITIONS_EN, DEFINITIONS_ZH

    assert set(DEFINITIONS_EN) == set(SUB_DIMENSIONS) and set(DEFINITIONS_ZH) == set(SUB_DIMENSIONS.values())
    text = build_judge_prompt(prompts["zh_long"][509], "zh")
    assert "语法-否定：既没有铺设任何报纸或塑料布用以保护" in text and text.count("属性-颜色：") == 2
    with pytest.raises(ValueError, match="no definition for checkpoint"):
        build_judge_prompt(ITEM_EN, "en", definitions={"Style": "x"})


# ------------------------------------------------------------------------------------------ parser
def answer(analysis, scores) -> str:
    return (f"<description><prompt>p</prompt><checkpoint>[...]</checkpoint><analysis>{analysis}</analysis>"
            f"<score>{scores}</score></description>")


def test_parser_reads_a_valid_answer():
    text = answer("['the style is ink', \"one panda, not two\"]", "[1, 0]")
    assert parse_judge_answer(text, 2) == [1, 0]
    multiline = "thinking...\n<analysis>\n[\n'a',\n'b'\n]\n</analysis>\n<score>\n[0,\n 1]\n</score>"
    assert parse_judge_answer(multiline, 2) == [0, 1]


def test_parser_takes_the_last_block():
    echo = "Format: <analysis>[...]</analysis><score>[...]</score>. Answer: "
    assert parse_judge_answer(echo + answer("['a']", "[1]"), 1) == [1]


@pytest.mark.parametrize("text, count, reason", [
    ("<score>[1]</score>", 1, "no <analysis>...</analysis> block"),
    ("<analysis>['a']</analysis>", 1, "no <score>...</score> block"),
    ("", 1, "no <analysis>"),
    (answer("['a']", "[1, 0"), 1, "<score> block is not a Python list literal"),
    (answer("[a, b]", "[1]"), 1, "<analysis> block is not a Python list literal"),
    (answer("['a']", "1"), 1, "<score> block is a int, not a list"),
    (answer("['a', 'b']", "[1]"), 1, "<analysis> list has 2 item(s) for 1 test point(s)"),
    (answer("['a']", "[1, 1]"), 1, "<score> list has 2 item(s) for 1 test point(s)"),
    (answer("['a']", "[1]"), 2, "<analysis> list has 1 item(s) for 2 test point(s)"),
    (answer("['a']", "[2]"), 1, "holds 2; each score must be 0 or 1"),
    (answer("['a']", "[0.5]"), 1, "holds 0.5"),
    (answer("['a']", "[True]"), 1, "holds True"),
    (answer("['a']", "['yes']"), 1, "holds 'yes'"),
    (answer("['a']", "[None]"), 1, "holds None"),
])
def test_parser_rejects_malformed_answers(text, count, reason):
    with pytest.raises(AnswerParseError, match=re.escape(reason)):
        parse_judge_answer(text, count)


def test_quoted_digits_count_as_their_verdict():
    # upstream compares with the integer 1, so '1' silently fails there; we read it as the pass it says
    assert parse_judge_answer(answer("['a', 'b', 'c']", "['1', '0', ' 1 ']"), 3) == [1, 0, 1]


# ------------------------------------------------------------------------------------ fake judges
def vlm_answer(names, scores) -> str:
    return answer(repr([f"about {name}" for name in names]), repr(list(scores)))


def checkpoints_in(question: str) -> list[str]:
    """The checkpoint list a judge prompt asks about (as a VLM would read it)."""
    return ast.literal_eval(re.search(r"the checkpoints are (\[.*?\])\.\n", question).group(1))


class FakeVLM(PromptedJudge):
    """Answers each question like a VLM that passes the test points ``verdict(name)`` says; ``script``
    (question -> list of answers) overrides the first answers to a question, one per attempt."""

    spec = "fake:vlm"

    def __init__(self, verdict=lambda name: True, max_retries=10, script=None, workers=1):
        super().__init__(max_retries)
        self.verdict, self.script, self.workers, self.calls = verdict, dict(script or {}), workers, 0

    def ask(self, requests):
        answers = []
        for images, question in requests:
            self.calls += 1
            assert len(images) == 1 and isinstance(images[0], Image.Image)
            queued = self.script.get(question)
            if queued:
                answers.append(queued.pop(0))
                continue
            names = checkpoints_in(question)
            answers.append(vlm_answer(names, [int(self.verdict(name)) for name in names]))
        return answers


def one_pixel_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def en_images(tmp_path_factory):
    """A folder of the 2400 images of the EN short category (1x1 PNGs), upstream's layout."""
    folder = tmp_path_factory.mktemp("eval_data") / "en" / "some-model"
    folder.mkdir(parents=True)
    data = one_pixel_png()
    for index in range(600):
        for j in range(4):
            (folder / f"{index}_{j}.png").write_bytes(data)
    return str(folder)


def bench(out, images, judge, **options):
    settings = BenchSettings(out=str(out), judge=judge.spec, prompts_dir=DATA, images=images, progress=False, **options)
    return run_bench(settings, judge=judge, write_report=False)


def test_retries_then_counts_the_failures(tmp_path):
    judge = FakeVLM(max_retries=2, script={
        "q-first": [vlm_answer(["Style"], [1])],
        "q-twice": ["no tags at all", answer("['a']", "[1, 1]"), vlm_answer(["Style"], [0])],
        "q-never": ["nonsense"] * 3,
        "q-request": [RuntimeError("HTTP 503 after 5 attempts"), vlm_answer(["Style"], [1])],
    })
    item = BenchPrompt(0, "p", ("Style",), ("ink",), "Art", "Other")
    (tmp_path / "image.png").write_bytes(one_pixel_png())
    (tmp_path / "broken.png").write_bytes(b"not a png")
    tasks = [JudgeTask(f"{name}.png", str(tmp_path / "image.png"), item, f"q-{name}") for name in ("first", "twice", "never", "request")]
    tasks.append(JudgeTask("broken.png", str(tmp_path / "broken.png"), item, "q-broken"))
    results = dict(zip((task.image for task in tasks), judge.judge_batch(tasks)))
    assert (results["first.png"].scores, results["first.png"].attempts, results["first.png"].error) == ([1], 1, None)
    assert (results["twice.png"].scores, results["twice.png"].attempts, results["twice.png"].error) == ([0], 3, None)
    never = results["never.png"]
    assert (never.scores, never.attempts, never.raw) == (None, 3, "nonsense")
    assert never.error == "the answer has no <analysis>...</analysis> block"
    assert (results["request.png"].scores, results["request.png"].attempts) == ([1], 2)
    broken = results["broken.png"]
    assert broken.scores is None and broken.attempts == 0 and broken.error.startswith("cannot read the image")
    assert judge.calls == 1 + 3 + 3 + 2  # the unreadable image is never sent


# -------------------------------------------------------------------------------------- aggregation
SDXL_ATTRIBUTE = {  # sub-dimension: (accuracy published for SDXL, EN-short test points x 4 images)
    "Attribute - Quantity": (0.4444, 144), "Attribute - Expression": (0.25, 156), "Attribute - Material": (0.5283, 212),
    "Attribute - Size": (0.4444, 144), "Attribute - Shape": (0.3375, 160), "Attribute - Color": (0.6833, 120),
}


def judged_with(passes: dict[str, tuple[int, int]], theme: str = "Art") -> list[JudgedImage]:
    """One judged image per test-point judgement: ``passes[name] = (passed, total)``."""
    images = []
    for name, (passed, total) in passes.items():
        for index in range(total):
            images.append(JudgedImage(f"{len(images)}_0.png", len(images), theme, (name,), (int(index < passed),)))
    return images


def test_primary_score_is_the_micro_average_sdxl_attribute():
    passes = {name: (round(accuracy * total), total) for name, (accuracy, total) in SDXL_ATTRIBUTE.items()}
    assert passes["Attribute - Quantity"] == (64, 144) and passes["Attribute - Color"] == (82, 120)
    scores = aggregate(judged_with(passes), PRIMARY_ORDER, tuple(SUB_DIMENSIONS), tuple(THEMES))
    assert scores["primary"]["Attribute"] == {"passed": 415, "total": 936, "score": 44.34}
    assert [scores["sub"][name]["score"] for name in SDXL_ATTRIBUTE] == [44.44, 25.0, 52.83, 44.44, 33.75, 68.33]
    assert scores["sub"]["Attribute - Size"]["primary"] == "Attribute"
    mean_of_subs = sum(scores["sub"][name]["score"] for name in SDXL_ATTRIBUTE) / 6
    assert round(mean_of_subs, 2) == 44.80  # what a macro average would have printed
    assert scores["overall"] is None  # the other primaries have no judgement
    assert scores["primary"]["Style"] == {"passed": 0, "total": 0, "score": None}
    assert scores["themes"]["Art"]["primary"]["Attribute"]["score"] == 44.34 and scores["themes"]["Design"]["overall"] is None


def test_overall_is_the_mean_of_the_primaries_flux():
    flux = (83.90, 88.92, 67.84, 62.17, 67.26, 47.04, 60.96, 71.83, 30.91, 32.18)  # published FLUX.1-dev row
    assert overall_score(flux) == 61.30
    assert overall_score([*flux[:9], None]) is None and overall_score([]) is None
    # the same through the aggregator, from counts whose primaries are those percentages
    counts = dict(zip(PRIMARY_ORDER, ((839, 1000), (2223, 2500), (6784, 10000), (6217, 10000), (6726, 10000), (4704, 10000),
                                      (6096, 10000), (7183, 10000), (3091, 10000), (3218, 10000))))
    first_sub = {primary: next(name for name in SUB_DIMENSIONS if primary_of(name) == primary) for primary in PRIMARY_ORDER}
    scores = aggregate(judged_with({first_sub[p]: counts[p] for p in PRIMARY_ORDER}), PRIMARY_ORDER, tuple(SUB_DIMENSIONS))
    assert [scores["primary"][p]["score"] for p in PRIMARY_ORDER] == [83.9, 88.92, 67.84, 62.17, 67.26, 47.04, 60.96, 71.83,
                                                                       30.91, 32.18]
    assert scores["overall"] == 61.30


def test_unknown_test_points_are_refused():
    with pytest.raises(ValueError, match="'Colour' of 0_0.png is not a sub-dimension"):
        aggregate([JudgedImage("0_0.png", 0, "Art", ("Colour",), (1,))], PRIMARY_ORDER, tuple(SUB_DIMENSIONS))


# ------------------------------------------------------------------------------------- whole runs
def test_all_pass_judge_scores_100(tmp_path, en_images):
    results = bench(tmp_path / "run", en_images, FakeVLM(lambda name: True, workers=4))
    assert results["overall"] == 100.0
    assert all(block["score"] == 100.0 for block in results["primary"].values())
    assert all(block["score"] == 100.0 for block in results["sub"].values())
    assert results["primary"]["Style"] == {"passed": 1000, "total": 1000, "score": 100.0}
    assert results["sub"]["Attribute - Quantity"] == {"primary": "Attribute", "passed": 144, "total": 144, "score": 100.0}
    assert results["counts"] == {"prompts": 600, "images": 2400, "judged_images": 2400, "failed_images": 0,
                                 "testpoint_judgements": 4 * 1813}
    assert list(results["themes"]) == list(THEMES) and all(theme["overall"] == 100.0 for theme in results["themes"].values())
    assert results["images_dir"] == os.path.abspath(en_images) and results["model"]["label"] == "some-model"
    assert results["judge"] == "fake:vlm" and results["failed_images"] == []
    with_style = [item.index for item in load_prompts(DATA, "en") if "Style" in item.testpoints][:4]
    assert results["examples"]["Style"] == {"passed": [f"{index}_0.png" for index in with_style], "failed": []}
    shown = {int(name.split("_")[0]) for kinds in results["examples"].values() for names in kinds.values() for name in names}
    assert set(results["prompts"]) == {str(index) for index in shown}
    with open(tmp_path / "run" / "unigenbench.json", encoding="utf-8") as handle:
        assert json.load(handle) == results


def test_all_fail_judge_scores_0(tmp_path, en_images):
    results = bench(tmp_path / "run", en_images, FakeVLM(lambda name: False))
    assert results["overall"] == 0.0
    assert results["primary"]["Text Generation"] == {"passed": 0, "total": 4 * 87, "score": 0.0}
    assert results["examples"]["Style"]["passed"] == [] and len(results["examples"]["Style"]["failed"]) == 4


def test_style_only_judge(tmp_path, en_images):
    results = bench(tmp_path / "run", en_images, FakeVLM(lambda name: name == "Style"))
    assert results["primary"]["Style"]["score"] == 100.0
    assert [results["primary"][name]["score"] for name in PRIMARY_ORDER[1:]] == [0.0] * 9
    assert results["overall"] == 10.0


def test_failed_images_are_counted_listed_and_left_out(tmp_path, en_images):
    items = load_prompts(DATA, "en")
    question = build_judge_prompt(items[0], "en")
    judge = FakeVLM(max_retries=1, script={question: ["<score>[1]</score>"] * 8})  # prompt 0: 4 images x 2 attempts, no verdict
    results = bench(tmp_path / "run", en_images, judge)
    assert results["counts"]["judged_images"] == 2396 and results["counts"]["failed_images"] == 4
    assert results["counts"]["testpoint_judgements"] == 4 * 1813 - 4 * len(items[0].testpoints)
    assert results["failed_images"][0] == {"image": "0_0.png", "prompt_index": 0, "attempts": 2,
                                           "error": "the answer has no <analysis>...</analysis> block"}
    assert results["primary"]["Style"] == {"passed": 996, "total": 996, "score": 100.0}  # prompt 0 tests Style: left out
    assert results["prompts"]["0"] == items[0].prompt
    rows = [json.loads(line) for line in open(tmp_path / "run" / "judgements.jsonl", encoding="utf-8")]
    assert len(rows) == 2400 and sum(row["scores"] is None for row in rows) == 4


def test_a_rerun_resumes_and_refuses_other_settings(tmp_path, en_images):
    out = tmp_path / "run"
    bench(out, en_images, FakeVLM(), limit=5)
    judge = FakeVLM()
    results = bench(out, en_images, judge, limit=5)
    assert judge.calls == 0 and results["counts"]["judged_images"] == 20
    results = bench(out, en_images, judge, limit=6)  # more prompts only add judgements
    assert judge.calls == 4 and results["counts"]["prompts"] == 6 and results["settings"]["limit"] == 6
    other = FakeVLM()
    other.spec = "fake:other"
    with pytest.raises(UsageError, match="holds a run made with --judge fake:vlm, not fake:other as now: give another --out"):
        bench(out, en_images, other, limit=6)
    with pytest.raises(UsageError, match="--category en, not en_long"):
        bench(out, en_images, FakeVLM(), limit=6, category="en_long")


def test_a_folder_without_results_takes_new_settings(tmp_path, en_images):
    out = tmp_path / "run"
    refused = FakeVLM()
    refused.judge_batch = lambda tasks: (_ for _ in ()).throw(UsageError("the endpoint refused the request"))
    with pytest.raises(UsageError, match="refused"):
        bench(out, en_images, refused, limit=1)
    assert (out / "bench_settings.json").is_file() and (out / "judgements.jsonl").read_text() == ""
    fixed = FakeVLM()
    fixed.spec = "fake:fixed"
    assert bench(out, en_images, fixed, limit=1)["judge"] == "fake:fixed"


def test_a_killed_run_leaves_a_readable_folder(tmp_path, en_images):
    out = tmp_path / "run"
    bench(out, en_images, FakeVLM(), limit=2)
    path = out / "judgements.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][:20], encoding="utf-8")  # the last row cut off mid-write
    judge = FakeVLM()
    results = bench(out, en_images, judge, limit=2)
    assert judge.calls == 1 and results["counts"]["judged_images"] == 8
    assert len(path.read_text(encoding="utf-8").splitlines()) == 8


def test_retry_failed_judges_the_failures_again(tmp_path, en_images):
    out = tmp_path / "run"
    question = build_judge_prompt(load_prompts(DATA, "en")[1], "en")
    bench(out, en_images, FakeVLM(max_retries=0, script={question: ["?"] * 4}), limit=2)
    judge = FakeVLM()
    assert bench(out, en_images, judge, limit=2)["counts"]["failed_images"] == 4 and judge.calls == 0
    results = bench(out, en_images, judge, limit=2, retry_failed=True)
    assert judge.calls == 4 and results["counts"]["failed_images"] == 0


def test_missing_images_are_an_error(tmp_path, en_images):
    partial = tmp_path / "partial"
    shutil.copytree(en_images, partial)
    os.remove(partial / "3_2.png")
    with pytest.raises(DataError, match=r"lacks 1 of the 2400 images to judge, e.g. 3_2.png"):
        bench(tmp_path / "run", str(partial), FakeVLM())
    assert bench(tmp_path / "run", str(partial), FakeVLM(), limit=3)["counts"]["images"] == 12
