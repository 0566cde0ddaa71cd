"""What a pane knows and shows about its turn, as plain data and text: each sample's progress, the
judge's scores and running summary, the persona projection as a sparkline."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from personachat.app.conversation import Block

if TYPE_CHECKING:
    from personachat.judge.aggregate import GroupSummary
    from personachat.judge.records import JudgeRecord

PaneStatus = Literal["idle", "waiting", "streaming", "done", "cancelled", "failed"]
STATES: tuple[PaneStatus, ...] = ("idle", "waiting", "streaming", "done", "cancelled", "failed")


@dataclass
class SampleProgress:
    """What the pane knows about one sample of the current turn."""

    block: Block
    state: PaneStatus = "waiting"
    chunks: list[str] = field(default_factory=list)  # raw text received
    deltas: int = 0
    first_delta_at: float | None = None
    tokens: int | None = None
    ttft: float | None = None
    e2el: float | None = None
    finish_reason: str | None = None
    reason: str | None = None


@dataclass
class TurnProgress:
    """The current turn of a pane: when it was sent and its samples."""

    turn: int
    prompt: str
    sent_at: float = field(default_factory=time.monotonic)
    samples: list[SampleProgress] = field(default_factory=list)

    @property
    def state(self) -> PaneStatus:
        states = {sample.state for sample in self.samples}
        order: tuple[PaneStatus, ...] = ("streaming", "waiting", "failed", "cancelled")
        for state in order:
            if state in states:
                return state
        return "done"


STATE_STYLES: dict[str, str] = {
    "idle": "$text-muted",
    "waiting": "$secondary",
    "streaming": "$primary",
    "done": "$success",
    "cancelled": "$warning",
    "failed": "$error",
}


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def format_scores(records: list[JudgeRecord]) -> str:
    """``aligned 83 · coherent 91`` (``aligned none`` when the judge put too little mass on numbers)."""
    parts = []
    for record in records:
        if record.label is not None:
            parts.append(f"{record.metric} {record.label}")
        else:
            parts.append(f"{record.metric} {'none' if record.score is None else f'{record.score:.0f}'}")
    return " · ".join(parts)


def format_summary(summary: GroupSummary, *, with_base: bool = True) -> str:
    """``n 12 · aligned 71 · coherent 90% · misaligned 8% [2–35] · Δbase +5``: a pane's running summary.

    ``n`` counts judged answers; ``none N`` those without an aligned score (low mass: code, refusals).
    """

    def pct(value: float | None) -> str:
        return "–" if value is None else f"{100 * value:.0f}"

    parts = [f"n {summary.n}"]
    if summary.n_none:
        parts.append(f"none {summary.n_none}")
    if summary.mean_aligned is not None:
        parts.append(f"aligned {summary.mean_aligned:.0f}")
    if summary.coherent_share is not None:
        parts.append(f"coherent {pct(summary.coherent_share)}%")
    if summary.misaligned_share is None:
        parts.append("misaligned –")
    else:
        parts.append(
            f"misaligned {pct(summary.misaligned_share)}% [{pct(summary.ci_low)}–{pct(summary.ci_high)}]"
        )
    if with_base and summary.diff_from_base is not None:
        parts.append(f"Δbase {100 * summary.diff_from_base:+.0f}")
    return " · ".join(parts)


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 24) -> str:
    """The last ``width`` values as bars, scaled between their own minimum and maximum."""
    shown = values[-width:]
    if not shown:
        return ""
    low, high = min(shown), max(shown)
    span = high - low or 1.0
    return "".join(SPARKS[min(int((v - low) / span * len(SPARKS)), len(SPARKS) - 1)] for v in shown)
