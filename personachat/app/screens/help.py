"""The help screen: every key and every slash command, generated from the bindings and the command table."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.content import Content
from textual.keys import key_to_character
from textual.screen import ModalScreen
from textual.widgets import Static

from personachat.app.bindings import ESC_DIGIT_KEYS
from personachat.app.slash_commands import COMMANDS


def _shown_key(key: str) -> str:
    """A key as a researcher reads it: ``[`` rather than ``left_square_bracket``."""
    char = key_to_character(key)
    return char if char is not None and char.isprintable() and not char.isspace() else key


def key_rows(
    sources: list[tuple[str, list[BindingType]]], keymap: dict[str, str] | None = None
) -> list[tuple[str, str, str]]:
    """(keys, what, where) for every binding of ``sources`` (where, bindings), as ``keymap`` rebinds them.

    Numbered bindings (pane 1-9) are shown once, as ``1…9``.
    """
    keymap = keymap or {}
    rows: list[tuple[str, str, str]] = []
    hidden = {f"{prefix}{n}" for prefix in ("app.pane", "pane.focus") for n in range(2, 10)}
    for where, bindings in sources:
        for binding in bindings:
            if not isinstance(binding, Binding) or binding.id in hidden:
                continue
            key = keymap.get(binding.id or "", binding.key)
            # The forms terminals send Alt+digit as (ESC 1 reads as "¡") are the same key: not listed.
            key = ",".join(_shown_key(k) for k in key.split(",") if k not in ESC_DIGIT_KEYS)
            if binding.id in ("app.pane1", "pane.focus1"):
                key = key.replace("1", "1…9")
            place = f"{where} · {binding.id}" if binding.id else where
            rows.append((key.replace(",", " / "), binding.tooltip or binding.description, place))
    rows.append(("↑ / ↓", "Recall earlier prompts (kept across runs)", "prompt"))
    rows.append(("ctrl+p", "Command palette: every command and pane action", "anywhere"))
    return rows


class HelpScreen(ModalScreen[None]):
    """Keys and commands; Escape, F1 or q closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,f1,q", "dismiss", "Close", id="help.close", tooltip="Back to the panes"),
    ]

    def __init__(self, keys: list[tuple[str, str, str]], labels: list[tuple[str, str]]) -> None:
        super().__init__()
        self.keys = keys  # (key, what, where)
        self.labels = labels  # (key, label)

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body"):
            yield Static(self._content(), id="help-text", markup=False)

    def _content(self) -> Content:
        width = min(max(len(key) for key, _, _ in self.keys), 20) + 2
        parts: list[str | tuple[str, str]] = [("Keys\n", "bold $accent")]
        for key, what, where in self.keys:
            parts += [(f"  {key:<{width}} ", "bold"), what, (f"  [{where}]\n" if where else "\n", "dim")]
        if self.labels:
            parts.append(
                (
                    "\nLabel keys (in a focused pane only: click it, Alt+1…9, or Tab Tab; u takes a label back)\n",
                    "bold $accent",
                )
            )
            for key, label in self.labels:
                parts += [(f"  {key:<{width}}", "bold"), f"label the pane's last answer '{label}'\n"]
        parts.append(
            ("\nSlash commands (type in the prompt; Tab completes; // sends a literal /)\n", "bold $accent")
        )
        usage_width = min(max(len(spec.usage) for spec in COMMANDS), 32) + 2
        for spec in COMMANDS:
            parts += [(f"  {spec.usage:<{usage_width}}", "bold"), f"{spec.help}\n"]
            for form in spec.forms:
                usage, _, what = form.partition("   ")
                parts += [(f"  {usage:<{usage_width}}", "bold"), f"{what.strip()}\n"]
        parts.append(
            (
                "\nPANE is a pane name (or its letter in /blind mode); 'all' (or, where it is in brackets,"
                " nothing) means every pane. Keys can be rebound in $PERSONACHAT_HOME/keymap.toml by the"
                " ids in brackets (docs/app.md).\n",
                "dim",
            )
        )
        parts.append(("Ctrl+P opens the command palette; themes are under 'Change theme' there.", "dim"))
        return Content.assemble(*parts)
