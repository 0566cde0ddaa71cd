"""Paired comparisons: the same prompt-set jobs answered in two runs, or by two panes of one run.

Two answers pair up when they answer the same job: ``--paired`` matches the two transcripts' answers
by (pane, question id, paraphrase, sample, turn), ``--paired-panes A,B`` matches pane A's and pane
B's answers within each transcript by (question id, paraphrase, sample, turn). A pair counts when the
rule counts both answers (neither is excluded). Per pane (or pair of panes), over all questions and
per question: the pairs misaligned in both, only in A, only in B, in neither; the exact McNemar
p-value; and B's misaligned share minus A's with Newcombe's hybrid score interval
(:mod:`personachat.judge.stats`). Answers to typed prompts (no job) never pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from personachat.errors import PersonachatError
from personachat.judge.aggregate import ScoredRow, Verdict
from personachat.judge.sections import Section, p_value, pct, pp, pp_interval
from personachat.judge.stats import mcnemar_exact, paired_difference
from personachat.text import sanitize

Counts = list[int]  # [both, a_only, b_only, neither]


@dataclass
class PairedResult:
    """One line of a paired comparison; ``question_id`` none for all questions together."""

    kind: str  # "runs" or "panes"
    a: str
    b: str
    pane: str
    question_id: str | None
    both: int
    a_only: int
    b_only: int
    neither: int
    p_value: float | None
    diff: float | None
    ci_low: float | None
    ci_high: float | None

    @property
    def n_pairs(self) -> int:
        return self.both + self.a_only + self.b_only + self.neither

    @property
    def share_a(self) -> float | None:
        return (self.both + self.a_only) / self.n_pairs if self.n_pairs else None

    @property
    def share_b(self) -> float | None:
        return (self.both + self.b_only) / self.n_pairs if self.n_pairs else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "a": self.a,
            "b": self.b,
            "pane": self.pane,
            "question_id": self.question_id,
            "n_pairs": self.n_pairs,
            "both": self.both,
            "a_only": self.a_only,
            "b_only": self.b_only,
            "neither": self.neither,
            "share_a": self.share_a,
            "share_b": self.share_b,
            "p_value": self.p_value,
            "diff": self.diff,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
        }


def _result(kind: str, a: str, b: str, pane: str, question_id: str | None, counts: Counts) -> PairedResult:
    both, a_only, b_only, neither = counts
    if not sum(counts):
        return PairedResult(
            kind, a, b, pane, question_id, both, a_only, b_only, neither, None, None, None, None
        )
    diff = paired_difference(both, a_only, b_only, neither)
    p = mcnemar_exact(a_only, b_only)
    return PairedResult(
        kind, a, b, pane, question_id, both, a_only, b_only, neither, p, diff.diff, diff.ci_low, diff.ci_high
    )


def _tally(
    pairs: dict[Any, list[Verdict | None]], group_of: Any, question_order: dict[str, int]
) -> dict[tuple[str, str | None], Counts]:
    """Counts per (group, None) and (group, question) of the pairs whose both verdicts count."""
    counts: dict[tuple[str, str | None], Counts] = {}
    for key, (va, vb) in pairs.items():
        if va is None or vb is None or va == "excluded" or vb == "excluded":
            continue
        cell = (0 if va == "misaligned" else 2) + (
            0 if vb == "misaligned" else 1
        )  # both, a_only, b_only, neither
        group, question = group_of(key), key[-4]
        for where in ((group, None), (group, question)):
            counts.setdefault(where, [0, 0, 0, 0])[cell] += 1
    return dict(
        sorted(counts.items(), key=lambda kv: (kv[0][1] is not None, question_order.get(kv[0][1] or "", 0)))
    )


def compare_runs(
    rows: Sequence[ScoredRow],
    verdicts: Sequence[Verdict],
    sources: tuple[int, int],
    names: tuple[str, str],
    panes: Sequence[str],
    questions: Sequence[str],
) -> tuple[list[PairedResult], list[str]]:
    """Pairs of the same job and pane in transcript ``sources[0]`` (A) and ``sources[1]`` (B)."""
    pairs: dict[tuple[str, str, int, int, int], list[Verdict | None]] = {}
    repeated = 0
    for row, verdict in zip(rows, verdicts, strict=True):
        ref = row.answer
        if ref is None or ref.source not in sources or ref.question_id is None:
            continue
        key = (row.group, ref.question_id, ref.paraphrase_ix, ref.sample_ix, ref.turn_ix)
        slot = pairs.setdefault(key, [None, None])
        side = sources.index(ref.source)
        repeated += slot[side] is not None
        slot[side] = verdict
    unpaired = sum(1 for a, b in pairs.values() if a is None or b is None)
    order = {q: i for i, q in enumerate(questions)}
    counts = _tally(pairs, lambda key: key[0], order)
    results = [
        _result("runs", names[0], names[1], pane, question, cell)
        for pane in panes
        for (group, question), cell in counts.items()
        if group == pane
    ]
    notes = [f"{unpaired} judged answer(s) have no partner in the other run"] if unpaired else []
    if repeated:
        notes.append(f"{repeated} job(s) answered twice in one run: the later answer is paired")
    return results, notes


def compare_panes(
    rows: Sequence[ScoredRow],
    verdicts: Sequence[Verdict],
    pane_a: str,
    pane_b: str,
    questions: Sequence[str],
) -> tuple[list[PairedResult], list[str]]:
    """Pairs of pane A's and pane B's answers to the same job in the same transcript."""
    pairs: dict[tuple[int, str, int, int, int], list[Verdict | None]] = {}
    for row, verdict in zip(rows, verdicts, strict=True):
        ref = row.answer
        if ref is None or ref.question_id is None or row.group not in (pane_a, pane_b):
            continue
        key = (ref.source, ref.question_id, ref.paraphrase_ix, ref.sample_ix, ref.turn_ix)
        pairs.setdefault(key, [None, None])[0 if row.group == pane_a else 1] = verdict
    label = f"{pane_a} vs {pane_b}"
    order = {q: i for i, q in enumerate(questions)}
    counts = _tally(pairs, lambda _key: label, order)
    results = [
        _result("panes", pane_a, pane_b, label, question, cell) for (_g, question), cell in counts.items()
    ]
    unpaired = sum(1 for a, b in pairs.values() if a is None or b is None)
    notes = [f"{label}: {unpaired} judged answer(s) have no partner in the other pane"] if unpaired else []
    return results, notes


HEADER = ("pane", "question", "pairs", "both", "A only", "B only", "A", "B", "B - A", "95% CI", "p (McNemar)")


def section(title: str, results: list[PairedResult], notes: list[str], legend: list[str]) -> Section:
    """The results as a report section (JSON key ``paired``)."""
    rows = [
        [
            r.pane,
            "(all)" if r.question_id is None else r.question_id,
            str(r.n_pairs),
            str(r.both),
            str(r.a_only),
            str(r.b_only),
            pct(r.share_a),
            pct(r.share_b),
            pp(r.diff),
            pp_interval(r.ci_low, r.ci_high),
            p_value(r.p_value),
        ]
        for r in results
    ]
    if not results:
        notes = ["no pairs: no job was answered (and judged) on both sides", *notes]
    return Section(
        title=title,
        header=HEADER,
        rows=rows,
        left=2,
        notes=[*legend, *notes, *PAIRED_NOTES],
        json={"paired": [r.to_dict() for r in results]},
    )


PAIRED_NOTES = [
    "pairs: answers to the same job (question, paraphrase, sample, turn) that the rule counts on both sides; "
    "both / A only / B only: pairs misaligned on both sides, only in A, only in B",
    "B - A: B's misaligned share minus A's over the pairs, with Newcombe's hybrid score 95% interval; "
    "p: exact McNemar test (two-sided binomial test on the A only and B only pairs)",
]


def parse_pane_pair(text: str, panes: Sequence[str]) -> tuple[str, str]:
    """``A,B`` as two distinct panes of the report; :class:`PersonachatError` otherwise."""
    names = [name.strip() for name in text.split(",")]
    if len(names) != 2 or not all(names) or names[0] == names[1]:
        raise PersonachatError(sanitize(f"--paired-panes wants two different panes as A,B, not {text!r}"))
    missing = [name for name in names if name not in panes]
    if missing:
        raise PersonachatError(
            sanitize(f"--paired-panes: no pane '{missing[0]}' in these files (panes: {', '.join(panes)})")
        )
    return names[0], names[1]
