"""UniGenBench prompt files: 600 prompts per category, each with the test points an image must meet.

The benchmark (Pref-GRPO, arXiv:2508.20751; UniGenBench++, arXiv:2510.18701; data CC BY 4.0 from
github.com/CodeGoat24/UniGenBench ``data/``; spec ``research/rewards_bench.md`` §3.1-3.3) ships four
CSV files with the columns ``index``, ``prompt_{en,zh}`` and ``sub_dims_{en,zh}``, a JSON object per
row. ``load_prompts(prompts_dir, category)`` reads one of them into ``BenchPrompt`` rows:

- **test points** (``Testpoints`` / ``考点``) are the 27 sub-dimension names; Chinese names are mapped
  to the English ones (``SUB_DIMENSIONS``), so every category reports the same dimensions. The
  primary dimension of a test point is its name before the first ``-`` (``primary_of``).
- **themes** (``Primary Categories`` / ``一级垂类``) and **subthemes** (``Secondary Categories`` /
  ``二级垂类``) are normalised to the paper's 5 themes and 20 subthemes (``THEMES``): the raw labels
  mix spellings ("Art-Graphic Art" and "Graphic Art", "Mapping-Content Mapping" for Content
  Illustration, "Logo/icon design"), merged by ``SUBTHEME_ALIASES``.
- **the en_long repair**: in ``test_prompts_en_long.csv`` the row with index 509 lacks the comma
  between ``"Grammar - Negation"`` and ``"Attribute - Color"`` in its ``Testpoints`` list, so strict
  JSON parsing fails (upstream's evaluator would crash on it). ``parse_sub_dims`` repairs exactly this
  kind of defect, two string literals separated only by whitespace where JSON expects a comma, and
  nothing else; the repaired row has 5 test points like the Chinese long row 509. Any other
  malformed row is a ``DataError`` naming the file, the row and the field.

Every error names the file and the row (its ``index`` and its line in the file).
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass

from diffalign.data.errors import DataError

# category -> (file name, language)
CATEGORIES: dict[str, tuple[str, str]] = {
    "en": ("test_prompts_en.csv", "en"),
    "en_long": ("test_prompts_en_long.csv", "en"),
    "zh": ("test_prompts_zh.csv", "zh"),
    "zh_long": ("test_prompts_zh_long.csv", "zh"),
}
IMAGES_PER_PROMPT = 4  # images judged per prompt, named {index}_{j}.png for j = 0..3 (§3.4)

# The 10 primary dimensions in upstream's leaderboard-column order.
PRIMARY_ORDER = ("Style", "World Knowledge", "Attribute", "Action", "Relationship", "Logical Reasoning", "Grammar",
                 "Compound", "Entity Layout", "Text Generation")
PRIMARY_ZH = {"Style": "风格", "World Knowledge": "世界知识", "Attribute": "属性", "Action": "动作", "Relationship": "关系",
              "Logical Reasoning": "逻辑推理", "Grammar": "语法", "Compound": "复合考点", "Entity Layout": "实体布局",
              "Text Generation": "文本生成"}

# The 27 sub-dimensions (English name -> Chinese name), grouped by primary in PRIMARY_ORDER and, within
# one, in the order of upstream's detailed leaderboard (assets/leaderboard.png).
SUB_DIMENSIONS: dict[str, str] = {
    "Style": "风格",
    "World Knowledge": "世界知识",
    "Attribute - Quantity": "属性-数量",
    "Attribute - Expression": "属性-表情",
    "Attribute - Material": "属性-材质",
    "Attribute - Size": "属性-大小",
    "Attribute - Shape": "属性-形状",
    "Attribute - Color": "属性-颜色",
    "Action - Hand (Character/Anthropomorphic)": "动作-人物/拟人手部动作",
    "Action - Full-body (Character/Anthropomorphic)": "动作-人物/拟人全身动作",
    "Action - Animal": "动作-动物动作",
    "Action - Non-contact Interaction": "动作-实体间无接触互动",
    "Action - Contact Interaction": "动作-实体间有接触互动",
    "Action - State": "动作-状态",
    "Relationship - Composition": "关系-构成关系",
    "Relationship - Similarity": "关系-相似关系",
    "Relationship - Inclusion": "关系-包含关系",
    "Relationship - Comparison": "关系-比较关系",
    "Logical Reasoning": "逻辑推理",
    "Grammar - Pronoun Reference": "语法-代词指代",
    "Grammar - Consistency": "语法-统一性",
    "Grammar - Negation": "语法-否定",
    "Compound - Imagination": "复合考点-想象力",
    "Compound - Feature Matching": "复合考点-不同实体特征匹配",
    "Entity Layout - Two-Dimensional Space": "实体布局-二维空间",
    "Entity Layout - Three-Dimensional Space": "实体布局-三维空间",
    "Text Generation": "文本生成",
}
_SUB_FROM_ZH = {zh: en for en, zh in SUB_DIMENSIONS.items()}

# The 5 themes and their 20 subthemes (§3.2).
THEMES: dict[str, tuple[str, ...]] = {
    "Art": ("Graphic Art", "Photography Art", "Sculptural Art", "Other"),
    "Film & Story": ("Animation", "Realism", "Sci-Fi"),
    "Illustration": ("Content Illustration", "Copywriting Illustration"),
    "Design": ("Advertising/E-commerce Design", "Design Assets", "Fashion Design", "Game Design", "IP Design",
               "Logo/Icon Design", "Poster Design", "Spatial Design", "UI Design"),
    "Creative Divergence": ("Imaginative Thinking", "Other"),
}
THEME_ALIASES = {"art": "Art", "艺术": "Art", "film & story": "Film & Story", "影视故事": "Film & Story",
                 "illustration": "Illustration", "配图": "Illustration", "design": "Design", "设计": "Design",
                 "creative divergence": "Creative Divergence", "创意发散": "Creative Divergence"}
# raw subtheme label (lower case) -> subtheme; "Other" exists in two themes, told apart by the theme
SUBTHEME_ALIASES = {
    "graphic art": "Graphic Art", "art-graphic art": "Graphic Art", "平面艺术": "Graphic Art", "艺术-平面艺术": "Graphic Art",
    "photography art": "Photography Art", "art-photography art": "Photography Art", "摄影艺术": "Photography Art",
    "艺术-摄影艺术": "Photography Art",
    "sculptural art": "Sculptural Art", "art-three-dimensional art": "Sculptural Art", "立体艺术": "Sculptural Art",
    "艺术-立体艺术": "Sculptural Art",
    "other": "Other", "其他": "Other", "creative divergence-other": "Other", "创意发散-其他": "Other",
    "animation": "Animation", "动画": "Animation", "realism": "Realism", "写实": "Realism", "sci-fi": "Sci-Fi", "科幻": "Sci-Fi",
    "content illustration": "Content Illustration", "mapping-content mapping": "Content Illustration",
    "内容配图": "Content Illustration", "配图-内容配图": "Content Illustration",
    "copywriting illustration": "Copywriting Illustration", "文案配图": "Copywriting Illustration",
    "advertising/e-commerce design": "Advertising/E-commerce Design", "广告/电商设计": "Advertising/E-commerce Design",
    "design assets": "Design Assets", "设计素材": "Design Assets",
    "fashion design": "Fashion Design", "服装设计": "Fashion Design",
    "game design": "Game Design", "design-game design": "Game Design", "游戏设计": "Game Design", "设计-游戏设计": "Game Design",
    "ip design": "IP Design", "ip设计": "IP Design",
    "logo/icon design": "Logo/Icon Design", "logo/icon设计": "Logo/Icon Design",
    "poster design": "Poster Design", "海报设计": "Poster Design",
    "spatial design": "Spatial Design", "design-space design": "Spatial Design", "空间设计": "Spatial Design",
    "设计-空间设计": "Spatial Design",
    "ui design": "UI Design", "软件界面设计": "UI Design",
    "imaginative thinking": "Imaginative Thinking", "creativity divergence-imagination divergence": "Imaginative Thinking",
    "想象力发散": "Imaginative Thinking", "创意发散-想象力发散": "Imaginative Thinking",
}

# JSON keys of ``sub_dims_*`` per language: theme, subtheme, test points, test-point descriptions
_KEYS = {
    "en": ("Primary Categories", "Secondary Categories", "Testpoints", "Testpoint Description"),
    "zh": ("一级垂类", "二级垂类", "考点", "考点对应描述"),
}
# a closing quote, whitespace only, an opening quote: two list items that lost their comma
_MISSING_COMMA = re.compile(r'(?<=[^\\]")(\s+)(?=")')


@dataclass(frozen=True)
class BenchPrompt:
    """One benchmark prompt: ``index`` (the file's ``index`` column, which is also the image name's),
    the prompt text, its test points (English sub-dimension names) with the prompt excerpt each one
    checks (``descriptions``, same length), and its theme and subtheme (normalised)."""

    index: int
    prompt: str
    testpoints: tuple[str, ...]
    descriptions: tuple[str, ...]
    theme: str
    subtheme: str


def primary_of(testpoint: str) -> str:
    """The primary dimension of a sub-dimension: its name before the first ``-``, stripped
    (``"Action - Full-body (...)"`` -> ``"Action"``, ``"Style"`` -> ``"Style"``)."""
    return testpoint.split("-", 1)[0].strip()


def language_of(category: str) -> str:
    """``"en"`` or ``"zh"``: the language of a category's prompts and of its judge prompt."""
    check_category(category)
    return CATEGORIES[category][1]


