"""Make untrusted model text safe to show: no terminal escapes, no control characters, no markup.

Control characters are not dropped but replaced by visible stand-ins, so that a researcher can see
that the model emitted them: ``␛`` for ESC (so ``\\x1b[31m`` shows as ``␛[31m``), the Unicode
control pictures (U+2400 block) for the other C0 characters, ``⟨U+XXXX⟩`` for C1 controls and
bidirectional overrides. Tabs become spaces, ``\\r\\n`` becomes ``\\n``, lone surrogates become U+FFFD.
The result is plain text: render it as segments or ``rich.text.Text(s)``, never through a markup parser.
"""

from __future__ import annotations

import json
import re
from typing import Any

TAB = "    "
"""What a tab becomes (tab stops cannot be honoured in wrapped, streamed text)."""

_UNSAFE = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\ud800-\udfff]"
)


def _tag(code: int) -> str:
    return f"⟨U+{code:04X}⟩"


def _build_table() -> dict[int, str]:
    table: dict[int, str] = {code: chr(0x2400 + code) for code in range(0x20)}
    table[0x09] = TAB
    del table[0x0A]  # newline is kept
    table[0x7F] = "\u2421"  # ␡
    table.update({code: _tag(code) for code in range(0x80, 0xA0)})
    invisible = (*range(0x200B, 0x2010), *range(0x2060, 0x2065), 0xFEFF)  # zero-width, direction marks
    table.update(
        {
            code: _tag(code)
            for code in (0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A), *invisible)
        }
    )
    table.update({code: "\ufffd" for code in range(0xD800, 0xE000)})
    return table


_TABLE = _build_table()

CONTROL_STAND_INS = re.compile("[\u2400-\u2421]|⟨U\\+[0-9A-F]{4}⟩")
"""Matches the visible stand-ins this module produces (so a view can style them apart)."""


def sanitize(text: str) -> str:
    """``text`` with every control character, escape and unsafe code point made visible and inert."""
    if not _UNSAFE.search(text):
        return text
    return text.replace("\r\n", "\n").translate(_TABLE)


class StreamSanitizer:
    """:func:`sanitize` for text that arrives in pieces: a ``\\r\\n`` split between two pieces stays one newline."""

    __slots__ = ("_pending_cr",)

    def __init__(self) -> None:
        self._pending_cr = False

    def feed(self, text: str) -> str:
        """Sanitize the next piece; a trailing ``\\r`` is held back until the next piece shows what follows."""
        if self._pending_cr:
            text = "\r" + text
            self._pending_cr = False
        if text.endswith("\r"):
            self._pending_cr = True
            text = text[:-1]
        return sanitize(text)

    def flush(self) -> str:
        """What is still held back (a lone ``\\r``, shown as ``␍``)."""
        if self._pending_cr:
            self._pending_cr = False
            return sanitize("\r")
        return ""


_JSON_UNSAFE = re.compile(
    "[\x7f-\x9f\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\ud800-\udfff]"
)


def sanitize_json(data: Any) -> str:
    """``data`` as one line of JSON that is safe on a terminal and exact for a program.

    ``json`` escapes the C0 controls; DEL, the C1 controls, line and paragraph separators,
    bidirectional controls and invisible characters are escaped as ``\\uXXXX`` too, so nothing a
    terminal acts on is written raw, and a JSON reader gets every character back unchanged.
    """
    text = json.dumps(data, ensure_ascii=False)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
