"""How each pane differs: judged transcripts summarised per pane and per question, as text, HTML or JSON.

Rows are finished responses that have judge records (the latest record per response and metric
counts), and the rows of results CSVs (:mod:`personachat.judge.results_csv`: each model a group,
as a pane is); panes with the same name in several files are pooled. A question selection
(``--questions``, ``--exclude``) leaves answers out before anything is counted. The rule, its
thresholds and the selection head every output. The comparisons (:class:`Comparisons`: paired runs
and panes, agreement, ranking; checkpoint series whenever panes have steps) follow the tables as
sections (:mod:`personachat.judge.sections`). Plots come from :mod:`personachat.judge.plots`.
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
from personachat.judge import agreement, paired, ranking, series
from personachat.judge.aggregate import (
    DEFAULT_RULE,
    RULES,
    GroupSummary,
    Rule,
    Verdict,
    summarise,
    verdicts_of,
)
from personachat.judge.ranking import RankedPane
from personachat.judge.records import HUMAN_LABEL
from personachat.judge.report_data import ReportData, load_rows
from personachat.judge.scan import gc_paused
from personachat.judge.sections import Section, merge_json
from personachat.judge.series import SeriesPoint
from personachat.selection import ALL_QUESTIONS, QuestionSelection
from personachat.text import sanitize

QUESTION_WIDTH = 48


@dataclass(frozen=True)
class Comparisons:
    """The figures a report adds to its tables: ``--paired`` (two runs), ``--paired-panes A,B`` (pairs
    of panes), ``--agreement``, ``--ranking`` (with ``resamples`` bootstrap resamples from ``seed``)."""

    paired: bool = False
    paired_panes: tuple[str, ...] = ()  # each "A,B"
    agreement: bool = False
    ranking: bool = False
    resamples: int = 1000
    seed: int = 0


@dataclass
class Report:
    """Summaries of ``data`` under ``rule``, with differences from ``base`` (a pane, or none), and the
    sections the comparisons add (checkpoint series whenever a pane has a step)."""

    data: ReportData
    rule: Rule
    base: str | None
    summaries: list[GroupSummary]
    verdicts: list[Verdict] = field(default_factory=list)  # each row's, under ``rule``
    sections: list[Section] = field(default_factory=list)
    series: list[SeriesPoint] = field(default_factory=list)
    ranking: list[RankedPane] = field(default_factory=list)

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
    compare: Comparisons = Comparisons(),
) -> Report:
    """Read ``paths`` and summarise. ``rule`` defaults to the transcripts' profile rule, else betley;
    ``base`` to a pane named ``base`` when there is one."""
    if compare.paired and len(paths) != 2:
        raise PersonachatError(
            f"--paired compares two runs: give exactly two transcripts, not {len(paths)} file(s)"
        )
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
    with gc_paused():
        verdicts = verdicts_of(data.rows, rule)
        report = Report(data, rule, base, summarise(data.rows, rule, base, verdicts), verdicts)
        _compare(report, compare)
    return report


def _compare(report: Report, compare: Comparisons) -> None:
    """The sections: checkpoint series, paired comparisons, agreement, ranking."""
    data, rows, verdicts = report.data, report.data.rows, report.verdicts
    report.series = series.checkpoint_series(report.overall, data.pane_info)
    if report.series:
        report.sections.append(series.section(report.series))
    questions = list(data.questions)
    if compare.paired:
        if any(kind != "transcript" for kind in data.kinds.values()):
            raise PersonachatError("--paired compares two transcripts: results CSVs have no jobs to pair")
        a, b = (str(p) for p in data.paths)
        results, notes = paired.compare_runs(rows, verdicts, (0, 1), (a, b), data.panes, questions)
        legend = [f"A: {a}", f"B: {b}"]
        report.sections.append(
            paired.section("paired: run B against run A, answer by answer", results, notes, legend)
        )
    for pair in compare.paired_panes:
        pane_a, pane_b = paired.parse_pane_pair(pair, data.panes)
        results, notes = paired.compare_panes(rows, verdicts, pane_a, pane_b, questions)
        legend = [f"A: pane {pane_a}", f"B: pane {pane_b}"]
        title = f"paired: pane {pane_b} against pane {pane_a}, job by job"
        report.sections.append(paired.section(title, results, notes, legend))
    if compare.agreement:
        names = [str(p) for p in data.paths]
        kappas, disagreements, left_out = agreement.against_judge(
            data.human_labels, rows, verdicts, data.panes, names
        )
        alphas = agreement.between_raters(data.human_labels)
        report.sections.append(agreement.section(kappas, disagreements, alphas, left_out))
    if compare.ranking:
        preferences, problems = ranking.read_preferences(data.preferences)
        report.ranking = ranking.rank(preferences, data.panes, compare.resamples, compare.seed)
        report.sections.append(
            ranking.section(
                report.ranking,
                preferences,
                problems,
                data.preferences_left_out,
                compare.resamples,
                compare.seed,
            )
        )


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
    for section in report.sections:
        lines += ["", section.title]
        if section.rows:
            lines += _table(section.header, section.rows, left=section.left)
        lines += section.notes
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
        **merge_json(report.sections),
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
    for section in report.sections:
        parts.append(f"<h2>{e(section.title)}</h2>")
        if section.rows:
            parts.append(_html_table(section.header, section.rows, left=section.left))
        if section.notes:
            parts.append("<ul>" + "".join(f"<li>{e(note)}</li>" for note in section.notes) + "</ul>")
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
