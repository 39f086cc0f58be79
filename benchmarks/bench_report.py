"""The report of one bench run: ``RUN/report.md`` and a self-contained ``RUN/report.html``, both
written from ``RUN/unigenbench.json`` (the numbers) by ``write_run_report(run_dir)``.

Contents, in order: the model, judge, benchmark/category and settings; a prominent warning when any
image failed judgement (upstream's UniGenBench evaluator drops those silently, rubric §3.4 of
``shared/research/rewards_bench.md``; here they are counted, left out of every score and listed);
the counts; Overall (the unweighted mean of the primary dimensions, §3.5); a bar chart of the
primary dimensions; the primary-dimension table with its sub-dimension rows (passed / total test-point
judgements and the pooled percentage, §3.5); the per-theme breakdown; example images per primary
dimension that passed and failed it, with their prompt and, when ``RUN/judgements.jsonl`` is there,
each test point's verdict; the failed judgements (image, prompt, attempts, reason).

The HTML needs nothing outside the file: inline CSS, the chart as an SVG data URL (matplotlib, Agg,
text kept as text), the example images as data URLs of thumbnails at most ``THUMBNAIL_SIDE`` px.
Every string that comes from the user or the judge (prompts, model names, judge spec, reasons) goes
through ``html.escape``.

The reader ``read_run_result`` and the page helpers (``html_page``, ``percent``, ``score_style``,
``short_label``) are shared with ``diffalign.benchmarks.leaderboard``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from typing import Any, Iterable

from diffalign.data.errors import DataError
from diffalign.rewards.records import read_jsonl_rows

RESULT_FILE = "unigenbench.json"
JUDGEMENTS_FILE = "judgements.jsonl"
SCHEMA = 1
THUMBNAIL_SIDE = 256
PROMPT_PREVIEW_CHARS = 220
BAR_COLOUR = "#1f77b4"

# Upstream's leaderboard column names where they differ from the dimension name (rubric §3.6).
SHORT_LABELS = {"Entity Layout": "Layout", "Text Generation": "Text"}

_REQUIRED_FIELDS = {"benchmark": str, "category": str, "judge": str, "model": dict, "counts": dict,
                    "primary_order": list, "primary": dict, "sub": dict}
_COUNT_FIELDS = ("prompts", "images", "judged_images", "failed_images", "testpoint_judgements")
_SCORE_FIELDS = ("passed", "total", "score")


# ------------------------------------------------------------------------------------ reading
def read_run_result(run_dir: str) -> dict[str, Any]:
    """``RUN/unigenbench.json`` as a dict, its fields checked against schema ``SCHEMA`` and the
    optional ones filled with empty defaults; a ``DataError`` naming the file and the field otherwise."""
    path = os.path.join(run_dir, RESULT_FILE)
    if not os.path.isfile(path):
        raise DataError(f"{run_dir} has no {RESULT_FILE}; pass the --out folder of a `diffalign bench unigenbench` run")
    try:
        with open(path, encoding="utf-8") as handle:
            result = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path} is not valid JSON ({error}); rerun `diffalign bench unigenbench` to rewrite it") from None
    _check_result(result, path)
    for key, default in (("settings", {}), ("themes", {}), ("failed_images", []), ("examples", {}), ("prompts", {}),
                         ("images_dir", "images")):
        result.setdefault(key, default)
    return result


def _check_result(result: Any, path: str) -> None:
    if not isinstance(result, dict):
        raise DataError(f"{path} holds a JSON {type(result).__name__}, not the object `diffalign bench unigenbench` writes")
    if result.get("schema") != SCHEMA:
        raise DataError(f"{path} has schema {result.get('schema')!r}, not {SCHEMA}: it is not a result this diffalign can read")
    for key, kind in _REQUIRED_FIELDS.items():
        if not isinstance(result.get(key), kind):
            raise DataError(f"{path} needs a field {key!r} of type {kind.__name__}; rerun `diffalign bench unigenbench` to rewrite it")
    if not isinstance(result["model"].get("label"), str):
        raise DataError(f"{path} field 'model' needs a string 'label'")
    for key in _COUNT_FIELDS:
        if not isinstance(result["counts"].get(key), int):
            raise DataError(f"{path} field 'counts' needs an integer {key!r}")
    if result.get("overall") is not None and not isinstance(result["overall"], (int, float)):
        raise DataError(f"{path} field 'overall' must be a number or null, not {result['overall']!r}")
    for name in result["primary_order"]:
        _check_score_entry(result["primary"].get(name), f"primary[{name!r}]", path)
    for name, entry in result["sub"].items():
        _check_score_entry(entry, f"sub[{name!r}]", path)
        if entry.get("primary") not in result["primary"]:
            raise DataError(f"{path} field sub[{name!r}] names primary {entry.get('primary')!r}, which is not in 'primary'")


def _check_score_entry(entry: Any, field: str, path: str) -> None:
    if not isinstance(entry, dict) or any(key not in entry for key in _SCORE_FIELDS):
        raise DataError(f"{path} field {field} must hold 'passed', 'total' and 'score'")


def read_verdicts(run_dir: str) -> dict[str, list[tuple[str, int]]]:
    """``{image name: [(test point, score), ...]}`` from ``RUN/judgements.jsonl`` for the images whose
    judgement succeeded; ``{}`` when the file is not there (the report then shows no per-test-point marks)."""
    path = os.path.join(run_dir, JUDGEMENTS_FILE)
    if not os.path.isfile(path):
        return {}
    verdicts = {}
    for where, row in read_jsonl_rows(path):
        try:
            if row.get("scores") is not None:
                verdicts[row["image"]] = list(zip(row["testpoints"], row["scores"]))
        except (KeyError, TypeError, AttributeError):
            raise DataError(f"{where} is not a judgement with 'image', 'testpoints' and 'scores'") from None
    return verdicts


# ------------------------------------------------------------------------------------ shared helpers
def short_label(primary: str) -> str:
    """Upstream's leaderboard column name of a primary dimension (``Entity Layout`` -> ``Layout``)."""
    return SHORT_LABELS.get(primary, primary)


