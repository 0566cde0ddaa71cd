"""A saved session seen turn by turn: for reopening it in the app, showing it and exporting it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from personachat.errors import TranscriptError
from personachat.profile import Profile, load_profile, parse_profile
from personachat.transcripts.reader import Transcript
from personachat.transcripts.schema import AnnotationRecord, ResponseRecord


@dataclass
class SavedAnswer:
    """One pane's answer to one turn (all its samples), as recorded."""

    pane: str
    responses: list[ResponseRecord]  # by sample

    @property
    def prompt(self) -> str:
        return self.responses[0].prompt

    @property
    def regenerated(self) -> bool:
        return self.responses[0].regenerated


@dataclass
class SavedTurn:
    """One turn of one conversation: every pane's answer (a regenerated answer comes after the first)."""

    conversation: int
    turn: int
    answers: list[SavedAnswer] = field(default_factory=list)
    annotations: list[AnnotationRecord] = field(default_factory=list)  # tags and notes on the turn

    @property
    def prompt(self) -> str:
        """The prompt as typed (before any pane's transform, when a pane has none)."""
        return self.answers[0].prompt if self.answers else ""


def saved_turns(transcript: Transcript) -> list[SavedTurn]:
    """The transcript's responses grouped into turns, in the order they were asked."""
    turns: dict[tuple[int, int], SavedTurn] = {}
    open_answers: dict[tuple[int, int, str], SavedAnswer] = {}
    for record in transcript.responses:
        key = (record.conversation, record.turn)
        turn = turns.setdefault(key, SavedTurn(record.conversation, record.turn))
        # One request's samples are written together, 0..n-1; sample 0 again is a regenerated answer.
        current = open_answers.get((*key, record.pane))
        if current is None or record.sample == 0:
            current = SavedAnswer(record.pane, [])
            open_answers[(*key, record.pane)] = current
            turn.answers.append(current)
        current.responses.append(record)
    for (conversation, number), turn in turns.items():
        turn.annotations = transcript.turn_annotations(conversation, number)
    return list(turns.values())


def profile_of(transcript: Transcript) -> Profile:
    """The profile the session ran with, as its header recorded it."""
    header = transcript.header
    if header is None:
        raise TranscriptError(f"{transcript.path}: no session header; cannot reopen it")
    data = header.profile.get("data")
    if not isinstance(data, dict):
        raise TranscriptError(f"{transcript.path}: the header does not record the profile")
    path = header.profile.get("path")
    if header.profile.get("redacted") and isinstance(path, str) and Path(path).is_file():
        # Secrets were left out of the record: take them from the profile file itself, if unchanged.
        raw = Path(path).read_bytes()
        if hashlib.sha256(raw).hexdigest() == header.profile.get("sha256"):
            return load_profile(path)
    return parse_profile(data, path or str(transcript.path))


@dataclass
class ShownTurn:
    """One turn of one pane as a reopened session shows it."""

    prompt: str | None  # None for a regenerated answer (or a conversation divider)
    answers: list[str]
    note: str | None  # status, error and labels; or the divider's text
    turn: int = 0
    ids: list[str] = field(default_factory=list)
    failed: str | None = None  # why the answer failed, when it did


def pane_turns(transcript: Transcript, panes: list[str]) -> dict[str, list[ShownTurn]]:
    """What each of ``panes`` shows for a saved session: its turns, with a divider between conversations."""
    out: dict[str, list[ShownTurn]] = {name: [] for name in panes}
    conversation = None
    for turn in saved_turns(transcript):
        if conversation is not None and turn.conversation != conversation:
            for shown in out.values():
                shown.append(ShownTurn(None, [], f"── conversation {turn.conversation} ──"))
        conversation = turn.conversation
        for answer in turn.answers:
            if answer.pane not in out:
                continue
            notes = []
            for record in answer.responses:
                if record.status != "finished":
                    notes.append(f"{record.status}" + (f": {record.error}" if record.error else ""))
                notes += [f"label: {label}" for label in record.labels]
            out[answer.pane].append(
                ShownTurn(
                    None if answer.regenerated else answer.prompt,
                    [r.text for r in answer.responses],
                    " · ".join(notes) or None,
                    turn.turn,
                    [r.id for r in answer.responses],
                    next(
                        (r.error or "unknown error" for r in answer.responses if r.status == "failed"), None
                    ),
                )
            )
    return out
