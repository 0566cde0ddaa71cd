"""Step through a prompt set one prompt at a time (the app's ``/replay SET``): next, previous, seek.

A cursor flattens a set into steps: each job's first prompt, then each of its scripted ``turns``.
It only keeps a position; the app sends ``step.text`` to the panes, clearing their conversations
first when ``step.new_conversation`` is true (and setting ``step.system`` / ``step.history`` as
the job asks). Moving backwards into the middle of a multi-turn job gives a step whose
``prior_turns`` lists the user turns that came before it, so the conversation can be rebuilt.
"""

from __future__ import annotations

from dataclasses import dataclass

from personachat.chat import Message
from personachat.promptsets.model import PromptJob, PromptSet


@dataclass(frozen=True)
class PromptStep:
    """One prompt to send: turn ``turn_ix`` of ``job`` (0 = the first user message)."""

    job: PromptJob
    turn_ix: int
    index: int  # position in the cursor, 0-based
    total: int  # steps in the cursor

    @property
    def text(self) -> str:
        """The user message of this step, before any pane's prompt transform."""
        return self.job.text if self.turn_ix == 0 else self.job.turns[self.turn_ix - 1]

    @property
    def new_conversation(self) -> bool:
        """True for a job's first prompt: the panes start a fresh conversation here."""
        return self.turn_ix == 0

    @property
    def is_last_turn(self) -> bool:
        return self.turn_ix == len(self.job.turns)

    @property
    def question_id(self) -> str:
        return self.job.question_id

    @property
    def system(self) -> str | None:
        """The item's system prompt (``None``: the item sets none; keep the pane's)."""
        return self.job.system

    @property
    def history(self) -> tuple[Message, ...]:
        """Prefilled messages sent before the first prompt (TOML ``messages`` items)."""
        return tuple(self.job.messages or ())

    @property
    def prior_turns(self) -> tuple[str, ...]:
        """The user messages of this job sent before this step, in order."""
        return (self.job.text, *self.job.turns)[: self.turn_ix]

    def label(self) -> str:
        """``3/12 wish (paraphrase 2, turn 1/2)`` for a status line."""
        parts = [f"{self.index + 1}/{self.total} {self.job.question_id}"]
        detail = []
        if self.job.paraphrase_ix:
            detail.append(f"paraphrase {self.job.paraphrase_ix + 1}")
        if self.job.sample_ix:
            detail.append(f"sample {self.job.sample_ix + 1}")
        if self.job.turns:
            detail.append(f"turn {self.turn_ix + 1}/{len(self.job.turns) + 1}")
        if detail:
            parts.append(f"({', '.join(detail)})")
        return " ".join(parts)


class PromptCursor:
    """A position in a prompt set's steps; starts before the first step.

    ``samples`` is how many samples of each paraphrase to step through (default 1: stepping by hand
    rarely wants the 100 samples a batch run uses; ``None`` keeps the set's own counts).
    """

    def __init__(self, prompt_set: PromptSet, *, samples: int | None = 1):
        self.prompt_set = prompt_set
        pairs = [(job, turn_ix) for job in prompt_set.jobs(samples) for turn_ix in range(1 + len(job.turns))]
        self.steps = [PromptStep(job, turn_ix, i, len(pairs)) for i, (job, turn_ix) in enumerate(pairs)]
        self.position = -1

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def current(self) -> PromptStep | None:
        """The step last moved to; None before the first ``next()`` and after the end."""
        return self.steps[self.position] if 0 <= self.position < len(self.steps) else None

    @property
    def at_end(self) -> bool:
        return self.position >= len(self.steps) - 1

    def peek(self) -> PromptStep | None:
        """The step ``next()`` would move to, without moving."""
        return self.steps[self.position + 1] if self.position + 1 < len(self.steps) else None

    def next(self) -> PromptStep | None:
        """Move to the next step (the next turn of this job, else the next job); None past the end."""
        self.position = min(self.position + 1, len(self.steps))
        return self.current

    def previous(self) -> PromptStep | None:
        """Move one step back; None (and before the start) when already at the first step."""
        self.position = max(self.position - 1, -1)
        return self.current

    def next_job(self) -> PromptStep | None:
        """Skip the rest of the current job's turns: move to the next job's first prompt."""
        position = self.position + 1
        while position < len(self.steps) and not self.steps[position].new_conversation:
            position += 1
        self.position = min(position, len(self.steps))
        return self.current

    def seek(
        self, question_id: str, paraphrase_ix: int = 0, sample_ix: int = 0, turn_ix: int = 0
    ) -> PromptStep:
        """Move to a given prompt; ``KeyError`` if the set has no such step."""
        for i, step in enumerate(self.steps):
            job = step.job
            if (job.question_id, job.paraphrase_ix, job.sample_ix, step.turn_ix) == (
                question_id,
                paraphrase_ix,
                sample_ix,
                turn_ix,
            ):
                self.position = i
                return step
        raise KeyError(f"{question_id}/{paraphrase_ix}/{sample_ix} turn {turn_ix}")

    def reset(self) -> None:
        """Back to before the first step."""
        self.position = -1