def percent(score: float | None) -> str:
    """A score in % with 2 decimals (rubric §3.5), ``–`` when there was nothing to judge."""
    return "–" if score is None else f"{score:.2f}"


def score_style(score: float | None) -> str:
    """The ` style="background:..."` attribute of a score cell: red (0 %) through yellow to green
    (100 %), light enough for black text; nothing for a missing score."""
    if score is None:
        return ""
    return f' style="background:hsl({1.2 * max(0.0, min(100.0, score)):.0f},70%,86%)"'


def md_cell(text: Any) -> str:
    """``text`` safe inside a Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def image_path(run_dir: str, images_dir: str, name: str) -> str:
    """The file of a judged image: ``images_dir`` is relative to the run folder or absolute (``--images``)."""
    return os.path.join(run_dir, images_dir, name)  # an absolute images_dir discards run_dir


def prompt_index(image_name: str) -> str:
    """The prompt index of an upstream-named image ``{index}_{j}.png``."""
    return image_name.split("_", 1)[0]


def preview(text: str, limit: int = PROMPT_PREVIEW_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


PAGE_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0;
       color: #1d1d1f; background: #f6f7f9; }
main { max-width: 1400px; margin: 0 auto; padding: 24px 24px 48px; }
h1 { font-size: 26px; margin: 8px 0 4px; } h2 { font-size: 20px; margin: 32px 0 10px; }
h3 { font-size: 16px; margin: 20px 0 8px; }
.meta { color: #555; margin: 0 0 16px; }
code { background: #eceef1; padding: 1px 4px; border-radius: 3px; font-size: 0.92em; word-break: break-all; }
.card { background: #fff; border: 1px solid #dfe2e6; border-radius: 8px; padding: 16px 20px; margin: 12px 0; }
.warning { background: #fff4e5; border: 2px solid #e8590c; border-radius: 8px; padding: 12px 18px; margin: 16px 0; }
.warning strong { color: #c2410c; }
.overall { display: flex; gap: 16px; flex-wrap: wrap; }
.stat { background: #fff; border: 1px solid #dfe2e6; border-radius: 8px; padding: 10px 18px; min-width: 120px; }
.stat .value { font-size: 26px; font-weight: 600; } .stat .label { color: #555; font-size: 13px; }
.stat.main .value { font-size: 38px; color: #1f4e99; }
table { border-collapse: collapse; background: #fff; margin: 8px 0; font-size: 14px; }
th, td { border: 1px solid #dfe2e6; padding: 5px 8px; text-align: right; white-space: nowrap; }
th { background: #eef1f5; font-weight: 600; white-space: normal; vertical-align: bottom; }
td.name, th.name { text-align: left; white-space: normal; }
td.label { text-align: left; }
tr.primary td { font-weight: 600; background: #f8f9fb; }
tr.sub td.name { padding-left: 28px; color: #333; }
.wide { overflow-x: auto; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th[data-order="desc"]::after { content: " ▼"; } table.sortable th[data-order="asc"]::after { content: " ▲"; }
.examples { display: grid; grid-template-columns: 90px 1fr; gap: 8px 12px; align-items: start; }
.examples .verdict { font-weight: 600; padding-top: 6px; } .pass { color: #137333; } .fail { color: #b3261e; }
.thumbs { display: flex; flex-wrap: wrap; gap: 12px; }
.thumbs > .note { padding-top: 8px; }
figure { margin: 0; width: 200px; background: #fff; border: 1px solid #dfe2e6; border-radius: 6px; padding: 6px; }
figure img { width: 100%; height: auto; display: block; border-radius: 3px; image-rendering: auto; }
figure img.small { image-rendering: pixelated; }
figcaption { font-size: 12px; color: #333; margin-top: 4px; line-height: 1.35; overflow-wrap: anywhere; }
figcaption .points { display: block; margin-top: 3px; }
figcaption .points span { display: inline-block; }
.missing { height: 120px; display: flex; align-items: center; justify-content: center; color: #888; background: #f0f0f0; }
.chart img { max-width: 100%; }
.note { color: #555; font-size: 13px; }
"""


