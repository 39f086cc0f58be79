"""A leaderboard of bench runs: ``diffalign bench leaderboard RUN1 RUN2 ... --out DIR``.

``build_leaderboard(run_dirs, out_dir)`` reads each run's ``unigenbench.json`` and writes
``DIR/leaderboard.md``, ``DIR/leaderboard.html`` (self-contained; click a column header to sort) and
``DIR/leaderboard.json`` (the rows). The layout follows UniGenBench's leaderboards
(``shared/research/rewards_bench.md`` §3.6):

- the summary table, one row per run sorted by Overall (descending; a run without an Overall last):
  Overall, then one column per primary dimension in the benchmark's ``primary_order`` under
  upstream's short label (UniGenBench: Overall | Style | World Knowledge | Attribute | Action |
  Relationship | Logical Reasoning | Grammar | Compound | Layout | Text), then the test-point
  judgements each row rests on and its images that failed judgement;
- the sub-dimension detail: per primary dimension that has sub-dimensions, a table with its Overall
  and one column per sub-dimension (short labels as upstream's: Quantity, Hand, 2D, ...).

Scores from different judges, benchmarks or categories are not comparable (§3.6: even one judge is
not bit-stable between runs), so runs that differ in any of these are refused unless
``allow_mixed``; a mixed leaderboard shows judge and benchmark per row. Two runs with the same model
label are told apart by their folder name, ``label (folder)``, or by their path when that is the
same too; one folder given twice is refused.
"""

from __future__ import annotations

import html
import json
import os
import re
from typing import Any

from diffalign.benchmarks.bench_report import (
    benchmark_title,
    html_page,
    md_cell,
    percent,
    read_run_result,
    score_style,
    short_label,
)
from diffalign.errors import UsageError

# Upstream's sub-dimension column names where they are shorter than the part after "Primary - ".
SUB_LABELS = {"Two-Dimensional Space": "2D", "Three-Dimensional Space": "3D", "Full-body": "Full Body",
              "Contact Interaction": "Contact", "Non-contact Interaction": "Non Contact"}

