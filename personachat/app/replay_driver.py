"""``/replay`` in the app: step through a prompt set, one prompt (or scripted turn) at a time, or all.

:class:`ReplayDriver` loads a set (:class:`personachat.app.replay.AppReplay`), moves its cursor and
sends each step to the visible panes through the session, with the same request builder, per-send
overrides and record fields as headless replay. Steps run in one named worker (``replay``), one
after another, each once the last one's answers have ended; Esc cancels it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from textual.widgets import ProgressBar

from personachat.app.replay import AppReplay
from personachat.app.slash import CommandError
from personachat.errors import PersonachatError
from personachat.promptsets.cursor import PromptStep
from personachat.promptsets.plan import job_overrides

if TYPE_CHECKING:
    from personachat.app.app import PersonachatApp


class ReplayDriver:
    """See the module docstring. ``loaded`` is the prompt set being stepped through, if any."""

    GROUP = "replay"

    def __init__(self, app: PersonachatApp, default_set: Path | None = None) -> None:
        self.app = app
        self.default_set = default_set  # a scenario's own prompt set: what a bare /replay loads
        self.loaded: AppReplay | None = None

    @property
    def running(self) -> bool:
        return any(w.group == self.GROUP and not w.is_finished for w in self.app.workers)

    def position(self) -> str:
        """What the top bar shows ("" when no set is loaded)."""
        return self.loaded.position() if self.loaded is not None else ""

    # -- loading -------------------------------------------------------------------------------

    def load(self, path: str) -> None:
        if self.running:
            raise CommandError("a replay is running: Esc stops it first")
        try:
            replay = AppReplay.load(path)
        except PersonachatError as exc:
            problems = str(exc).splitlines()
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise CommandError(f"cannot load {path}: {problems[0] if problems else exc}{more}") from None
        self.loaded = replay
        self.app.refresh_topbar()
        prompt_set = replay.prompt_set
        self.app.judging.use_prompt_set(prompt_set)
        warnings = f" · {len(prompt_set.warnings)} warnings" if prompt_set.warnings else ""
        self.app.say(
            f"loaded {prompt_set.name}: {len(replay.cursor)} prompts ({len(prompt_set.items)} items){warnings}"
            " · /next (ctrl+n) sends the first, /replay all runs them all"
        )

    def unload(self) -> None:
        if self.running:
            raise CommandError("a replay is running: Esc stops it first")
        self.loaded = None
        self.app.refresh_topbar()
        self.app.judging.use_prompt_set(None)
        self.app.say("prompt set unloaded")

    # -- moving --------------------------------------------------------------------------------

    def _refusal(self) -> str | None:
        """Why a step cannot be sent now (None: it can)."""
        app = self.app
        if app.session is None:
            return "not connected yet: wait for 'ready' (or see the message above)"
        if self.loaded is None:
            return "no prompt set loaded: /replay SET first"
        if app.session.busy or self.running:
            return "answers are still streaming: Esc cancels them"
        if not app.visible_panes():
            return "every pane is hidden: /panes show all"
        return None

    def _ready(self) -> AppReplay:
        refusal = self._refusal()
        if refusal:
            raise CommandError(refusal)
        assert self.loaded is not None
        return self.loaded

    def send_next(self) -> None:
        replay = self._ready()
        if replay.cursor.peek() is None:  # the cursor stays on the last prompt
            self.app.say("end of the prompt set: /prev goes back, /replay SET loads another")
            return
        step = replay.cursor.next()
        assert step is not None
        self._start(replay.steps_to(step))

    def send_previous(self) -> None:
        replay = self._ready()
        if replay.cursor.position <= 0:
            raise CommandError("already at the first prompt of the set")
        step = replay.cursor.previous()
        assert step is not None
        self._start(replay.steps_to(step))

    def send_all(self) -> None:
        replay = self._ready()
        remaining = replay.remaining()
        if not remaining:
            self.app.say("nothing left to replay: /prev goes back, /replay SET loads another")
            return
        self._start([*replay.steps_to(remaining[0])[:-1], *remaining], progress=True)

    def cancel(self) -> bool:
        """Stop a running replay (Esc); True when one was running."""
        if not self.running:
            return False
        self.app.workers.cancel_group(self.app, self.GROUP)
        return True

    # -- sending -------------------------------------------------------------------------------

    def _start(self, steps: list[PromptStep], progress: bool = False) -> None:
        self.app.run_worker(self._run(steps, progress), group=self.GROUP, exclusive=True, exit_on_error=False)

    async def _run(self, steps: list[PromptStep], progress: bool) -> None:
        """Send ``steps`` one after another, each once the last one's answers have ended."""
        app, replay = self.app, self.loaded
        assert replay is not None
        bar = app.query_one("#replay-progress", ProgressBar)
        if progress:
            bar.update(total=len(steps), progress=0)
            bar.add_class("-running")
        try:
            for sent, step in enumerate(steps):
                replay.cursor.position = step.index
                app.refresh_topbar()
                app.say(f"replay {replay.position()}" + (f" · {sent}/{len(steps)} sent" if progress else ""))
                await self._send(replay, step)
                bar.advance(1)
            if progress:
                app.say(f"replayed {len(steps)} prompts of {replay.prompt_set.name}")
        except asyncio.CancelledError:
            if app.is_running:  # not when the app is quitting
                app.say(f"replay stopped at {replay.position()}: partial answers are recorded")
            raise
        finally:
            if app.is_running:
                bar.remove_class("-running")
                app.refresh_topbar()

    async def _send(self, replay: AppReplay, step: PromptStep) -> None:
        """Broadcast one step to the visible panes and wait for the answers.

        A job's first prompt starts a new conversation (with the job's prefilled messages). The
        item's system prompt and temperature, when it has them, apply to this send only, as in
        headless replay.
        """
        app = self.app
        session = app.require_session()
        names = [pane.spec.name for pane in app.visible_panes()]
        if step.new_conversation:
            session.new_conversation(step.history)
            for pane in app.panes.values():
                pane.clear()
                pane.show_note(f"── {replay.prompt_set.name} {step.label()} ──")
            if step.history:
                for name in names:
                    app.panes[name].show_note(f"({len(step.history)} prefilled messages)")
        events = session.broadcast(
            step.text, names, overrides=job_overrides(step.job), replay=replay.job_ref(step)
        )
        await app.show_stream(events)
        replay.sent = step
