"""A ranking of panes from blind preferences: a Bradley-Terry fit with bootstrap intervals.

A preference annotation (docs/transcripts.md) says which of two panes' answers a rater found
better (``value``: the winning pane, or ``tie``; ``panes``: the two). A rater who judges the same
two answers again replaces the earlier preference. A tie counts as half a win for each pane. The
fit (:func:`personachat.judge.stats.bradley_terry`) gives each pane a strength theta, centred on 0,
such that P(A preferred to B) = 1 / (1 + exp(theta_B - theta_A)); the interval is the 2.5th to
97.5th percentile over bootstrap resamples of the preferences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from personachat.judge.sections import Section, interval, number
from personachat.judge.stats import BT_PRIOR, bootstrap_bradley_terry
from personachat.transcripts.schema import AnnotationRecord

TIE = "tie"


@dataclass
class RankedPane:
    pane: str
    strength: float
    ci_low: float
    ci_high: float
    wins: float  # preferences won (a tie counts 1/2)
    n: int  # preferences it took part in

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Preference:
    rater: str | None
    a: str
    b: str
    winner: str  # a, b or "tie"
    blind: bool


def read_preferences(records: Sequence[tuple[int, AnnotationRecord]]) -> tuple[list[Preference], list[str]]:
    """The preferences that stand (a rater's later preference on the same two answers replaces the
    earlier one), and a message per record that is not a preference of two panes."""
    standing: dict[tuple[Any, ...], Preference] = {}
    problems: list[str] = []
    for source, record in records:
        panes = record.panes
        if not (
            isinstance(panes, list)
            and len(panes) == 2
            and all(isinstance(p, str) and p for p in panes)
            and panes[0] != panes[1]
            and record.value in (*panes, TIE)
        ):
            problems.append(
                f"preference {record.id} skipped: it needs two different panes and a value that is one of "
                f"them or 'tie' (panes {panes!r}, value {record.value!r})"
            )
            continue
        targets = record.targets if isinstance(record.targets, list) else [record.id]
        key = (source, record.rater, frozenset(map(str, targets)) or record.id)
        standing.pop(key, None)
        standing[key] = Preference(record.rater, panes[0], panes[1], record.value, record.blind)
    return list(standing.values()), problems


def rank(
    preferences: Sequence[Preference], panes: Sequence[str], resamples: int = 1000, seed: int = 0
) -> list[RankedPane]:
    """Bradley-Terry strengths with bootstrap intervals, strongest first (empty without preferences)."""
    if not preferences:
        return []
    seen = {p for pref in preferences for p in (pref.a, pref.b)}
    items = [p for p in panes if p in seen] + sorted(seen - set(panes))
    index = {pane: i for i, pane in enumerate(items)}
    outcomes = [
        (index[p.a], index[p.b], 0.5 if p.winner == TIE else 1.0 if p.winner == p.a else 0.0)
        for p in preferences
    ]
    strengths = bootstrap_bradley_terry(outcomes, len(items), resamples=resamples, seed=seed)
    wins = [0.0] * len(items)
    n = [0] * len(items)
    for i, j, share in outcomes:
        wins[i] += share
        wins[j] += 1 - share
        n[i] += 1
        n[j] += 1
    ranked = [
        RankedPane(pane, s.strength, s.ci_low, s.ci_high, wins[k], n[k])
        for k, (pane, s) in enumerate(zip(items, strengths, strict=True))
    ]
    return sorted(ranked, key=lambda r: -r.strength)


def section(
    ranked: list[RankedPane],
    preferences: Sequence[Preference],
    problems: list[str],
    left_out: int,
    resamples: int,
    seed: int,
) -> Section:
    """The ranking as a report section (JSON key ``ranking``)."""
    blind = sum(p.blind for p in preferences)
    raters = sorted({p.rater or "(no rater)" for p in preferences})
    notes = [
        f"{len(preferences)} preference(s) ({blind} given blind) by {len(raters)} rater(s)"
        + (f": {', '.join(raters)}" if raters else ""),
        "strength: Bradley-Terry log-strength, centred on 0; P(A preferred to B) = 1 / (1 + exp(strength B - "
        f"strength A)); a tie is half a win each; fit by MM with choix's prior alpha = {BT_PRIOR:g}",
        f"95% CI: 2.5th-97.5th percentile over {resamples} bootstrap resamples of the preferences (seed {seed})",
        *problems,
    ]
    if not preferences:
        notes.insert(0, "no preferences: nothing to rank (blind mode's preference keys record them)")
    if left_out:
        notes.append(f"{left_out} preference(s) left out: their answers are not among the answers reported")
    rows = [
        [r.pane, number(r.strength), interval(r.ci_low, r.ci_high), str(r.n), f"{r.wins:g}"] for r in ranked
    ]
    return Section(
        title="ranking: Bradley-Terry fit of the preferences",
        header=("pane", "strength", "95% CI", "preferences", "won"),
        rows=rows,
        notes=notes,
        json={"ranking": [r.to_dict() for r in ranked]},
    )
