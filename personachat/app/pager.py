"""Show an answer in the researcher's ``$PAGER`` (default ``less``), sanitised, the app suspended."""

from __future__ import annotations

import os
import shlex
import subprocess
from typing import TYPE_CHECKING, Any

from textual.app import App

from personachat.text import sanitize

if TYPE_CHECKING:
    from personachat.app.app import PersonachatApp
    from personachat.app.pane import Pane


def answer_text(app: PersonachatApp, pane: Pane | None) -> tuple[Pane, str] | None:
    """``pane``'s last answer (every sample, marked) for the pager or the clipboard; None (said in
    the status line) when it has none."""
    if pane is None:
        return None
    answers = pane.last_answers()
    if not answers:
        app.say(f"pane {pane.shown_name} has no answer yet", error=True)
        return None
    if len(answers) == 1:
        return pane, answers[0]
    return pane, "\n\n".join(f"--- sample {i + 1} ---\n{a}" for i, a in enumerate(answers))


def show_in_pager(app: App[Any], text: str) -> str | None:
    """Page ``text``; None when it was shown, else what went wrong (a message for the status line)."""
    pager = os.environ.get("PAGER") or "less"
    try:
        command = shlex.split(pager)
    except ValueError as exc:
        return f"cannot read $PAGER ({exc}): {sanitize(pager)!r}"
    if not command:
        return "$PAGER is empty"
    try:
        with app.suspend():
            subprocess.run(command, input=sanitize(text).encode("utf-8"), check=False)
    except Exception as exc:  # no terminal to hand over (headless), or no such pager
        return f"cannot open the pager: {sanitize(str(exc))}"
    return None
