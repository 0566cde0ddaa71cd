"""Prompt sets as typed data: questions (:class:`PromptItem`), a loaded set, and the jobs a replay sends.

A prompt set is a list of :class:`PromptItem` (one question, with its paraphrases, system prompt,
sample count and judge prompts); :meth:`PromptSet.jobs` expands it into one :class:`PromptJob` per
paraphrase and sample, which is what a replay sends to every pane. The file formats that produce
these live in :mod:`personachat.promptsets.formats`; :mod:`personachat.promptsets.load` picks one.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from personachat.chat import Message

if TYPE_CHECKING:
    from personachat.selection import QuestionSelection

JudgeKind = Literal["score_0_100", "categorical", "generated"]
JUDGE_KINDS: tuple[str, ...] = ("score_0_100", "categorical", "generated")


@dataclass(frozen=True)
class JudgePrompt:
    """One judge metric as a prompt set defines it: the template exactly as written, and how the
    judge's answer is to be read when the file says (``kind``, ``labels``; else the judge infers it
    from the template, see :mod:`personachat.judge.kinds`).

    ``judge``: the judge's own name in the file (llmcomp judge items); ``model``: the judge model the
    file names (recorded, not used: the profile's ``[judge]`` answers); ``source``: ``file:line``.
    """

    template: str
    kind: JudgeKind | None = None
    labels: tuple[str, ...] = ()
    judge: str | None = None
    model: str | None = None
    source: str = field(default="", compare=False)

    @property
    def sha256(self) -> str:
        """SHA-256 of the template's UTF-8 text exactly as written in its file."""
        return hashlib.sha256(self.template.encode("utf-8")).hexdigest()


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
    judge_prompts: dict[str, JudgePrompt] = field(default_factory=dict)
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
    judge_prompts: dict[str, JudgePrompt] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # format-specific extras (persona instructions)

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

    def select(self, selection: QuestionSelection) -> PromptSet:
        """The same set (same file, same hash) with only the selected questions.

        Raises :class:`~personachat.errors.PersonachatError` for ``--questions`` ids the set does not
        have, or a selection that leaves nothing.
        """
        if not selection.active:
            return self
        selection.check(self.ids)
        return dataclasses.replace(self, items=[item for item in self.items if selection.keeps(item.id)])

    def question_text(self, question_id: str, paraphrase_ix: int = 0, turn_ix: int = 0) -> str | None:
        """The user text as the set wrote it (a paraphrase, or a scripted turn), or None if unknown."""
        try:
            item = self.item(question_id)
        except KeyError:
            return None
        if turn_ix > 0:
            return item.turns[turn_ix - 1] if turn_ix - 1 < len(item.turns) else None
        return item.paraphrases[paraphrase_ix] if 0 <= paraphrase_ix < len(item.paraphrases) else None
