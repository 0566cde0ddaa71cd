"""Versioned transcript records (see docs/transcripts.md).

A transcript is JSONL: one ``session`` header, then ``response``, ``annotation`` and ``judge``
records in the order they happened. Records are plain dataclasses; ``to_dict``/``from_dict`` are
the only place the wire names live.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1


def now_iso() -> str:
    """UTC timestamp with milliseconds, as written in every record."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def new_id() -> str:
    """A short unique id for records and sessions."""
    return uuid.uuid4().hex[:16]


_STR, _INT, _DICT, _LIST, _BOOL = (str,), (int,), (dict,), (list,), (bool,)
_OPT_STR = (str, type(None))
_OPT_INT = (int, type(None))
_OPT_NUM = (int, float, type(None))


def check_types(data: Mapping[str, Any], types: Mapping[str, tuple[type, ...]], what: str) -> None:
    """Raise :class:`TypeError` naming the first field of ``data`` whose value has the wrong type.

    A record of the wrong types (``"text": 123``) is then reported with its line and skipped by
    the reader, instead of breaking whatever shows it.
    """
    for key, allowed in types.items():
        if key not in data:
            continue
        value = data[key]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            names = "/".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise TypeError(f"{what} field '{key}' must be {names}, not {type(value).__name__}")


_HEADER_TYPES = {"session_id": _STR, "profile": _DICT, "servers": _DICT, "host": _DICT, "created_at": _STR}
RESPONSE_TYPES = {
    "id": _STR, "session_id": _STR, "conversation": _INT, "turn": _INT, "pane": _STR, "sample": _INT,
    "server": _STR, "model": _STR, "adapter": _OPT_STR, "adapter_sha256": _OPT_STR, "base_model": _OPT_STR,
    "model_sha256": _OPT_STR, "engine": _DICT, "messages": _LIST, "sampling": _DICT, "status": _STR,
    "text": _STR, "finish_reason": _OPT_STR, "error": _OPT_STR, "usage": _DICT, "timings": _DICT,
    "tags": _LIST, "parent_id": _OPT_STR, "created_at": _STR, "question_id": (str, int, type(None)),
    "paraphrase_ix": _OPT_INT, "sample_ix": _OPT_INT, "turn_ix": _OPT_INT, "attempt": _OPT_INT,
    "promptset": (dict, type(None)), "job": _OPT_STR, "regenerated_from": (list, type(None)),
    "served_by": _OPT_STR, "failed_attempts": _LIST, "steer": (dict, type(None)), "adapter_scale": _OPT_NUM,
    "project": (dict, type(None)), "projection": _OPT_NUM, "projection_tokens": (list, type(None)),
}  # fmt: skip
_ANNOTATION_TYPES = {
    "id": _STR, "session_id": _STR, "kind": _STR, "value": _STR, "target": _OPT_STR, "turn": _OPT_INT,
    "conversation": _OPT_INT, "pane": _OPT_STR, "blind": _BOOL, "rater": _OPT_STR, "mapping": (dict, type(None)),
    "panes": (list, type(None)), "targets": (list, type(None)),
}  # fmt: skip


@dataclass
class SessionHeader:
    """First line of every transcript: what was run, with what, where."""

    session_id: str
    created_at: str
    personachat_version: str
    profile: dict[str, Any]  # {"name", "path", "sha256", "data": the profile as loaded}
    servers: dict[str, Any]  # name -> {"kind", "model", "model_sha256", "adapters", "engine"}
    host: dict[str, Any]
    schema: int = SCHEMA_VERSION
    type: str = "session"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SessionHeader:
        check_types(data, _HEADER_TYPES, "session")
        return cls(
            session_id=data["session_id"],
            created_at=data.get("created_at", ""),
            personachat_version=data.get("personachat_version", ""),
            profile=data.get("profile", {}),
            servers=data.get("servers", {}),
            host=data.get("host", {}),
            schema=data.get("schema", SCHEMA_VERSION),
        )


