"""A prompt set loaded in the app (``/replay SET``): where the researcher is in it, and what each
step sends and records.

Plain data (no Textual): the app moves the cursor and broadcasts; this module says which steps a
move sends and the record fields (the same as headless replay's) each response carries.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from personachat.paths import project_file
from personachat.promptsets.cursor import PromptCursor, PromptStep
from personachat.promptsets.load import load_prompt_set
from personachat.promptsets.model import PromptSet
from personachat.promptsets.plan import job_ref
from personachat.transcripts.schema import JobRef


@dataclass
class AppReplay:
    """A prompt set being stepped through. ``sent`` is the step the panes' conversation ends with."""

    prompt_set: PromptSet
    cursor: PromptCursor
    sent: PromptStep | None = None

    @classmethod
    def load(cls, path: str | Path) -> AppReplay:
        """Load a prompt set (one sample per paraphrase); raises ``PromptSetError`` for a bad file."""
        prompt_set = load_prompt_set(project_file(path))
        cursor = PromptCursor(prompt_set)
        if not len(cursor):
            from personachat.errors import Problem, PromptSetError

            raise PromptSetError([Problem(prompt_set.path, "the prompt set has no prompts")])
        return cls(prompt_set, cursor)

    def job_ref(self, step: PromptStep) -> JobRef:
        """The record fields of a response to ``step``, as headless replay writes them."""
        return job_ref(self.prompt_set, step.job, step.turn_ix)

    def steps_to(self, step: PromptStep) -> list[PromptStep]:
        """What to send to arrive at ``step``: the step alone when the panes' conversation is at
        the turn before it (or it starts a job), else the job's earlier turns first."""
        if step.new_conversation or (self.sent is not None and self.sent.index == step.index - 1):
            return [step]
        return self.cursor.steps[step.index - step.turn_ix : step.index + 1]

    def remaining(self) -> list[PromptStep]:
        """Every step after the cursor (what ``/replay all`` sends)."""
        return self.cursor.steps[self.cursor.position + 1 :]

    def position(self) -> str:
        """``era 3/12 wish (turn 1/2)`` for the top bar; ``era 0/12`` before the first step."""
        step = self.cursor.current
        if step is None:
            where = "end" if self.cursor.position >= len(self.cursor) else "start"
            return f"{self.prompt_set.name} {where} ({len(self.cursor)} prompts)"
        return f"{self.prompt_set.name} {step.label()}"
