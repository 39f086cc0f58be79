"""The rule-based caption perturber: one word (or phrase) swapped for another from the same word list.

A ``Vocabulary`` is a set of ``WordList``s, each of one of the spec's four families (content, attribute,
spatial, context; research/diffusion_methods_B.md §4.1). A list holds groups of mutually exclusive
alternatives (``("small", "large")``, ``("tiny", "huge")``): a word found in a caption may become any
other word of its group, never a word of another group (so "small" never becomes "huge", which may be
true of the same image). A list may require a context, its ``template`` (``"{} background"``: the
word is matched, and replaced, only where "background" follows it).

Matching is case-insensitive on whole words; where matches of two lists overlap the longer one wins
("on the left", a position, rather than "left", a relation; "white background", a background, rather
than "white", a colour). Every edit changes exactly one matched word; the replacement takes the case of
the word it replaces, and an article right before it follows the new word ("a red apple" -> "an orange
apple").

Choices are deterministic: a caption's edits come from a ``random.Random`` seeded with the perturber's
``seed`` and the caption text, so they do not depend on which other captions share a batch. The
families take turns in a seeded order (content, then context, ... for one caption), each turn picking
an attribute of that family and one of its replacements, preferring words not edited yet; ``k``
negatives are distinct, and a caption with fewer possible edits gets all of them.

Two vocabularies are built in: ``toy``, exactly the grammar of the toy world (``diffalign.toy.world``:
colours, sizes, shapes, positions, backgrounds; a test checks it matches), so every perturbed toy
caption is again a toy caption that differs in one attribute; and ``general``, English word lists for
real captions that include the toy words. A JSON file gives your own::

    {"colour": {"family": "attribute", "words": ["red", "green", "blue"]},
     "size": {"family": "attribute", "groups": [["small", "large"], ["short", "tall"]]},
     "background": {"family": "context", "words": ["white", "black"], "template": "{} background"}}
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from dataclasses import dataclass
from typing import Optional, Sequence

from diffalign.errors import UsageError
from diffalign.rewards.captions import FAMILIES, Perturbation, normalise_caption, parse_families


@dataclass(frozen=True)
class WordList:
    """An attribute's word list: ``groups`` of mutually exclusive alternatives, matched in ``template``."""

    name: str
    family: str
    groups: tuple[tuple[str, ...], ...]
    template: str = "{}"

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(word for group in self.groups for word in group)


@dataclass(frozen=True)
class Vocabulary:
    name: str
    lists: tuple[WordList, ...]

    def check(self) -> "Vocabulary":
        """A ``UsageError`` naming the first list that cannot work: an unknown family, a template without
        exactly one ``{}``, a group of fewer than two distinct words, or a word in two groups matched the
        same way (the swap would be ambiguous)."""
        seen: dict[tuple[str, str], str] = {}
        names = set()
        for word_list in self.lists:
            where = f"vocabulary {self.name!r}, list {word_list.name!r}"
            if word_list.name in names:
                raise UsageError(f"{where}: two lists have that name")
            names.add(word_list.name)
            if word_list.family not in FAMILIES:
                raise UsageError(f"{where}: family must be one of {', '.join(FAMILIES)}, got {word_list.family!r}")
            if word_list.template.count("{}") != 1:
                raise UsageError(f"{where}: template must hold '{{}}' exactly once, got {word_list.template!r}")
            if not word_list.groups:
                raise UsageError(f"{where}: no words")
            for group in word_list.groups:
                normalised = [normalise_caption(word) for word in group]
                if len(group) < 2 or len(set(normalised)) != len(group) or not all(normalised):
                    raise UsageError(f"{where}: each group needs two or more distinct words, got {list(group)}")
                for word, key in zip(group, normalised):
                    slot = (key, normalise_caption(word_list.template.replace("{}", "\0")))
                    if slot in seen:
                        raise UsageError(f"{where}: {word!r} is also in {seen[slot]}; a word may be in one group only")
                    seen[slot] = f"list {word_list.name!r}"
        return self


def _lists(spec: dict[str, tuple[str, Sequence[Sequence[str]], str]]) -> tuple[WordList, ...]:
    return tuple(WordList(name, family, tuple(tuple(group) for group in groups), template)
                 for name, (family, groups, template) in spec.items())


