"""The command palette (Ctrl+P): the slash commands that apply now, and per-pane actions.

Everything comes from the command table (:mod:`personachat.app.slash_commands`). Choosing an entry
runs its handler directly with a parsed :class:`~personachat.app.slash.Command`; a command that
needs arguments is put in the prompt box to complete instead.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from textual.command import DiscoveryHit, Hit, Hits, Provider

from personachat.app.slash import Command
from personachat.app.slash_commands import COMMANDS

if TYPE_CHECKING:
    from personachat.app.app import PersonachatApp

Entry = tuple[str, Callable[[], object], str]


def palette_entries(app: PersonachatApp) -> list[Entry]:
    """(title, action, help) of every entry the palette offers in the app's current state."""
    out: list[Entry] = []
    for spec in COMMANDS:
        if spec.applies is not None and not spec.applies(app):
            continue
        if spec.needs_arguments:
            action: Callable[[], object] = partial(app.prefill_prompt, f"/{spec.name} ")
        else:
            action = partial(app.run_command, Command(spec.name))
        out.append((spec.usage, action, spec.help))
        for arg in spec.args:
            if arg.kind == "choice" and arg.optional and len(spec.args) == 1:
                for choice in arg.choices:
                    run = partial(app.run_command, Command(spec.name, values=[choice], text=choice))
                    out.append((f"/{spec.name} {choice}", run, spec.help))
        if not spec.per_pane:
            continue
        for name in app.pane_names():
            labels = app.profile.labels if "{label}" in spec.per_pane else [""]
            for label in labels:
                values = spec.pane_values(name, label)
                title = spec.per_pane.format(pane=name, label=label)
                out.append((title, partial(app.run_command, Command(spec.name, values=values)), spec.help))
    return out


class SlashCommandsProvider(Provider):
    """Commands as the palette shows them: choosing one runs it, or puts it in the prompt to complete."""

    def _entries(self) -> list[Entry]:
        app: PersonachatApp = self.app  # type: ignore[assignment]
        return palette_entries(app)

    async def discover(self) -> Hits:
        for text, action, help_text in self._entries():
            yield DiscoveryHit(text, action, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for text, action, help_text in self._entries():
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), action, text=text, help=help_text)
