"""Map TOML key paths to line numbers, so that validation errors can name the line.

``tomllib`` returns plain data without positions; this scanner walks the text once and records,
for every table header and every ``key = value``, the line on which it appears. It understands
tables, arrays of tables, dotted and quoted keys, inline tables, and skips multi-line strings and
arrays. It is only used to locate errors: the data itself always comes from ``tomllib``.
"""

from __future__ import annotations

import re

KeyPath = tuple[str | int, ...]

_HEADER = re.compile(r"^\s*(\[\[?)\s*(.+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(
    r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*="""
)
_INLINE_KEY = re.compile(r"""[{,]\s*([A-Za-z0-9_-]+|"[^"]*"|'[^']*')\s*=""")


def _split_key(raw: str) -> list[str]:
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", raw)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


def key_lines(text: str) -> dict[KeyPath, int]:
    """Return ``{key path: 1-based line}`` for every header and key in ``text``."""
    lines: dict[KeyPath, int] = {}
    array_counts: dict[KeyPath, int] = {}
    current: KeyPath = ()
    depth = 0  # open brackets of a multi-line array or inline table
    in_multiline: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if in_multiline:
            if in_multiline in line:
                in_multiline = None
            continue
        if depth == 0:
            header = _HEADER.match(line)
            if header and not _KEY.match(line):
                path = tuple(_split_key(header.group(2)))
                if header.group(1) == "[[":
                    index = array_counts.get(path, -1) + 1
                    array_counts[path] = index
                    current = (*path, index)
                    lines.setdefault(path, number)
                else:
                    current = path
                lines[current] = number
                continue
            key = _KEY.match(line)
            if key:
                full = (*current, *_split_key(key.group(1)))
                lines[full] = number
                rest = line[key.end() :]
                for inner in _INLINE_KEY.finditer(rest):
                    lines[(*full, _split_key(inner.group(1))[0])] = number
                for quote in ('"""', "'''"):
                    if rest.count(quote) == 1:
                        in_multiline = quote
                depth += _bracket_balance(rest)
                continue
        depth = max(0, depth + _bracket_balance(line))
    return lines


def _bracket_balance(text: str) -> int:
    """Net open brackets in ``text``, ignoring those inside simple strings and comments."""
    balance = 0
    quote: str | None = None
    for ch in text:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            break
        elif ch in "[{":
            balance += 1
        elif ch in "]}":
            balance -= 1
    return balance


def line_of(lines: dict[KeyPath, int], path: KeyPath) -> int | None:
    """The line of ``path`` or of its nearest enclosing table."""
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None


def decode_error(exc: Exception) -> tuple[str, int | None]:
    """``("invalid TOML: <what>", line)`` for a ``tomllib.TOMLDecodeError``."""
    match = re.search(r"at line (\d+)", str(exc))
    message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
    return f"invalid TOML: {message}", int(match.group(1)) if match else None
