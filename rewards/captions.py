"""Caption perturbation for TPO (research/diffusion_methods_B.md §4.1): each caption gets K subtly wrong
versions, written as ``captioned_images`` rows ``{"image", "prompt", "negative_prompts": [...]}``.

Two perturbers share one interface (``CaptionPerturber``):

- ``diffalign.rewards.caption_rules.RulePerturber``: deterministic single-word (or single-phrase) swaps
  from word lists of the spec's four families (content, attribute, spatial, context); the toy world's
  grammar is one complete vocabulary;
- ``diffalign.rewards.caption_llm.LLMPerturber``: a chat model (OpenAI-compatible endpoint or local
  transformers causal LM) asked with the spec's prompt skeleton; answers equal to the caption (after
  ``normalise_caption``), repeated or unparsable are rejected, counted and asked again, never written.

``perturb_captions`` is the runner behind ``diffalign captions perturb``: it reads the input (a ``.txt``
of captions, a jsonl of ``{"prompt"[, "image"]}`` rows, or the ``generations.jsonl`` that ``diffalign
generate`` writes), perturbs each distinct caption once (several images of one prompt share its
negatives), appends one row per input row as soon as its chunk is done, and resumes: rows already in
``out`` that were made from the same input row with the same settings are kept, the rest are made.

Images: ``captioned_images`` needs one per row, so input rows without an image are refused unless
``prompts_only`` is set, which writes ``{"prompt", "negative_prompts"}`` rows (no image) for them: a
listing of negatives, not a training set. Image paths are written relative to the output file's folder
(the format resolves them against it) and must exist.

Rows also carry ``input_index`` (the input row, from 0, blank lines not counted), ``negative_families``
(the family of each negative) and ``perturbation`` (the settings that decide the negatives); the
``captioned_images`` reader ignores them. A row is written only when its caption got at least one
negative and none of its requests failed; captions with fewer than K negatives are written and counted
as short. Each row is one ``write`` of a whole line, flushed; a line cut off by a killed run is dropped
(and the file rewritten without it) on the next run.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional, Protocol, Sequence

from diffalign.data.errors import DataError, disk_space_errors
from diffalign.errors import UsageError
from diffalign.rewards.records import read_jsonl_rows

FAMILIES = ("content", "attribute", "spatial", "context")
FAMILY_DESCRIPTIONS = {  # the spec's four perturbation principles (§4.1)
    "content": "add, remove or replace an object, change a count or an identity",
    "attribute": "change a colour, material, texture, style, size or other qualifier",
    "spatial": "change the arrangement, a spatial relation, a position or the motion state",
    "context": "change the background, weather, lighting, time of day or setting",
}
REJECT_REASONS = ("empty", "unparsable", "unchanged", "duplicate")
DEFAULT_CHUNK = 32


def normalise_caption(text: str) -> str:
    """The form captions are compared in: case-folded, punctuation removed, white space collapsed."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


def parse_families(families: str | Sequence[str] | None) -> tuple[str, ...]:
    """The families a perturber may use, in ``FAMILIES`` order: all of them for None, else the named ones
    (a comma-separated string or a sequence); an unknown name is a ``UsageError``."""
    if families is None:
        return FAMILIES
    names = [name.strip() for name in (families.split(",") if isinstance(families, str) else families) if name.strip()]
    unknown = [name for name in names if name not in FAMILIES]
    if unknown or not names:
        raise UsageError(f"--families must name one or more of {', '.join(FAMILIES)}, got {','.join(names) or 'none'}")
    return tuple(family for family in FAMILIES if family in names)


@dataclass
class Perturbation:
    """What a perturber made of one caption: the kept ``negatives`` (distinct, none equal to the caption)
    and the family of each, the answers it rejected by reason, how many times it asked again after a
    rejected answer, and ``error`` when a request failed (the caption is then not written)."""

    negatives: list[str] = field(default_factory=list)
    families: list[str] = field(default_factory=list)
    rejected: Counter = field(default_factory=Counter)
    reasked: int = 0
    error: Optional[str] = None


