"""The prompt box: multi-line, Enter sends, Ctrl+J inserts a newline, Up/Down recall history, Tab completes.

Focus stays here unless the researcher moves it on purpose: Tab completes (a command, a pane, a
label, a path) or does nothing; only a second Tab in a row with nothing to complete moves focus to
the panes. Alt+digit keys, in whatever form the terminal sends them, never type into the prompt.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

from textual import events
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import TextArea

from personachat.app.bindings import ESC_DIGIT_KEYS
from personachat.app.history import PromptHistory

NEWLINE_KEYS = ("ctrl+j", "alt+enter", "shift+enter")
TAB_TAB_SECONDS = 0.8  # a second Tab within this moves focus to the panes


class PromptInput(TextArea):
    """Where the researcher types prompts and slash commands; see the module docstring."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "enter",
            "submit",
            "Send",
            id="prompt.send",
            tooltip="Send the prompt to every visible pane (or run the /command)",
        ),
        Binding(
            "ctrl+j,alt+enter,shift+enter",
            "newline",
            "Newline",
            id="prompt.newline",
            tooltip="Insert a newline (Ctrl+J works in every terminal)",
        ),
        Binding(
            "tab",
            "complete",
            "Complete",
            id="prompt.complete",
            show=False,
            tooltip="Complete a /command, pane, label or path; Tab twice moves focus to the panes",
        ),
    ]

    class Hint(Message):
        """Something the researcher should know about a key they pressed (shown in the status line)."""

        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    class Submitted(Message):
        """The researcher pressed Enter on non-empty text."""

        def __init__(self, prompt: PromptInput, text: str) -> None:
            super().__init__()
            self.prompt = prompt
            self.text = text

    def __init__(self, history: PromptHistory, *, id: str | None = None) -> None:
        super().__init__(
            id=id,
            soft_wrap=True,
            tab_behavior="focus",
            show_line_numbers=False,
            compact=True,
            placeholder="Ask every pane… (/help for commands, Ctrl+J newline, ↑ history)",
        )
        self.prompt_history = history
        # What Tab completes (set by the app: slash commands, pane names, labels, ...).
        self.completer: Callable[[str], list[str]] = lambda text: []
        self._last_idle_tab = 0.0

    def check_consume_key(self, key: str, character: str | None = None) -> bool:
        # Alt+digit as tmux and friends send it (ESC 1 -> "¡"): leave it to the app's pane keys.
        if key in ESC_DIGIT_KEYS:
            return False
        return super().check_consume_key(key, character)

    async def _on_key(self, event: events.Key) -> None:
        # Enter, newline and completion are handled here, in order with the characters typed before
        # them. As bindings they would run when the key reaches the app, after the characters that
        # follow it in a burst (fast typing, a pasted line) had been inserted.
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.action_submit()
            return
        if event.key in NEWLINE_KEYS:
            event.stop()
            event.prevent_default()
            self.action_newline()
            return
        if event.key == "tab":
            event.stop()
            event.prevent_default()
            self.action_complete()
            return
        if event.key in ESC_DIGIT_KEYS or event.key.startswith("alt+"):
            # Never typed: an Alt chord the app does not bind does nothing here.
            event.prevent_default()
            return
        await super()._on_key(event)

    def action_submit(self) -> None:
        """Send the text (the box empties at once, in order with the keys that follow)."""
        text = self.text
        if not text.strip():
            return
        self.set_text("")
        self.post_message(self.Submitted(self, text))

    def restore(self, text: str) -> None:
        """Put back text the app could not send (unless something new was typed meanwhile)."""
        if not self.text:
            self.set_text(text)

    def action_newline(self) -> None:
        self.insert("\n")

    def action_complete(self) -> None:
        """Complete what is typed; with nothing to complete, a second Tab moves focus to the panes."""
        options = self.completer(self.text)
        if not options:
            now = time.monotonic()
            if now - self._last_idle_tab <= TAB_TAB_SECONDS:
                self._last_idle_tab = 0.0
                self.screen.focus_next()
            else:
                self._last_idle_tab = now
                self.post_message(self.Hint("nothing to complete · Tab again moves to the panes"))
            return
        self._last_idle_tab = 0.0
        common = options[0]
        for option in options[1:]:
            while not option.startswith(common):
                common = common[:-1]
        if len(options) == 1:
            common += " "
        if len(common) > len(self.text):
            self.set_text(common)

    def set_text(self, text: str) -> None:
        """Replace the text and put the cursor at its end."""
        self.load_text(text)
        self.move_cursor(self.document.end)

    def action_cursor_up(self, select: bool = False) -> None:
        if not select and self.cursor_at_first_line:
            entry = self.prompt_history.previous(self.text)
            if entry is not None:
                self.set_text(entry)
            return
        super().action_cursor_up(select)

    def action_cursor_down(self, select: bool = False) -> None:
        if not select and self.cursor_at_last_line and self.prompt_history.browsing:
            entry = self.prompt_history.next()
            if entry is not None:
                self.set_text(entry)
            return
        super().action_cursor_down(select)