def html_page(title: str, body: str, script: str = "") -> str:
    """A complete HTML document with the shared inline CSS (and an optional inline script)."""
    script_tag = f"<script>{script}</script>" if script else ""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{html.escape(title)}</title>\n'
            f"<style>{PAGE_CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n{script_tag}\n</body>\n</html>\n")


def benchmark_title(result: dict[str, Any]) -> str:
    """``UniGenBench (en)`` or ``Toy benchmark (toy)``."""
    name = {"unigenbench": "UniGenBench", "toy": "Toy benchmark"}.get(result["benchmark"], result["benchmark"])
    return f"{name} ({result['category']})"


# ------------------------------------------------------------------------------------ the report
def write_run_report(run_dir: str) -> None:
    """Write ``RUN/report.md`` and ``RUN/report.html`` from ``RUN/unigenbench.json``."""
    result = read_run_result(run_dir)
    verdicts = read_verdicts(run_dir)
    with open(os.path.join(run_dir, "report.md"), "w", encoding="utf-8") as handle:
        handle.write(markdown_report(result))
    with open(os.path.join(run_dir, "report.html"), "w", encoding="utf-8") as handle:
        handle.write(html_report(result, run_dir, verdicts))


def dimension_rows(result: dict[str, Any]) -> Iterable[tuple[str, str, dict[str, Any]]]:
    """``(kind, name, entry)`` in table order: each primary (``primary_order``), then its
    sub-dimensions, in the order of ``sub``; a sub-dimension named as its primary (Style) is not repeated."""
    for primary in result["primary_order"]:
        yield "primary", primary, result["primary"][primary]
        for name, entry in result["sub"].items():
            if entry["primary"] == primary and name != primary:
                yield "sub", name, entry


def failure_warning(result: dict[str, Any]) -> str | None:
    """The one-paragraph warning (plain text) when images failed judgement, else ``None``."""
    counts = result["counts"]
    if not counts["failed_images"]:
        return None
    attempts = result["settings"].get("max_retries")
    tries = f" after {attempts + 1} attempts each" if isinstance(attempts, int) else ""
    return (f"{counts['failed_images']} of {counts['images']} images failed judgement{tries}: they are left out of every "
            f"score below and listed under 'Failed judgements' (upstream's evaluator drops them silently).")


def overall_sentence(result: dict[str, Any]) -> str:
    counts = result["counts"]
    return (f"Overall = unweighted mean of the {len(result['primary_order'])} primary-dimension scores; each score "
            f"pools its test-point judgements (micro average). {counts['testpoint_judgements']} test-point judgements "
            f"on {counts['judged_images']} judged images.")


def model_fields(result: dict[str, Any]) -> list[tuple[str, Any]]:
    model = result["model"]
    return [("model", model.get("model")), ("LoRA", model.get("lora")), ("negative model", model.get("negative_model")),
            ("judge", result["judge"]), ("benchmark", benchmark_title(result))]


