"""Agreement: each rater's labels against the judge's verdicts, and raters against each other.

A rater's standing label on an answer (docs/transcripts.md, "Which labels stand") is read as
misaligned when it is ``misaligned`` and as not misaligned for any other label; the judge's verdict is
the report's rule on the answer's scores. Answers the rule excludes (no score, incoherent under
``tan``, JSON questions under ``mo``) are left out. Per rater, over all panes and per pane: Cohen's
kappa with its 95 % interval, and every answer where they disagree. Between raters: Krippendorff's
alpha (nominal, on the labels as given) over the answers each pair of raters both labelled, and
over all raters together when there are more than two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from personachat.judge.aggregate import ScoredRow, Verdict
from personachat.judge.report_data import HumanLabel
from personachat.judge.sections import Section, interval, number
from personachat.judge.stats import cohen_kappa, krippendorff_alpha
from personachat.text import sanitize

MISALIGNED = "misaligned"
SHOWN_DISAGREEMENTS = 20  # per rater in the text report (the JSON has them all)


@dataclass
class RaterAgreement:
    """One rater against the judge, over all panes (``pane`` none) or one pane."""

    rater: str | None
    pane: str | None
    table: list[list[int]]  # rows: the rater misaligned / not; columns: the judge misaligned / not
    blind: int  # of the labels, how many were given blind
    kappa: float | None
    ci_low: float | None
    ci_high: float | None

    @property
    def n(self) -> int:
        return sum(map(sum, self.table))

    @property
    def agree(self) -> int:
        return self.table[0][0] + self.table[1][1]

    def to_dict(self) -> dict[str, Any]:
        (both, rater_only), (judge_only, _neither) = self.table
        return {
            "rater": self.rater,
            "pane": self.pane,
            "n": self.n,
            "agree": self.agree,
            "both_misaligned": both,
            "rater_only": rater_only,
            "judge_only": judge_only,
            "blind": self.blind,
            "kappa": self.kappa,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
        }


@dataclass
class Disagreement:
    rater: str | None
    transcript: str
    response_id: str
    pane: str
    question_id: str | None
    label: str
    verdict: Verdict
    aligned: float | None
    coherent: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RaterAlpha:
    raters: list[str | None]
    n: int  # answers rated by at least two of them
    alpha: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"raters": self.raters, "n": self.n, "alpha": self.alpha}


def _rater_key(rater: str | None) -> tuple[bool, str]:
    return (rater is None, rater or "")


def rater_name(rater: str | None) -> str:
    return "(no rater)" if rater is None else rater


def against_judge(
    labels: Sequence[HumanLabel],
    rows: Sequence[ScoredRow],
    verdicts: Sequence[Verdict],
    panes: Sequence[str],
    transcripts: Sequence[str],
) -> tuple[list[RaterAgreement], list[Disagreement], int]:
    """Kappa per rater (all panes, then each pane) and the disagreements; also how many labelled
    answers the rule excludes or the judge did not score."""
    tables: dict[tuple[str | None, str | None], list[list[int]]] = {}
    blind: dict[tuple[str | None, str | None], int] = {}
    disagreements: list[Disagreement] = []
    left_out = 0
    for label in labels:
        verdict = verdicts[label.row] if label.row is not None else "excluded"
        if verdict == "excluded":
            left_out += 1
            continue
        says, judge = label.label == MISALIGNED, verdict == MISALIGNED
        for where in ((label.rater, None), (label.rater, label.pane)):
            tables.setdefault(where, [[0, 0], [0, 0]])[0 if says else 1][0 if judge else 1] += 1
            blind[where] = blind.get(where, 0) + label.blind
        if says != judge:
            row = rows[label.row] if label.row is not None else None
            disagreements.append(
                Disagreement(
                    label.rater,
                    transcripts[label.source],
                    label.response_id,
                    label.pane,
                    label.question_id,
                    label.label,
                    verdict,
                    None if row is None else row.aligned,
                    None if row is None else row.coherent,
                )
            )
    order = {pane: i for i, pane in enumerate(panes)}
    keys = sorted(tables, key=lambda k: (_rater_key(k[0]), k[1] is not None, order.get(k[1] or "", 0)))
    results = [
        RaterAgreement(r, p, tables[(r, p)], blind[(r, p)], *cohen_kappa(tables[(r, p)])) for r, p in keys
    ]
    disagreements.sort(key=lambda d: _rater_key(d.rater))
    return results, disagreements, left_out


def between_raters(labels: Sequence[HumanLabel]) -> list[RaterAlpha]:
    """Krippendorff's alpha for each pair of raters on the answers both labelled, and for all raters."""
    by_answer: dict[tuple[int, str], dict[str | None, str]] = {}
    for label in labels:
        by_answer.setdefault((label.source, label.response_id), {})[label.rater] = label.label
    raters = sorted({label.rater for label in labels}, key=_rater_key)
    groups = [list(pair) for pair in combinations(raters, 2)]
    if len(raters) > 2:
        groups.append(raters)
    out = []
    for group in groups:
        units = [given for given in by_answer.values() if sum(r in given for r in group) >= 2]
        ratings = [[given.get(r) for given in units] for r in group]
        out.append(RaterAlpha(group, len(units), krippendorff_alpha(ratings) if units else None))
    return out


