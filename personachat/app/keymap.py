"""A user keymap: ``$PERSONACHAT_HOME/keymap.toml`` rebinds the app's keys by binding id.

The file has one table, ``[keymap]``, mapping a binding id (F1 shows them) to the keys that should
trigger it, comma-separated as Textual writes them::

    [keymap]
    "app.regenerate" = "ctrl+g"
    "app.pane1" = "f5"

It is applied with Textual's ``App.set_keymap``, which rebinds App, screen and widget bindings.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

from personachat.checking import did_you_mean
from personachat.toml_lines import decode_error

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def load_keymap(path: Path, known_ids: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """(binding id -> keys, problems) from ``path``; a missing file is an empty keymap.

    Unknown ids and malformed values are problems (shown at startup), never fatal.
    """
    if not path.is_file():
        return {}, []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        message, line = decode_error(exc)
        return {}, [f"{path}:{line}: {message}" if line else f"{path}: {message}"]
    except (OSError, UnicodeDecodeError) as exc:
        return {}, [f"{path}: cannot read the keymap ({exc})"]
    known = set(known_ids)
    table = data.get("keymap", {})
    problems = [
        f"{path}: unknown table '{key}' (the file has one table, [keymap])" for key in data if key != "keymap"
    ]
    if not isinstance(table, dict):
        return {}, [*problems, f"{path}: [keymap] must be a table of binding id = keys"]
    keymap: dict[str, str] = {}
    for binding_id, keys in table.items():
        if binding_id not in known:
            problems.append(f"{path}: unknown binding id '{binding_id}'{did_you_mean(binding_id, known)}")
        elif not isinstance(keys, str) or not keys.strip():
            problems.append(f"{path}: '{binding_id}' must be keys written as a string, e.g. \"ctrl+g\"")
        else:
            keymap[binding_id] = keys.replace(" ", "")
    return keymap, problems


def binding_ids() -> list[str]:
    """Every binding id a keymap may rebind (the app's, the prompt box's and a pane's)."""
    from textual.binding import Binding

    from personachat.app.bindings import APP_BINDINGS
    from personachat.app.pane import Pane
    from personachat.app.prompt import PromptInput

    every = [*APP_BINDINGS, *PromptInput.BINDINGS, *Pane.BINDINGS]
    return [b.id for b in every if isinstance(b, Binding) and b.id]