# ------------------------------------------------------------------------------------ markdown
def markdown_report(result: dict[str, Any]) -> str:
    """The whole ``report.md``."""
    parts = [f"# {benchmark_title(result)}: {md_cell(result['model']['label'])}", ""]
    warning = failure_warning(result)
    if warning:
        parts += [f"> **Warning:** {warning}", ""]
    parts += [f"**Overall: {percent(result.get('overall'))}**", "", overall_sentence(result), ""]
    parts += _md_run_table(result)
    parts += ["## Dimensions", ""] + _md_dimension_table(result)
    if result["themes"]:
        parts += ["## Themes", ""] + _md_theme_table(result)
    parts += ["## Examples", ""] + _md_examples(result)
    if result["failed_images"]:
        parts += ["## Failed judgements", ""] + _md_failed_table(result)
    return "\n".join(parts) + "\n"


def _md_run_table(result: dict[str, Any]) -> list[str]:
    rows = model_fields(result) + [(key, value) for key, value in result["settings"].items()]
    rows += [(key.replace("_", " "), value) for key, value in result["counts"].items()]
    lines = ["| run | |", "|---|---|"]
    lines += [f"| {key} | {md_cell('–' if value is None else value)} |" for key, value in rows]
    return lines + [""]


def _md_dimension_table(result: dict[str, Any]) -> list[str]:
    lines = ["| dimension | passed | total | score (%) |", "|---|---:|---:|---:|"]
    for kind, name, entry in dimension_rows(result):
        if kind == "primary":
            lines.append(f"| **{md_cell(name)}** | {entry['passed']} | {entry['total']} | **{percent(entry['score'])}** |")
        else:
            lines.append(f"| &nbsp;&nbsp;{md_cell(name)} | {entry['passed']} | {entry['total']} | {percent(entry['score'])} |")
    return lines + [""]


def _theme_cells(result: dict[str, Any], theme: dict[str, Any]) -> tuple[list[float | None], int]:
    """The theme's score per primary (``None`` when the theme has no test point of it) and its judgements."""
    entries = [theme.get("primary", {}).get(primary) for primary in result["primary_order"]]
    return [entry["score"] if entry else None for entry in entries], sum(entry["total"] for entry in entries if entry)


def _md_theme_table(result: dict[str, Any]) -> list[str]:
    labels = [md_cell(short_label(primary)) for primary in result["primary_order"]]
    lines = ["| theme | Overall | " + " | ".join(labels) + " | judgements |", "|---|" + "---:|" * (len(labels) + 2)]
    for name, theme in result["themes"].items():
        scores, judgements = _theme_cells(result, theme)
        cells = [percent(theme.get("overall"))] + [percent(score) for score in scores] + [str(judgements)]
        lines.append(f"| {md_cell(name)} | " + " | ".join(cells) + " |")
    return lines + [""]


def _md_examples(result: dict[str, Any]) -> list[str]:
    lines = []
    for primary in result["primary_order"]:
        examples = result["examples"].get(primary, {})
        lines += [f"### {md_cell(primary)} ({percent(result['primary'][primary]['score'])})", ""]
        for verdict in ("passed", "failed"):
            for name in examples.get(verdict, []):
                link = os.path.join(result["images_dir"], name)  # report.md sits in the run folder
                prompt = preview(result["prompts"].get(prompt_index(name), ""))
                lines.append(f"- {verdict} [`{name}`]({link.replace(os.sep, '/').replace(' ', '%20')}): {md_cell(prompt)}")
        if not examples.get("passed") and not examples.get("failed"):
            lines.append("- no examples")
        lines.append("")
    return lines


def _md_failed_table(result: dict[str, Any]) -> list[str]:
    lines = ["| image | prompt | attempts | reason |", "|---|---|---:|---|"]
    for failure in result["failed_images"]:
        prompt = preview(result["prompts"].get(str(failure.get("prompt_index")), ""), 120)
        lines.append(f"| `{md_cell(failure.get('image'))}` | {md_cell(prompt)} | {failure.get('attempts', '–')} | "
                     f"{md_cell(failure.get('error') or '–')} |")
    return lines + [""]