# The toy world's grammar (diffalign/toy/world.py: COLOURS, SIZES, SHAPES, POSITIONS, BACKGROUNDS). The
# rewards layer cannot import the toy world (DESIGN.md §2); tests/test_captions.py checks these match it.
TOY_VOCABULARY = Vocabulary("toy", _lists({
    "colour": ("attribute", [("red", "green", "blue", "yellow", "purple", "cyan")], "{}"),
    "size": ("attribute", [("small", "large")], "{}"),
    "shape": ("content", [("circle", "square", "triangle")], "{}"),
    "position": ("spatial", [("on the left", "on the right", "at the top", "at the bottom", "in the center")], "{}"),
    "background": ("context", [("white", "black", "gray")], "{} background"),
})).check()

_COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray", "cyan")

GENERAL_VOCABULARY = Vocabulary("general", _lists({
    # attribute
    "colour": ("attribute", [_COLOURS], "{}"),
    "size": ("attribute", [("small", "large"), ("big", "little"), ("tiny", "huge"), ("short", "tall"), ("thin", "thick"),
                           ("narrow", "wide")], "{}"),
    "material": ("attribute", [("wooden", "metal", "plastic", "ceramic", "glass", "stone")], "{}"),
    "texture": ("attribute", [("smooth", "rough"), ("shiny", "matte"), ("striped", "spotted", "checkered")], "{}"),
    "style": ("attribute", [("photo", "painting", "sketch", "cartoon"), ("realistic", "abstract")], "{}"),
    "state": ("attribute", [("old", "new"), ("empty", "full"), ("open", "closed"), ("wet", "dry"), ("happy", "sad"),
                            ("clean", "dirty")], "{}"),
    # content
    "shape": ("content", [("circle", "square", "triangle", "rectangle", "star", "hexagon", "heart"),
                          ("circles", "squares", "triangles", "rectangles", "stars", "hexagons", "hearts"),
                          ("sphere", "cube", "cone", "cylinder", "pyramid"),
                          ("spheres", "cubes", "cones", "cylinders", "pyramids")], "{}"),
    "animal": ("content", [("dog", "cat", "horse", "cow", "bird", "rabbit", "bear", "fox", "lion", "elephant"),
                           ("dogs", "cats", "horses", "cows", "birds", "rabbits", "bears", "foxes", "lions", "elephants")], "{}"),
    "person": ("content", [("man", "woman", "boy", "girl"), ("men", "women", "boys", "girls")], "{}"),
    "vehicle": ("content", [("car", "bus", "truck", "bicycle", "motorcycle", "train", "boat", "airplane"),
                            ("cars", "buses", "trucks", "bicycles", "motorcycles", "trains", "boats", "airplanes")], "{}"),
    "food": ("content", [("apple", "banana", "pear", "lemon", "strawberry", "tomato"),
                         ("apples", "bananas", "pears", "lemons", "strawberries", "tomatoes")], "{}"),
    "object": ("content", [("chair", "table", "lamp", "vase", "cup", "book", "clock", "bottle"),
                           ("chairs", "tables", "lamps", "vases", "cups", "books", "clocks", "bottles")], "{}"),
    "count": ("content", [("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")], "{}"),
    # spatial
    "position": ("spatial", [("on the left", "on the right", "at the top", "at the bottom", "in the center")], "{}"),
    "relation": ("spatial", [("left", "right"), ("above", "below"), ("inside", "outside"), ("in front of", "behind"),
                             ("on top of", "underneath")], "{}"),
    "motion": ("spatial", [("running", "walking", "standing", "sitting", "sleeping", "jumping", "flying", "swimming")], "{}"),
    # context
    "background": ("context", [_COLOURS], "{} background"),
    "time": ("context", [("day", "night"), ("daytime", "nighttime"), ("morning", "evening"), ("sunrise", "sunset"),
                         ("summer", "winter")], "{}"),
    "weather": ("context", [("sunny", "rainy", "snowy", "foggy", "cloudy", "stormy")], "{}"),
    "lighting": ("context", [("bright", "dark"), ("sunlit", "moonlit")], "{}"),
    "setting": ("context", [("indoors", "outdoors"), ("beach", "forest", "desert", "city", "kitchen", "street", "mountain")], "{}"),
})).check()

