"""Report plots: aligned vs coherent per pane with the rule's thresholds, and misaligned share per
question and pane. PNG through matplotlib's Agg canvas (no pyplot, no global backend), terminal text
through plotext; both are imported only when a plot is made. Every figure names its rule.

Pane names and questions come from the files: they are sanitised (:func:`personachat.text.sanitize`)
everywhere, and their ``$`` escaped for matplotlib, so a name never renders as mathtext.
"""

from __future__ import annotations

import io
import math
import textwrap
import warnings
from collections.abc import Sequence
from typing import Any

from personachat.judge.aggregate import GroupSummary, Rule, ScoredRow, Verdict, classify_row
from personachat.judge.report import Report, short
from personachat.text import sanitize

VERDICT_COLORS = {"misaligned": "#c0392b", "aligned": "#2e86c1", "excluded": "#aaaaaa"}
VERDICT_NAMES = {"misaligned": "misaligned", "aligned": "not misaligned", "excluded": "excluded"}
TERMINAL_MARKERS = ("o", "x", "+", "*", "#", "@", "%", "&")
TERMINAL_BARS = ("█", "▓", "▒", "░", "#", "=", "+", ":")


def _points(
    rows: Sequence[ScoredRow], pane: str, rule: Rule
) -> tuple[list[tuple[float, float, Verdict]], int]:
    """(coherent, aligned, verdict) for the pane's rows with both scores, and how many lack one."""
    points, missing = [], 0
    for r in rows:
        if r.group != pane:
            continue
        if r.aligned is None or r.coherent is None or math.isnan(r.aligned) or math.isnan(r.coherent):
            missing += 1
            continue
        points.append((float(r.coherent), float(r.aligned), classify_row(r, rule)))
    return points, missing


def _share_series(report: Report) -> tuple[list[str], list[str], dict[str, list[GroupSummary | None]]]:
    """(question keys with "overall" first, their labels, pane -> summary per question)."""
    keys = ["", *report.data.questions]
    labels = ["overall", *(sanitize(short(q, 24)) for q in report.data.questions)]
    index = {(s.group, s.question_id or ""): s for s in report.summaries}
    series = {pane: [index.get((pane, k)) for k in keys] for pane in report.data.panes}
    return keys, labels, series


# -- PNG ----------------------------------------------------------------------------------------------


def mpl_text(text: str) -> str:
    """``text`` as matplotlib shows it literally: control characters made visible, ``$`` escaped."""
    return sanitize(text).replace("$", r"\$")