@dataclass(frozen=True)
class JobRef:
    """Which prompt-set job a response answers (replay, headless or in the app's ``/replay``)."""

    question_id: str
    paraphrase_ix: int
    sample_ix: int
    turn_ix: int = 0  # which of the job's turns (0: its first prompt; then its scripted follow-ups)
    attempt: int = 0  # 1 for the first try of a headless replay, more after retries; 0 in the app
    promptset: dict[str, Any] = field(default_factory=dict)  # {"name", "sha256", "path"}
    will_retry: bool | None = None  # on a failed headless attempt: whether the job goes again

    @property
    def job(self) -> str:
        """The job key ``question_id/paraphrase_ix/sample_ix``."""
        return f"{self.question_id}/{self.paraphrase_ix}/{self.sample_ix}"


_ACTIVATION_FIELDS = ("steer", "adapter_scale", "project", "projection", "projection_tokens")
_PROJECTED = ("projection", "projection_tokens")  # written whenever ``project`` is
_JOB_FIELDS = (
    "question_id",
    "paraphrase_ix",
    "sample_ix",
    "job",
    "turn_ix",
    "attempt",
    "promptset",
    "will_retry",
)


@dataclass
class ResponseRecord:
    """One answer (one sample of one pane's turn), also when cancelled or failed.

    Every wire field is a typed field here. ``extra`` keeps keys this version does not know (from a
    file written by a newer one) so that nothing is lost; they are written after the known fields
    and never replace one.
    """

    id: str
    session_id: str
    conversation: int
    turn: int
    pane: str
    sample: int
    server: str
    model: str  # the name requested: the served base name or an adapter name
    adapter: str | None
    adapter_sha256: str | None
    base_model: str | None
    model_sha256: str | None
    engine: dict[str, Any]
    messages: list[dict[str, str]]
    sampling: dict[str, Any]
    status: str  # finished | cancelled | failed
    text: str
    finish_reason: str | None = None
    error: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    parent_id: str | None = None  # this pane's previous answer in the same conversation
    created_at: str = field(default_factory=now_iso)
    regenerated_from: list[str] | None = None  # a regenerated answer: the ids it replaces
    replay: JobRef | None = None  # written as flat fields (question_id, paraphrase_ix, ...)
    served_by: str | None = None  # the URL that answered (a replica, or a router and its worker)
    failed_attempts: list[dict[str, Any]] = field(default_factory=list)  # retried before it answered
    # In-process activation settings (docs/transcripts.md); written only when the pane set them.
    steer: dict[str, Any] | None = None  # {"vector", "sha256", "layer", "alpha"}
    adapter_scale: float | None = None
    project: dict[str, Any] | None = None  # {"vector", "sha256", "layer"}
    projection: float | None = None  # mean over the answer's tokens (with project)
    projection_tokens: list[float] | None = None  # one value per answer token (with project)
    extra: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION
    type: str = "response"
    # Filled by the reader from later annotation records; never written.
    annotations: list[AnnotationRecord] = field(default_factory=list, repr=False)

    @property
    def regenerated(self) -> bool:
        return self.regenerated_from is not None

    @property
    def question_id(self) -> str | None:
        return self.replay.question_id if self.replay else None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in ("annotations", "extra", "replay", "regenerated_from"):
                continue
            if (
                f.name in _ACTIVATION_FIELDS
                and getattr(self, "project" if f.name in _PROJECTED else f.name) is None
            ):
                continue
            data[f.name] = getattr(self, f.name)
        if self.regenerated_from is not None:
            data["regenerated"] = True
            data["regenerated_from"] = list(self.regenerated_from)
        if self.replay is not None:
            ref = self.replay
            data.update(
                question_id=ref.question_id,
                paraphrase_ix=ref.paraphrase_ix,
                sample_ix=ref.sample_ix,
                job=ref.job,
                turn_ix=ref.turn_ix,
                attempt=ref.attempt,
                promptset=dict(ref.promptset),
            )
            if ref.will_retry is not None:
                data["will_retry"] = ref.will_retry
        for key, value in self.extra.items():
            data.setdefault(key, value)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResponseRecord:
        """The record in ``data``; :class:`TypeError` or :class:`KeyError` when it is not one."""
        check_types(data, RESPONSE_TYPES, "response")
        messages = data.get("messages") or []
        if not all(isinstance(m, dict) and isinstance(m.get("content", ""), str) for m in messages):
            raise TypeError("response field 'messages' must be a list of {role, content} messages")
        known = {f.name for f in dataclasses.fields(cls)} - {"annotations", "extra", "replay"}
        kwargs = {k: v for k, v in data.items() if k in known}
        replay = None
        job = str(data["job"]).rsplit("/", 2) if isinstance(data.get("job"), str) else []
        if len(job) != 3 or not (job[1].isdigit() and job[2].isdigit()):
            job = []
        if data.get("question_id") is not None or job:
            replay = JobRef(
                question_id=str(data["question_id"]) if data.get("question_id") is not None else job[0],
                paraphrase_ix=int(data.get("paraphrase_ix") or (job[1] if job else 0)),
                sample_ix=int(data.get("sample_ix") or (job[2] if job else 0)),
                turn_ix=int(data.get("turn_ix") or 0),
                attempt=int(data.get("attempt") or 0),
                promptset=dict(data.get("promptset") or {}),
                will_retry=data.get("will_retry"),
            )
        if data.get("regenerated") and kwargs.get("regenerated_from") is None:
            kwargs["regenerated_from"] = []
        extra = {
            k: v for k, v in data.items() if k not in known and k not in _JOB_FIELDS and k != "regenerated"
        }
        return cls(**kwargs, replay=replay, extra=extra)

    @property
    def prompt(self) -> str:
        """The last user message sent (after the pane's transform)."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return message.get("content", "")
        return ""

    @property
    def labels(self) -> list[str]:
        """The labels this answer carries now: one per rater, the latest last (see :func:`current_labels`)."""
        return [a.value for a in current_labels(self.annotations).values()]

    @property
    def label_annotations(self) -> list[AnnotationRecord]:
        """The annotations behind :attr:`labels` (who gave each, and whether blind)."""
        return list(current_labels(self.annotations).values())

    @property
    def all_tags(self) -> list[str]:
        return [*self.tags, *(a.value for a in self.annotations if a.kind == "tag")]


ANNOTATION_KINDS = ("tag", "note", "label", "unlabel", "blind", "preference")
"""tag, note: on a turn. label: a rater's verdict on one answer (a later label by the same rater
replaces it); unlabel: retracts that rater's label. blind: blind mode began (``value`` "start") or
ended ("end", with ``mapping`` letter -> pane). preference: which of two panes' answers a rater
found better (``value`` the winning pane or ``tie``, ``panes``, ``targets``: the two answers)."""


@dataclass
class AnnotationRecord:
    """A tag, note or label added after the fact; points at a response, or at a whole turn."""

    id: str
    session_id: str
    kind: str  # see ANNOTATION_KINDS
    value: str
    target: str | None = None  # a response id; None for a turn-wide annotation
    turn: int | None = None
    conversation: int | None = None
    pane: str | None = None
    blind: bool = False
    rater: str | None = None  # who gave a label (the app's --rater, the profile's, or the user name)
    mapping: dict[str, str] | None = None  # blind "end": letter -> pane name
    panes: list[str] | None = None  # preference: the two panes compared
    targets: list[str] | None = None  # preference: the two answers compared (response ids)
    created_at: str = field(default_factory=now_iso)
    schema: int = SCHEMA_VERSION
    type: str = "annotation"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for optional in ("rater", "mapping", "panes", "targets"):
            if data[optional] is None:
                del data[optional]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnnotationRecord:
        check_types(data, _ANNOTATION_TYPES, "annotation")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def current_labels(annotations: list[AnnotationRecord]) -> dict[str | None, AnnotationRecord]:
    """Each rater's label on one answer now: a later label replaces the rater's earlier one, an
    ``unlabel`` retracts it. The latest label comes last."""
    labels: dict[str | None, AnnotationRecord] = {}
    for annotation in annotations:
        if annotation.kind == "label":
            labels.pop(annotation.rater, None)  # a new label moves the rater to the end: the latest
            labels[annotation.rater] = annotation
        elif annotation.kind == "unlabel":
            current = labels.get(annotation.rater)
            if current is not None and (not annotation.value or current.value == annotation.value):
                del labels[annotation.rater]
    return labels
