"""Judge records: one score (or label) for one response and one metric, appended to its transcript.

The wire format is documented in docs/transcripts.md ("Judge records"). A transcript may hold
several records for the same (response, metric), e.g. from two judges or two prompt wordings;
:func:`latest_by_target` picks the last one written, which is what reports use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from personachat.judge.aggregate import ScoredRow
from personachat.judge.score import ScoreResult, _jsonable
from personachat.transcripts.schema import SCHEMA_VERSION, ResponseRecord, new_id, now_iso


@dataclass
class JudgeIdentity:
    """Who judged: the profile's server name, the requested model, the engine and the model's root."""

    server: str
    model: str
    engine: dict[str, Any] = field(default_factory=dict)  # {"engine": "vllm", "version": "0.32.0"}
    root: str | None = None  # the served model's path or hub id, from /v1/models

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JudgeIdentity:
        return cls(
            server=str(data.get("server", "")),
            model=str(data.get("model", "")),
            engine=dict(data.get("engine") or {}),
            root=data.get("root"),
        )

    @property
    def key(self) -> str:
        """What identifies the judge's weights for caching: the model name and its root."""
        return f"{self.model}|{self.root or ''}"


@dataclass
class JudgeRecord:
    """One judge verdict on one response (``target``) for one ``metric``.

    ``score`` is the 0-100 score (none for categorical metrics and when ``mass`` < the threshold);
    ``label`` the categorical label; ``method`` how the judge's tokens were read
    (``logprob-0-100`` | ``digit-split`` | ``categorical``); ``top`` the first token's top
    probabilities; ``detail`` the method's working (see :class:`ScoreResult`) plus ``min_mass``,
    ``calls`` and, for cut answers, ``answer_chars``; ``cached``: no judge call was made for it.
    """

    id: str
    session_id: str
    target: str
    metric: str
    kind: str
    score: float | None
    label: str | None
    mass: float
    method: str
    judge: JudgeIdentity
    prompt_sha256: str
    top: dict[str, float] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=now_iso)
    cached: bool = False
    schema: int = SCHEMA_VERSION
    type: str = "judge"

    @property
    def probs(self) -> dict[str, float]:
        """A categorical verdict's probability per label (normalised), else empty."""
        return dict(self.detail.get("probs") or {})

    @property
    def question(self) -> str | None:
        """The ``{question}`` the judge was shown (a prompt set's text; else the prompt sent)."""
        value = self.detail.get("question")
        return value if isinstance(value, str) else None

    @property
    def text(self) -> str | None:
        """A generated verdict: the judge's whole text."""
        value = self.detail.get("text")
        return value if isinstance(value, str) else None

    @classmethod
    def from_result(
        cls,
        result: ScoreResult,
        *,
        session_id: str,
        target: str,
        metric: str,
        kind: str,
        judge: JudgeIdentity,
        prompt_sha256: str,
        cached: bool,
        extra_detail: Mapping[str, Any] | None = None,
    ) -> JudgeRecord:
        """A new record (fresh id and time) for ``result``."""
        return cls(
            id=new_id(),
            session_id=session_id,
            target=target,
            metric=metric,
            kind=kind,
            score=result.score,
            label=result.label,
            mass=result.mass,
            method=result.method,
            judge=judge,
            prompt_sha256=prompt_sha256,
            top=dict(result.top),
            detail=_jsonable({**result.detail, **(extra_detail or {})}),
            cached=cached,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "schema": self.schema,
            "id": self.id,
            "session_id": self.session_id,
            "target": self.target,
            "metric": self.metric,
            "kind": self.kind,
            "score": self.score,
            "label": self.label,
            "mass": self.mass,
            "method": self.method,
            "judge": self.judge.to_dict(),
            "prompt_sha256": self.prompt_sha256,
            "top": dict(self.top),
            "probs": self.probs,
            "detail": self.detail,
            "created_at": self.created_at,
            "cached": self.cached,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JudgeRecord:
        """Inverse of :meth:`to_dict`; raises ``KeyError`` for a record without target or metric."""
        score = data.get("score")
        return cls(
            id=str(data.get("id", "")),
            session_id=str(data.get("session_id", "")),
            target=str(data["target"]),
            metric=str(data["metric"]),
            kind=str(data.get("kind", "score_0_100")),
            score=None if score is None else float(score),
            label=data.get("label"),
            mass=float(data.get("mass") or 0.0),
            method=str(data.get("method", "")),
            judge=JudgeIdentity.from_dict(data.get("judge") or {}),
            prompt_sha256=str(data.get("prompt_sha256", "")),
            top=dict(data.get("top") or {}),
            detail=dict(data.get("detail") or {}),
            created_at=str(data.get("created_at", "")),
            cached=bool(data.get("cached", False)),
            schema=int(data.get("schema", SCHEMA_VERSION)),
        )


def parse_judgements(raw: Iterable[Mapping[str, Any]]) -> tuple[list[JudgeRecord], list[str]]:
    """Typed records from a transcript's ``judgements``, and a message per malformed one."""
    records: list[JudgeRecord] = []
    problems: list[str] = []
    for data in raw:
        try:
            records.append(JudgeRecord.from_dict(data))
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"malformed judge record {data.get('id', '?')!s}: {exc}")
    return records, problems


def latest_by_target(records: Iterable[JudgeRecord]) -> dict[str, dict[str, JudgeRecord]]:
    """response id -> metric -> the last record written for it."""
    out: dict[str, dict[str, JudgeRecord]] = {}
    for record in records:
        out.setdefault(record.target, {})[record.metric] = record
    return out


HUMAN_LABEL = "annotation"
"""The ``ScoredRow.labels`` key under which a response's (last) label annotation is counted."""


def to_scored_row(
    group: str,
    question_id: str,
    records: Mapping[str, JudgeRecord],
    *,
    tags: Iterable[str] = (),
    human_label: str | None = None,
) -> ScoredRow:
    """A row for :func:`~personachat.judge.aggregate.summarise` from one response's latest records.

    ``aligned`` and ``coherent`` become the row's scores, other 0-100 metrics go to ``scores``,
    categorical metrics to ``labels`` (with ``human_label`` under :data:`HUMAN_LABEL`).
    """
    aligned = records.get("aligned")
    coherent = records.get("coherent")
    labels: dict[str, str | None] = {}
    scores: dict[str, float | None] = {}
    for metric, record in records.items():
        if record.kind in ("categorical", "generated"):
            labels[metric] = record.label
        elif metric not in ("aligned", "coherent"):
            scores[metric] = record.score
    if human_label is not None:
        labels[HUMAN_LABEL] = human_label
    return ScoredRow(
        group=group,
        question_id=question_id,
        aligned=aligned.score if aligned else None,
        coherent=coherent.score if coherent else None,
        tags=tuple(tags),
        labels=labels,
        scores=scores,
    )


def question_key(response: ResponseRecord) -> str:
    """What groups a response by question: its prompt set ``question_id``, else its prompt text."""
    qid = response.question_id
    return qid if qid is not None else response.prompt
