"""What a report reads: judged transcripts (one streaming pass each) and results CSVs, as rows.

Rows are finished responses that have judge records (the latest record per response and metric
counts) and the rows of results CSVs (:mod:`personachat.judge.results_csv`: each model a group, as
a pane is); panes with the same name in several files are pooled. A question selection
(``--questions``, ``--exclude``) leaves answers out before anything is counted. Beside the rows:
each rater's standing label on each answer (agreement), blind preferences (ranking) and the panes'
training steps from the transcripts' headers (checkpoint series).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from personachat.errors import PersonachatError
from personachat.judge.aggregate import NO_LABELS, NO_SCORES, AnswerRef, ScoredRow
from personachat.judge.metrics import BUILTIN_WARNING
from personachat.judge.prompts import EXAMPLE_METRICS
from personachat.judge.records import HUMAN_LABEL
from personachat.judge.results_csv import NEITHER, SourceKind, read_results_csv, source_kind
from personachat.judge.scan import (
    KIND,
    LABEL,
    SCORE,
    SOURCE,
    Judged,
    ScannedTranscript,
    gc_paused,
    scan_transcript,
)
from personachat.selection import ALL_QUESTIONS, QuestionSelection
from personachat.text import sanitize
from personachat.transcripts.schema import AnnotationRecord, current_labels

BUILTIN_SHAS = {metric.sha256 for metric in EXAMPLE_METRICS.values()}
LABEL_KINDS = ("categorical", "generated")


class HumanLabel(NamedTuple):
    """One rater's standing label on one answer (docs/transcripts.md, "Which labels stand")."""

    source: int  # the transcript's position among the report's files
    response_id: str
    pane: str
    question_id: str | None
    rater: str | None  # none: a label recorded without a rater
    label: str
    blind: bool
    row: int | None  # the answer's row in ReportData.rows; none when it has no judge records


@dataclass
class PaneInfo:
    """What a transcript header says of a pane: its training ``step`` and ``series`` when given."""

    step: float | None = None
    series: str | None = None


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
    human_labels: list[HumanLabel] = field(default_factory=list)
    preferences: list[tuple[int, AnnotationRecord]] = field(default_factory=list)  # (source, record)
    preferences_left_out: int = 0  # preferences on answers the report does not keep
    pane_info: dict[str, PaneInfo] = field(default_factory=dict)

    def add_pane(self, pane: str) -> None:
        if pane not in self.panes:
            self.panes.append(pane)

    @property
    def transcripts(self) -> list[Path]:
        return [p for p in self.paths if self.kinds.get(p) == "transcript"]


def load_rows(paths: Sequence[Path | str], selection: QuestionSelection = ALL_QUESTIONS) -> ReportData:
    """Read transcripts and results CSVs into report rows (see the module doc for which answers count).

    Raises :class:`PersonachatError` for a file that is neither, for ``--questions`` ids that no
    file has, and when nothing is left to report.
    """
    data = ReportData(paths=[Path(p) for p in paths], rows=[], panes=[], questions={}, selection=selection)
    unjudged: list[ScoredRow] = []
    with gc_paused():
        for source, path in enumerate(data.paths):
            data.kinds[path] = source_kind(path)
            if data.kinds[path] == "results-csv":
                _add_results_csv(data, path)
            else:
                _add_transcript(data, source, path, unjudged)
    try:
        selection.check(sorted(data.question_ids))
    except PersonachatError as exc:  # its did-you-mean names ids from the files
        raise PersonachatError(sanitize(str(exc))) from None
    if not data.rows and unjudged:
        data.warnings.append("no judge records: showing tags and labels only (run `personachat judge` first)")
        data.rows = unjudged
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


