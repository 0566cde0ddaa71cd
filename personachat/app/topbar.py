"""The top bar: the profile and session, and flags for every mode the app is in."""

from __future__ import annotations

from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget


class TopBar(Widget):
    """One line: ``personachat · PROFILE · session ID`` and a flag per active mode.

    The app sets the reactive attributes; the bar redraws itself when one changes.
    """

    profile_name: reactive[str] = reactive("")
    session_id: reactive[str] = reactive("")
    blind: reactive[bool] = reactive(False)
    markdown_mode: reactive[str] = reactive("off")
    zoomed: reactive[bool] = reactive(False)
    hidden: reactive[int] = reactive(0)
    judge: reactive[str] = reactive("")  # "" (no live judge), "on" or "off"
    replay: reactive[str] = reactive("")  # the prompt-set position, "" when none is loaded

    def render(self) -> Content:
        flags: list[tuple[str, str]] = []
        if self.blind:
            flags.append(("BLIND", "reverse $warning"))
        if self.markdown_mode != "off":
            flags.append((f"MD:{self.markdown_mode}", "reverse $secondary"))
        if self.zoomed:
            flags.append(("ZOOM", "reverse $primary"))
        if self.hidden and not self.zoomed:
            flags.append((f"{self.hidden} hidden", "reverse $panel"))
        if self.judge:
            flags.append(("JUDGE" if self.judge == "on" else "judge off", "reverse $success"))
        if self.replay:
            flags.append((f"REPLAY {self.replay}", "reverse $accent"))
        session = f" · session {self.session_id[:8]}" if self.session_id else ""
        parts: list[str | tuple[str, str]] = [
            ("personachat", "bold $accent"),
            f" · {self.profile_name}{session}",
        ]
        for flag in flags:
            parts += [" ", flag]
        return Content.assemble(*parts)
