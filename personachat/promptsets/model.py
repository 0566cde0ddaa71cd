"""Prompt sets as typed data: questions (:class:`PromptItem`), a loaded set, and the jobs a replay sends.

A prompt set is a list of :class:`PromptItem` (one question, with its paraphrases, system prompt,
sample count and judge prompts); :meth:`PromptSet.jobs` expands it into one :class:`PromptJob` per
paraphrase and sample, which is what a replay sends to every pane. The file formats that produce
these live in :mod:`personachat.promptsets.formats`; :mod:`personachat.promptsets.load` picks one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personachat.chat import Message


@dataclass
class PromptItem:
    """One question of a prompt set.

    ``paraphrases`` are alternative first user messages (each is asked ``samples`` times).
    ``system`` is ``None`` when no system message is sent, which is not the same as ``""``.
    ``messages`` is the message list exactly as the file gave it (TOML ``messages`` and JSONL
    items), ``history`` the part of it sent between the system message and the prompt.
    ``turns`` are scripted user follow-ups, sent one by one after each answer. ``reference`` is
    the last assistant message of a JSONL conversation.
    """

    id: str
    paraphrases: list[str]
    system: str | None = None
    samples: int = 1
    tags: list[str] = field(default_factory=list)
    temperature: float | None = None
    messages: list[Message] | None = None
    reference: str | None = None
    turns: list[str] = field(default_factory=list)
    judge: str | None = None
    judge_prompts: dict[str, str] = field(default_factory=dict)
    type: str | None = None
    line: int | None = None
    history: list[Message] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PromptJob:
    """One generation to run on every pane: a paraphrase of a question, sample number ``sample_ix``.

    The first request is the pane's (or the job's) system message, ``messages`` (a prefilled
    history), then ``text`` as the user turn (see :func:`personachat.engine.requests.build_request`);
    each of ``turns`` is then sent as a further user message after the model's answer.
    ``temperature`` is the item's override, ``None`` to keep the pane's own.
    """

    question_id: str
    paraphrase_ix: int
    sample_ix: int
    text: str
    system: str | None = None
    messages: tuple[Message, ...] | None = field(default=None, hash=False)
    turns: tuple[str, ...] = ()
    temperature: float | None = None

    def key(self) -> str:
        """A stable id, ``question_id/paraphrase_ix/sample_ix`` (split it with ``rsplit("/", 2)``)."""
        return f"{self.question_id}/{self.paraphrase_ix}/{self.sample_ix}"


@dataclass
class PromptSet:
    """A loaded prompt set: its items, where it came from and a hash of the exact file bytes."""

    name: str
    path: Path
    sha256: str
    format: str
    items: list[PromptItem]
    description: str = ""
    judge_prompts: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def jobs(self, samples_override: int | None = None) -> list[PromptJob]:
        """Every (item, paraphrase, sample) in file order; ``samples_override`` replaces each item's count."""
        if samples_override is not None and (
            isinstance(samples_override, bool)
            or not isinstance(samples_override, int)
            or samples_override < 1
        ):
            raise ValueError(f"samples_override must be a positive integer, not {samples_override!r}")
        jobs: list[PromptJob] = []
        for item in self.items:
            count = item.samples if samples_override is None else samples_override
            prefix = tuple(item.history) or None
            turns = tuple(item.turns)
            for paraphrase_ix, text in enumerate(item.paraphrases):
                for sample_ix in range(count):
                    jobs.append(
                        PromptJob(
                            question_id=item.id,
                            paraphrase_ix=paraphrase_ix,
                            sample_ix=sample_ix,
                            text=text,
                            system=item.system,
                            messages=prefix,
                            turns=turns,
                            temperature=item.temperature,
                        )
                    )
        return jobs

    def item(self, question_id: str) -> PromptItem:
        """The item with id ``question_id`` (``KeyError`` if none)."""
        for item in self.items:
            if item.id == question_id:
                return item
        raise KeyError(question_id)

    @property
    def ids(self) -> list[str]:
        return [item.id for item in self.items]
