"""Tags, notes, labels and blind preferences given in the app: the checks before anything is
written, and undo.

A label is data: only the profile's labels are accepted, only on an answer that arrived (not one
still streaming, not a failed one), and a second label by the same rater on the same answer
replaces the first (the reader keeps the latest, see
:func:`personachat.transcripts.schema.current_labels`). Undo and ``/unlabel`` append a retraction;
nothing written is ever rewritten. Blind mode leaves a record where it starts and ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from personachat.app.slash import CommandError

if TYPE_CHECKING:
    from personachat.app.app import PersonachatApp
    from personachat.app.pane import Pane


def default_rater(profile_rater: str | None) -> str:
    """Who labels when the app is not told (``--rater``): the profile's ``rater``, else the user name."""
    if profile_rater:
        return profile_rater
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in this environment
        return "researcher"


@dataclass(frozen=True)
class GivenLabel:
    """A label just given (what undo takes back)."""

    pane: str
    target: str
    value: str


class Annotator:
    """See the module docstring. ``rater`` names whoever labels in this app."""

    def __init__(self, app: PersonachatApp, rater: str) -> None:
        self.app = app
        self.rater = rater
        self.last: GivenLabel | None = None

    def _turn_in_conversation(self) -> None:
        session = self.app.require_session()
        if session.turn == 0:
            raise CommandError(
                f"conversation {session.conversation} has no turn yet: tags and notes go on a turn"
            )

    def tag(self, values: list[str]) -> None:
        self._turn_in_conversation()
        session = self.app.require_session()
        for value in values:
            session.annotate("tag", value, blind=self.app.blind)
        self.app.say(f"turn {session.turn} tagged: {' '.join(values)}")

    def note(self, text: str) -> None:
        self._turn_in_conversation()
        session = self.app.require_session()
        session.annotate("note", text, blind=self.app.blind)
        self.app.say(f"note added to turn {session.turn}")

    def _target(self, pane: Pane, sample: int) -> str:
        """The response id of sample ``sample`` (0-based) of ``pane``'s last answer, checked."""
        ids = pane.last_ids
        if ids and not 0 <= sample < len(ids):
            raise CommandError(
                f"pane {pane.shown_name} answered {len(ids)} sample{'s' if len(ids) != 1 else ''}: "
                f"samples are numbered 1 to {len(ids)}"
            )
        problem = pane.answer_problem(sample)
        if problem:
            raise CommandError(problem)
        return ids[sample]

    def label(self, pane: Pane, value: str, sample: int = 0, *, by_key: bool = False) -> None:
        """Label one pane's last answer (written at once); it replaces this rater's earlier label."""
        session = self.app.require_session()
        if value not in self.app.profile.labels:
            raise CommandError(
                f"'{value}' is not one of this profile's labels ({', '.join(self.app.profile.labels)})"
            )
        target = self._target(pane, sample)
        session.annotate(
            "label",
            value,
            target=target,
            pane=pane.spec.name,
            turn=pane.last_turn,
            blind=self.app.blind,
            rater=self.rater,
        )
        self.last = GivenLabel(pane.spec.name, target, value)
        which = f" (sample {sample + 1})" if len(pane.last_ids) > 1 else ""
        pane.show_note(f"label: {value}{which}")
        undo = " · u takes it back" if by_key else " · /unlabel takes it back"
        self.app.say(f"labelled pane {pane.shown_name}{which}: {value}{undo}")

    def unlabel(self, pane: Pane, sample: int = 0) -> None:
        """Retract this rater's label on one pane's last answer."""
        session = self.app.require_session()
        target = self._target(pane, sample)
        session.annotate(
            "unlabel", "", target=target, pane=pane.spec.name, turn=pane.last_turn, rater=self.rater
        )
        if self.last is not None and self.last.target == target:
            self.last = None
        pane.show_note("label taken back")
        self.app.say(f"label taken back on pane {pane.shown_name}")

    def undo(self) -> None:
        """Take back the label just given (the ``u`` key)."""
        last = self.last
        if last is None:
            raise CommandError("no label to take back")
        session = self.app.require_session()
        session.annotate("unlabel", last.value, target=last.target, pane=last.pane, rater=self.rater)
        self.last = None
        pane = self.app.panes[last.pane]
        pane.show_note(f"label {last.value} taken back")
        self.app.say(f"label {last.value} taken back on pane {pane.shown_name}")

    def prefer_key(self, pane: Pane, which: str) -> None:
        """A preference key on a focused pane: ``this`` pane's answer is better than the next visible
        pane's, ``next`` is better, or ``tie``."""
        visible = self.app.visible_panes()
        if len(visible) < 2 or pane not in visible:
            raise CommandError("a preference compares two visible panes")
        other = visible[(visible.index(pane) + 1) % len(visible)]
        self.prefer(pane, other, {"this": pane, "next": other}.get(which))

    def prefer(self, a: Pane, b: Pane, winner: Pane | None) -> None:
        """Record which of two panes' last answers is better (``winner``; None: a tie). Blind only:
        a preference between named models is not evidence."""
        if not self.app.blind:
            raise CommandError("preferences are given blind: /blind first, then [ ] = on a pane, or /prefer")
        if a is b:
            raise CommandError("a preference compares two different panes")
        targets = [self._target(a, 0), self._target(b, 0)]
        if a.last_turn != b.last_turn:
            raise CommandError(f"panes {a.shown_name} and {b.shown_name} did not answer the same turn")
        session = self.app.require_session()
        session.annotate(
            "preference",
            winner.spec.name if winner is not None else "tie",
            panes=[a.spec.name, b.spec.name],
            targets=targets,
            turn=a.last_turn,
            blind=True,
            rater=self.rater,
        )
        verdict = "a tie" if winner is None else f"{winner.shown_name} better"
        for pane in (a, b):
            pane.show_note(f"preference: {verdict}")
        self.app.say(f"{a.shown_name} vs {b.shown_name}: {verdict}")

    def blind_changed(self, blind: bool, mapping: dict[str, str]) -> None:
        """Record that blind mode began, or ended (with the letters revealed)."""
        session = self.app.session
        if session is None:
            return
        if blind:
            session.annotate("blind", "start", blind=True)
        else:
            session.annotate("blind", "end", mapping=mapping)
