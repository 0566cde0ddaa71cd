"""Show an answer in the researcher's ``$PAGER`` (default ``less``), sanitised, the app suspended."""

from __future__ import annotations

import os
import shlex
import subprocess
from typing import Any

from textual.app import App

from personachat.text import sanitize


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
