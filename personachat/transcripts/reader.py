"""Read a transcript back as typed records, merging annotations and surviving a torn last line."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from personachat.errors import TranscriptError
from personachat.transcripts.schema import AnnotationRecord, ResponseRecord, SessionHeader


@dataclass
class Transcript:
    """Everything in one transcript file."""

    path: Path
    header: SessionHeader | None
    responses: list[ResponseRecord] = field(default_factory=list)
    annotations: list[AnnotationRecord] = field(default_factory=list)
    judgements: list[dict[str, Any]] = field(default_factory=list)
    other: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # torn or corrupt lines, with their numbers

    def response(self, response_id: str) -> ResponseRecord:
        for record in self.responses:
            if record.id == response_id:
                return record
        raise KeyError(response_id)

    def finished(self) -> list[ResponseRecord]:
        return [r for r in self.responses if r.status == "finished"]

    def turn_annotations(self, conversation: int, turn: int) -> list[AnnotationRecord]:
        """Annotations that apply to a whole turn (tags and notes without a response target)."""
        return [
            a
            for a in self.annotations
            if a.target is None and a.turn == turn and a.conversation in (None, conversation)
        ]


def iter_lines(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, bytes]]:
    """Yield ``(line number, parsed record or None if unreadable, raw bytes)`` for each line."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError:
                yield number, None, raw
                continue
            yield number, data if isinstance(data, dict) else None, raw


def transcript_file(path: Path | str) -> Path:
    """``path`` as a Path; :class:`TranscriptError` when it is missing or a folder."""
    path = Path(path)
    if not path.exists():
        raise TranscriptError(f"transcript not found: {path}")
    if not path.is_file():
        raise TranscriptError(
            f"{path} is a folder, not a transcript (`personachat transcripts ls {path}` lists them)"
        )
    return path


def read_transcript(path: Path | str) -> Transcript:
    """Read ``path``; unreadable lines are reported in ``problems`` and everything else is kept."""
    path = transcript_file(path)
    transcript = Transcript(path=path, header=None)
    by_id: dict[str, ResponseRecord] = {}
    pending: list[AnnotationRecord] = []
    lines = list(iter_lines(path))
    last_number = lines[-1][0] if lines else 0
    for number, data, raw in lines:
        if data is None:
            torn = number == last_number and not raw.endswith(b"\n")
            what = "torn last line (a write was interrupted)" if torn else "unreadable line"
            transcript.problems.append(f"{path}:{number}: {what}; skipped")
            continue
        kind = data.get("type")
        try:
            if kind == "session":
                if transcript.header is None:
                    transcript.header = SessionHeader.from_dict(data)
                else:
                    transcript.other.append(data)
            elif kind == "response":
                record = ResponseRecord.from_dict(data)
                transcript.responses.append(record)
                by_id[record.id] = record
            elif kind == "annotation":
                annotation = AnnotationRecord.from_dict(data)
                transcript.annotations.append(annotation)
                pending.append(annotation)
            elif kind == "judge":
                transcript.judgements.append(data)
            else:
                transcript.other.append(data)
        except (KeyError, TypeError, ValueError) as exc:
            transcript.problems.append(f"{path}:{number}: malformed {kind} record ({exc}); skipped")
    for annotation in pending:
        if annotation.target and annotation.target in by_id:
            by_id[annotation.target].annotations.append(annotation)
    return transcript


def list_transcripts(directory: Path) -> list[Path]:
    """Transcript files in ``directory``, newest first."""
    if not directory.is_dir():
        return []
    return sorted(directory.glob("*.jsonl"), key=lambda p: p.stat().st_mtime, reverse=True)
