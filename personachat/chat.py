"""Chat messages as every part of personachat passes them: ``{"role": ..., "content": ...}``."""

from __future__ import annotations

from typing import Any

Message = dict[str, str]
"""One chat message: ``role`` (system, user or assistant) and ``content`` (text)."""

ROLES: tuple[str, ...] = ("system", "user", "assistant")


def content_text(content: Any) -> str | None:
    """A message's text: a string, or the text parts of an OpenAI-style content list; None otherwise."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
    ):
        return "".join(p["text"] for p in content)
    return None