class CaptionPerturber(Protocol):
    """``perturb(captions, k)`` returns one ``Perturbation`` per caption, at most ``k`` negatives each;
    ``settings()`` names everything that decides the negatives (recorded with every row, compared on
    resume); ``transport_retries`` counts requests repeated after a retryable failure (0 for rules)."""

    name: str

    def settings(self) -> dict: ...

    def perturb(self, captions: Sequence[str], k: int) -> list[Perturbation]: ...

    @property
    def transport_retries(self) -> int: ...


# ------------------------------------------------------------------------------------------- input
@dataclass(frozen=True)
class CaptionInput:
    """One input row: its ``index`` (from 0, blank lines not counted), caption, absolute image path (None
    for a prompt-only row) and ``where`` it was read (``path:line``, for errors)."""

    index: int
    prompt: str
    image: Optional[str]
    where: str


def read_caption_inputs(data: str) -> list[CaptionInput]:
    """The rows of a ``.txt`` (one caption per non-blank line) or ``.jsonl`` file (``prompt`` and an
    optional ``image`` path, relative to the file's folder unless absolute; other keys are ignored, so
    ``diffalign generate``'s ``generations.jsonl`` reads as is)."""
    if not isinstance(data, str) or not data:
        raise UsageError("--data is required: a .txt of captions or a .jsonl of {prompt[, image]} rows")
    if not data.endswith((".txt", ".jsonl")):
        raise UsageError(f"--data {data}: expected a .txt file (one caption per line) or a .jsonl file ({{prompt[, image]}} rows)")
    if not os.path.isfile(data):
        raise DataError(f"--data {data} does not exist")
    root = os.path.dirname(os.path.abspath(data))
    rows: list[CaptionInput] = []
    if data.endswith(".txt"):
        with open(data, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    rows.append(CaptionInput(len(rows), line.strip(), None, f"{data}:{number}"))
    for where, record in read_jsonl_rows(data) if data.endswith(".jsonl") else ():
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object with a 'prompt'")
        prompt = record.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{where}: field 'prompt' must be a non-empty string")
        image = record.get("image")
        if image is not None and (not isinstance(image, str) or not image):
            raise DataError(f"{where}: field 'image' must be a path (a non-empty string)")
        rows.append(CaptionInput(len(rows), prompt.strip(), os.path.join(root, image) if image else None, where))
    if not rows:
        raise DataError(f"--data {data} has no captions (an empty file)")
    return rows


def check_images(rows: Sequence[CaptionInput], data: str, prompts_only: bool) -> None:
    """Every row has an image (unless ``prompts_only``) and every named image exists."""
    if not prompts_only:
        missing = [row for row in rows if row.image is None]
        if missing:
            what = "has no images" if len(missing) == len(rows) else f"has {len(missing)} rows without an 'image' (first: {missing[0].where})"
            raise UsageError(f"--data {data} {what}, but captioned_images rows need one: generate images first (diffalign "
                             "generate, then --data OUT/generations.jsonl) or pass --prompts-only to write "
                             "{prompt, negative_prompts} rows without images")
    absent = [row for row in rows if row.image is not None and not os.path.isfile(row.image)]
    if absent:
        raise DataError(f"--data {data}: {len(absent)} of its images do not exist (first: {absent[0].where}: {absent[0].image})")


# ------------------------------------------------------------------------------------------ output
_ADVICE = "pass --overwrite to start over, or give another --out"


def output_row(row: CaptionInput, perturbation: Perturbation, settings: dict, out_dir: str) -> dict:
    record: dict = {}
    if row.image is not None:
        try:
            record["image"] = os.path.relpath(row.image, out_dir)
        except ValueError:  # another drive (Windows)
            record["image"] = row.image
    record.update(prompt=row.prompt, negative_prompts=list(perturbation.negatives),
                  negative_families=list(perturbation.families), input_index=row.index, perturbation=settings)
    return record


def _shown(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return repr(value) if isinstance(value, str) else str(value)


def read_existing(out: str, rows: Sequence[CaptionInput], settings: dict, option_names: dict[str, str]) -> tuple[dict[int, dict], bool]:
    """The rows of ``out`` by input index, and whether the file needs rewriting (a line cut off by a killed
    run, a repeated index). Rows made with other settings, or from another input row at their index,
    are a ``UsageError`` naming the difference; a line this runner did not write is a ``DataError``."""
    if not os.path.isfile(out):
        return {}, False
    with open(out, encoding="utf-8") as handle:
        lines = handle.readlines()
    kept: dict[int, dict] = {}
    stale = False
    out_dir = os.path.dirname(os.path.abspath(out))
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            index = record["input_index"]
            if not (isinstance(index, int) and isinstance(record["perturbation"], dict) and isinstance(record["prompt"], str)
                    and isinstance(record["negative_prompts"], list)):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError):
            if number == len(lines) and not line.endswith("\n"):
                stale = True  # the last row of a killed run, cut off while written: made again
                continue
            raise DataError(f"{out}:{number} is not a row diffalign captions perturb wrote (input_index, perturbation, "
                            f"...): {_ADVICE}") from None
        recorded = record["perturbation"]
        for key in sorted(set(settings) | set(recorded)):
            if recorded.get(key) != settings.get(key):
                flag = option_names.get(key, key)
                was = _shown(recorded[key]) if key in recorded else "(not recorded)"
                raise UsageError(f"--out {out} holds rows made with {flag} {was}, not {_shown(settings.get(key))} as now: {_ADVICE}")
        if index >= len(rows):
            raise UsageError(f"--out {out} holds a row for input row {index}, but --data has only {len(rows)} rows: {_ADVICE}")
        source = rows[index]
        image = os.path.normpath(os.path.join(out_dir, record["image"])) if isinstance(record.get("image"), str) else None
        if record["prompt"] != source.prompt or (image != (os.path.normpath(source.image) if source.image else None)):
            raise UsageError(f"--out {out} holds a row for input row {index} ({record['prompt']!r}), but that row of --data "
                             f"is now {source.prompt!r}{' with another image' if record['prompt'] == source.prompt else ''}: {_ADVICE}")
        stale = stale or index in kept
        kept[index] = record
    return kept, stale


def _rewrite(out: str, records: dict[int, dict]) -> None:
    """Replace ``out`` by ``records`` in input order, atomically (a partial file, then a rename)."""
    partial = f"{out}.partial"
    with disk_space_errors(os.path.dirname(os.path.abspath(out)), what="the captions", cleanup=lambda: os.path.exists(partial) and os.remove(partial)):
        with open(partial, "w", encoding="utf-8") as handle:
            for index in sorted(records):
                handle.write(json.dumps(records[index]) + "\n")
        os.replace(partial, out)


# ------------------------------------------------------------------------------------------ runner
@dataclass
class PerturbSummary:
    """Counts of one run. Rows: ``inputs`` in --data, ``resumed`` (already in --out), ``written`` now,
    ``short`` (written with fewer than K negatives), ``no_negatives`` and ``failed`` (not written: no
    negative was kept, or a request failed; a rerun tries them again). Negatives: ``kept``, ``rejected``
    by reason, ``reasked`` (asked again after a rejected answer), ``transport_retries`` (requests
    repeated after a 429 / 5xx / timeout). ``captions``: distinct captions perturbed in this run."""

    out: str
    inputs: int = 0
    resumed: int = 0
    written: int = 0
    short: int = 0
    no_negatives: int = 0
    failed: int = 0
    captions: int = 0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)
    reasked: int = 0
    transport_retries: int = 0
    first_error: Optional[str] = None
    first_without_negatives: Optional[str] = None
    seconds: float = 0.0

    @property
    def retried(self) -> int:
        return self.reasked + self.transport_retries


