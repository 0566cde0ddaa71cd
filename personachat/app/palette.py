"""The command palette provider: every slash command, plus pane actions (zoom, hide, copy, label)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from textual.command import DiscoveryHit, Hit, Hits, Provider

from personachat.app.slash import COMMAND_SPECS

if TYPE_CHECKING:
    from personachat.app.app import PersonachatApp

NO_ARGUMENT = {
    "clear",
    "blind",
    "reveal",
    "save",
    "export",
    "help",
    "quit",
    "zoom",
    "copy",
    "pager",
    "panes",
    "next",
    "prev",
}
LITERAL = {"/replay all", "/replay off"}  # usages run as they are written


class SlashCommandsProvider(Provider):
    """Commands as the palette shows them: choosing one runs it, or puts it in the prompt to complete."""

    def _candidates(self) -> list[tuple[str, Callable[[], object], str]]:
        app: PersonachatApp = self.app  # type: ignore[assignment]
        out: list[tuple[str, Callable[[], object], str]] = []
        seen: set[str] = set()
        for spec in COMMAND_SPECS:
            if spec.usage in seen:
                continue
            seen.add(spec.usage)
            if spec.usage in LITERAL:
                action: Callable[[], object] = partial(app.run_slash, spec.usage)
            elif spec.name in NO_ARGUMENT and "PANE PANE" not in spec.usage:
                action = partial(app.run_slash, f"/{spec.name}")
            else:
                action = partial(app.prefill_prompt, f"/{spec.name} ")
            out.append((spec.usage, action, spec.help))
        if app.profile.judge is not None:
            for state in ("on", "off"):
                out.append((f"/judge {state}", partial(app.run_slash, f"/judge {state}"), "live judge"))
        for name in app.pane_names():
            out.append(
                (f"Zoom pane {name}", partial(app.run_slash, f"/zoom {name}"), "full screen, and back")
            )
            out.append(
                (f"Hide pane {name}", partial(app.run_slash, f"/panes hide {name}"), "/panes show all")
            )
            out.append((f"Copy last answer of {name}", partial(app.run_slash, f"/copy {name}"), "OSC 52"))
            for label in app.profile.labels:
                out.append(
                    (
                        f"Label {name} as {label}",
                        partial(app.run_slash, f"/label {name} {label}"),
                        "annotation",
                    )
                )
        return out

    async def discover(self) -> Hits:
        for text, action, help_text in self._candidates():
            yield DiscoveryHit(text, action, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for text, action, help_text in self._candidates():
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), action, text=text, help=help_text)