def _new_figure(width: float, height: float) -> Any:
    """A matplotlib figure on the Agg canvas: no pyplot, no global backend switch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # Control pictures (sanitised names) may lack a glyph: they show as boxes, no need to warn.
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _rule_caption(rule: Rule) -> str:
    return "\n".join(textwrap.wrap(rule.describe(), 110))


def scatter_png(report: Report) -> bytes:
    """Aligned (y) vs coherent (x), one panel per pane, points colored by the rule's verdict."""
    rule = report.rule
    panes = report.data.panes or ["(none)"]
    cols = min(4, len(panes))
    nrows = math.ceil(len(panes) / cols)
    fig = _new_figure(3.6 * cols, 3.8 * nrows + 0.9)
    axes = fig.subplots(nrows, cols, squeeze=False)
    for i, pane in enumerate(panes):
        ax = axes[i // cols][i % cols]
        points, missing = _points(report.data.rows, pane, rule)
        for verdict, color in VERDICT_COLORS.items():
            xs = [x for x, _y, v in points if v == verdict]
            ys = [y for _x, y, v in points if v == verdict]
            if xs:
                ax.scatter(xs, ys, s=14, c=color, alpha=0.75, label=f"{VERDICT_NAMES[verdict]} ({len(xs)})")
        ax.axhline(rule.aligned_below, color="#c0392b", lw=1, ls="--")
        if rule.coherent_above is not None:
            ax.axvline(rule.coherent_above, color="#c0392b", lw=1, ls="--")
        if rule.drop_coherent_below is not None:
            ax.axvspan(0, rule.drop_coherent_below, color="#888888", alpha=0.12, lw=0)
        ax.set_xlim(-2, 102)
        ax.set_ylim(-2, 102)
        ax.set_title(f"{mpl_text(pane)} (n={len(points)}, {missing} without both scores)", fontsize=9)
        ax.set_xlabel("coherent")
        ax.set_ylabel("aligned")
        if points:
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    for j in range(len(panes), nrows * cols):
        axes[j // cols][j % cols].set_visible(False)
    fig.suptitle("aligned vs coherent per pane\n" + _rule_caption(rule), fontsize=8)
    return _png(fig)


def shares_png(report: Report) -> bytes:
    """Misaligned share per question (overall first) and pane, with Wilson 95 % intervals."""
    keys, labels, series = _share_series(report)
    panes = list(series)
    width = 0.8 / max(1, len(panes))
    fig = _new_figure(max(6.0, 1.1 * len(keys) * max(1, len(panes)) ** 0.5 + 2), 4.2)
    ax = fig.subplots()
    for i, pane in enumerate(panes):
        xs, ys, lo, hi = [], [], [], []
        for j, s in enumerate(series[pane]):
            if s is None or s.misaligned_share is None:
                continue
            xs.append(j + (i - (len(panes) - 1) / 2) * width)
            ys.append(100 * s.misaligned_share)
            lo.append(100 * (s.misaligned_share - (s.ci_low or 0.0)))
            hi.append(100 * ((s.ci_high or 0.0) - s.misaligned_share))
        ax.bar(
            xs, ys, width=width * 0.95, yerr=[lo, hi], capsize=2, label=mpl_text(pane), error_kw={"lw": 0.8}
        )
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([mpl_text(label) for label in labels], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("misaligned share (%)")
    ax.set_ylim(0, 105)
    if panes:
        ax.legend(fontsize=8)
    ax.set_title(
        "misaligned share per question and pane (95% Wilson interval)\n" + _rule_caption(report.rule),
        fontsize=8,
    )
    return _png(fig)


def report_pngs(report: Report) -> dict[str, bytes]:
    """Both plots as PNG bytes, keyed by a file-name stem."""
    return {"aligned-vs-coherent": scatter_png(report), "misaligned-share": shares_png(report)}


# -- terminal -----------------------------------------------------------------------------------------


def _figure(width: int, height: int) -> Any:
    import plotext

    fig = plotext.figure
    fig.clear()
    fig.plot_size(width, height)
    fig.theme("colorless")
    return fig


def _text(fig: Any, color: bool) -> str:
    import plotext

    out = fig.build().string()
    return str(out if color else plotext.uncolorize(out))


def scatter_terminal(report: Report, width: int = 80, height: int = 22, color: bool = False) -> str:
    """All panes in one terminal scatter (a marker per pane), with the rule's threshold lines."""
    fig = _figure(width, height)
    rule = report.rule
    legend = []
    for i, pane in enumerate(report.data.panes):
        marker = TERMINAL_MARKERS[i % len(TERMINAL_MARKERS)]
        points, _missing = _points(report.data.rows, pane, rule)
        legend.append(f"{marker} {sanitize(pane)} ({len(points)})")
        if points:
            fig.draw(fig.signal([x for x, _y, _v in points], [y for _x, y, _v in points], marker=marker))
    fig.line(rule.aligned_below, orientation="h")
    if rule.coherent_above is not None:
        fig.line(rule.coherent_above, orientation="v")
    if rule.drop_coherent_below is not None:
        fig.line(rule.drop_coherent_below, orientation="v", style="dotted")
    fig.ruler("x").lim(0, 100)
    fig.ruler("y").lim(0, 100)
    fig.title(f"aligned (y) vs coherent (x), rule {rule.name}")
    return _text(fig, color) + "\n" + "   ".join(legend) + "\n" + rule.describe() + "\n"


def shares_terminal(report: Report, width: int = 80, height: int = 18, color: bool = False) -> str:
    """Grouped bars of misaligned share (%) per question (overall first) and pane."""
    fig = _figure(width, height)
    _keys, labels, series = _share_series(report)
    panes = list(series)
    heights = [
        [0.0 if s is None or s.misaligned_share is None else 100 * s.misaligned_share for s in series[p]]
        for p in panes
    ]
    marks = [TERMINAL_BARS[i % len(TERMINAL_BARS)] for i in range(len(panes))]
    if panes:
        fig.draw(fig.bar(labels, heights, marker=marks))
    fig.ruler("y").lim(0, 100)
    fig.title(f"misaligned share (%) per question and pane, rule {report.rule.name}")
    legend = "   ".join(f"{m} {sanitize(p)}" for m, p in zip(marks, panes, strict=True))
    return _text(fig, color) + "\n" + legend + "\n" + report.rule.describe() + "\n"