def perturb_captions(perturber: CaptionPerturber, data: str, out: str, per_caption: int = 1, prompts_only: bool = False,
                     overwrite: bool = False, progress: bool = True, chunk_size: int = DEFAULT_CHUNK,
                     option_names: Optional[dict[str, str]] = None) -> PerturbSummary:
    """Perturb the captions of ``data`` into ``out`` (see the module docstring); returns the counts.

    ``option_names`` maps settings keys to the flags errors name (``seed`` -> ``--seed``)."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    if not isinstance(per_caption, int) or isinstance(per_caption, bool) or per_caption < 1:
        raise UsageError(f"--per-caption must be an integer >= 1, got {per_caption!r}")
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise UsageError(f"--chunk-size must be an integer >= 1, got {chunk_size!r}")
    if not isinstance(out, str) or not out.endswith(".jsonl"):
        raise UsageError(f"--out must be a .jsonl file, got {out!r}")
    if os.path.isdir(out):
        raise UsageError(f"--out {out} is a folder; give a .jsonl file")
    if os.path.isfile(data) and os.path.exists(out) and os.path.samefile(data, out):
        raise UsageError(f"--out {out} is the --data file; give another --out")
    rows = read_caption_inputs(data)
    check_images(rows, data, prompts_only)
    settings = {"perturber": perturber.name, "per_caption": per_caption, **perturber.settings()}
    names = {"perturber": "--perturber", "per_caption": "--per-caption", **(option_names or {})}
    out_dir = os.path.dirname(os.path.abspath(out))
    os.makedirs(out_dir, exist_ok=True)
    if overwrite and os.path.exists(out):
        os.remove(out)
    existing, stale = read_existing(out, rows, settings, names)
    if stale:
        _rewrite(out, existing)
    summary = PerturbSummary(out=out, inputs=len(rows), resumed=len(existing))
    # captions already perturbed (in rows kept from an earlier run) keep their negatives
    done: dict[str, Perturbation] = {}
    for record in existing.values():
        families = record.get("negative_families") or []
        done.setdefault(record["prompt"], Perturbation(list(record["negative_prompts"]), list(families)))
    pending = [row for row in rows if row.index not in existing]
    retries_before = perturber.transport_retries
    written_order_ok = not existing or not pending or min(row.index for row in pending) > max(existing)
    with tqdm(total=len(pending), desc="perturb", unit="caption", disable=not progress) as bar, \
            disk_space_errors(out_dir, what="the captions"), open(out, "a", encoding="utf-8") as handle:
        for start in range(0, len(pending), chunk_size):
            chunk = pending[start : start + chunk_size]
            todo = list(dict.fromkeys(row.prompt for row in chunk if row.prompt not in done))
            if todo:
                for caption, result in zip(todo, perturber.perturb(todo, per_caption)):
                    summary.captions += 1
                    summary.kept += 0 if result.error is not None else len(result.negatives)
                    summary.rejected.update(result.rejected)
                    summary.reasked += result.reasked
                    done[caption] = result
            for row in chunk:
                result = done[row.prompt]
                if result.error is not None:
                    summary.failed += 1
                    summary.first_error = summary.first_error or f"{row.where}: {result.error}"
                    continue
                if not result.negatives:
                    summary.no_negatives += 1
                    summary.first_without_negatives = summary.first_without_negatives or f"{row.where}: {row.prompt!r}"
                    continue
                summary.short += len(result.negatives) < per_caption
                handle.write(json.dumps(output_row(row, result, settings, out_dir)) + "\n")
                handle.flush()
                summary.written += 1
            for caption in todo:  # a failed caption is asked again when a later row repeats it
                if done[caption].error is not None:
                    del done[caption]
            bar.update(len(chunk))
    summary.transport_retries = perturber.transport_retries - retries_before
    if not written_order_ok and summary.written:
        existing, _ = read_existing(out, rows, settings, names)
        _rewrite(out, existing)
    summary.seconds = time.perf_counter() - started
    return summary
