"""The terminal app: one prompt goes to every pane, the answers stream side by side.

The app owns the panes and a :class:`personachat.engine.session.Session`; it turns keys and slash
commands into session calls and session events into pane updates. All persistence is the
session's (the transcript) and the history's; the app only renders. Slash commands live in
:mod:`~personachat.app.slash_commands`, the live judge in :mod:`~personachat.app.judging`,
``/replay`` in :mod:`~personachat.app.replay_driver`.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from textual import events, on, work
from textual.app import App, ComposeResult
from textual.binding import BindingType
from textual.content import Content
from textual.reactive import reactive
from textual.widgets import Footer, ProgressBar, Static, TextArea

from personachat.app.annotating import Annotator, default_rater
from personachat.app.bindings import APP_BINDINGS, label_keys
from personachat.app.divergence import DivergenceLens
from personachat.app.gc_pacing import CollectorPacing
from personachat.app.grid import PaneGrid
from personachat.app.history import PromptHistory
from personachat.app.judging import LiveJudging
from personachat.app.palette import SlashCommandsProvider
from personachat.app.pane import Pane
from personachat.app.prompt import PromptInput
from personachat.app.replay_driver import ReplayDriver
from personachat.app.screens import HelpScreen
from personachat.app.slash import Command, CommandError, Context, is_command
from personachat.app.slash_commands import COMMANDS
from personachat.app.slash_hint import CommandHint
from personachat.app.topbar import TopBar
from personachat.engine.events import Event, Failed
from personachat.errors import PersonachatError
from personachat.paths import unique_path
from personachat.profile import Profile
from personachat.transcripts.reader import Transcript

if TYPE_CHECKING:
    from personachat.backends.base import Backend
    from personachat.engine.session import Session
    from personachat.serving.connect import Connection

MarkdownMode = Literal["off", "on", "focused"]
ALIASES = "ABCDEFGH"
NOT_CONNECTED = "not connected yet: wait for 'ready' (or see the message above)"


class PersonachatApp(App[int]):
    """See the module docstring. ``backends`` (tests, benchmarks) skips connecting to servers."""

    CSS_PATH = Path(__file__).with_name("personachat.tcss")
    TITLE = "personachat"
    AUTO_FOCUS = "#prompt"  # never a pane: keys typed at start must not become labels
    COMMANDS: ClassVar = App.COMMANDS | {SlashCommandsProvider}
    BINDINGS: ClassVar[list[BindingType]] = APP_BINDINGS

    markdown_mode: reactive[MarkdownMode] = reactive("off")
    blind: reactive[bool] = reactive(False)
    ready: reactive[bool] = reactive(False)

    def __init__(
        self,
        profile: Profile,
        *,
        transcripts: Path | None = None,
        reopen: Transcript | None = None,
        backends: dict[str, Backend] | None = None,
        transcript_path: Path | None = None,
        session_id: str | None = None,
        history: PromptHistory | None = None,
        pacing: CollectorPacing | None = None,
        keymap: dict[str, str] | None = None,
        notices: list[str] | None = None,
        prompt_set: Path | None = None,
        rater: str | None = None,
    ) -> None:
        super().__init__()
        self.profile = profile
        self.transcripts_dir = transcripts or profile.transcripts or Path("transcripts")
        self.reopen = reopen
        self._backends = backends
        self._transcript_path = transcript_path
        self._session_id = session_id
        self.history = history if history is not None else PromptHistory(None)
        self.pacing = pacing or CollectorPacing()
        self.session: Session | None = None
        self.connection: Connection | None = None
        self.panes: dict[str, Pane] = {}
        self.hidden: set[str] = set()
        self.zoomed: str | None = None
        self._hidden_before_zoom: set[str] = set()
        self.current_pane: str | None = profile.panes[0].name if profile.panes else None
        self.label_keys = label_keys(profile.labels)
        self.aliases: dict[str, str] = {}  # blind mode: alias -> pane name
        self.streams = 0
        self._closed = False
        self.replay = ReplayDriver(self, default_set=prompt_set)
        self.judging = LiveJudging(self)
        self.lens = DivergenceLens(self)
        self.annotator = Annotator(self, rater or default_rater(profile.rater))
        self.keymap = dict(keymap or {})
        if self.keymap:
            self.set_keymap(self.keymap)
        self._notices = list(notices or [])  # problems found before the screen was up (the keymap file)

    # -- layout ----------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield TopBar(id="topbar")
        with PaneGrid(id="panes"):
            for number, spec in enumerate(self.profile.panes, 1):
                pane = Pane(spec, number, id=f"pane-{number}")
                pane.label_keys = self.label_keys
                self.panes[spec.name] = pane
                yield pane
        yield CommandHint(id="completion", markup=False)
        yield ProgressBar(id="replay-progress", show_eta=True)
        yield Static(id="status", markup=False)
        yield PromptInput(self.history, id="prompt")
        yield Footer()

    def on_mount(self) -> None:
        prompt = self.query_one(PromptInput)
        prompt.completer = self.complete
        prompt.focus()
        self.query_one(PaneGrid).fit()
        self.refresh_topbar()
        if self.reopen is not None:
            self._show_saved(self.reopen)
        self.pacing.app_ready()
        self.set_interval(1.0, self.pacing.tick, name="gc-pacing")
        self._start_session()
        for notice in self._notices:
            self.notify(notice, severity="warning", markup=False, timeout=10)

    def visible_panes(self) -> list[Pane]:
        """Panes shown, in screen order."""
        return self.query_one(PaneGrid).panes()

    def refresh_topbar(self) -> None:
        """Show the app's modes in the top bar."""
        bar = self.query_one(TopBar)
        bar.profile_name = self.profile.name
        bar.session_id = self.session.session_id if self.session else ""
        bar.blind = self.blind
        bar.markdown_mode = self.markdown_mode
        bar.zoomed = self.zoomed is not None
        bar.hidden = len(self.hidden)
        bar.judge = self.judging.state
        bar.replay = self.replay.position()

    def say(self, message: str, *, error: bool = False) -> None:
        """Show a one-line message under the panes (errors in red, also as a notification)."""
        status = self.query_one("#status", Static)
        status.update(Content.styled(message, "$text-error" if error else "$text-muted"))
        status.set_class(error, "-error")
        if error:
            self.notify(message, severity="error", markup=False)

    # -- the session ---------------------------------------------------------------------------

    @work(group="startup", exclusive=True)
    async def _start_session(self) -> None:
        """Connect to the servers (starting vLLM where needed), then open the transcript."""
        from personachat.engine.session import Session
        from personachat.transcripts.schema import new_id
        from personachat.transcripts.writer import TranscriptWriter, new_transcript_path

        self.say("connecting to the model servers…")
        try:
            backends = self._backends
            if backends is None:
                from personachat.serving.connect import connect, needed_servers

                self.connection = await connect(self.profile, needed_servers(self.profile), progress=self.say)
                backends = self.connection.backends
            session_id = self._session_id or new_id()  # the same id in the file name and the records
            if self.reopen is not None and self.reopen.header is not None:
                session_id = self.reopen.header.session_id
            path = self._transcript_path or (
                self.reopen.path
                if self.reopen is not None
                else new_transcript_path(self.transcripts_dir, self.profile.name, session_id)
            )
            session = Session(self.profile, backends, TranscriptWriter(path), session_id=session_id)
            if self.reopen is not None:
                session.restore(self.reopen)
            await session.start(self.say, write_header=self.reopen is None)
        except PersonachatError as exc:
            self.say(f"cannot start: {exc}", error=True)
            return
        self.session = session
        self.settings_changed()
        self.ready = True
        self.refresh_topbar()
        self.say(f"ready · transcript {path}")
        self.lens.open(session)
        if self.profile.judge is not None:
            self.judging.open(session)

    def require_session(self) -> Session:
        """The running session; :class:`CommandError` before it is connected."""
        if self.session is None:
            raise CommandError(NOT_CONNECTED)
        return self.session

    @property
    def transcript_path(self) -> Path | None:
        writer = self.session.writer if self.session is not None else None
        return writer.path if writer is not None else None

    def settings_changed(self) -> None:
        """Show the session's pane settings (system prompt, sampling) in the pane headers."""
        if self.session is None:
            return
        for name, state in self.session.panes.items():
            if name in self.panes:
                self.panes[name].set_spec(state.spec)

    def _show_saved(self, transcript: Transcript) -> None:
        """Show every saved turn in its panes (reopening a session)."""
        from personachat.transcripts.turns import pane_turns

        for name, shown in pane_turns(transcript, list(self.panes)).items():
            pane = self.panes[name]
            pane.show_turns([(turn.prompt, turn.answers, turn.note) for turn in shown])
            last = next((turn for turn in reversed(shown) if turn.ids), None)
            if last is not None:
                pane.restore_last(last.turn, last.ids, last.failed)
        self.say(f"reopened {transcript.path.name}: {len(transcript.responses)} answers")

    # -- streams ---------------------------------------------------------------------------------

    def _run_stream(self, events: AsyncIterator[Event]) -> None:
        self._consume(events)

    @work(group="stream")
    async def _consume(self, events: AsyncIterator[Event]) -> None:
        await self.show_stream(events)

    async def show_stream(self, events: AsyncIterator[Event]) -> None:
        """Show a broadcast's events as they come (the panes batch them per frame)."""
        self.streams += 1
        self.pacing.stream_started()
        failed: dict[str, str] = {}
        try:
            async for event in events:
                pane = self.panes.get(event.pane)
                if pane is not None:
                    pane.handle(event)
                if isinstance(event, Failed) and pane is not None:
                    failed.setdefault(pane.shown_name, event.reason)
        except PersonachatError as exc:
            self.say(str(exc), error=True)
        finally:
            self.streams -= 1
            if self.pacing.stream_ended():
                self.call_after_refresh(self.pacing.collect)  # once the last words are on screen
        if failed:
            panes = ", ".join(f"{name} ({reason})" for name, reason in failed.items())
            self.say(f"{len(failed)} pane{'s' if len(failed) > 1 else ''} failed: {panes}", error=True)

    # -- the prompt and slash commands -----------------------------------------------------------

    def context(self) -> Context:
        """What slash commands are checked against now: pane names (letters when blind), labels."""
        return Context(self.pane_names(), self.profile.labels)

    def complete(self, text: str) -> list[str]:
        """Completions of a partly typed command (the prompt box's Tab)."""
        return COMMANDS.complete(text, self.context())

    def run_slash(self, text: str) -> None:
        """Parse and run one slash command; every mistake becomes a message, never a traceback."""
        try:
            command = COMMANDS.parse(text, self.context())
        except PersonachatError as exc:
            self.say(str(exc), error=True)
            return
        self.run_command(command)

    def run_command(self, command: Command) -> None:
        """Run a parsed command (typed, or chosen in the palette)."""
        spec = COMMANDS.get(command.name)
        assert spec is not None, command.name
        self.guarded(lambda: spec.handler(self, command))

    def guarded(self, action: Callable[[], object]) -> None:
        """Run ``action``; a :class:`PersonachatError` it raises becomes an error message."""
        try:
            action()
        except PersonachatError as exc:
            self.say(str(exc), error=True)

    def prefill_prompt(self, text: str) -> None:
        prompt = self.query_one(PromptInput)
        prompt.set_text(text)
        prompt.focus()

    def pane_name(self, name: str | None) -> str | None:
        """The pane name a typed name (or blind letter) means; None stays None (every pane)."""
        return self.resolve(name).spec.name if name else None

    @on(PromptInput.Submitted)
    def _on_prompt(self, message: PromptInput.Submitted) -> None:
        text = message.text
        prompt = message.prompt
        if is_command(text):
            prompt.prompt_history.add(text)
            self.run_slash(text)
            return
        refusal = None
        if self.session is None:
            refusal = NOT_CONNECTED
        elif self.session.busy:
            refusal = "answers are still streaming: Esc cancels them"
        elif not self.visible_panes():
            refusal = "every pane is hidden: /panes show all"
        if refusal or self.session is None:
            self.say(refusal or NOT_CONNECTED, error=True)
            prompt.restore(text)
            return
        prompt.prompt_history.add(text)
        if text.startswith("//"):
            text = text[1:]
        self._run_stream(self.session.broadcast(text, [pane.spec.name for pane in self.visible_panes()]))

    @on(PromptInput.Hint)
    def _on_prompt_hint(self, message: PromptInput.Hint) -> None:
        self.say(message.text)

    @on(TextArea.Changed, "#prompt")
    def _on_prompt_changed(self, event: TextArea.Changed) -> None:
        self.query_one(CommandHint).show_for(event.text_area.text)

    # -- panes: focus, zoom, hide, blind -------------------------------------------------------

    def pane_names(self) -> list[str]:
        """Names the researcher uses for panes now: letters in blind mode, else pane names."""
        if self.blind:
            return list(self.aliases)
        return list(self.panes)

    def resolve(self, name: str) -> Pane:
        """The pane a name (or blind letter, or ``name#sample``) refers to."""
        name = name.split("#", 1)[0]
        name = self.aliases.get(name, name) if self.blind else name
        if name not in self.panes:
            raise CommandError(f"no pane named '{name}' (panes: {', '.join(self.pane_names())})")
        return self.panes[name]

    def aliases_of(self, names: Iterable[str]) -> list[str]:
        """``names`` as the researcher sees them now (blind letters in blind mode)."""
        if not self.blind:
            return list(names)
        back = {name: alias for alias, name in self.aliases.items()}
        return [back.get(name, name) for name in names]

    def focused_pane(self) -> Pane | None:
        """The pane that has (or last had) focus; else the first visible one."""
        if self.current_pane and self.current_pane in self.panes:
            pane = self.panes[self.current_pane]
            if not pane.has_class("-hidden"):
                return pane
        visible = self.visible_panes()
        return visible[0] if visible else None

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        for node in event.widget.ancestors_with_self:
            if isinstance(node, Pane):
                self.current_pane = node.spec.name
                keys = " · ".join(f"{k} {label}" for k, label in self.label_keys.items())
                self.say(
                    f"pane {node.shown_name}: {keys} · c copy · p pager · z zoom · h hide · Enter back to prompt"
                )
                if self.markdown_mode == "focused":
                    self._apply_markdown()
                return

    def action_focus_pane(self, number: int) -> None:
        visible = self.visible_panes()
        if 1 <= number <= len(visible):
            visible[number - 1].conversation.focus()
        else:
            self.say(f"there is no pane {number}", error=True)

    def action_focus_prompt(self) -> None:
        self.query_one(PromptInput).focus()

    def set_hidden(self, hidden: Iterable[str]) -> None:
        """Show exactly the panes not in ``hidden`` (ends a zoom)."""
        self.zoomed = None
        self._apply_hidden(hidden)

    def _apply_hidden(self, hidden: Iterable[str]) -> None:
        self.hidden = set(hidden)
        for name, pane in self.panes.items():
            pane.set_class(name in self.hidden, "-hidden")
        self.query_one(PaneGrid).fit()
        self.refresh_topbar()

    def action_zoom(self, name: str | None = None) -> None:
        """Show one pane alone (the focused one by default); again to go back."""
        self.guarded(lambda: self._zoom(name))

    def _zoom(self, name: str | None) -> None:
        if self.zoomed is not None and (name is None or self.resolve(name).spec.name == self.zoomed):
            self.zoomed = None
            self._apply_hidden(self._hidden_before_zoom)
            self.say(f"{len(self.visible_panes())} panes shown")
            return
        pane = self.resolve(name) if name else self.focused_pane()
        if pane is None:
            return
        if self.zoomed is None:
            self._hidden_before_zoom = set(self.hidden)
        self.zoomed = pane.spec.name
        self._apply_hidden(n for n in self.panes if n != pane.spec.name)
        self.say(f"pane {pane.shown_name} alone · F11 or /zoom again shows every pane")

    def action_hide_pane(self, name: str | None = None) -> None:
        self.guarded(lambda: self._hide(name))

    def _hide(self, name: str | None) -> None:
        pane = self.resolve(name) if name else self.focused_pane()
        if pane is None:
            return
        if len(self.visible_panes()) <= 1:
            self.say("cannot hide the last visible pane", error=True)
            return
        self.set_hidden({*self.hidden, pane.spec.name})
        self.query_one(PromptInput).focus()
        self.say(f"pane {pane.shown_name} hidden · /panes show all brings it back")

    def watch_blind(self, was_blind: bool, blind: bool) -> None:
        if was_blind and not blind:
            self.annotator.blind_changed(False, dict(self.aliases))
        self.judging.refresh_summaries()
        grid = self.query_one(PaneGrid)
        panes = list(self.panes.values())
        if blind:
            random.shuffle(panes)
        self.aliases = {ALIASES[i]: pane.spec.name for i, pane in enumerate(panes)} if blind else {}
        for number, pane in enumerate(panes, 1):
            grid.move_child(pane, after=len(grid.children) - 1)
            pane.number = number
            pane.set_blind(blind, ALIASES[number - 1] if blind else None)
        if blind:
            self.annotator.blind_changed(True, dict(self.aliases))
        self.refresh_topbar()

    def watch_markdown_mode(self) -> None:
        self._apply_markdown()
        self.refresh_topbar()

    def _apply_markdown(self) -> None:
        focused = self.focused_pane()
        for pane in self.panes.values():
            pane.set_markdown(
                self.markdown_mode == "on" or (self.markdown_mode == "focused" and pane is focused)
            )

    # -- actions ---------------------------------------------------------------------------------

    def action_cancel(self) -> None:
        replaying = self.replay.cancel()
        if self.session is not None and (self.session.busy or replaying):
            self.session.cancel()
            self.say("cancelled: partial answers are recorded")

    def action_regenerate(self) -> None:
        session = self.session
        if session is None:
            self.say(NOT_CONNECTED, error=True)
            return
        if session.busy:
            self.say("answers are still streaming: Esc cancels them", error=True)
            return
        names = [pane.spec.name for pane in self.visible_panes()]
        self.say(f"asking the last turn again in {len(names)} pane{'s' if len(names) != 1 else ''}")
        self._run_stream(session.regenerate(names))

    def action_replay_next(self) -> None:
        self.guarded(self.replay.send_next)

    def action_replay_previous(self) -> None:
        self.guarded(self.replay.send_previous)

    def action_help(self) -> None:
        from personachat.app.screens.help import key_rows

        sources: list[tuple[str, list[BindingType]]] = [
            ("prompt", PromptInput.BINDINGS),
            ("anywhere", self.BINDINGS),
            ("pane focused", Pane.BINDINGS),
        ]
        self.push_screen(HelpScreen(key_rows(sources, self.keymap), list(self.label_keys.items())))

    def action_toggle_markdown(self) -> None:
        order: list[MarkdownMode] = ["off", "on", "focused"]
        self.markdown_mode = order[(order.index(self.markdown_mode) + 1) % len(order)]
        self.say(f"Markdown: {self.markdown_mode}")

    def _answer_of(self, name: str | None) -> tuple[Pane, str] | None:
        from personachat.app.pager import answer_text

        return answer_text(self, self.resolve(name) if name else self.focused_pane())

    def action_diverge(self, name: str | None = None) -> None:
        self.guarded(lambda: self.lens.toggle(self.resolve(name) if name else self.focused_pane()))

    def action_copy_answer(self, name: str | None = None) -> None:
        found = self._answer_of(name)
        if found:
            from personachat.text import sanitize

            pane, raw = found
            text = sanitize(raw)  # the clipboard is a terminal escape (OSC 52): nothing raw goes through it
            self.copy_to_clipboard(text)
            self.say(f"copied {len(text)} characters of pane {pane.shown_name}")

    def action_pager(self, name: str | None = None) -> None:
        found = self._answer_of(name)
        if not found:
            return
        from personachat.app.pager import show_in_pager

        problem = show_in_pager(self, found[1])
        if problem:
            self.say(problem, error=True)
        else:
            self.say(f"back from the pager ({found[0].shown_name})")

    def action_save_screenshot(self) -> None:
        path = self.transcript_path
        directory = path.parent if path else self.transcripts_dir
        stem = path.stem if path else self.profile.name
        directory.mkdir(parents=True, exist_ok=True)
        target = unique_path(directory, f"{stem}-{time.strftime('%H%M%S')}", ".svg")  # never overwrites
        saved = self.save_screenshot(target.name, str(directory))
        self.say(f"screenshot saved: {saved}")

    async def action_quit(self) -> None:
        await self.close_session()
        self.exit(0)

    async def close_session(self) -> None:
        """Cancel what streams (recorded as cancelled), close the transcript and the servers started."""
        if self._closed:
            return
        self._closed = True
        await self.judging.aclose()
        await self.lens.aclose()
        if self.session is not None:
            await self.session.aclose()
        if self.connection is not None:
            await self.connection.close()
        self.pacing.restore()

    async def on_unmount(self) -> None:
        await self.close_session()

    # -- annotations -----------------------------------------------------------------------------

    @on(Pane.LabelRequested)
    def _on_label_key(self, message: Pane.LabelRequested) -> None:
        self.guarded(lambda: self.annotator.label(message.pane, message.label, by_key=True))

    @on(Pane.PreferenceRequested)
    def _on_preference_key(self, message: Pane.PreferenceRequested) -> None:
        self.guarded(lambda: self.annotator.prefer_key(message.pane, message.which))

    def action_undo_label(self) -> None:
        self.guarded(self.annotator.undo)

    def clear_conversation(self) -> None:
        """``/clear``: a new conversation in every pane (answers still streaming stay in the old one)."""
        session = self.require_session()
        session.clear()
        for pane in self.panes.values():
            pane.clear()
            pane.show_note(f"── conversation {session.conversation} ──")
        self.say(f"new conversation {session.conversation} (same transcript)")