# ------------------------------------------------------------------------------------ html
def html_report(result: dict[str, Any], run_dir: str, verdicts: dict[str, list[tuple[str, int]]] | None = None) -> str:
    """The whole ``report.html``: one self-contained page."""
    title = f"{benchmark_title(result)}: {result['model']['label']}"
    sections = [f"<h1>{html.escape(title)}</h1>",
                f'<p class="meta">judge <code>{html.escape(result["judge"])}</code></p>']
    warning = failure_warning(result)
    if warning:
        sections.append(f'<div class="warning"><strong>Warning:</strong> {html.escape(warning)}</div>')
    sections += [_html_overview(result), _html_chart(result), _html_dimension_table(result)]
    if result["themes"]:
        sections.append(_html_theme_table(result))
    sections.append(_html_examples(result, run_dir, verdicts or {}))
    if result["failed_images"]:
        sections.append(_html_failed_table(result))
    sections.append(_html_run_table(result))
    return html_page(title, "\n".join(sections))


def _stat(value: Any, label: str, main: bool = False) -> str:
    return (f'<div class="stat{" main" if main else ""}"><div class="value">{html.escape(str(value))}</div>'
            f'<div class="label">{html.escape(label)}</div></div>')


def _html_overview(result: dict[str, Any]) -> str:
    counts = result["counts"]
    stats = [_stat(percent(result.get("overall")), "Overall (%)", main=True), _stat(counts["prompts"], "prompts"),
             _stat(counts["images"], "images"), _stat(counts["judged_images"], "judged images"),
             _stat(counts["failed_images"], "failed judgements"),
             _stat(counts["testpoint_judgements"], "test-point judgements")]
    return (f'<div class="overall">{"".join(stats)}</div>\n'
            f'<p class="note">{html.escape(overall_sentence(result))}</p>')


def _html_chart(result: dict[str, Any]) -> str:
    return (f'<h2>Primary dimensions</h2>\n<div class="card chart"><img alt="score per primary dimension" '
            f'src="{dimension_chart_data_url(result)}"></div>')


def _html_dimension_table(result: dict[str, Any]) -> str:
    rows = []
    for kind, name, entry in dimension_rows(result):
        rows.append(f'<tr class="{kind}"><td class="name">{html.escape(name)}</td><td>{entry["passed"]}</td>'
                    f'<td>{entry["total"]}</td><td{score_style(entry["score"])}>{percent(entry["score"])}</td></tr>')
    return ('<h2>Dimensions</h2>\n<table>\n<thead><tr><th class="name">dimension</th><th>passed</th><th>total</th>'
            f'<th>score (%)</th></tr></thead>\n<tbody>\n{chr(10).join(rows)}\n</tbody>\n</table>')


def _html_theme_table(result: dict[str, Any]) -> str:
    head = "".join(f"<th>{html.escape(short_label(primary))}</th>" for primary in result["primary_order"])
    rows = []
    for name, theme in result["themes"].items():
        scores, judgements = _theme_cells(result, theme)
        cells = "".join(f"<td{score_style(score)}>{percent(score)}</td>" for score in scores)
        overall = theme.get("overall")
        rows.append(f'<tr><td class="name">{html.escape(name)}</td><td{score_style(overall)}><b>{percent(overall)}</b></td>'
                    f"{cells}<td>{judgements}</td></tr>")
    return ('<h2>Themes</h2>\n<div class="wide"><table>\n<thead><tr><th class="name">theme</th><th>Overall</th>'
            f'{head}<th>judgements</th></tr></thead>\n<tbody>\n{chr(10).join(rows)}\n</tbody>\n</table></div>')


def _html_examples(result: dict[str, Any], run_dir: str, verdicts: dict[str, list[tuple[str, int]]]) -> str:
    parts = ['<h2>Examples</h2>\n<p class="note">Images that passed and failed each primary dimension, with their '
             "prompt and the judge's verdict on every test point of the image.</p>"]
    for primary in result["primary_order"]:
        examples = result["examples"].get(primary, {})
        parts.append(f'<h3>{html.escape(primary)} <span class="note">({percent(result["primary"][primary]["score"])} %)</span></h3>')
        grid = []
        for verdict, css in (("passed", "pass"), ("failed", "fail")):
            figures = [_html_figure(result, run_dir, name, verdicts.get(name)) for name in examples.get(verdict, [])]
            body = "".join(figures) or '<span class="note">none</span>'
            grid.append(f'<div class="verdict {css}">{verdict}</div><div class="thumbs">{body}</div>')
        parts.append(f'<div class="examples">{"".join(grid)}</div>')
    return "\n".join(parts)