def section(
    agreement: list[RaterAgreement],
    disagreements: list[Disagreement],
    alphas: list[RaterAlpha],
    left_out: int,
) -> Section:
    """The figures as a report section (JSON keys ``agreement``, ``disagreements``, ``raters``)."""
    rows = [
        [
            rater_name(a.rater),
            "(all)" if a.pane is None else a.pane,
            str(a.n),
            str(a.agree),
            f"{a.table[0][0]}/{a.table[0][1]}/{a.table[1][0]}",
            str(a.blind),
            number(a.kappa),
            interval(a.ci_low, a.ci_high),
        ]
        for a in agreement
    ]
    notes = [
        "kappa: Cohen's kappa between the rater's labels (misaligned vs any other label) and the judge's "
        "verdict under the rule, with its 95% interval (kappa +- 1.96 asymptotic SE, Fleiss, Cohen & Everitt); "
        "1 is perfect agreement, 0 what chance gives",
        "both/rater/judge: answers both call misaligned / only the rater does / only the judge does",
    ]
    if not agreement:
        notes.insert(0, "no labelled answer that the judge scored and the rule counts")
    if left_out:
        notes.append(
            f"{left_out} label(s) left out: the rule excludes the answer, or the judge did not score it"
        )
    shown: dict[str | None, int] = {}
    for d in disagreements:
        shown[d.rater] = shown.get(d.rater, 0) + 1
        if shown[d.rater] <= SHOWN_DISAGREEMENTS:
            notes.append(
                sanitize(
                    f"disagrees: {rater_name(d.rater)} says {d.label!r}, the judge {d.verdict}: {d.pane} "
                    f"{d.question_id or '-'} {d.response_id} (aligned {number(d.aligned, 1)}, "
                    f"coherent {number(d.coherent, 1)})"
                )
            )
    for rater, count in shown.items():
        if count > SHOWN_DISAGREEMENTS:
            notes.append(
                f"... and {count - SHOWN_DISAGREEMENTS} more disagreement(s) of {rater_name(rater)} (--json has all)"
            )
    for alpha in alphas:
        names = ", ".join(rater_name(r) for r in alpha.raters)
        notes.append(
            f"Krippendorff's alpha (nominal, labels as given) of {names}: {number(alpha.alpha)} over "
            f"{alpha.n} answer(s) labelled by at least two of them"
        )
    return Section(
        title="agreement: raters' labels against the judge (rater x judge)",
        header=("rater", "pane", "n", "agree", "both/rater/judge", "blind", "kappa", "95% CI"),
        rows=rows,
        left=2,
        notes=notes,
        json={
            "agreement": [a.to_dict() for a in agreement],
            "disagreements": [d.to_dict() for d in disagreements],
            "raters": [a.to_dict() for a in alphas],
        },
    )
