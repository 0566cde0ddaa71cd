"""Divergence records: one answer's tokens scored under its own model and another pane's.

A transcript keeps them as records of their own (``"type": "divergence"``, documented in
docs/lens.md), appended after the answers; the reader keeps them in ``Transcript.other``. They are
also the cache: an answer already scored against the same pane and weights is not scored again,
and its own log-probabilities serve every later comparison of the same answer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from personachat.transcripts.schema import SCHEMA_VERSION, check_types, new_id, now_iso

RECORD_TYPE = "divergence"
METHOD = "teacher-forced: chat template with generation prompt + answer, one tokenization"
_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,), "session_id": (str,), "target": (str,), "pane": (str,), "against": (str,),
    "model": (dict,), "against_model": (dict,), "tokenizer": (dict,), "token_ids": (list,),
    "tokens": (list,), "logp": (list,), "logp_against": (list,), "prefix_matches": (bool,),
}  # fmt: skip


@dataclass
class DivergenceRecord:
    """``logp[i]`` and ``logp_against[i]``: log p of answer token ``i`` under the answer's own model
    and under the ``against`` pane's model, both given the answer's exact messages."""

    id: str
    session_id: str
    target: str  # the response id
    pane: str
    against: str
    model: dict[str, Any]  # the answer's own model (ModelRef.to_dict, plus its "key")
    against_model: dict[str, Any]
    tokenizer: dict[str, Any]
    token_ids: list[int]  # the answer's tokens in the scored sequence
    tokens: list[str]  # their text
    logp: list[float]
    logp_against: list[float]
    prefix_matches: bool = True
    answer_start: int = 0  # where the answer starts in the scored sequence, in tokens
    method: str = METHOD
    created_at: str = field(default_factory=now_iso)
    schema: int = SCHEMA_VERSION
    type: str = RECORD_TYPE

    @property
    def sum_logp(self) -> float:
        return math.fsum(self.logp)

    @property
    def sum_logp_against(self) -> float:
        return math.fsum(self.logp_against)

    @property
    def diffs(self) -> list[float]:
        """``logp - logp_against`` per token: above 0 where the answer's own model is the likelier."""
        return [a - b for a, b in zip(self.logp, self.logp_against, strict=True)]

    def top(self, k: int = 5) -> list[int]:
        """The positions of the ``k`` tokens where the two models part most (largest ``|diff|``)."""
        diffs = self.diffs
        return sorted(range(len(diffs)), key=lambda i: (-abs(diffs[i]), i))[:k]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["sum_logp"] = self.sum_logp
        data["sum_logp_against"] = self.sum_logp_against
        return data

    def summary(self, k: int = 5) -> dict[str, Any]:
        """What ``personachat diverge --json`` prints for the answer."""
        diffs = self.diffs
        return {
            "response_id": self.target,
            "pane": self.pane,
            "against": self.against,
            "tokens": self.tokens,
            "token_ids": self.token_ids,
            "logp": self.logp,
            "logp_against": self.logp_against,
            "sum_logp": self.sum_logp,
            "sum_logp_against": self.sum_logp_against,
            "top": [{"index": i, "token": self.tokens[i], "diff": diffs[i]} for i in self.top(k)],
            "model": self.model,
            "against_model": self.against_model,
            "tokenizer": self.tokenizer,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DivergenceRecord:
        """The record in ``data``; :class:`TypeError` or :class:`KeyError` when it is not a valid one."""
        check_types(data, _TYPES, RECORD_TYPE)
        counts = {len(data[k]) for k in ("token_ids", "tokens", "logp", "logp_against")}
        if len(counts) != 1:
            raise TypeError("divergence token_ids, tokens, logp and logp_against differ in length")
        if not all(
            isinstance(x, (int, float)) and not isinstance(x, bool)
            for k in ("logp", "logp_against")
            for x in data[k]
        ):
            raise TypeError("divergence logp and logp_against must be numbers")
        return cls(
            id=data["id"],
            session_id=data.get("session_id", ""),
            target=data["target"],
            pane=data["pane"],
            against=data["against"],
            model=dict(data["model"]),
            against_model=dict(data["against_model"]),
            tokenizer=dict(data.get("tokenizer") or {}),
            token_ids=[int(t) for t in data["token_ids"]],
            tokens=[str(t) for t in data["tokens"]],
            logp=[float(x) for x in data["logp"]],
            logp_against=[float(x) for x in data["logp_against"]],
            prefix_matches=bool(data.get("prefix_matches", True)),
            answer_start=int(data.get("answer_start") or 0),
            method=str(data.get("method") or METHOD),
            created_at=str(data.get("created_at") or ""),
            schema=int(data.get("schema") or SCHEMA_VERSION),
        )


def new_record(**fields: Any) -> DivergenceRecord:
    """A divergence record with a fresh id."""
    return DivergenceRecord(id=new_id(), **fields)


def divergence_records(
    records: Iterable[dict[str, Any]], problems: list[str] | None = None
) -> list[DivergenceRecord]:
    """The divergence records among ``records`` (a transcript's ``other``), in order; malformed ones
    are skipped, and named in ``problems`` when given."""
    out = []
    for data in records:
        if data.get("type") != RECORD_TYPE:
            continue
        try:
            out.append(DivergenceRecord.from_dict(data))
        except (KeyError, TypeError, ValueError) as exc:
            if problems is not None:
                problems.append(f"malformed divergence record {str(data.get('id'))[:16]} ({exc}); skipped")
    return out


def latest_by_target(records: Iterable[DivergenceRecord]) -> dict[str, DivergenceRecord]:
    """Response id -> the last divergence record written for it (what the HTML export colours)."""
    return {record.target: record for record in records}


class DivergenceCache:
    """What is already scored: per answer and ``against`` weights, and each answer's own scores."""

    def __init__(self, records: Iterable[DivergenceRecord] = ()):
        self._done: dict[tuple[str, str], DivergenceRecord] = {}
        self._own: dict[tuple[str, str, tuple[int, ...]], list[float]] = {}
        for record in records:
            self.add(record)

    def add(self, record: DivergenceRecord) -> None:
        key = (record.target, str(record.against_model.get("key")))
        self._done[key] = record
        ids = tuple(record.token_ids)
        self._own[(record.target, str(record.model.get("key")), ids)] = record.logp
        self._own[(record.target, str(record.against_model.get("key")), ids)] = record.logp_against

    def done(self, target: str, against_key: str) -> DivergenceRecord | None:
        """The record of ``target`` scored against the weights ``against_key``, if there is one."""
        return self._done.get((target, against_key))

    def scores(self, target: str, model_key: str, token_ids: tuple[int, ...]) -> list[float] | None:
        """``target``'s tokens ``token_ids`` already scored under the weights ``model_key``."""
        return self._own.get((target, model_key, token_ids))
