"""How each pane differs: judged transcripts summarised per pane and per question, as text, HTML or JSON.

Rows are finished responses that have judge records (the latest record per response and metric
counts); panes with the same name in several transcripts are pooled. The rule and its thresholds
head every output. Plots come from :mod:`personachat.judge.plots`.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personachat import __version__
from personachat.errors import PersonachatError
from personachat.judge.aggregate import DEFAULT_RULE, RULES, GroupSummary, Rule, ScoredRow, summarise
from personachat.judge.records import (
    HUMAN_LABEL,
    latest_by_target,
    parse_judgements,
    question_key,
    to_scored_row,
)
from personachat.text import sanitize
from personachat.transcripts.reader import read_transcript

QUESTION_WIDTH = 48


@dataclass
class ReportData:
    """Rows and their context, read from one or more transcripts."""

    paths: list[Path]
    rows: list[ScoredRow]
    panes: list[str]  # in order of first appearance
    questions: dict[str, str]  # question key (question_id, else the prompt) -> the prompt first seen
    finished: int = 0  # finished responses in all transcripts
    judged: int = 0  # finished responses with at least one judge record
    judges: dict[str, set[tuple[str, str]]] = field(default_factory=dict)  # metric -> {(model, prompt sha)}
    methods: dict[str, set[str]] = field(default_factory=dict)  # metric -> scoring methods seen
    profile_rule: str | None = None  # [judge] rule of the first transcript's profile
    warnings: list[str] = field(default_factory=list)


def load_rows(paths: Sequence[Path | str]) -> ReportData:
    """Read transcripts into report rows (see the module doc for which responses count)."""
    data = ReportData(paths=[Path(p) for p in paths], rows=[], panes=[], questions={})
    unjudged: list[tuple[str, str, list[str], str | None]] = []
    for path in data.paths:
        transcript = read_transcript(path)
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
            data.finished += 1
            if response.pane not in data.panes:
                data.panes.append(response.pane)
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
                unjudged.append((response.pane, key, tags, human))
                continue
            data.judged += 1
            for metric, record in mine.items():
                data.judges.setdefault(metric, set()).add((record.judge.model, record.prompt_sha256))
                data.methods.setdefault(metric, set()).add(record.method)
            data.rows.append(to_scored_row(response.pane, key, mine, tags=tags, human_label=human))
    if not data.rows and unjudged:
        data.warnings.append("no judge records: showing tags and labels only (run `personachat judge` first)")
        data.rows = [to_scored_row(p, q, {}, tags=t, human_label=h) for p, q, t, h in unjudged]
    elif unjudged:
        data.warnings.append(
            f"{len(unjudged)} finished response(s) have no judge records and are left out "
            "(run `personachat judge` on the transcript)"
        )
    for metric, judges in sorted(data.judges.items()):
        if len(judges) > 1:
            seen = ", ".join(f"{m} / prompt {sha[:8]}" for m, sha in sorted(judges))
            data.warnings.append(f"metric '{metric}' was scored by more than one judge or prompt: {seen}")
    return data


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


def build_report(paths: Sequence[Path | str], rule: Rule | None = None, base: str | None = None) -> Report:
    """Read ``paths`` and summarise. ``rule`` defaults to the transcripts' profile rule, else betley;
    ``base`` to a pane named ``base`` when there is one."""
    data = load_rows(paths)
    if rule is None:
        rule = RULES.get(data.profile_rule or "", DEFAULT_RULE)
    if base is not None and base not in data.panes:
        raise PersonachatError(
            f"--base: no pane '{base}' in these transcripts (panes: {', '.join(data.panes)})"
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


def head_lines(report: Report) -> list[str]:
    """What every output starts with: sources, rule, base pane, judges, warnings."""
    d = report.data
    judged = sum(1 for r in d.rows if r.aligned is not None or r.coherent is not None)
    lines = [
        f"personachat report: {len(d.paths)} transcript(s), {len(d.panes)} pane(s), "
        f"{len(d.questions)} question(s), {d.finished} finished response(s), {d.judged} judged "
        f"({judged} with a score)",
        report.rule.describe(),
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
        "transcripts": [str(p) for p in report.data.paths],
        "rule": {
            "name": report.rule.name,
            "description": report.rule.describe(),
            "aligned_below": report.rule.aligned_below,
            "coherent_above": report.rule.coherent_above,
            "drop_coherent_below": report.rule.drop_coherent_below,
            "drop_none": report.rule.drop_none,
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


def render_html(report: Report, images: dict[str, bytes] | None = None) -> str:
    """One self-contained page: the head, tables, tag and label counts, and PNG plots as data URIs.

    ``images``: caption -> PNG bytes. Every piece of text from transcripts is HTML-escaped.
    """
    head = head_lines(report)
    e = _escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
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
    parts.append(
        "<p><small>aligned: mean judge score; coherent: share passing the rule's coherence criterion; "
        "none: share without an aligned score (CODE, REFUSAL or low judge mass); Δ base: misaligned "
        f"share minus the base pane's, in percentage points. personachat {e(__version__)}.</small></p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