def check_category(category: str) -> None:
    if category not in CATEGORIES:
        raise DataError(f"--category must be one of {', '.join(CATEGORIES)}, got {category!r}")


def parse_sub_dims(text: str) -> tuple[dict, bool]:
    """``(the JSON object of a sub_dims cell, whether it needed the missing-comma repair)``.

    Strict ``json.loads`` first; only when that fails, commas are inserted between string literals
    that are separated by whitespace alone (the en_long row 509 defect, module docstring) and the
    result is parsed again. A ``ValueError`` when neither parses to an object."""
    try:
        value, repaired = json.loads(text), False
    except json.JSONDecodeError as error:
        try:
            value, repaired = json.loads(_MISSING_COMMA.sub(r",\1", text)), True
        except json.JSONDecodeError:
            raise ValueError(f"invalid JSON ({error.msg} at character {error.pos})") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value, repaired


def load_prompts(prompts_dir: str, category: str) -> list[BenchPrompt]:
    """The 600 prompts of ``category`` from ``prompts_dir`` (a copy of upstream's ``data/`` folder), in
    index order; a ``DataError`` naming the file and row for anything that does not fit (module docstring)."""
    check_category(category)
    name, language = CATEGORIES[category]
    path = os.path.join(prompts_dir, name)
    if not os.path.isdir(prompts_dir):
        raise DataError(f"--prompts-dir {prompts_dir} is not a folder: give the folder holding UniGenBench's "
                        f"{', '.join(file for file, _ in CATEGORIES.values())} (upstream's data/ folder)")
    if not os.path.isfile(path):
        raise DataError(f"--prompts-dir {prompts_dir} has no {name}, the prompt file of --category {category} "
                        "(copy upstream's data/ folder from github.com/CodeGoat24/UniGenBench)")
    prompt_column, json_column = f"prompt_{language}", f"sub_dims_{language}"
    items = []
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in ("index", prompt_column, json_column) if column not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path} has no column {missing[0]!r}; a {category} file has the columns index, {prompt_column}, "
                            f"{json_column}")
        for row in reader:
            items.append(_read_row(row, path, reader.line_num, len(items), language, prompt_column, json_column))
    if not items:
        raise DataError(f"{path} has no rows")
    return items


