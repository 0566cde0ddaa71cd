"""Each pane's conversation inside a session: its settings (changeable mid-session) and history.

Kept apart from :mod:`personachat.engine.session`, which runs the turns; what a turn sends is
built by :func:`personachat.engine.requests.build_request` from a :class:`PaneConversation`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from personachat.backends.base import GenerationRequest
from personachat.chat import Message
from personachat.engine.requests import NO_OVERRIDES, Overrides, build_request
from personachat.profile import PaneSpec
from personachat.transcripts.schema import JobRef


@dataclass
class SentTurn:
    """The last turn a pane was asked: enough to ask it again (regenerate)."""

    prompt: str  # as typed, before the pane's transform
    overrides: Overrides
    replay: JobRef | None
    ids: list[str]  # response ids, one per sample
    in_history: bool = False  # whether its answer became history


@dataclass
class PaneConversation:
    """What the session knows about one pane: its settings (changeable mid-session) and history."""

    spec: PaneSpec
    history: list[Message] = field(default_factory=list)  # what the next turn follows (no system)
    turn_sizes: list[int] = field(default_factory=list)  # messages each turn in history added
    answer_ids: list[str] = field(default_factory=list)  # sample 0 of each turn in history
    last: SentTurn | None = None

    @property
    def parent_id(self) -> str | None:
        """The previous answer this pane's next answer follows."""
        return self.answer_ids[-1] if self.answer_ids else None

    @property
    def last_ids(self) -> list[str]:
        return list(self.last.ids) if self.last else []

    @property
    def turn_ix(self) -> int:
        """Index of the next user turn in this conversation (0 for the first)."""
        return len(self.turn_sizes)

    def request(
        self, text: str, overrides: Overrides = NO_OVERRIDES, *, seed: int | None = None
    ) -> GenerationRequest:
        """The request for the user turn ``text`` after this pane's history."""
        return build_request(
            self.spec, self.history, text, turn_ix=self.turn_ix, overrides=overrides, seed=seed
        )

    def add_turn(self, sent: list[Message], answer: str, answer_id: str) -> None:
        """Extend the history with the turn just sent (as sent, system message aside) and its answer."""
        start = len(self.history) + (1 if sent and sent[0]["role"] == "system" else 0)
        turn = [*sent[start:], {"role": "assistant", "content": answer}]
        self.history.extend(turn)
        self.turn_sizes.append(len(turn))
        self.answer_ids.append(answer_id)

    def drop_last_turn(self) -> None:
        if self.turn_sizes:
            del self.history[-self.turn_sizes.pop() :]
            self.answer_ids.pop()

    def reset(self, prefill: Sequence[Message] = ()) -> None:
        """A new conversation, starting from ``prefill`` (messages that are not turns of this pane)."""
        self.history = [dict(m) for m in prefill]
        self.turn_sizes.clear()
        self.answer_ids.clear()
        self.last = None
