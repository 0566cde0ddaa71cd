"""Report plots: aligned vs coherent per pane with the rule's thresholds, misaligned share per
question and pane, and, when the report has them, the share by training step and the ranking. PNG through matplotlib's Agg canvas (no pyplot, no global backend), terminal text
through plotext; both are imported only when a plot is made. Every figure names its rule.

Pane names and questions come from the files: they are sanitised (:func:`personachat.text.sanitize`)
everywhere, and their ``$`` escaped for matplotlib, so a name never renders as mathtext.
"""

from __future__ import annotations

import io
import math
import textwrap
import warnings
from typing import Any

from personachat.judge.aggregate import GroupSummary, Rule, Verdict, classify_row
from personachat.judge.report import Report, short
from personachat.text import sanitize

VERDICT_COLORS = {"misaligned": "#c0392b", "aligned": "#2e86c1", "excluded": "#aaaaaa"}
VERDICT_NAMES = {"misaligned": "misaligned", "aligned": "not misaligned", "excluded": "excluded"}
TERMINAL_MARKERS = ("o", "x", "+", "*", "#", "@", "%", "&")
TERMINAL_BARS = ("█", "▓", "▒", "░", "#", "=", "+", ":")


MAX_POINTS = 20_000
"""Points drawn per pane in a scatter: beyond, every k-th row is drawn (the title says so)."""


def _points(report: Report) -> dict[str, tuple[list[tuple[float, float, Verdict]], int]]:
    """pane -> ((coherent, aligned, verdict) of its rows with both scores, how many lack one)."""
    out: dict[str, tuple[list[tuple[float, float, Verdict]], int]] = {}
    missing: dict[str, int] = {}
    verdicts = report.verdicts or [classify_row(r, report.rule) for r in report.data.rows]
    for r, verdict in zip(report.data.rows, verdicts, strict=True):
        if r.aligned is None or r.coherent is None or math.isnan(r.aligned) or math.isnan(r.coherent):
            missing[r.group] = missing.get(r.group, 0) + 1
            continue
        out.setdefault(r.group, ([], 0))[0].append((float(r.coherent), float(r.aligned), verdict))
    return {pane: (out.get(pane, ([], 0))[0], missing.get(pane, 0)) for pane in report.data.panes}


def _thinned(points: list[tuple[float, float, Verdict]]) -> tuple[list[tuple[float, float, Verdict]], int]:
    """At most :data:`MAX_POINTS` of ``points`` (every k-th), and k."""
    step = math.ceil(len(points) / MAX_POINTS) if len(points) > MAX_POINTS else 1
    return points[::step], step


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
    by_pane = _points(report)
    for i, pane in enumerate(panes):
        ax = axes[i // cols][i % cols]
        points, missing = by_pane.get(pane, ([], 0))
        drawn, step = _thinned(points)
        for verdict, color in VERDICT_COLORS.items():
            xs = [x for x, _y, v in drawn if v == verdict]
            ys = [y for _x, y, v in drawn if v == verdict]
            count = sum(1 for _x, _y, v in points if v == verdict)
            if xs:
                ax.scatter(xs, ys, s=14, c=color, alpha=0.75, label=f"{VERDICT_NAMES[verdict]} ({count})")
        ax.axhline(rule.aligned_below, color="#c0392b", lw=1, ls="--")
        if rule.coherent_above is not None:
            ax.axvline(rule.coherent_above, color="#c0392b", lw=1, ls="--")
        if rule.drop_coherent_below is not None:
            ax.axvspan(0, rule.drop_coherent_below, color="#888888", alpha=0.12, lw=0)
        ax.set_xlim(-2, 102)
        ax.set_ylim(-2, 102)
        thinned = f", every {step}th drawn" if step > 1 else ""
        ax.set_title(
            f"{mpl_text(pane)} (n={len(points)}, {missing} without both scores{thinned})", fontsize=9
        )
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


def series_png(report: Report) -> bytes:
    """Misaligned share against training step, one line per checkpoint series, with Wilson 95 % intervals."""
    fig = _new_figure(7.0, 4.2)
    ax = fig.subplots()
    top = 0.0
    for name in dict.fromkeys(p.series for p in report.series):
        points = [p for p in report.series if p.series == name and p.misaligned_share is not None]
        if not points:
            continue
        ys = [100 * (p.misaligned_share or 0.0) for p in points]
        lo = [100 * ((p.misaligned_share or 0.0) - (p.ci_low or 0.0)) for p in points]
        hi = [100 * ((p.ci_high or 0.0) - (p.misaligned_share or 0.0)) for p in points]
        ax.errorbar([p.step for p in points], ys, yerr=[lo, hi], marker="o", capsize=3, label=mpl_text(name))
        for p, y in zip(points, ys, strict=True):
            ax.annotate(mpl_text(p.pane), (p.step, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        top = max(top, *(100 * (p.ci_high or 0.0) for p in points))
    ax.set_xlabel("training step")
    ax.set_ylabel("misaligned share (%)")
    ax.set_ylim(0, min(105.0, top * 1.2 + 1))
    ax.legend(fontsize=8)
    ax.set_title(
        "misaligned share by training step (95% Wilson interval)\n" + _rule_caption(report.rule), fontsize=8
    )
    return _png(fig)


def ranking_png(report: Report) -> bytes:
    """Bradley-Terry strength per pane with its bootstrap 95 % interval, strongest on top."""
    ranked = list(reversed(report.ranking))
    fig = _new_figure(6.5, 1.2 + 0.45 * len(ranked))
    ax = fig.subplots()
    ys = range(len(ranked))
    ax.errorbar(
        [r.strength for r in ranked],
        ys,
        xerr=[[r.strength - r.ci_low for r in ranked], [r.ci_high - r.strength for r in ranked]],
        fmt="o",
        capsize=3,
    )
    ax.axvline(0, color="#888888", lw=0.8, ls="--")
    ax.set_yticks(list(ys))
    ax.set_yticklabels([f"{mpl_text(r.pane)} (n={r.n})" for r in ranked], fontsize=8)
    ax.set_xlabel("Bradley-Terry strength (log scale, centred on 0)")
    ax.set_title("ranking from blind preferences (bootstrap 95% interval)", fontsize=8)
    return _png(fig)


PNG_CAPTIONS = {
    "aligned-vs-coherent": "Aligned vs coherent per pane",
    "misaligned-share": "Misaligned share per question and pane",
    "misaligned-by-step": "Misaligned share by training step",
    "ranking": "Ranking from preferences",
}
"""Each plot's file-name stem and its caption on the HTML page."""


def report_pngs(report: Report) -> dict[str, bytes]:
    """The plots as PNG bytes, keyed by a file-name stem (:data:`PNG_CAPTIONS`): the scatter and the
    shares always, the checkpoint series and the ranking when the report has them."""
    pngs = {"aligned-vs-coherent": scatter_png(report), "misaligned-share": shares_png(report)}
    if report.series:
        pngs["misaligned-by-step"] = series_png(report)
    if report.ranking:
        pngs["ranking"] = ranking_png(report)
    return pngs


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
    by_pane = _points(report)
    for i, pane in enumerate(report.data.panes):
        marker = TERMINAL_MARKERS[i % len(TERMINAL_MARKERS)]
        points, _missing = by_pane.get(pane, ([], 0))
        legend.append(f"{marker} {sanitize(pane)} ({len(points)})")
        drawn, _step = _thinned(points)
        if drawn:
            fig.draw(fig.signal([x for x, _y, _v in drawn], [y for _x, y, _v in drawn], marker=marker))
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
