"""The hint under the panes while a slash command is typed: its usage and help, from the command table."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

from personachat.app.slash import is_command
from personachat.app.slash_commands import COMMANDS


class CommandHint(Static):
    """Shows the commands matching what is typed (up to four); hidden for a prompt."""

    def show_for(self, text: str) -> None:
        if not is_command(text) or "\n" in text:
            self.display = False
            return
        name = text[1:].split(" ", 1)[0]
        specs = COMMANDS.matching(name)
        if not specs:
            self.update(Content.styled(f"unknown command /{name} · /help lists them", "$text-error"))
        else:
            lines = [Content.assemble((s.usage, "bold"), ("  " + s.help, "dim")) for s in specs[:4]]
            self.update(Content("\n").join(lines))
        self.display = True
