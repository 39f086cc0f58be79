"""The UniGenBench judge prompt: one request per image, asking for a 0/1 verdict per test point.

The structure follows upstream's evaluator (github.com/CodeGoat24/UniGenBench ``eval/src/eval_common.py``,
described in ``research/rewards_bench.md`` §3.4); the wording and the definitions are diffalign's own.
In order:

1. the judge's role: a precise, objective image-description system given a generation prompt, the
   image and checkpoints with explanations, deciding for each checkpoint whether it is met;
2. **Step 1**: the prompt inside 「…」 and the checkpoint list as a Python list repr, then a block
   ``Checkpoints Defination:`` (upstream's spelling, kept: the fine-tuned judge models saw it) with one
   ``name: definition`` line per checkpoint inside 「…」, then a block ``Checkpoints Description:`` with
   one ``name: <the prompt excerpt it checks>`` line per checkpoint, and the instruction to analyse
   each checkpoint on its own;
3. **Step 2**: score 1 if the image meets a checkpoint, else 0;
4. constraints: only what is visible, no interpretation or back-story, no uncertain details, no
   abstract entities or emotions;
5. the answer format ``<description><prompt>…</prompt><checkpoint>…</checkpoint><analysis>[…]</analysis>
   <score>[…]</score></description>`` that ``unigenbench_parse`` reads.

The Chinese variant has the same structure with the headers ``考点说明`` and ``考点描述说明``, the
Chinese checkpoint names (``unigenbench_data.SUB_DIMENSIONS``) and Chinese definitions.
"""

from __future__ import annotations

from typing import Mapping, Optional

from diffalign.benchmarks.unigenbench_data import SUB_DIMENSIONS, BenchPrompt

# What each of the 27 sub-dimensions checks (research/rewards_bench.md §3.3), in our own words.
DEFINITIONS_EN: dict[str, str] = {
    "Style": "the image is in the named art, painting, photography or design style, or in the manner of the named artist",
    "World Knowledge": "real-world knowledge is shown correctly: named celebrities, landmarks and buildings, facts of a "
                       "field, internet slang and cultural references",
    "Attribute - Quantity": "each counted entity appears exactly the named number of times, counts of three or more included",
    "Attribute - Expression": "a face shows the named expression, one that conveys a clear emotion",
    "Attribute - Material": "the entities have the named material and texture",
    "Attribute - Size": "the entities have the named size, height, length, thickness or width, absolute or relative",
    "Attribute - Shape": "the entities have the named shapes",
    "Attribute - Color": "the entities have the named colours",
    "Action - Hand (Character/Anthropomorphic)": "a character's or anthropomorphic figure's hands perform the named action "
                                                 "and are well formed: no missing, extra or broken fingers",
    "Action - Full-body (Character/Anthropomorphic)": "a character or anthropomorphic figure performs the named "
                                                      "whole-body action or posture",
    "Action - Animal": "an animal performs the named action",
    "Action - Non-contact Interaction": "entities interact as named without touching, for example by looking at each other",
    "Action - Contact Interaction": "entities interact through the named physical contact",
    "Action - State": "an entity is in the named lasting state, usually expressed by a verb",
    "Relationship - Composition": "an entity is made up of the named other entities",
    "Relationship - Similarity": "entities resemble each other in the named way",
    "Relationship - Inclusion": "a container, possibly a flat one such as a plate or a screen, holds the named entity",
    "Relationship - Comparison": "two entities compare in an attribute as the prompt states",
    "Logical Reasoning": "the image shows what follows from reasoning about the prompt's intent, not only its literal words",
    "Grammar - Pronoun Reference": "each pronoun is resolved to the right entity, which carries the attribute or action "
                                   "the pronoun refers to",
    "Grammar - Consistency": "an attribute the prompt gives to several entities together is shown on every one of them",
    "Grammar - Negation": "what the prompt negates is absent from the image",
    "Compound - Imagination": "the image shows the named thing that cannot happen in real life",
    "Compound - Feature Matching": "several entities each carry their own named attributes, none swapped or merged",
    "Entity Layout - Two-Dimensional Space": "entities are arranged in the picture plane as named (left, right, above, "
                                             "below, ...)",
    "Entity Layout - Three-Dimensional Space": "entities are arranged in depth as named (in front of, behind, inside, ...)",
    "Text Generation": "the named text is rendered exactly, with no missing, wrong or extra words or characters",
}

