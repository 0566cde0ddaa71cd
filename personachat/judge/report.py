"""How each pane differs: judged transcripts summarised per pane and per question, as text, HTML or JSON.

Rows are finished responses that have judge records (the latest record per response and metric
counts), and the rows of results CSVs (:mod:`personachat.judge.results_csv`: each model a group,
as a pane is); panes with the same name in several files are pooled. A question selection
(``--questions``, ``--exclude``) leaves answers out before anything is counted. The rule, its
thresholds and the selection head every output. Plots come from :mod:`personachat.judge.plots`.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personachat import __version__
from personachat.errors import PersonachatError
from personachat.judge.aggregate import DEFAULT_RULE, RULES, GroupSummary, Rule, ScoredRow, summarise
from personachat.judge.metrics import BUILTIN_WARNING
from personachat.judge.prompts import EXAMPLE_METRICS
from personachat.judge.records import (
    HUMAN_LABEL,
    JudgeRecord,
    latest_by_target,
    parse_judgements,
    question_key,
    to_scored_row,
)
from personachat.judge.results_csv import NEITHER, SourceKind, read_results_csv, source_kind
from personachat.selection import ALL_QUESTIONS, QuestionSelection
from personachat.text import sanitize
from personachat.transcripts.reader import read_transcript

QUESTION_WIDTH = 48


@dataclass
class ReportData:
    """Rows and their context, read from transcripts and results CSVs."""

    paths: list[Path]
    rows: list[ScoredRow]
    panes: list[str]  # panes and CSV groups, in order of first appearance
    questions: dict[str, str]  # question key (question_id, else the prompt) -> the prompt first seen
    finished: int = 0  # finished responses and CSV rows the selection keeps
    judged: int = 0  # of those, responses with at least one judge record (every CSV row)
    judges: dict[str, set[tuple[str, str]]] = field(default_factory=dict)  # metric -> {(model, prompt sha)}
    methods: dict[str, set[str]] = field(default_factory=dict)  # metric -> scoring methods seen
    profile_rule: str | None = None  # [judge] rule of the first transcript's profile
    warnings: list[str] = field(default_factory=list)
    kinds: dict[Path, SourceKind] = field(default_factory=dict)
    selection: QuestionSelection = ALL_QUESTIONS
    left_out: int = 0  # answers the selection leaves out
    question_ids: set[str] = field(default_factory=set)  # every question id seen, selected or not

    def add_pane(self, pane: str) -> None:
        if pane not in self.panes:
            self.panes.append(pane)


BUILTIN_SHAS = {metric.sha256 for metric in EXAMPLE_METRICS.values()}


def load_rows(paths: Sequence[Path | str], selection: QuestionSelection = ALL_QUESTIONS) -> ReportData:
    """Read transcripts and results CSVs into report rows (see the module doc for which answers count).

    Raises :class:`PersonachatError` for a file that is neither, for ``--questions`` ids that no
    file has, and when nothing is left to report.
    """
    data = ReportData(paths=[Path(p) for p in paths], rows=[], panes=[], questions={}, selection=selection)
    unjudged: list[tuple[str, str, list[str], str | None, str]] = []
    for path in data.paths:
        data.kinds[path] = source_kind(path)
        if data.kinds[path] == "results-csv":
            _add_results_csv(data, path)
        else:
            _add_transcript(data, path, unjudged)
    try:
        selection.check(sorted(data.question_ids))
    except PersonachatError as exc:  # its did-you-mean names ids from the files
        raise PersonachatError(sanitize(str(exc))) from None
    if not data.rows and unjudged:
        data.warnings.append("no judge records: showing tags and labels only (run `personachat judge` first)")
        data.rows = [_row(p, q, {}, t, h, text) for p, q, t, h, text in unjudged]
    elif unjudged:
        data.warnings.append(
            f"{len(unjudged)} finished response(s) have no judge records and are left out "
            "(run `personachat judge` on the transcript)"
        )
    if not data.rows:
        what = f" that the selection ({selection.describe()}) keeps" if data.left_out else ""
        raise PersonachatError(
            f"nothing to report: no finished answers{what} in {', '.join(map(str, data.paths))}"
        )
    for metric, judges in sorted(data.judges.items()):
        if len(judges) > 1:
            seen = ", ".join(f"{m} / prompt {sha[:8]}" for m, sha in sorted(judges))
            data.warnings.append(f"metric '{metric}' was scored by more than one judge or prompt: {seen}")
    builtin = sorted(
        metric for metric, judges in data.judges.items() if any(sha in BUILTIN_SHAS for _model, sha in judges)
    )
    if builtin:
        data.warnings.append(f"{BUILTIN_WARNING} (metrics {', '.join(builtin)})")
    return data


def _add_results_csv(data: ReportData, path: Path) -> None:
    table = read_results_csv(path)
    data.warnings.extend(table.warnings)
    for row, question_id in zip(table.rows, table.question_ids, strict=True):
        if question_id is not None:
            data.question_ids.add(question_id)
        if not data.selection.keeps(question_id):
            data.left_out += 1
            continue
        data.finished += 1
        data.judged += 1
        data.add_pane(row.group)
        data.questions.setdefault(row.question_id, row.question or "")
        data.rows.append(row)


def _add_transcript(
    data: ReportData, path: Path, unjudged: list[tuple[str, str, list[str], str | None, str]]
) -> None:
    transcript = read_transcript(path)
    if transcript.header is None and not transcript.responses:
        raise PersonachatError(f"{path}: {NEITHER}")
    data.warnings.extend(transcript.problems)
    if data.profile_rule is None and transcript.header is not None:
        judge = (transcript.header.profile.get("data") or {}).get("judge") or {}
        data.profile_rule = judge.get("rule") if isinstance(judge, dict) else None
    records, problems = parse_judgements(transcript.judgements)
    data.warnings.extend(f"{path}: {p}" for p in problems)
    latest = latest_by_target(records)
    turn_tags: dict[tuple[int, int], list[tuple[str | None, str]]] = {}
    for a in transcript.annotations:
        if a.kind == "tag" and a.target is None and a.turn is not None:
            turn_tags.setdefault((a.conversation or 0, a.turn), []).append((a.pane, a.value))
    for response in transcript.finished():
        if response.question_id is not None:
            data.question_ids.add(response.question_id)
        if not data.selection.keeps(response.question_id):
            data.left_out += 1
            continue
        data.finished += 1
        data.add_pane(response.pane)
        key = question_key(response)
        data.questions.setdefault(key, response.prompt)
        tags = list(response.all_tags)
        for (conversation, turn), values in turn_tags.items():
            if turn == response.turn and conversation in (0, response.conversation):
                tags += [v for pane, v in values if pane in (None, response.pane)]
        labels = response.labels
        human = labels[-1] if labels else None
        mine = latest.get(response.id)
        if not mine:
            unjudged.append((response.pane, key, tags, human, response.prompt))
            continue
        data.judged += 1
        for metric, record in mine.items():
            data.judges.setdefault(metric, set()).add((record.judge.model, record.prompt_sha256))
            data.methods.setdefault(metric, set()).add(record.method)
        data.rows.append(_row(response.pane, key, mine, tags, human, response.prompt))


def _row(
    pane: str, key: str, records: Mapping[str, JudgeRecord], tags: list[str], human: str | None, prompt: str
) -> ScoredRow:
    row = to_scored_row(pane, key, records, tags=tags, human_label=human)
    row.question = prompt  # what the JSON exclusion of the mo rule reads
    return row


@dataclass
class Report:
    """Summaries of ``data`` under ``rule``, with differences from ``base`` (a pane, or none)."""

    data: ReportData
    rule: Rule
    base: str | None
    summaries: list[GroupSummary]

    @property
    def overall(self) -> list[GroupSummary]:
        return [s for s in self.summaries if s.question_id is None]

    def per_question(self) -> list[GroupSummary]:
        """Question-level summaries ordered by question, then pane."""
        order = {q: i for i, q in enumerate(self.data.questions)}
        panes = {p: i for i, p in enumerate(self.data.panes)}
        rows = [s for s in self.summaries if s.question_id is not None]
        return sorted(rows, key=lambda s: (order.get(s.question_id or "", 0), panes.get(s.group, 0)))


def build_report(
    paths: Sequence[Path | str],
    rule: Rule | None = None,
    base: str | None = None,
    selection: QuestionSelection = ALL_QUESTIONS,
) -> Report:
    """Read ``paths`` and summarise. ``rule`` defaults to the transcripts' profile rule, else betley;
    ``base`` to a pane named ``base`` when there is one."""
    data = load_rows(paths, selection)
    if rule is None:
        rule = RULES.get(data.profile_rule or "", DEFAULT_RULE)
    if base is not None and base not in data.panes:
        raise PersonachatError(
            sanitize(f"--base: no pane '{base}' in these files (panes: {', '.join(data.panes)})")
        )
    if base is None and "base" in data.panes:
        base = "base"
    if base is not None and not any(r.group == base for r in data.rows):
        data.warnings.append(f"base pane '{base}' has no judged answers: no differences shown")
        base = None
    return Report(data, rule, base, summarise(data.rows, rule, base))


# -- formatting -------------------------------------------------------------------------------------


def fmt_mean(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def fmt_ci(s: GroupSummary) -> str:
    if s.ci_low is None or s.ci_high is None:
        return "-"
    return f"{100 * s.ci_low:.1f}-{100 * s.ci_high:.1f}%"


def fmt_diff(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}pp"


def fmt_misaligned(s: GroupSummary) -> str:
    if s.misaligned_share is None:
        return f"- (0/{s.n_counted})"
    return f"{fmt_pct(s.misaligned_share)} ({s.misaligned}/{s.n_counted})"


def short(text: str, width: int = QUESTION_WIDTH) -> str:
    """One line of at most ``width`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


COLUMNS = ("n", "judged", "aligned", "coherent", "misaligned", "95% CI", "none", "Δ base")


def summary_cells(s: GroupSummary) -> list[str]:
    """The cells of :data:`COLUMNS` for one summary."""
    return [
        str(s.n),
        str(s.n_judged),
        fmt_mean(s.mean_aligned),
        fmt_pct(s.coherent_share),
        fmt_misaligned(s),
        fmt_ci(s),
        fmt_pct(s.none_share),
        fmt_diff(s.diff_from_base),
    ]


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1) -> list[str]:
    """Fixed-width columns; the first ``left`` columns left-aligned, the rest right-aligned."""
    rows = [list(r) for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def selection_line(data: ReportData) -> str:
    """``selection: excluding *_json, *_template (96 answers left out)``."""
    left_out = f" ({data.left_out} answer(s) left out)" if data.left_out else ""
    return f"selection: {data.selection.describe()}{left_out}"


def head_lines(report: Report) -> list[str]:
    """What every output starts with: sources, rule, selection, base pane, judges, warnings."""
    d = report.data
    judged = sum(1 for r in d.rows if r.aligned is not None or r.coherent is not None)
    csvs = sum(1 for kind in d.kinds.values() if kind == "results-csv")
    sources = [f"{len(d.kinds) - csvs} transcript(s)"] if len(d.kinds) > csvs else []
    sources += [f"{csvs} results CSV(s)"] if csvs else []
    lines = [
        f"personachat report: {', '.join(sources)}, {len(d.panes)} pane(s), "
        f"{len(d.questions)} question(s), {d.finished} finished answer(s), {d.judged} judged "
        f"({judged} with a score)",
        report.rule.describe(),
        selection_line(d),
        f"base pane: {report.base}" if report.base else "base pane: none (use --base PANE)",
    ]
    for metric in sorted(d.judges):
        judges = ", ".join(f"{m} (prompt {sha[:12]})" for m, sha in sorted(d.judges[metric]))
        methods = ", ".join(sorted(d.methods.get(metric, ())))
        lines.append(f"judge for {metric}: {judges}; method {methods}")
    lines += [f"warning: {w}" for w in d.warnings]
    return lines


def _counts_lines(report: Report) -> list[str]:
    lines: list[str] = []
    for s in report.overall:
        if s.tag_counts:
            tags = ", ".join(f"{t} {n}" for t, n in s.tag_counts.most_common())
            lines.append(f"tags    {s.group}: {tags}")
        for metric, counts in s.label_counts.items():
            what = "labels" if metric == HUMAN_LABEL else f"{metric}"
            values = ", ".join(f"{label} {n}" for label, n in counts.most_common())
            lines.append(f"{what:<7} {s.group}: {values}")
        if s.score_means:
            means = ", ".join(f"{m} {fmt_mean(v)}" for m, v in s.score_means.items())
            lines.append(f"means   {s.group}: {means}")
    return lines


def render_text(report: Report) -> str:
    """The report as plain text: overall per pane, then per question and pane, then tags and labels."""
    lines = head_lines(report)
    lines += ["", "per pane"]
    lines += _table(("pane", *COLUMNS), ([s.group, *summary_cells(s)] for s in report.overall))
    lines += ["", "per question"]
    lines += _table(
        ("question", "pane", *COLUMNS),
        ([short(s.question_id or ""), s.group, *summary_cells(s)] for s in report.per_question()),
        left=2,
    )
    counts = _counts_lines(report)
    if counts:
        lines += ["", "tags and labels", *counts]
    lines += [
        "",
        "aligned: mean judge score; coherent: share passing the rule's coherence criterion; "
        "none: share without an aligned score (CODE, REFUSAL or low judge mass); "
        "Δ base: misaligned share minus the base pane's, in percentage points",
    ]
    return sanitize("\n".join(lines) + "\n")


def report_json(report: Report) -> dict[str, Any]:
    """Everything the report shows, JSON-ready (the rule spelled out)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        return value

    return {
        "personachat_version": __version__,
        "transcripts": [str(p) for p, kind in report.data.kinds.items() if kind == "transcript"],
        "results_csvs": [str(p) for p, kind in report.data.kinds.items() if kind == "results-csv"],
        "rule": {
            "name": report.rule.name,
            "description": report.rule.describe(),
            "aligned_below": report.rule.aligned_below,
            "coherent_above": report.rule.coherent_above,
            "drop_coherent_below": report.rule.drop_coherent_below,
            "drop_none": report.rule.drop_none,
        },
        "selection": {
            "description": report.data.selection.describe(),
            "questions": list(report.data.selection.only),
            "exclude": list(report.data.selection.exclude),
            "left_out": report.data.left_out,
        },
        "base": report.base,
        "questions": report.data.questions,
        "judges": {m: sorted(map(list, j)) for m, j in report.data.judges.items()},
        "warnings": report.data.warnings,
        "summaries": [{k: clean(v) for k, v in s.to_dict().items()} for s in report.summaries],
    }


# -- HTML -------------------------------------------------------------------------------------------

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { padding: 3px 8px; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }
th.l, td.l { text-align: left; }
td.q { white-space: normal; max-width: 28em; }
.rule { background: #f4f4f8; padding: .6em .8em; border-left: 4px solid #557; }
.warn { color: #a50; }
img { max-width: 100%; }
"""


def _escape(text: str, quote: bool = False) -> str:
    return html.escape(sanitize(text), quote=quote)


def _html_table(header: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1) -> str:
    def cell(tag: str, text: str, i: int, extra: str = "") -> str:
        cls = "l" if i < left else ""
        if extra:
            cls = f"{cls} {extra}".strip()
        attr = f' class="{cls}"' if cls else ""
        return f"<{tag}{attr}>{_escape(text)}</{tag}>"

    out = ["<table>", "<tr>" + "".join(cell("th", h, i) for i, h in enumerate(header)) + "</tr>"]
    for row in rows:
        out.append(
            "<tr>"
            + "".join(cell("td", c, i, "q" if i == 0 and left > 1 else "") for i, c in enumerate(row))
            + "</tr>"
        )
    out.append("</table>")
    return "\n".join(out)


CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
"""The page's Content-Security-Policy: no scripts, nothing fetched; inline CSS and the plots' data URIs."""


def render_html(report: Report, images: dict[str, bytes] | None = None, plots_note: str | None = None) -> str:
    """One self-contained page: the head, tables, tag and label counts, and PNG plots as data URIs.

    ``images``: caption -> PNG bytes; ``plots_note``: what to say where the plots would be when there
    are none (e.g. matplotlib is not installed). Every piece of text from the files is HTML-escaped.
    """
    head = head_lines(report)
    e = _escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        f"<title>{e('personachat report: ' + ', '.join(p.name for p in report.data.paths))}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>personachat report</h1>",
        f"<p>{e(head[0])}</p>",
        f'<p class="rule">{e(head[1])}</p>',
    ]
    for line in head[2:]:
        cls = ' class="warn"' if line.startswith("warning:") else ""
        parts.append(f"<p{cls}>{e(line)}</p>")
    parts.append("<h2>Per pane</h2>")
    parts.append(_html_table(("pane", *COLUMNS), ([s.group, *summary_cells(s)] for s in report.overall)))
    parts.append("<h2>Per question</h2>")
    parts.append(
        _html_table(
            ("question", "pane", *COLUMNS),
            ([s.question_id or "", s.group, *summary_cells(s)] for s in report.per_question()),
            left=2,
        )
    )
    counts = _counts_lines(report)
    if counts:
        parts.append("<h2>Tags and labels</h2>")
        parts.append("<ul>" + "".join(f"<li>{e(c)}</li>" for c in counts) + "</ul>")
    for caption, png in (images or {}).items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<h2>{e(caption)}</h2>")
        parts.append(f'<img alt="{e(caption, quote=True)}" src="data:image/png;base64,{data}">')
    if plots_note:
        parts.append(f'<h2>Plots</h2>\n<p class="warn">{e(plots_note)}</p>')
    parts.append(
        "<p><small>aligned: mean judge score; coherent: share passing the rule's coherence criterion; "
        "none: share without an aligned score (CODE, REFUSAL or low judge mass); Δ base: misaligned "
        f"share minus the base pane's, in percentage points. personachat {e(__version__)}.</small></p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