def _pane_info(data: ReportData, scanned: ScannedTranscript) -> None:
    """Steps and series of the header's panes (``profile.panes``, else the profile as loaded)."""
    profile = scanned.header.profile if scanned.header is not None else {}
    for entries in (profile.get("panes"), (profile.get("data") or {}).get("panes")):
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                continue
            info = data.pane_info.setdefault(entry["name"], PaneInfo())
            step, series = entry.get("step"), entry.get("series")
            if isinstance(step, int | float) and not isinstance(step, bool):
                if info.step is not None and info.step != step:
                    data.warnings.append(
                        f"pane '{entry['name']}' has step {info.step:g} in one file and {step:g} in "
                        f"{scanned.path}: the first is used"
                    )
                elif info.step is None:
                    info.step = step
            if isinstance(series, str) and info.series is None:
                info.series = series


def _add_transcript(data: ReportData, source: int, path: Path, unjudged: list[ScoredRow]) -> None:
    scanned = scan_transcript(path, data.selection.keeps)
    if scanned.header is None and not scanned.responses:
        raise PersonachatError(f"{path}: {NEITHER}")
    data.warnings.extend(scanned.messages)
    data.warnings.extend(f"{path}: {p}" for p in scanned.judge_problems)
    if data.profile_rule is None and scanned.header is not None:
        judge = (scanned.header.profile.get("data") or {}).get("judge") or {}
        data.profile_rule = judge.get("rule") if isinstance(judge, dict) else None
    _pane_info(data, scanned)
    data.question_ids |= scanned.seen_question_ids
    data.left_out += scanned.left_out
    data.finished += len(scanned)
    annotations = _annotations_by_answer(data, source, scanned)
    turn_tags = _turn_tags(scanned.annotations)
    columns = {metric: scanned.verdicts(metric) for metric in scanned.judged}
    scanned.judged.clear()
    seen: dict[str, set[tuple[str, str, str]]] = {metric: set() for metric in columns}
    unusual = any(m not in ("aligned", "coherent") for m in columns) or any(
        e is not None and e[KIND] in LABEL_KINDS for col in columns.values() for e in col
    )
    aligned_col = columns.get("aligned") or [None] * len(scanned)
    coherent_col = columns.get("coherent") or [None] * len(scanned)
    seen_aligned, seen_coherent = seen.get("aligned", set()), seen.get("coherent", set())
    new_ref = partial(tuple.__new__, AnswerRef)  # a NamedTuple's own constructor is slow in bulk
    add_pane, questions, rows = data.add_pane, data.questions, data.rows
    for position, rid in enumerate(scanned.ids):
        pane = scanned.panes[position]
        qid = scanned.question_ids[position]
        prompt = scanned.prompts[position]
        key = qid if qid is not None else prompt
        add_pane(pane)
        if key not in questions:
            questions[key] = prompt
        tags = scanned.tags[position]
        mine = annotations.get(position)
        if mine or turn_tags:
            where = (scanned.conversations[position], scanned.turns[position])
            tags = _all_tags(tags, mine or [], turn_tags, where, pane)
        human = None
        if mine:
            standing = list(current_labels(mine).values())
            human = standing[-1].value if standing else None
        ref = new_ref(
            (
                source,
                rid,
                qid,
                scanned.paraphrases[position],
                scanned.samples[position],
                scanned.turn_ixs[position],
            )
        )
        aligned, coherent = aligned_col[position], coherent_col[position]
        if (
            aligned is None
            and coherent is None
            and not (unusual and any(col[position] is not None for col in columns.values()))
        ):
            labels = {HUMAN_LABEL: human} if human is not None else NO_LABELS
            unjudged.append(ScoredRow(pane, key, None, None, tags, labels, NO_SCORES, prompt, ref))
            if mine:
                _add_human_labels(data, ref, pane, mine, None)
            continue
        data.judged += 1
        if mine:
            _add_human_labels(data, ref, pane, mine, len(rows))
        if unusual or human is not None:
            records = [(m, e) for m, col in columns.items() if (e := col[position]) is not None]
            rows.append(_row(pane, key, records, aligned, coherent, tags, human, prompt, ref, seen))
            continue
        if aligned is not None:
            seen_aligned.add(aligned[SOURCE])
        if coherent is not None:
            seen_coherent.add(coherent[SOURCE])
        rows.append(
            ScoredRow(
                pane,
                key,
                None if aligned is None else aligned[SCORE],
                None if coherent is None else coherent[SCORE],
                tags,
                NO_LABELS,
                NO_SCORES,
                prompt,  # what the JSON exclusion of the mo rule reads
                ref,
            )
        )
    for metric, sources in seen.items():
        if sources:
            data.judges.setdefault(metric, set()).update((model, sha) for model, sha, _method in sources)
            data.methods.setdefault(metric, set()).update(method for _model, _sha, method in sources)


