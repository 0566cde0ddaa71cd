"""Profile data written back as the text of a TOML profile file (``--save-profile``, scenario demos).

Only what profiles hold: top-level scalars and inline tables, ``[servers.NAME]`` tables,
``[[panes]]`` rows and a ``[judge]`` table. ``tomllib.loads`` of the text gives the data back.
"""

from __future__ import annotations

import json
import re
from typing import Any


def profile_toml(data: dict[str, Any], header: str = "") -> str:
    """``data`` (``Profile.raw``, or a profile built in code) as a profile file, ``header`` as comments."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += [f"{_key(k)} = {_value(v)}" for k, v in data.items() if k not in ("servers", "panes", "judge")]
    for name, server in data.get("servers", {}).items():
        lines += ["", f"[servers.{_key(name)}]", *_pairs(server)]
    for pane in data.get("panes", []):
        lines += ["", "[[panes]]", *_pairs(pane)]
    if "judge" in data:
        lines += ["", "[judge]", *_pairs(data["judge"])]
    return "\n".join(lines) + "\n"


def _pairs(table: dict[str, Any]) -> list[str]:
    return [f"{_key(k)} = {_value(v)}" for k, v in table.items()]


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # JSON's string escapes are TOML basic-string escapes; DEL is the one control JSON leaves raw.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
