"""``/diverge [PANE]`` and the ``d`` key: colour a pane's last answer by token divergence.

Each token gets the colour of ``log p(pane) - log p(against)`` (the against pane is the profile's
base pane unless given), on the HTML export's diverging scale (:mod:`personachat.lens.colour`):
red where the pane's own model finds the token likelier, blue where the against model does. The
legend and the tokens where the two part most go to the pane's status line. The scores are computed
after the answers end, in a worker (never while answers stream: an in-process model is shared with
generation), and appended to the transcript as divergence records, like ``personachat diverge``.
Again on a coloured pane: plain text again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.style import Style

from personachat.app.slash import CommandError
from personachat.errors import PersonachatError
from personachat.transcripts.schema import ResponseRecord

if TYPE_CHECKING:
    from personachat.app.app import PersonachatApp
    from personachat.app.pane import Pane
    from personachat.engine.session import Session
    from personachat.lens.records import DivergenceRecord
    from personachat.lens.score import TokenScorer


def token_spans(text: str, tokens: list[str]) -> list[tuple[int, int, int]]:
    """``(start, end, token index)`` of each token found in order in ``text`` (the answer as shown,
    sanitized: a token is matched sanitized too); tokens not found are left uncoloured."""
    from personachat.text import sanitize

    spans: list[tuple[int, int, int]] = []
    at = 0
    for index, token in enumerate(tokens):
        shown = sanitize(token)
        if not shown:
            continue
        found = text.find(shown, at, at + len(shown) + 8)
        if found < 0:
            continue
        spans.append((found, found + len(shown), index))
        at = found + len(shown)
    return spans


def colour_styles() -> list[Style]:
    """The Rich style of each divergence class (0: much less likely ... 10: much likelier)."""
    from personachat.lens.colour import DARK, PALETTE

    return [
        Style(bgcolor=colour, color="#ffffff" if i in DARK else "#000000") for i, colour in enumerate(PALETTE)
    ]


def divergence_line(record: DivergenceRecord, k: int = 3) -> str:
    """The status line: the sums, and the ``k`` tokens where the models part most."""
    from personachat.text import sanitize

    diffs = record.diffs
    top = " ".join(f"{sanitize(record.tokens[i]).strip() or '·'!r}{diffs[i]:+.1f}" for i in record.top(k))
    total = record.sum_logp - record.sum_logp_against
    return f"vs {record.against} Δ{total:+.1f} · {top} · red: likelier here, blue: less"


class DivergenceLens:
    """See the module docstring. One per app; scorers are made on first use and kept."""

    def __init__(self, app: PersonachatApp) -> None:
        self.app = app
        self.answers: dict[str, ResponseRecord] = {}  # response id -> record (this session's)
        self.coloured: dict[str, str] = {}  # pane name -> the response id shown coloured
        self._scorers: dict[str, TokenScorer] | None = None

    def open(self, session: Session) -> None:
        """Remember the session's answers as they are written (what scoring needs)."""
        session.record_listeners.append(self._remember)

    def _remember(self, record: ResponseRecord) -> None:
        if record.status == "finished":
            self.answers[record.id] = record

    def toggle(self, pane: Pane | None, against: str | None = None) -> None:
        """Colour ``pane``'s last answer (again: plain); scoring runs in a worker."""
        if pane is None:
            raise CommandError("focus a pane (Tab Tab, or Alt+1…9) or name one: /diverge PANE")
        if pane.last_ids and self.coloured.get(pane.spec.name) == pane.last_ids[0] and against is None:
            del self.coloured[pane.spec.name]
            pane.show_divergence(None)
            self.app.say(f"pane {pane.shown_name}: plain text again")
            return
        problem = pane.answer_problem(0)
        if problem:
            raise CommandError(problem)
        if self.app.streams:
            raise CommandError("wait for the answers to finish: scoring shares the models with generation")
        record = self.answers.get(pane.last_ids[0])
        if record is None:
            raise CommandError(
                f"pane {pane.shown_name}'s last answer is from before this session: use personachat diverge"
            )
        if against is not None:
            against = self.app.resolve(against).spec.name
        self.app.run_worker(
            self._score(pane, record, against), group="diverge", exclusive=True, exit_on_error=False
        )

    async def _score(self, pane: Pane, record: ResponseRecord, against: str | None) -> None:
        from personachat.lens.diverge import default_against, diverge_answers, scorers_for

        app = self.app
        session = app.require_session()
        try:
            against = against or default_against(app.profile)
            app.say(f"scoring pane {pane.shown_name}'s answer against {against} …")
            if self._scorers is None:
                self._scorers = await scorers_for(app.profile, session.backends, progress=app.say)
            [result] = await diverge_answers(app.profile, [record], against, self._scorers)
        except PersonachatError as exc:
            app.say(f"/diverge: {exc}", error=True)
            return
        if session.writer is not None:
            session.writer.write_many([result])
        styles = colour_styles()
        from personachat.lens.colour import colour_class

        diffs = result.diffs
        text = pane.last_answer_shown()
        colours = [
            (start, end, styles[colour_class(diffs[i])]) for start, end, i in token_spans(text, result.tokens)
        ]
        pane.show_divergence(colours, divergence_line(result))
        self.coloured[pane.spec.name] = record.id
        app.say(
            f"pane {pane.shown_name} coloured by log p − log p({result.against}); d or /diverge again: plain"
        )

    async def aclose(self) -> None:
        for scorer in (self._scorers or {}).values():
            await scorer.aclose()
        self._scorers = None
