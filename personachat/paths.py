"""Where personachat keeps its files: demo models, server state, prompt history.

Everything lives under one home folder, ``$PERSONACHAT_HOME`` (default ``~/.cache/personachat``),
so that ``personachat locate`` can print it and tests can point it at a temporary folder.
"""

from __future__ import annotations

import os
from pathlib import Path


def home_dir() -> Path:
    """The folder personachat writes its own state to."""
    return Path(os.environ.get("PERSONACHAT_HOME", "~/.cache/personachat")).expanduser()


def demo_dir() -> Path:
    """Where ``personachat demo build`` puts the tiny demo models by default."""
    env = os.environ.get("PERSONACHAT_DEMO_DIR")
    return Path(env).expanduser() if env else home_dir() / "demo"


def servers_dir() -> Path:
    """State files of vLLM servers started by ``personachat serve``."""
    return home_dir() / "servers"


def history_file() -> Path:
    """Prompt history of the app, kept across runs."""
    return home_dir() / "history.jsonl"


def keymap_file() -> Path:
    """The app's key bindings as the user changed them (``[keymap]``: binding id = keys)."""
    return home_dir() / "keymap.toml"


def expand_path(value: str, base: Path | None) -> str:
    """Expand ``~``, ``$VARS`` and ``${PERSONACHAT_DEMO_DIR}``; resolve relative paths against ``base``.

    Values that are not paths (hub ids such as ``Qwen/Qwen2.5-7B-Instruct``) are returned as given.
    """
    env = dict(os.environ)
    env.setdefault("PERSONACHAT_DEMO_DIR", str(demo_dir()))
    expanded = value
    for name, val in env.items():
        expanded = expanded.replace("${" + name + "}", val)
    expanded = os.path.expanduser(os.path.expandvars(expanded))
    if looks_like_path(value) and base is not None and not os.path.isabs(expanded):
        return str((base / expanded).resolve())
    if base is not None and not os.path.isabs(expanded) and (base / expanded).exists():
        return str((base / expanded).resolve())
    return expanded


def looks_like_path(value: str) -> bool:
    """True when ``value`` is written as a filesystem path rather than a hub id."""
    return value.startswith(("/", "./", "../", "~", "$")) or value in (".", "..")
