"""The API keys of the vLLM servers personachat launched, found by URL.

A launched server takes requests only with its random key (other local users cannot use it); the
key is kept in the server's state file (``$PERSONACHAT_HOME/servers``, readable by its owner
only), so any personachat command that talks to that URL (``ask``, the app, a profile pointing at
it as an ``openai`` server) sends it. Keys never go into a transcript or a log.
"""

from __future__ import annotations

import json

from personachat.paths import servers_dir


def key_for(url: str) -> str | None:
    """The API key of the launched server listening at ``url`` (without ``/v1``), or None."""
    url = url.rstrip("/").removesuffix("/v1")
    folder = servers_dir()
    if not folder.is_dir():
        return None
    for path in folder.glob("*.json"):
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(state, dict) or not isinstance(state.get("api_key"), str):
            continue
        if state.get("url") == url or url in (state.get("workers") or []):
            return str(state["api_key"])
    return None