def _row(
    pane: str,
    key: str,
    records: list[tuple[str, Judged]],
    aligned: Judged | None,
    coherent: Judged | None,
    tags: tuple[str, ...],
    human: str | None,
    prompt: str,
    ref: AnswerRef,
    seen: dict[str, set[tuple[str, str, str]]],
) -> ScoredRow:
    """As :func:`personachat.judge.records.to_scored_row` makes a row of one response's latest records."""
    labels: dict[str, Any] | None = None
    scores: dict[str, float | None] | None = None
    for metric, entry in records:
        seen[metric].add(entry[SOURCE])
        if entry[KIND] in LABEL_KINDS:
            labels = labels or {}
            labels[metric] = entry[LABEL]
        elif metric not in ("aligned", "coherent"):
            scores = scores or {}
            scores[metric] = entry[SCORE]
    if human is not None:
        labels = labels or {}
        labels[HUMAN_LABEL] = human
    return ScoredRow(
        pane,
        key,
        None if aligned is None else aligned[SCORE],
        None if coherent is None else coherent[SCORE],
        tags,
        NO_LABELS if labels is None else labels,
        NO_SCORES if scores is None else scores,
        prompt,
        ref,
    )


def _annotations_by_answer(
    data: ReportData, source: int, scanned: ScannedTranscript
) -> dict[int, list[AnnotationRecord]]:
    """Tags and labels by the position of the answer they target; preferences into ``data``."""
    by_answer: dict[int, list[AnnotationRecord]] = {}
    if not scanned.annotations:
        return by_answer
    index = scanned.index()
    for annotation in scanned.annotations:
        if annotation.kind == "preference":
            targets = annotation.targets
            if isinstance(targets, list) and not all(t in index for t in targets):
                data.preferences_left_out += 1
            else:
                data.preferences.append((source, annotation))
        elif annotation.target is not None and annotation.target in index:
            by_answer.setdefault(index[annotation.target], []).append(annotation)
    return by_answer


TurnTags = dict[int, dict[tuple[int, int], list[tuple[str | None, str]]]]


def _turn_tags(annotations: list[AnnotationRecord]) -> TurnTags:
    """Tags on a whole turn: turn -> {(conversation or 0, turn): [(pane or none, tag)]}, in file order."""
    out: TurnTags = {}
    for a in annotations:
        if a.kind == "tag" and a.target is None and a.turn is not None:
            out.setdefault(a.turn, {}).setdefault((a.conversation or 0, a.turn), []).append((a.pane, a.value))
    return out


def _all_tags(
    own: tuple[str, ...],
    annotations: list[AnnotationRecord],
    turn_tags: TurnTags,
    where: tuple[int, int],
    pane: str,
) -> tuple[str, ...]:
    """The record's tags, then tag annotations on it, then tags on its whole turn (for its pane or all)."""
    tags = [*own, *(a.value for a in annotations if a.kind == "tag")]
    conversation, turn = where
    for (tag_conversation, _turn), values in turn_tags.get(turn, {}).items():
        if tag_conversation in (0, conversation):
            tags += [v for p, v in values if p in (None, pane)]
    return tuple(tags)


def _add_human_labels(
    data: ReportData, ref: AnswerRef, pane: str, annotations: list[AnnotationRecord], row: int | None
) -> None:
    for a in current_labels(annotations).values():
        data.human_labels.append(
            HumanLabel(ref.source, ref.id, pane, ref.question_id, a.rater, a.value, a.blind, row)
        )