VOCABULARIES = {"toy": TOY_VOCABULARY, "general": GENERAL_VOCABULARY}


def load_vocabulary(spec: str | Vocabulary) -> Vocabulary:
    """A built-in vocabulary by name (``toy``, ``general``) or a JSON file of word lists (module docstring)."""
    if isinstance(spec, Vocabulary):
        return spec.check()
    if spec in VOCABULARIES:
        return VOCABULARIES[spec]
    if not isinstance(spec, str) or not spec.endswith(".json"):
        raise UsageError(f"--vocabulary must be one of {', '.join(VOCABULARIES)} or a .json file of word lists, got {spec!r}")
    try:
        with open(spec, encoding="utf-8") as handle:
            text = handle.read()
        loaded = json.loads(text)
    except OSError as error:
        raise UsageError(f"cannot read --vocabulary {spec}: {error.strerror or error}") from None
    except json.JSONDecodeError as error:
        raise UsageError(f"--vocabulary {spec} is not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(loaded, dict) or not loaded:
        raise UsageError(f"--vocabulary {spec} must be a JSON object of lists, e.g. {{\"colour\": {{\"family\": \"attribute\", \"words\": [...]}}}}")
    lists = []
    for name, entry in loaded.items():
        where = f"--vocabulary {spec}, list {name!r}"
        if not isinstance(entry, dict) or not set(entry) <= {"family", "words", "groups", "template"}:
            raise UsageError(f"{where}: expected an object with 'family', 'words' or 'groups', and optionally 'template'")
        if ("words" in entry) == ("groups" in entry):
            raise UsageError(f"{where}: give either 'words' (one group) or 'groups' (a list of groups)")
        groups = [entry["words"]] if "words" in entry else entry["groups"]
        if not isinstance(groups, list) or not all(isinstance(group, list) and all(isinstance(word, str) for word in group) for group in groups):
            raise UsageError(f"{where}: 'words' must be a list of strings ('groups' a list of such lists)")
        template = entry.get("template", "{}")
        if not isinstance(template, str):
            raise UsageError(f"{where}: 'template' must be a string holding '{{}}'")
        lists.append(WordList(name, entry.get("family"), tuple(tuple(word.strip() for word in group) for group in groups), template))
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    return Vocabulary(f"{os.path.basename(spec)}#{digest}", tuple(lists)).check()


# ----------------------------------------------------------------------------------------- matching
@dataclass(frozen=True)
class Edit:
    """Replace ``caption[start:end]`` (the matched word) by ``new``; ``span`` covers the template too."""

    family: str
    attribute: str
    start: int
    end: int
    span: tuple[int, int]
    old: str
    new: str


def _phrase(text: str) -> str:
    return r"\s+".join(re.escape(part) for part in text.split())


def _compile(word_list: WordList) -> re.Pattern:
    before, after = word_list.template.split("{}")
    words = sorted(word_list.words, key=lambda word: (-len(word), word))
    pattern = "(?<![\\w-])"
    if before.strip():
        pattern += _phrase(before) + (r"\s+" if before.endswith(" ") else "")
    pattern += "(?P<word>" + "|".join(_phrase(word) for word in words) + ")"
    if after.strip():
        pattern += (r"\s+" if after.startswith(" ") else "") + _phrase(after)
    return re.compile(pattern + "(?![\\w-])", re.IGNORECASE)


def _key(word: str) -> str:
    return " ".join(word.lower().split())


def _takes_an(word: str) -> bool:
    lower = word.lower()
    if lower.startswith(("hour", "honest", "honor", "honour", "heir")):
        return True
    return lower[:1] in "aeiou" and not lower.startswith(("uni", "use", "usu", "uti", "eu", "one", "once"))


def _with_case(new: str, old: str) -> str:
    if len(old) > 1 and old.isupper():
        return new.upper()
    return new[:1].upper() + new[1:] if old[:1].isupper() else new


def apply_edit(caption: str, edit: Edit) -> str:
    """``caption`` with ``edit`` applied (the new word in the old word's case, its article agreeing)."""
    before = caption[: edit.start]
    article = re.search(r"(?<![\w'-])(a|an)(\s+)$", before, re.IGNORECASE)
    if article is not None and (article.group(1).lower() == "an") == _takes_an(edit.old):
        wanted = _with_case("an" if _takes_an(edit.new) else "a", article.group(1))
        before = before[: article.start(1)] + wanted + article.group(2)
    return before + _with_case(edit.new, caption[edit.start : edit.end]) + caption[edit.end :]


class RulePerturber:
    """Deterministic word-list perturbations (module docstring).

    Args:
        vocabulary: ``toy``, ``general``, a ``.json`` file of word lists, or a ``Vocabulary``.
        seed: decides which families, attributes and replacements each caption gets.
        families: the families to use (default all four).
    """

    name = "rules"
    transport_retries = 0

    def __init__(self, vocabulary: str | Vocabulary = "general", seed: int = 0, families: Optional[Sequence[str] | str] = None):
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise UsageError(f"--seed must be an integer, got {seed!r}")
        self.vocabulary = load_vocabulary(vocabulary)
        self.seed = seed
        self.families = parse_families(families)
        self._patterns = [(word_list, _compile(word_list), {_key(word): group for group in word_list.groups for word in group})
                          for word_list in self.vocabulary.lists if word_list.family in self.families]
        if not self._patterns:
            raise UsageError(f"vocabulary {self.vocabulary.name!r} has no word list of the families {', '.join(self.families)}")

    def settings(self) -> dict:
        return {"vocabulary": self.vocabulary.name, "families": list(self.families), "seed": self.seed}

    def edits(self, caption: str) -> list[Edit]:
        """Every single-word edit of ``caption`` the vocabulary allows, in caption order."""
        found = []
        for word_list, pattern, groups in self._patterns:
            for match in pattern.finditer(caption):
                found.append((word_list, groups[_key(match.group("word"))], match))
        found.sort(key=lambda item: (-(item[2].end() - item[2].start()), item[2].start()))
        kept: list = []
        for item in found:
            start, end = item[2].span()
            if all(end <= other[2].start() or start >= other[2].end() for other in kept):
                kept.append(item)
        kept.sort(key=lambda item: item[2].start())
        edits = []
        for word_list, group, match in kept:
            old = match.group("word")
            for new in group:
                if normalise_caption(new) != normalise_caption(old):
                    edits.append(Edit(word_list.family, word_list.name, match.start("word"), match.end("word"), match.span(), old, new))
        return edits

    def _rng(self, caption: str) -> random.Random:
        digest = hashlib.sha256(f"{self.seed}\0{caption}".encode("utf-8")).digest()
        return random.Random(int.from_bytes(digest[:8], "big"))

    def perturb_one(self, caption: str, k: int) -> Perturbation:
        result = Perturbation()
        rng = self._rng(caption)
        pool: dict[str, dict[str, list[Edit]]] = {}
        for edit in self.edits(caption):
            pool.setdefault(edit.family, {}).setdefault(edit.attribute, []).append(edit)
        order = [family for family in self.families if family in pool]
        rng.shuffle(order)
        seen = {normalise_caption(caption)}
        used_spans: set[tuple[int, int]] = set()
        while len(result.negatives) < k and order:
            for family in list(order):
                if len(result.negatives) >= k:
                    break
                attributes = pool[family]
                fresh = sorted(name for name, edits in attributes.items() if any(edit.span not in used_spans for edit in edits))
                name = rng.choice(fresh or sorted(attributes))
                candidates = [edit for edit in attributes[name] if edit.span not in used_spans] or attributes[name]
                edit = candidates[rng.randrange(len(candidates))]
                attributes[name].remove(edit)
                if not attributes[name]:
                    del attributes[name]
                if not attributes:
                    order.remove(family)
                text = apply_edit(caption, edit)
                if normalise_caption(text) in seen:
                    result.rejected["duplicate"] += 1
                    continue
                seen.add(normalise_caption(text))
                used_spans.add(edit.span)
                result.negatives.append(text)
                result.families.append(family)
        return result

    def perturb(self, captions: Sequence[str], k: int) -> list[Perturbation]:
        return [self.perturb_one(caption, k) for caption in captions]
