"""The live judge in the app: opened once the session runs, it scores each finished answer in a worker.

:class:`LiveJudging` connects :class:`personachat.judge.live.LiveJudge` (UI-free) to the panes: it
listens to the session's records, judges finished answers while judging is on, and shows each
answer's scores and each pane's running summary. Errors become messages, never tracebacks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from personachat.app.pane_status import format_summary
from personachat.errors import PersonachatError
from personachat.transcripts.schema import ResponseRecord

if TYPE_CHECKING:
    from personachat.app.app import PersonachatApp
    from personachat.engine.session import Session
    from personachat.judge.live import LiveJudge
    from personachat.promptsets.model import PromptSet


class LiveJudging:
    """See the module docstring. ``judge`` is None until it is connected (or without a ``[judge]``)."""

    def __init__(self, app: PersonachatApp) -> None:
        self.app = app
        self.judge: LiveJudge | None = None
        self.enabled = app.profile.judge is not None
        self.skipped = 0  # finished answers not judged because judging was off

    @property
    def state(self) -> str:
        """What the top bar shows: "" without a live judge, else "on" or "off"."""
        return "" if self.judge is None else ("on" if self.enabled else "off")

    def open(self, session: Session) -> None:
        """Connect the profile's judge in a worker; from then on every finished answer is judged."""
        self.app.run_worker(self._open(session), group="judge-open", exclusive=True, exit_on_error=False)

    async def _open(self, session: Session) -> None:
        from personachat.judge.live import LiveJudge

        app = self.app
        try:
            live = await LiveJudge.open(
                app.profile, session.writer, backends=session.backends, progress=app.say
            )
        except PersonachatError as exc:
            app.say(f"judge not available: {exc}", error=True)
            return
        if app.reopen is not None:
            live.load(app.reopen)  # the summaries count what was judged before
        self.judge = live
        session.record_listeners.append(self._on_record)
        self.refresh_summaries()
        app.refresh_topbar()
        model = app.profile.judge.model if app.profile.judge else "?"
        app.say(f"judge {model} on: answers are scored as they finish (/judge off){self._wording()}")

    def _wording(self) -> str:
        """A warning when personachat's own judge prompts are used (not the prompt set's)."""
        if self.judge is not None and self.judge.plan.builtin:
            return " · personachat's own judge wording: rates not comparable with published EM figures"
        return ""

    def use_prompt_set(self, prompt_set: PromptSet | None) -> None:
        """Score with the set's own judge prompts from now on (``/replay SET`` loaded one)."""
        if self.judge is None:
            return
        try:
            self.judge.use_prompt_set(prompt_set)
        except PersonachatError as exc:
            self.app.say(f"the prompt set's judge prompts cannot be used: {exc}", error=True)
            return
        if prompt_set is not None and prompt_set.judge_prompts:
            self.app.say(f"the judge now uses {prompt_set.name}'s own judge prompts")

    def switch(self, on: bool | None) -> None:
        """``/judge on|off``; ``None`` only says the state."""
        app = self.app
        if app.profile.judge is None:
            from personachat.app.slash import CommandError

            raise CommandError(f"profile '{app.profile.name}' has no [judge] table (see docs/judge.md)")
        if on is not None:
            self.enabled = on
            app.refresh_topbar()
        state = "on" if self.enabled else "off"
        opened = "" if self.judge is not None else " (the judge is not connected yet)"
        app.say(
            f"judge {state}{opened}: "
            + ("new answers are scored" if self.enabled else "answers are not scored")
        )

    def _on_record(self, record: ResponseRecord) -> None:
        if self.judge is None or record.status != "finished":
            return
        if not self.enabled:
            self.skipped += 1
            return
        self.app.run_worker(
            self._judge_one(self.judge, record),
            group=f"judge-{record.id}",
            exclusive=True,
            name="judge",
            exit_on_error=False,
        )

    async def _judge_one(self, judge: LiveJudge, record: ResponseRecord) -> None:
        """Judge one answer and show its scores and the new summaries; errors become messages."""
        from personachat.judge.live import JudgeFailed

        error = None
        try:
            records = await judge.judge_response(record)
        except JudgeFailed as exc:
            records, error = exc.records, str(exc)
        except PersonachatError as exc:
            records, error = [], f"judge failed: {exc}"
        pane = self.app.panes.get(record.pane)
        if pane is not None:
            pane.show_judgement(record.id, records, error)
        if error:
            self.app.say(f"pane {pane.shown_name if pane else record.pane}: {error}", error=True)
        self.refresh_summaries()

    def refresh_summaries(self) -> None:
        """Redraw every pane's summary line (blind mode hides the difference from the base)."""
        if self.judge is None:
            return
        for summary in self.judge.summary():
            pane = self.app.panes.get(summary.group)
            if pane is not None:
                pane.show_judge_summary(format_summary(summary, with_base=not self.app.blind))

    async def aclose(self) -> None:
        if self.judge is not None:
            await self.judge.aclose()
