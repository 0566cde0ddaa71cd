"""The terminal app: one prompt goes to every pane, the answers stream side by side.

The app owns the panes and a :class:`personachat.engine.session.Session`; it turns keys and slash
commands into session calls and session events into pane updates. All persistence is the
session's (the transcript) and the history's; the app only renders.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import shlex
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar, Literal

from textual import events, on, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid
from textual.content import Content
from textual.reactive import reactive
from textual.widgets import Footer, ProgressBar, Static, TextArea

from personachat.app.gc_pacing import CollectorPacing
from personachat.app.history import PromptHistory
from personachat.app.palette import SlashCommandsProvider
from personachat.app.pane import Pane, format_summary
from personachat.app.prompt import PromptInput
from personachat.app.replay import AppReplay
from personachat.app.saved import restore, saved_turns
from personachat.app.screens import DiffScreen, HelpScreen
from personachat.app.slash import COMMANDS, Command, CommandError, is_command, parse
from personachat.engine.events import Event
from personachat.errors import PersonachatError
from personachat.profile import Profile
from personachat.promptsets.cursor import PromptStep
from personachat.transcripts.reader import Transcript
from personachat.transcripts.schema import ResponseRecord

MarkdownMode = Literal["off", "on", "focused"]
MIN_PANE_WIDTH = 20
ALIASES = "ABCDEFGH"
RESERVED_PANE_KEYS = set("123456789chpz")


class PaneGrid(Grid):
    """The panes in a grid that fits the terminal: columns by width, wrapping to rows.

    Of the possible column counts, the one that gives each pane the most readable text area wins;
    width counts more than height (narrow columns are hard to read) and neither counts past a point.
    """

    def on_resize(self) -> None:
        self.fit()

    def panes(self) -> list[Pane]:
        """Visible panes, in screen order."""
        return [
            child for child in self.children if isinstance(child, Pane) and not child.has_class("-hidden")
        ]

    def fit(self) -> None:
        visible = len(self.panes()) or 1
        width = self.size.width or self.app.size.width  # before the first layout, the screen's size
        height = self.size.height or max(self.app.size.height - 6, 1)
        columns = max(range(1, visible + 1), key=lambda c: grid_score(c, visible, width, height))
        rows = math.ceil(visible / columns)
        columns = math.ceil(visible / rows)
        if (self.styles.grid_size_columns, self.styles.grid_size_rows) != (columns, rows):
            self.styles.grid_size_columns = columns
            self.styles.grid_size_rows = rows
            self.refresh(layout=True)


def grid_score(columns: int, panes: int, width: int, height: int) -> float:
    """How readable each pane is with ``columns`` columns: text width^1.5 x text height, both capped."""
    pane_width = width / columns
    pane_height = height / math.ceil(panes / columns)
    if pane_width < MIN_PANE_WIDTH and columns > 1:
        return -1.0 / columns
    text_width = min(pane_width - 4, 60)  # border, padding and scrollbar take 4 columns
    text_height = max(min(pane_height - 5, 30), 0.5)  # border, header and footer take 5 rows
    return text_width**1.5 * text_height


def label_keys(labels: list[str]) -> dict[str, str]:
    """A one-letter key for each label: its first letter not already taken (nor used by a pane key)."""
    keys: dict[str, str] = {}
    for label in labels:
        for char in label.lower():
            if char.isalpha() and char not in keys and char not in RESERVED_PANE_KEYS:
                keys[char] = label
                break
    return keys


class PersonachatApp(App[int]):
    """See the module docstring. ``backends`` (tests, benchmarks) skips connecting to servers."""

    CSS_PATH = Path(__file__).with_name("personachat.tcss")
    TITLE = "personachat"
    COMMANDS: ClassVar = App.COMMANDS | {SlashCommandsProvider}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "escape",
            "cancel",
            "Cancel",
            id="app.cancel",
            tooltip="Cancel every running answer (what arrived is recorded as cancelled)",
        ),
        Binding(
            "ctrl+r",
            "regenerate",
            "Regenerate",
            id="app.regenerate",
            tooltip="Ask the last turn again in every visible pane",
        ),
        Binding(
            "ctrl+n",
            "replay_next",
            "Next prompt",
            id="app.replay_next",
            show=False,
            tooltip="Replay: send the prompt set's next prompt (or turn) to every visible pane",
        ),
        Binding(
            "ctrl+b",
            "replay_previous",
            "Previous prompt",
            id="app.replay_previous",
            show=False,
            tooltip="Replay: send the prompt set's previous prompt again (a new turn, recorded as such)",
        ),
        Binding("f1", "help", "Help", id="app.help", tooltip="Every key and command"),
        Binding(
            "f2",
            "toggle_markdown",
            "Markdown",
            id="app.markdown",
            tooltip="Plain text → Markdown (finished answers) → Markdown in the focused pane only",
        ),
        Binding(
            "f3",
            "copy_answer",
            "Copy",
            id="app.copy",
            tooltip="Copy the focused pane's last answer to the clipboard (OSC 52)",
        ),
        Binding(
            "f4", "pager", "Pager", id="app.pager", tooltip="Open the focused pane's last answer in $PAGER"
        ),
        Binding("f11", "zoom", "Zoom", id="app.zoom", tooltip="Show the focused pane alone, and back"),
        Binding(
            "ctrl+s",
            "save_screenshot",
            "Screenshot",
            id="app.screenshot",
            tooltip="Save an SVG screenshot next to the transcript",
        ),
        *(
            Binding(
                f"alt+{n}",
                f"focus_pane({n})",
                f"Pane {n}",
                id=f"app.pane{n}",
                show=False,
                tooltip="Focus pane 1-9 (in screen order)",
            )
            for n in range(1, 10)
        ),
        Binding(
            "ctrl+q",
            "quit",
            "Quit",
            id="app.quit",
            priority=True,
            tooltip="Cancel what streams (it is recorded) and quit",
        ),
    ]

    markdown_mode: reactive[MarkdownMode] = reactive("off")
    blind: reactive[bool] = reactive(False)
    ready: reactive[bool] = reactive(False)

    def __init__(
        self,
        profile: Profile,
        *,
        transcripts: Path | None = None,
        reopen: Transcript | None = None,
        backends: dict[str, Any] | None = None,
        transcript_path: Path | None = None,
        session_id: str | None = None,
        history: PromptHistory | None = None,
        pacing: CollectorPacing | None = None,
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
        self.session: Any = None  # personachat.engine.session.Session once started
        self.connection: Any = None
        self.panes: dict[str, Pane] = {}
        self.hidden: set[str] = set()
        self.zoomed: str | None = None
        self._hidden_before_zoom: set[str] = set()
        self.current_pane: str | None = profile.panes[0].name if profile.panes else None
        self.label_keys = label_keys(profile.labels)
        self.aliases: dict[str, str] = {}  # blind mode: alias -> pane name
        self.streams = 0
        self._closed = False
        self.replay: AppReplay | None = None
        self.live_judge: Any = None  # personachat.judge.live.LiveJudge when the profile has a [judge]
        self.judging = profile.judge is not None

    # -- layout ----------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static(id="topbar", markup=False)
        with PaneGrid(id="panes"):
            for number, spec in enumerate(self.profile.panes, 1):
                pane = Pane(spec, number, id=f"pane-{number}")
                pane.label_keys = self.label_keys
                self.panes[spec.name] = pane
                yield pane
        yield Static(id="completion", markup=False)
        yield ProgressBar(id="replay-progress", show_eta=True)
        yield Static(id="status", markup=False)
        yield PromptInput(self.history, id="prompt")
        yield Footer()

    def on_mount(self) -> None:
        prompt = self.query_one(PromptInput)
        prompt.pane_names = self.pane_names()
        prompt.focus()
        self._fit_grid()
        self._refresh_topbar()
        if self.reopen is not None:
            self._show_saved(self.reopen)
        self.pacing.app_ready()
        self.set_interval(1.0, self.pacing.tick, name="gc-pacing")
        self._start_session()

    def visible_panes(self) -> list[Pane]:
        """Panes shown, in screen order."""
        return self.query_one(PaneGrid).panes()

    def _fit_grid(self) -> None:
        self.query_one(PaneGrid).fit()

    def _refresh_topbar(self) -> None:
        flags = []
        if self.blind:
            flags.append(("BLIND", "reverse $warning"))
        if self.markdown_mode != "off":
            flags.append((f"MD:{self.markdown_mode}", "reverse $secondary"))
        if self.zoomed:
            flags.append(("ZOOM", "reverse $primary"))
        if self.hidden and not self.zoomed:
            flags.append((f"{len(self.hidden)} hidden", "reverse $panel"))
        if self.live_judge is not None:
            flags.append(("JUDGE" if self.judging else "judge off", "reverse $success"))
        if self.replay is not None:
            flags.append((f"REPLAY {self.replay.position()}", "reverse $accent"))
        session = f" · session {self.session.session_id[:8]}" if self.session else ""
        parts: list[str | tuple[str, str]] = [
            ("personachat", "bold $accent"),
            f" · {self.profile.name}{session}",
        ]
        for flag in flags:
            parts += [" ", flag]
        self.query_one("#topbar", Static).update(Content.assemble(*parts))

    # -- messages to the researcher ----------------------------------------------------------------

    def say(self, message: str, *, error: bool = False) -> None:
        """Show a one-line message under the panes (errors in red, also as a notification)."""
        status = self.query_one("#status", Static)
        status.update(Content.styled(message, "$text-error" if error else "$text-muted"))
        status.set_class(error, "-error")
        if error:
            self.notify(message, severity="error", markup=False)

    def _progress(self, message: str) -> None:
        self.say(message)

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

                self.connection = await connect(
                    self.profile, needed_servers(self.profile), progress=self._progress
                )
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
                restore(session, self.reopen)
            await session.start(self._progress, write_header=self.reopen is None)
        except PersonachatError as exc:
            self.say(f"cannot start: {exc}", error=True)
            return
        self.session = session
        for name, state in session.panes.items():
            if name in self.panes:
                self.panes[name].set_spec(state.spec)
        self.ready = True
        self._refresh_topbar()
        self.say(f"ready · transcript {path}")
        if self.profile.judge is not None:
            self._open_judge()

    @property
    def transcript_path(self) -> Path | None:
        writer = getattr(self.session, "writer", None)
        return writer.path if writer is not None else None

    def _show_saved(self, transcript: Transcript) -> None:
        """Show every saved turn in its panes (reopening a session)."""
        conversation = None
        by_pane: dict[str, list[tuple[str | None, list[str], str | None]]] = {name: [] for name in self.panes}
        for turn in saved_turns(transcript):
            if conversation is not None and turn.conversation != conversation:
                for entries in by_pane.values():
                    entries.append((None, [], f"── conversation {turn.conversation} ──"))
            conversation = turn.conversation
            for answer in turn.answers:
                if answer.pane not in by_pane:
                    continue
                notes = []
                for record in answer.responses:
                    if record.status != "finished":
                        notes.append(f"{record.status}" + (f": {record.error}" if record.error else ""))
                    notes += [f"label: {label}" for label in record.labels]
                prompt = None if answer.regenerated else answer.prompt
                by_pane[answer.pane].append(
                    (prompt, [r.text for r in answer.responses], " · ".join(notes) or None)
                )
                self.panes[answer.pane].restore_last(turn.turn, [r.id for r in answer.responses])
        for name, entries in by_pane.items():
            self.panes[name].show_turns(entries)
        self.say(f"reopened {transcript.path.name}: {len(transcript.responses)} answers")

    def _run_stream(self, events: AsyncIterator[Event]) -> None:
        self.streams += 1
        self.pacing.stream_started()
        self._consume(events)

    @work(group="stream")
    async def _consume(self, events: AsyncIterator[Event]) -> None:
        await self._show(events)

    async def _show(self, events: AsyncIterator[Event]) -> None:
        """Show a broadcast's events as they come (the panes batch them per frame)."""
        try:
            async for event in events:
                pane = self.panes.get(event.pane)
                if pane is not None:
                    pane.handle(event)
        except PersonachatError as exc:
            self.say(str(exc), error=True)
        finally:
            self.streams -= 1
            if self.pacing.stream_ended():
                self.call_after_refresh(self.pacing.collect)  # once the last words are on screen

    def _require_session(self) -> bool:
        if self.session is None:
            self.say("not connected yet: wait for 'ready' (or see the message above)", error=True)
            return False
        return True

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
            refusal = "not connected yet: wait for 'ready' (or see the message above)"
        elif self.session.busy:
            refusal = "answers are still streaming: Esc cancels them"
        elif not self.visible_panes():
            refusal = "every pane is hidden: /panes show all"
        if refusal:
            self.say(refusal, error=True)
            prompt.restore(text)
            return
        prompt.prompt_history.add(text)
        if text.startswith("//"):
            text = text[1:]
        self._run_stream(self.session.broadcast(text, [pane.spec.name for pane in self.visible_panes()]))

    @on(TextArea.Changed, "#prompt")
    def _on_prompt_changed(self, event: TextArea.Changed) -> None:
        text = event.text_area.text
        hint = self.query_one("#completion", Static)
        if not is_command(text) or "\n" in text:
            hint.display = False
            return
        name = text[1:].split(" ", 1)[0]
        specs = COMMANDS.get(name) or [s for n, ss in COMMANDS.items() if n.startswith(name) for s in ss]
        if not specs:
            hint.update(Content.styled(f"unknown command /{name} · /help lists them", "$text-error"))
        else:
            lines = [Content.assemble((s.usage, "bold"), ("  " + s.help, "dim")) for s in specs[:4]]
            hint.update(Content("\n").join(lines))
        hint.display = True

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
                title = node.alias or node.spec.name
                self.say(f"pane {title}: {keys} · c copy · p pager · z zoom · h hide · Enter back to prompt")
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

    def _set_hidden(self, hidden: Iterable[str]) -> None:
        self.hidden = set(hidden)
        for name, pane in self.panes.items():
            pane.set_class(name in self.hidden, "-hidden")
        self._fit_grid()
        self._refresh_topbar()

    def action_zoom(self, name: str | None = None) -> None:
        """Show one pane alone (the focused one by default); again to go back."""
        if self.zoomed is not None and (name is None or self.resolve(name).spec.name == self.zoomed):
            self.zoomed = None
            self._set_hidden(self._hidden_before_zoom)
            return
        pane = self.resolve(name) if name else self.focused_pane()
        if pane is None:
            return
        if self.zoomed is None:
            self._hidden_before_zoom = set(self.hidden)
        self.zoomed = pane.spec.name
        self._set_hidden(n for n in self.panes if n != pane.spec.name)
        pane.conversation.focus()

    def action_hide_pane(self, name: str | None = None) -> None:
        pane = self.resolve(name) if name else self.focused_pane()
        if pane is None:
            return
        if len(self.visible_panes()) <= 1:
            self.say("cannot hide the last visible pane", error=True)
            return
        self._set_hidden({*self.hidden, pane.spec.name})
        self.query_one(PromptInput).focus()

    def watch_blind(self, blind: bool) -> None:
        self._refresh_judge_summaries()
        grid = self.query_one(PaneGrid)
        panes = list(self.panes.values())
        if blind:
            random.shuffle(panes)
        self.aliases = {ALIASES[i]: pane.spec.name for i, pane in enumerate(panes)} if blind else {}
        for number, pane in enumerate(panes, 1):
            grid.move_child(pane, after=len(grid.children) - 1)
            pane.number = number
            pane.set_blind(blind, ALIASES[number - 1] if blind else None)
        self.query_one(PromptInput).pane_names = self.pane_names()
        self._refresh_topbar()

    def watch_markdown_mode(self) -> None:
        self._apply_markdown()
        self._refresh_topbar()

    def _apply_markdown(self) -> None:
        focused = self.focused_pane()
        for pane in self.panes.values():
            pane.set_markdown(
                self.markdown_mode == "on" or (self.markdown_mode == "focused" and pane is focused)
            )

    # -- actions ---------------------------------------------------------------------------------

    def action_cancel(self) -> None:
        replaying = self._replaying()
        if replaying:
            self.workers.cancel_group(self, "replay")
        if self.session is not None and (self.session.busy or replaying):
            self.session.cancel()
            self.say("cancelled: partial answers are recorded")

    def action_regenerate(self) -> None:
        if not self._require_session():
            return
        if self.session.busy:
            self.say("answers are still streaming: Esc cancels them", error=True)
            return
        self._run_stream(self.session.regenerate([pane.spec.name for pane in self.visible_panes()]))

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self._key_table(), list(self.label_keys.items())))

    def _key_table(self) -> list[tuple[str, str, str]]:
        rows: list[tuple[str, str, str]] = []
        sources: list[tuple[str, list[BindingType]]] = [
            ("prompt", PromptInput.BINDINGS),
            ("anywhere", self.BINDINGS),
            ("pane focused", Pane.BINDINGS),
        ]
        for where, bindings in sources:
            for binding in bindings:
                hidden = {f"{prefix}{n}" for prefix in ("app.pane", "pane.focus") for n in range(2, 10)}
                if not isinstance(binding, Binding) or binding.id in hidden:
                    continue
                key = binding.key
                if binding.id in ("app.pane1", "pane.focus1"):
                    key = key.replace("1", "1…9")
                rows.append((key.replace(",", " / "), binding.tooltip or binding.description, where))
        rows.append(("↑ / ↓", "Recall earlier prompts (kept across runs)", "prompt"))
        rows.append(("ctrl+p", "Command palette: every command and pane action", "anywhere"))
        return rows

    def action_toggle_markdown(self) -> None:
        order: list[MarkdownMode] = ["off", "on", "focused"]
        self.markdown_mode = order[(order.index(self.markdown_mode) + 1) % len(order)]
        self.say(f"Markdown: {self.markdown_mode}")

    def _answer_of(self, name: str | None) -> tuple[Pane, str] | None:
        pane = self.resolve(name) if name else self.focused_pane()
        if pane is None:
            return None
        answers = pane.last_answers()
        if not answers:
            self.say(f"pane {pane.alias or pane.spec.name} has no answer yet", error=True)
            return None
        text = (
            answers[0]
            if len(answers) == 1
            else "\n\n".join(f"--- sample {i + 1} ---\n{a}" for i, a in enumerate(answers))
        )
        return pane, text

    def action_copy_answer(self, name: str | None = None) -> None:
        found = self._answer_of(name)
        if found:
            pane, text = found
            self.copy_to_clipboard(text)
            self.say(f"copied {len(text)} characters of pane {pane.alias or pane.spec.name}")

    def action_pager(self, name: str | None = None) -> None:
        found = self._answer_of(name)
        if not found:
            return
        from personachat.text import sanitize

        command = shlex.split(os.environ.get("PAGER") or "less")
        try:
            with self.suspend():
                subprocess.run(command, input=sanitize(found[1]).encode("utf-8"), check=False)
        except Exception as exc:  # no terminal to hand over (headless), or no such pager
            self.say(f"cannot open the pager: {exc}", error=True)

    def action_save_screenshot(self) -> None:
        path = self.transcript_path
        directory = path.parent if path else self.transcripts_dir
        stem = path.stem if path else self.profile.name
        directory.mkdir(parents=True, exist_ok=True)
        saved = self.save_screenshot(f"{stem}-{time.strftime('%H%M%S')}.svg", str(directory))
        self.say(f"screenshot saved: {saved}")

    async def action_quit(self) -> None:
        await self.close_session()
        self.exit(0)

    async def close_session(self) -> None:
        """Cancel what streams (recorded as cancelled), close the transcript and the servers started."""
        if self._closed:
            return
        self._closed = True
        if self.live_judge is not None:
            await self.live_judge.aclose()
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
        self.label(message.pane, message.label)

    def label(self, pane: Pane, label: str, sample: int = 0) -> None:
        """Label one pane's last answer; written to the transcript at once."""
        if not self._require_session():
            return
        ids = pane.last_ids
        if not ids:
            self.say(f"pane {pane.alias or pane.spec.name} has no answer to label yet", error=True)
            return
        if not 0 <= sample < len(ids):
            self.say(f"pane {pane.alias or pane.spec.name} has {len(ids)} samples", error=True)
            return
        self.session.annotate(
            "label", label, target=ids[sample], pane=pane.spec.name, turn=pane.last_turn, blind=self.blind
        )
        pane.show_note(f"label: {label}" + (f" (sample {sample + 1})" if len(ids) > 1 else ""))
        self.say(f"labelled pane {pane.alias or pane.spec.name}: {label}")

    # -- replaying a prompt set -------------------------------------------------------------------

    def _replay_refusal(self) -> str | None:
        """Why a replay step cannot be sent now (None: it can)."""
        if self.session is None:
            return "not connected yet: wait for 'ready' (or see the message above)"
        if self.replay is None:
            return "no prompt set loaded: /replay SET first"
        if self.session.busy or self._replaying():
            return "answers are still streaming: Esc cancels them"
        if not self.visible_panes():
            return "every pane is hidden: /panes show all"
        return None

    def _replaying(self) -> bool:
        return any(w.group == "replay" and not w.is_finished for w in self.workers)

    def action_replay_next(self) -> None:
        refusal = self._replay_refusal()
        if refusal:
            self.say(refusal, error=True)
            return
        assert self.replay is not None
        if self.replay.cursor.peek() is None:  # the cursor stays on the last prompt
            self.say("end of the prompt set: /prev goes back, /replay SET loads another")
            return
        step = self.replay.cursor.next()
        assert step is not None
        self._run_steps(self.replay.steps_to(step))

    def action_replay_previous(self) -> None:
        refusal = self._replay_refusal()
        if refusal:
            self.say(refusal, error=True)
            return
        assert self.replay is not None
        cursor = self.replay.cursor
        if cursor.position <= 0:
            self.say("already at the first prompt of the set", error=True)
            return
        step = cursor.previous()
        assert step is not None
        self._run_steps(self.replay.steps_to(step))

    def _replay_all(self) -> None:
        refusal = self._replay_refusal()
        if refusal:
            self.say(refusal, error=True)
            return
        assert self.replay is not None
        remaining = self.replay.remaining()
        if not remaining:
            self.say("nothing left to replay: /prev goes back, /replay SET loads another")
            return
        self._run_steps([*self.replay.steps_to(remaining[0])[:-1], *remaining], progress=True)

    @work(group="replay", exclusive=True)
    async def _run_steps(self, steps: list[PromptStep], progress: bool = False) -> None:
        """Send ``steps`` one after another, each once the last one's answers have ended."""
        replay = self.replay
        assert replay is not None
        bar = self.query_one("#replay-progress", ProgressBar)
        if progress:
            bar.update(total=len(steps), progress=0)
            bar.add_class("-running")
        try:
            for sent, step in enumerate(steps):
                replay.cursor.position = step.index
                self._refresh_topbar()
                self.say(f"replay {replay.position()}" + (f" · {sent}/{len(steps)} sent" if progress else ""))
                await self._send_step(replay, step)
                bar.advance(1)
            if progress:
                self.say(f"replayed {len(steps)} prompts of {replay.prompt_set.name}")
        except asyncio.CancelledError:
            if self.is_running:  # not when the app is quitting
                self.say(f"replay stopped at {replay.position()}: partial answers are recorded")
            raise
        finally:
            if self.is_running:
                bar.remove_class("-running")
                self._refresh_topbar()

    async def _send_step(self, replay: AppReplay, step: PromptStep) -> None:
        """Broadcast one step to the visible panes with its record fields, and wait for the answers.

        A job's first prompt starts a new conversation (with the job's prefilled messages). The
        item's system prompt, when it has one, replaces each pane's for this send only, as in
        headless replay; so does its temperature.
        """
        session = self.session
        names = [pane.spec.name for pane in self.visible_panes()]
        if step.new_conversation:
            if session.turn or any(state.history for state in session.panes.values()):
                session.clear()
            for pane in self.panes.values():
                pane.clear()
                pane.show_note(f"── {replay.prompt_set.name} {step.label()} ──")
            for name in names:
                session.panes[name].history.extend(dict(m) for m in step.history)
            if step.history:
                for name in names:
                    self.panes[name].show_note(f"({len(step.history)} prefilled messages)")
        own = {name: session.panes[name].spec for name in names}
        if step.system is not None:
            for name in names:
                session.set_system(name, step.system)
        if step.job.temperature is not None:
            for name in names:
                session.set_sampling(name, temperature=step.job.temperature)
        self._after_settings()
        try:
            self.streams += 1
            self.pacing.stream_started()
            await self._show(session.broadcast(step.text, names, meta=replay.meta(step)))
        finally:
            for name, spec in own.items():
                if step.system is not None:
                    session.set_system(name, spec.system)
                if step.job.temperature is not None:
                    session.set_sampling(name, temperature=spec.sampling.temperature)
            if self.is_running:
                self._after_settings()
        replay.sent = step

    # -- the live judge ------------------------------------------------------------------------

    @work(group="judge-open", exclusive=True)
    async def _open_judge(self) -> None:
        """Open the profile's judge once the session runs; from then on every finished answer is judged."""
        from personachat.judge.live import LiveJudge

        try:
            live = await LiveJudge.open(
                self.profile, self.session.writer, backends=self.session.backends, progress=self._progress
            )
        except PersonachatError as exc:
            self.say(f"judge not available: {exc}", error=True)
            return
        if self.reopen is not None:
            live.load(self.reopen)  # the summaries count what was judged before
        self.live_judge = live
        self.session.record_listeners.append(self._on_record)
        self._refresh_judge_summaries()
        self._refresh_topbar()
        model = self.profile.judge.model if self.profile.judge else "?"
        self.say(f"judge {model} on: answers are scored as they finish (/judge off)")

    def _on_record(self, record: ResponseRecord) -> None:
        if self.judging and self.live_judge is not None and record.status == "finished":
            self._judge(record)

    def _judge(self, record: ResponseRecord) -> None:
        self.run_worker(
            self._judge_one(record),
            group=f"judge-{record.id}",
            exclusive=True,
            name="judge",
            exit_on_error=False,
        )

    async def _judge_one(self, record: ResponseRecord) -> None:
        """Judge one answer and show its scores and the new summaries; errors become messages."""
        from personachat.judge.live import JudgeFailed

        error = None
        try:
            records = await self.live_judge.judge_response(record)
        except JudgeFailed as exc:
            records, error = exc.records, str(exc)
        except PersonachatError as exc:
            records, error = [], f"judge failed: {exc}"
        pane = self.panes.get(record.pane)
        if pane is not None:
            pane.show_judgement(record.id, records, error)
        if error:
            self.say(f"pane {pane.alias or pane.spec.name if pane else record.pane}: {error}", error=True)
        self._refresh_judge_summaries()

    def _refresh_judge_summaries(self) -> None:
        if self.live_judge is None:
            return
        for summary in self.live_judge.summary():
            pane = self.panes.get(summary.group)
            if pane is not None:
                pane.show_judge_summary(format_summary(summary, with_base=not self.blind))

    # -- slash commands ----------------------------------------------------------------------------

    def prefill_prompt(self, text: str) -> None:
        prompt = self.query_one(PromptInput)
        prompt.set_text(text)
        prompt.focus()

    def run_slash(self, text: str) -> None:
        """Run one slash command; every mistake becomes a message, never a traceback."""
        try:
            command = parse(text, self.pane_names())
            handler: Callable[[Command], None] = getattr(self, f"_command_{command.name}")
            handler(command)
        except PersonachatError as exc:
            self.say(str(exc), error=True)

    def _target(self, command: Command) -> str | None:
        return self.resolve(command.pane).spec.name if command.pane else None

    def _after_settings(self) -> None:
        for name, state in self.session.panes.items():
            self.panes[name].set_spec(state.spec)

    def _command_system(self, command: Command) -> None:
        if not self._require_session():
            return
        text = None if command.text == "--none" else command.text
        self.session.set_system(self._target(command), text)
        self._after_settings()
        where = command.pane or "every pane"
        self.say(
            f"system prompt for {where}: " + ("none (no system message)" if text is None else repr(text))
        )

    def _sampling(self, command: Command, **changes: Any) -> None:
        if not self._require_session():
            return
        self.session.set_sampling(self._target(command), **changes)
        self._after_settings()
        setting = ", ".join(f"{k}={v}" for k, v in changes.items())
        self.say(f"{setting} for {command.pane or 'every pane'} (from the next turn)")

    def _command_temp(self, command: Command) -> None:
        self._sampling(command, temperature=float(command.args[0]))

    def _command_max(self, command: Command) -> None:
        self._sampling(command, max_tokens=int(command.args[0]))

    def _command_seed(self, command: Command) -> None:
        value = command.args[0]
        self._sampling(command, seed=None if value.lower() == "none" else int(value))

    def _command_n(self, command: Command) -> None:
        self._sampling(command, n=int(command.args[0]))

    def _command_clear(self, command: Command) -> None:
        if not self._require_session():
            return
        self.session.clear()
        for pane in self.panes.values():
            pane.clear()
            pane.show_note(f"── conversation {self.session.conversation} ──")
        self.say(f"new conversation {self.session.conversation} (same transcript)")

    def _command_tag(self, command: Command) -> None:
        if not self._require_session():
            return
        for tag in command.args:
            self.session.annotate("tag", tag, blind=self.blind)
        self.say(f"turn {self.session.turn} tagged: {' '.join(command.args)}")

    def _command_note(self, command: Command) -> None:
        if not self._require_session():
            return
        self.session.annotate("note", command.text, blind=self.blind)
        self.say(f"note added to turn {self.session.turn}")

    def _command_label(self, command: Command) -> None:
        target, label = command.args
        sample = 0
        if "#" in target:
            try:
                sample = int(target.split("#", 1)[1]) - 1
            except ValueError:
                raise CommandError(f"'{target}': the sample after # must be a number") from None
        self.label(self.resolve(target), label, sample)

    def _command_panes(self, command: Command) -> None:
        if not command.args:
            listing = ", ".join(
                f"{i}:{p.alias or p.spec.name}" for i, p in enumerate(self.visible_panes(), 1)
            )
            hidden_names = ", ".join(sorted(self.aliases_of(self.hidden))) or "none"
            self.say(f"visible {listing} · hidden {hidden_names} · /panes hide|show|only PANE…")
            return
        action, names = command.args[0], command.args[1:]
        chosen = set(self.panes) if "all" in names else {self.resolve(n).spec.name for n in names}
        if self.zoomed:
            self.zoomed = None
        if action == "hide":
            hidden = self.hidden | chosen
        elif action == "show":
            hidden = self.hidden - chosen
        else:
            hidden = set(self.panes) - chosen
        if hidden >= set(self.panes):
            raise CommandError("that would hide every pane")
        self._set_hidden(hidden)

    def aliases_of(self, names: Iterable[str]) -> list[str]:
        if not self.blind:
            return list(names)
        back = {name: alias for alias, name in self.aliases.items()}
        return [back.get(name, name) for name in names]

    def _command_zoom(self, command: Command) -> None:
        self.action_zoom(command.args[0] if command.args else None)

    def _command_markdown(self, command: Command) -> None:
        if command.args:
            self.markdown_mode = command.args[0]  # type: ignore[assignment]
        else:
            self.action_toggle_markdown()

    def _command_blind(self, command: Command) -> None:
        if self.blind:
            self.say("already blind: /reveal shows the names")
            return
        self.blind = True
        self.say("blind: panes shuffled and named A, B, …; labels are recorded blind=true; /reveal ends it")

    def _command_reveal(self, command: Command) -> None:
        if not self.blind:
            self.say("not in blind mode")
            return
        mapping = ", ".join(f"{alias}={name}" for alias, name in self.aliases.items())
        self.blind = False
        self.say(f"revealed: {mapping}")

    def _command_diff(self, command: Command) -> None:
        first, second = (self.resolve(name) for name in command.args)
        old, new = first.last_answers(), second.last_answers()
        if not old or not new:
            raise CommandError("both panes need an answer first")
        self.push_screen(
            DiffScreen(first.alias or first.spec.name, old[0], second.alias or second.spec.name, new[0])
        )

    def _command_copy(self, command: Command) -> None:
        self.action_copy_answer(command.args[0] if command.args else None)

    def _command_pager(self, command: Command) -> None:
        self.action_pager(command.args[0] if command.args else None)

    def _command_save(self, command: Command) -> None:
        self.action_save_screenshot()

    def _command_export(self, command: Command) -> None:
        from personachat.export import export_transcript
        from personachat.transcripts.reader import read_transcript

        path = self.transcript_path
        if path is None or not path.exists():
            raise CommandError("nothing to export yet")
        transcript = read_transcript(path)
        markdown = export_transcript(transcript, "markdown")
        page = export_transcript(transcript, "html")
        self.say(f"exported {markdown.name} and {page.name} in {markdown.parent}")

    def _command_replay(self, command: Command) -> None:
        if not command.args:
            if self.replay is None:
                raise CommandError(f"no prompt set loaded; usage: {command.usage()}")
            self.say(f"replay {self.replay.position()} · /next, /prev, /replay all, /replay off")
            return
        if command.text == "all":
            self._replay_all()
            return
        if command.text == "off":
            if self._replaying():
                raise CommandError("a replay is running: Esc stops it first")
            self.replay = None
            self._refresh_topbar()
            self.say("prompt set unloaded")
            return
        if self._replaying():
            raise CommandError("a replay is running: Esc stops it first")
        path = command.text.strip("'\"")
        try:
            replay = AppReplay.load(path)
        except PersonachatError as exc:
            problems = str(exc).splitlines()
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise CommandError(f"cannot load {path}: {problems[0] if problems else exc}{more}") from None
        self.replay = replay
        self._refresh_topbar()
        prompt_set = replay.prompt_set
        warnings = f" · {len(prompt_set.warnings)} warnings" if prompt_set.warnings else ""
        self.say(
            f"loaded {prompt_set.name}: {len(replay.cursor)} prompts ({len(prompt_set.items)} items){warnings}"
            " · /next (ctrl+n) sends the first, /replay all runs them all"
        )

    def _command_next(self, command: Command) -> None:
        self.action_replay_next()

    def _command_prev(self, command: Command) -> None:
        self.action_replay_previous()

    def _command_judge(self, command: Command) -> None:
        if self.profile.judge is None:
            raise CommandError(f"profile '{self.profile.name}' has no [judge] table (see docs/judge.md)")
        if command.args:
            self.judging = command.args[0] == "on"
            self._refresh_topbar()
        state = "on" if self.judging else "off"
        opened = "" if self.live_judge is not None else " (the judge is not connected yet)"
        self.say(
            f"judge {state}{opened}: "
            + ("new answers are scored" if self.judging else "answers are not scored")
        )

    def _command_help(self, command: Command) -> None:
        self.action_help()

    def _command_quit(self, command: Command) -> None:
        self.call_next(self.action_quit)
