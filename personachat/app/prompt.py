"""The prompt box: multi-line, Enter sends, Ctrl+J inserts a newline, Up/Down recall history, Tab completes."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from textual import events
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import TextArea

from personachat.app.history import PromptHistory

NEWLINE_KEYS = ("ctrl+j", "alt+enter", "shift+enter")


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
            tooltip="Complete a /command or pane name; otherwise move focus to the panes",
        ),
    ]

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
        if event.key == "tab" and self.completer(self.text):
            event.stop()
            event.prevent_default()
            self.action_complete()
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
        options = self.completer(self.text)
        if not options:
            self.screen.focus_next()
            return
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