def _html_figure(result: dict[str, Any], run_dir: str, name: str, points: list[tuple[str, int]] | None) -> str:
    prompt = result["prompts"].get(prompt_index(name), "")
    source = thumbnail_data_url(image_path(run_dir, result["images_dir"], name))
    if source is None:
        picture = '<div class="missing">image not found</div>'
    else:
        url, small = source
        picture = f'<img{" class=small" if small else ""} alt="{html.escape(name)}" src="{url}">'
    marks = ""
    if points:
        marks = '<span class="points">' + ", ".join(
            f'<span class="{"pass" if score == 1 else "fail"}">{"✓" if score == 1 else "✗"} {html.escape(point)}</span>'
            for point, score in points) + "</span>"
    return (f'<figure>{picture}<figcaption><code>{html.escape(name)}</code> '
            f'<span title="{html.escape(prompt)}">{html.escape(preview(prompt))}</span>{marks}</figcaption></figure>')


def _html_failed_table(result: dict[str, Any]) -> str:
    rows = []
    for failure in result["failed_images"]:
        prompt = result["prompts"].get(str(failure.get("prompt_index")), "")
        rows.append(f'<tr><td class="name"><code>{html.escape(str(failure.get("image")))}</code></td>'
                    f'<td class="name">{html.escape(preview(prompt, 120))}</td><td>{html.escape(str(failure.get("attempts", "–")))}</td>'
                    f'<td class="name">{html.escape(failure.get("error") or "–")}</td></tr>')
    return ('<h2>Failed judgements</h2>\n<table>\n<thead><tr><th class="name">image</th><th class="name">prompt</th>'
            f'<th>attempts</th><th class="name">reason</th></tr></thead>\n<tbody>\n{chr(10).join(rows)}\n</tbody>\n</table>')


def _html_run_table(result: dict[str, Any]) -> str:
    rows = model_fields(result) + list(result["settings"].items())
    cells = "".join(f'<tr><th class="name">{html.escape(key)}</th><td class="name">{html.escape("–" if value is None else str(value))}</td></tr>'
                    for key, value in rows)
    return f"<h2>Run</h2>\n<table>\n<tbody>\n{cells}\n</tbody>\n</table>"


# ------------------------------------------------------------------------------------ images
def thumbnail_data_url(path: str, side: int = THUMBNAIL_SIDE) -> tuple[str, bool] | None:
    """``(data URL, small)`` of the image at ``path`` scaled down to at most ``side`` px (JPEG for a
    scaled-down picture, lossless PNG for one already that small, flagged ``small`` so that the page
    enlarges it without blurring); ``None`` when there is no readable image there."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except (FileNotFoundError, UnidentifiedImageError, OSError):
        return None
    small = max(image.size) <= side
    buffer = io.BytesIO()
    if small:
        image.save(buffer, format="PNG")
    else:
        image.thumbnail((side, side), Image.Resampling.LANCZOS)
        image.save(buffer, format="JPEG", quality=85)
    kind = "png" if small else "jpeg"
    return f"data:image/{kind};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}", small


# ------------------------------------------------------------------------------------ chart
def dimension_chart_data_url(result: dict[str, Any]) -> str:
    """A horizontal bar per primary dimension (its score, with passed/total), Overall as a dashed
    line; an SVG data URL (matplotlib on an Agg canvas, no pyplot)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = result["primary_order"]
    entries = [result["primary"][name] for name in names]
    figure = Figure(figsize=(9.0, 0.42 * len(names) + 1.1), dpi=100, facecolor="white")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    positions = list(range(len(names)))[::-1]  # first primary at the top
    ax.barh(positions, [entry["score"] or 0.0 for entry in entries], color=BAR_COLOUR, height=0.65)
    for y, entry in zip(positions, entries):
        text = "no judgements" if entry["score"] is None else f"{entry['score']:.2f}  ({entry['passed']}/{entry['total']})"
        ax.text(101, y, text, va="center", fontsize=10)
    if result.get("overall") is not None:
        ax.axvline(result["overall"], color="#d62728", linestyle="--", linewidth=1.5,
                   label=f"Overall {result['overall']:.2f}")
        ax.legend(loc="lower center", bbox_to_anchor=(0.42, 1.0), frameon=False, fontsize=10)
    ax.set_yticks(positions, names, fontsize=11)
    ax.set_xlim(0, 100)
    ax.set_xlabel("test points passed (%)", fontsize=11)
    ax.grid(True, axis="x", color="0.9", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    figure.tight_layout(rect=(0, 0, 0.84, 1))
    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "diffalign"}):
        figure.savefig(buffer, format="svg", facecolor="white", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