SORT_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach((th, column) => th.addEventListener("click", () => {
  const table = th.closest("table"), body = table.tBodies[0];
  const descending = th.dataset.order !== "desc";
  table.querySelectorAll("th").forEach(other => delete other.dataset.order);
  th.dataset.order = descending ? "desc" : "asc";
  const key = row => { const cell = row.cells[column];
    return cell.dataset.value !== undefined ? Number(cell.dataset.value) : cell.textContent.trim().toLowerCase(); };
  const rows = Array.from(body.rows).sort((a, b) => {
    const x = key(a), y = key(b), order = typeof x === "number" ? x - y : x.localeCompare(y);
    return descending ? -order : order; });
  rows.forEach(row => body.appendChild(row));
}));
"""


def sub_label(name: str) -> str:
    """The leaderboard column name of a sub-dimension: the part after ``Primary - `` without a
    parenthesised qualifier, shortened as upstream (``Entity Layout - Two-Dimensional Space`` -> ``2D``)."""
    part = name.split(" - ", 1)[-1]
    part = re.sub(r"\s*\(.*\)\s*$", "", part).strip()
    return SUB_LABELS.get(part, part)


def build_leaderboard(run_dirs: list[str], out_dir: str, allow_mixed: bool = False) -> None:
    """Write ``out_dir/leaderboard.{md,html,json}`` from the runs' ``unigenbench.json`` files."""
    if not run_dirs:
        raise UsageError("diffalign bench leaderboard needs at least one run folder (the --out of `diffalign bench unigenbench`)")
    _refuse_repeated_folders(run_dirs)
    results = [read_run_result(run_dir) for run_dir in run_dirs]
    if not allow_mixed:
        _refuse_mixed(run_dirs, results)
    board = leaderboard_rows(run_dirs, results)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "leaderboard.json"), "w", encoding="utf-8") as handle:
        json.dump(board, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    with open(os.path.join(out_dir, "leaderboard.md"), "w", encoding="utf-8") as handle:
        handle.write(markdown_leaderboard(board))
    with open(os.path.join(out_dir, "leaderboard.html"), "w", encoding="utf-8") as handle:
        handle.write(html_leaderboard(board))


def _refuse_repeated_folders(run_dirs: list[str]) -> None:
    seen = {}
    for run_dir in run_dirs:
        key = os.path.realpath(run_dir)
        if key in seen:
            raise UsageError(f"run folder {run_dir} is given twice ({seen[key]} and {run_dir}); pass each run once")
        seen[key] = run_dir


def _setup(result: dict[str, Any]) -> tuple[str, str, str]:
    return result["judge"], result["benchmark"], result["category"]


def _refuse_mixed(run_dirs: list[str], results: list[dict[str, Any]]) -> None:
    """A ``UsageError`` naming the first run that differs from the first one in judge, benchmark or category."""
    first = _setup(results[0])
    for run_dir, result in zip(run_dirs[1:], results[1:]):
        setup = _setup(result)
        if setup == first:
            continue
        differences = [f"{what} {a!r} vs {b!r}" for what, a, b in zip(("judge", "benchmark", "category"), first, setup) if a != b]
        raise UsageError(f"runs {run_dirs[0]} and {run_dir} differ in {', '.join(differences)}, so their scores are not "
                         f"comparable; pass --allow-mixed to build the leaderboard anyway")


def row_labels(run_dirs: list[str], results: list[dict[str, Any]]) -> list[str]:
    """Each run's model label, made unique: a label shared by several runs becomes ``label (folder
    name)``, or ``label (folder path)`` when the folder names are the same too."""
    labels = [result["model"]["label"] for result in results]
    folders = [os.path.basename(os.path.normpath(run_dir)) for run_dir in run_dirs]
    unique = []
    for label, folder, run_dir in zip(labels, folders, run_dirs):
        if labels.count(label) == 1:
            unique.append(label)
        elif sum(1 for other_label, other in zip(labels, folders) if (other_label, other) == (label, folder)) == 1:
            unique.append(f"{label} ({folder})")
        else:
            unique.append(f"{label} ({os.path.normpath(run_dir)})")
    return unique


def _first_seen(items: list[list[str]]) -> list[str]:
    return list(dict.fromkeys(item for group in items for item in group))


def leaderboard_rows(run_dirs: list[str], results: list[dict[str, Any]]) -> dict[str, Any]:
    """The leaderboard as plain data (what ``leaderboard.json`` holds): the columns and the rows,
    sorted by Overall descending."""
    primaries = _first_seen([result["primary_order"] for result in results])
    details = {}
    for primary in primaries:
        subs = _first_seen([[name for name, entry in result["sub"].items() if entry["primary"] == primary and name != primary]
                            for result in results])
        if subs:
            details[primary] = subs
    rows = []
    for label, run_dir, result in zip(row_labels(run_dirs, results), run_dirs, results):
        rows.append({"label": label, "run": run_dir, "model": result["model"], "judge": result["judge"],
                     "benchmark": result["benchmark"], "category": result["category"], "overall": result.get("overall"),
                     "primary": {name: entry["score"] for name, entry in result["primary"].items()},
                     "sub": {name: entry["score"] for name, entry in result["sub"].items()},
                     "counts": result["counts"]})
    rows.sort(key=lambda row: (row["overall"] is None, -(row["overall"] or 0.0)))
    setups = {(row["judge"], row["benchmark"], row["category"]) for row in rows}
    return {"schema": 1, "mixed": len(setups) > 1, "primary_order": primaries, "sub_dimensions": details,
            "short_labels": {name: short_label(name) for name in primaries},
            "sub_labels": {name: sub_label(name) for subs in details.values() for name in subs}, "rows": rows}


def _heading(board: dict[str, Any]) -> tuple[str, str]:
    """The title and the one-line description under it."""
    first = board["rows"][0]
    if board["mixed"]:
        return "Leaderboard (mixed judges or benchmarks)", "Rows were judged differently; see the judge and benchmark columns."
    title = f"Leaderboard: {benchmark_title(first)}"
    return title, f"judge {first['judge']}"


def _explanation(board: dict[str, Any]) -> str:
    return (f"Scores in %: each dimension pools all its test-point judgements (micro average); Overall = unweighted mean of "
            f"the {len(board['primary_order'])} primary dimensions. Rows sorted by Overall. Images whose judgement failed "
            f"are left out of the scores and counted in 'failed images'.")


# ------------------------------------------------------------------------------------ markdown
def markdown_leaderboard(board: dict[str, Any]) -> str:
    title, subtitle = _heading(board)
    mixed = board["mixed"]
    head = ["#", "model", "Overall"] + [board["short_labels"][name] for name in board["primary_order"]]
    head += ["judgements", "failed images"] + (["judge", "benchmark"] if mixed else [])
    lines = [f"# {md_cell(title)}", "", md_cell(subtitle), "", _explanation(board), "",
             "| " + " | ".join(md_cell(cell) for cell in head) + " |", "|---:|---|" + "---:|" * (len(head) - 2)]
    for rank, row in enumerate(board["rows"], start=1):
        cells = [str(rank), md_cell(row["label"]), f"**{percent(row['overall'])}**"]
        cells += [percent(row["primary"].get(name)) for name in board["primary_order"]]
        cells += [str(row["counts"]["testpoint_judgements"]), str(row["counts"]["failed_images"])]
        cells += [md_cell(row["judge"]), md_cell(benchmark_title(row))] if mixed else []
        lines.append("| " + " | ".join(cells) + " |")
    if board["sub_dimensions"]:
        lines += ["", "## Sub-dimensions"]
    for primary, subs in board["sub_dimensions"].items():
        lines += ["", f"### {md_cell(primary)}", "",
                  "| model | Overall | " + " | ".join(md_cell(board["sub_labels"][name]) for name in subs) + " |",
                  "|---|" + "---:|" * (len(subs) + 1)]
        for row in board["rows"]:
            cells = [md_cell(row["label"]), percent(row["primary"].get(primary))] + [percent(row["sub"].get(name)) for name in subs]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ html
def _score_td(score: float | None, bold: bool = False) -> str:
    """A sortable score cell (a missing score sorts below every real one)."""
    text = f"<b>{percent(score)}</b>" if bold else percent(score)
    return f'<td data-value="{-1 if score is None else score}"{score_style(score)}>{text}</td>'


def _label_td(row: dict[str, Any]) -> str:
    return f'<td class="label" title="{html.escape(row["run"])}">{html.escape(row["label"])}</td>'


def _table(head: list[str], rows: list[str]) -> str:
    header = "".join(head)
    return (f'<div class="wide"><table class="sortable">\n<thead><tr>{header}</tr></thead>\n<tbody>\n'
            f"{chr(10).join(rows)}\n</tbody>\n</table></div>")


def _html_summary(board: dict[str, Any]) -> str:
    mixed = board["mixed"]
    head = ["<th>#</th>", '<th class="name">model</th>', "<th>Overall</th>"]
    head += [f'<th title="{html.escape(name)}">{html.escape(board["short_labels"][name])}</th>' for name in board["primary_order"]]
    head += ["<th>judgements</th>", "<th>failed images</th>"]
    head += ['<th class="name">judge</th>', '<th class="name">benchmark</th>'] if mixed else []
    rows = []
    for rank, row in enumerate(board["rows"], start=1):
        cells = [f'<td data-value="{rank}">{rank}</td>', _label_td(row), _score_td(row["overall"], bold=True)]
        cells += [_score_td(row["primary"].get(name)) for name in board["primary_order"]]
        counts = row["counts"]
        failed_style = ' style="color:#b3261e;font-weight:600"' if counts["failed_images"] else ""
        cells += [f'<td data-value="{counts["testpoint_judgements"]}">{counts["testpoint_judgements"]}</td>',
                  f'<td data-value="{counts["failed_images"]}"{failed_style}>{counts["failed_images"]}</td>']
        if mixed:
            cells += [f'<td class="name"><code>{html.escape(row["judge"])}</code></td>',
                      f'<td class="name">{html.escape(benchmark_title(row))}</td>']
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return _table(head, rows)


def _html_detail(board: dict[str, Any], primary: str, subs: list[str]) -> str:
    head = ['<th class="name">model</th>', "<th>Overall</th>"]
    head += [f'<th title="{html.escape(name)}">{html.escape(board["sub_labels"][name])}</th>' for name in subs]
    rows = ["<tr>" + _label_td(row) + _score_td(row["primary"].get(primary), bold=True)
            + "".join(_score_td(row["sub"].get(name)) for name in subs) + "</tr>" for row in board["rows"]]
    return f"<h3>{html.escape(primary)}</h3>\n" + _table(head, rows)


def html_leaderboard(board: dict[str, Any]) -> str:
    title, subtitle = _heading(board)
    parts = [f"<h1>{html.escape(title)}</h1>", f'<p class="meta">{html.escape(subtitle)}</p>',
             f'<p class="note">{html.escape(_explanation(board))} Click a column header to sort.</p>', _html_summary(board)]
    if board["sub_dimensions"]:
        parts.append("<h2>Sub-dimensions</h2>")
        parts += [_html_detail(board, primary, subs) for primary, subs in board["sub_dimensions"].items()]
    return html_page(title, "\n".join(parts), script=SORT_SCRIPT)
