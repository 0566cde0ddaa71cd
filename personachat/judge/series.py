"""Checkpoint series: the misaligned share against the training step, for panes that give a step.

A pane gives its step as ``step = N`` in the profile (recorded in the transcript header's
``profile.panes``). Panes belong to one series when they share a ``series`` name in the profile, or
else the same name up to its last ``-``, ``_``, ``@`` or ``/`` (``insecure-step100`` and
``insecure-step200`` are series ``insecure``; a name without one is a series of its own). With no
step anywhere, the report has no series.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from personachat.judge.aggregate import GroupSummary
from personachat.judge.report_data import PaneInfo
from personachat.judge.sections import Section, pct

_LAST_PART = re.compile(r"[-_@/][^-_@/]*$")


def default_series(pane: str) -> str:
    """The pane's name up to its last ``-``, ``_``, ``@`` or ``/`` (the whole name without one)."""
    return _LAST_PART.sub("", pane) or pane


@dataclass
class SeriesPoint:
    series: str
    pane: str
    step: float
    misaligned: int
    n_counted: int
    misaligned_share: float | None
    ci_low: float | None
    ci_high: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def checkpoint_series(overall: Sequence[GroupSummary], info: Mapping[str, PaneInfo]) -> list[SeriesPoint]:
    """One point per pane with a step, by series (in order of first appearance), then step."""
    points = [
        SeriesPoint(
            info[s.group].series or default_series(s.group),
            s.group,
            step,
            s.misaligned,
            s.n_counted,
            s.misaligned_share,
            s.ci_low,
            s.ci_high,
        )
        for s in overall
        if s.group in info and (step := info[s.group].step) is not None
    ]
    order = {name: i for i, name in enumerate(dict.fromkeys(p.series for p in points))}
    return sorted(points, key=lambda p: (order[p.series], p.step))


def section(points: list[SeriesPoint]) -> Section:
    """The series as a report section (JSON key ``series``)."""
    rows = [
        [
            p.series,
            f"{p.step:g}",
            p.pane,
            f"{pct(p.misaligned_share)} ({p.misaligned}/{p.n_counted})",
            "-" if p.ci_low is None or p.ci_high is None else f"{100 * p.ci_low:.1f}-{100 * p.ci_high:.1f}%",
        ]
        for p in points
    ]
    return Section(
        title="checkpoint series: misaligned share by training step",
        header=("series", "step", "pane", "misaligned", "95% CI"),
        rows=rows,
        left=1,
        notes=["series: the profile's series name, else the pane name up to its last -, _, @ or /"],
        json={"series": [p.to_dict() for p in points]},
    )