DEFINITIONS_ZH: dict[str, str] = {
    "风格": "图像呈现所指定的艺术、绘画、摄影或设计风格，或指定艺术家的画风",
    "世界知识": "正确呈现现实世界的知识：指定的名人、地标与建筑、专业领域的事实、网络用语和文化典故",
    "属性-数量": "每种被计数的实体数量准确，三个及以上的数量同样要准确",
    "属性-表情": "面部呈现指定的表情，并传达出明确的情绪",
    "属性-材质": "实体具有指定的材质与质感",
    "属性-大小": "实体具有指定的大小、高矮、长短、粗细或宽窄（绝对或相对）",
    "属性-形状": "实体具有指定的形状",
    "属性-颜色": "实体具有指定的颜色",
    "动作-人物/拟人手部动作": "人物或拟人角色的手部做出指定的动作，且手部结构正确：没有缺失、多余或畸形的手指",
    "动作-人物/拟人全身动作": "人物或拟人角色做出指定的全身动作或姿态",
    "动作-动物动作": "动物做出指定的动作",
    "动作-实体间无接触互动": "实体之间以指定的方式进行无身体接触的互动，例如目光交流",
    "动作-实体间有接触互动": "实体之间以指定的身体接触方式互动",
    "动作-状态": "实体处于指定的持续状态，通常由动词表达",
    "关系-构成关系": "某个实体由指定的其他实体构成",
    "关系-相似关系": "实体之间以指定的方式彼此相似",
    "关系-包含关系": "容器（也可以是盘子、屏幕等平面容器）中装有指定的实体",
    "关系-比较关系": "两个实体在某一属性上的比较结果与提示词一致",
    "逻辑推理": "图像呈现对提示词意图进行推理后应有的内容，而不仅是字面内容",
    "语法-代词指代": "每个代词都指向正确的实体，代词所说的属性或动作落在该实体上",
    "语法-统一性": "提示词赋予多个实体的共同属性在每一个实体上都有体现",
    "语法-否定": "提示词所否定的内容没有出现在图像中",
    "复合考点-想象力": "图像呈现现实中不可能发生的指定内容",
    "复合考点-不同实体特征匹配": "多个实体各自具有其指定的属性，没有互换或混淆",
    "实体布局-二维空间": "实体在画面平面上的排布符合描述（左、右、上、下等）",
    "实体布局-三维空间": "实体在纵深方向上的排布符合描述（前、后、里面等）",
    "文本生成": "准确渲染指定的文字，没有遗漏、错误或多余的字词",
}
DEFINITIONS = {"en": DEFINITIONS_EN, "zh": DEFINITIONS_ZH}

TEMPLATE_EN = """You are a precise and objective image-description system. You are given the prompt an image was generated from, the generated image, and a list of checkpoints with explanations. Decide for every checkpoint whether the image meets it.

Step 1: The generation prompt is 「{prompt}」 and the checkpoints are {checkpoints}.
Checkpoints Defination:
「
{definitions}
」
Checkpoints Description:
「
{descriptions}
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
Write the analyses and the scores as Python lists of exactly {count} items each, one per checkpoint in the order given: the analyses as quoted strings, the scores as the integers 0 or 1."""

TEMPLATE_ZH = """你是一个精确、客观的图像描述系统。你会收到一段用于生成图像的提示词、据此生成的图像，以及一组附带说明的考点。请逐一判断图像是否满足每个考点。

第一步：生成提示词为「{prompt}」，考点为 {checkpoints}。
考点说明：
「
{definitions}
」
考点描述说明：
「
{descriptions}
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
分析与得分都写成 Python 列表，各 {count} 项，按所给考点的顺序一一对应：分析为带引号的字符串，得分为整数 0 或 1。"""

TEMPLATES = {"en": TEMPLATE_EN, "zh": TEMPLATE_ZH}
_SEPARATOR = {"en": ": ", "zh": "："}


def build_judge_prompt(item: BenchPrompt, language: str = "en", definitions: Optional[Mapping[str, str]] = None) -> str:
    """The judge prompt for one image of ``item`` (module docstring).

    ``language`` picks the template; in Chinese the checkpoints are shown by their Chinese names.
    ``definitions`` maps each shown checkpoint name to its explanation (default: the 27 UniGenBench
    sub-dimensions of that language; another benchmark, such as the toy one, passes its own)."""
    if language not in TEMPLATES:
        raise ValueError(f"language must be one of {', '.join(TEMPLATES)}, got {language!r}")
    if definitions is None:
        definitions = DEFINITIONS[language]
    names = [SUB_DIMENSIONS.get(name, name) if language == "zh" else name for name in item.testpoints]
    missing = [name for name in names if name not in definitions]
    if missing:
        raise ValueError(f"no definition for checkpoint(s) {', '.join(missing)}")
    separator = _SEPARATOR[language]
    return TEMPLATES[language].format(
        prompt=item.prompt,
        checkpoints=repr(names),
        definitions="\n".join(f"{name}{separator}{definitions[name]}" for name in names),
        descriptions="\n".join(f"{name}{separator}{description}" for name, description in zip(names, item.descriptions)),
        count=len(names),
    )