def _read_row(row: dict, path: str, line: int, position: int, language: str, prompt_column: str,
              json_column: str) -> BenchPrompt:
    where = f"{path} line {line}"
    index_text = (row.get("index") or "").strip()
    if not index_text.isdigit() or int(index_text) != position:
        raise DataError(f"{where}: index must be {position} (the rows are numbered 0, 1, ... in order), got {index_text!r}")
    where = f"{path} row {position} (line {line})"
    prompt = (row.get(prompt_column) or "").strip()
    if not prompt:
        raise DataError(f"{where}: {prompt_column} is empty")
    try:
        sub_dims, _ = parse_sub_dims(row.get(json_column) or "")
    except ValueError as error:
        raise DataError(f"{where}: {json_column} is not a JSON object ({error})") from None
    theme_key, subtheme_key, testpoints_key, descriptions_key = _KEYS[language]
    fields = {}
    for key in _KEYS[language]:
        if key not in sub_dims:
            raise DataError(f"{where}: {json_column} has no key {key!r}")
        fields[key] = sub_dims[key]
    testpoints, descriptions = fields[testpoints_key], fields[descriptions_key]
    for key, values in ((testpoints_key, testpoints), (descriptions_key, descriptions)):
        if not isinstance(values, list) or not values or not all(isinstance(value, str) for value in values):
            raise DataError(f"{where}: {json_column}[{key!r}] must be a non-empty list of strings, got {values!r}")
    if len(testpoints) != len(descriptions):
        raise DataError(f"{where}: {json_column} lists {len(testpoints)} {testpoints_key} but {len(descriptions)} "
                        f"{descriptions_key}; they must pair up one to one")
    names = []
    for testpoint in testpoints:
        name = testpoint.strip() if language == "en" else _SUB_FROM_ZH.get(testpoint.strip().replace(" ", ""))
        if name not in SUB_DIMENSIONS:
            valid = SUB_DIMENSIONS if language == "en" else _SUB_FROM_ZH
            raise DataError(f"{where}: unknown test point {testpoint!r} in {json_column}[{testpoints_key!r}]; the "
                            f"{language.upper()} test points are {', '.join(valid)}")
        names.append(name)
    theme = THEME_ALIASES.get(str(fields[theme_key]).strip().lower())
    if theme is None:
        raise DataError(f"{where}: unknown theme {fields[theme_key]!r} in {json_column}[{theme_key!r}]; themes: "
                        f"{', '.join(THEMES)}")
    subtheme = SUBTHEME_ALIASES.get(str(fields[subtheme_key]).strip().lower())
    if subtheme not in THEMES[theme]:
        raise DataError(f"{where}: subtheme {fields[subtheme_key]!r} in {json_column}[{subtheme_key!r}] is not one of "
                        f"theme {theme!r}'s: {', '.join(THEMES[theme])}")
    return BenchPrompt(position, prompt, tuple(names), tuple(d.strip() for d in descriptions), theme, subtheme)
