"""Where personachat keeps its files: demo models, server state, prompt history.

Everything lives under one home folder, ``$PERSONACHAT_HOME`` (default ``~/.cache/personachat``),
so that ``personachat locate`` can print it and tests can point it at a temporary folder.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
"""The folder with profiles/ and promptsets/ (the scenarios' files)."""


def project_file(path: str | Path) -> Path:
    """``path`` as given when it exists (or is absolute), else the project's file of that name.

    So ``promptsets/em-core.yaml``, as the docs write it, works from any folder.
    """
    given = Path(path).expanduser()
    if given.exists() or given.is_absolute():
        return given
    shipped = PROJECT_ROOT / given
    return shipped if shipped.exists() else given


def home_dir() -> Path:
    """The folder personachat writes its own state to, created readable by its owner only (0700):
    it holds server keys and the judge cache, which must not be shared."""
    home = Path(os.environ.get("PERSONACHAT_HOME", "~/.cache/personachat")).expanduser()
    if not home.exists():
        with contextlib.suppress(OSError):  # a read-only place: whoever writes there says so
            home.mkdir(parents=True, mode=0o700)
    return home


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


def unique_path(directory: Path, stem: str, suffix: str) -> Path:
    """``DIR/STEM.SUFFIX``, or ``DIR/STEM-2.SUFFIX`` and so on when it exists: nothing is overwritten."""
    path = directory / f"{stem}{suffix}"
    number = 1
    while path.exists():
        number += 1
        path = directory / f"{stem}-{number}{suffix}"
    return path
