"""asciicast v2 recordings (the format asciinema plays): screens in, the bytes that changed out.

A screen is a list of rows; a row is a list of cells ``(character, sgr)``: what one terminal cell
shows and its SGR parameters (``"1;38;2;254;166;43"``; ``""`` for plain). A wide character takes
two cells, the second ``("", sgr)``; a combining mark joins the cell before it. For every frame,
:class:`CastWriter` compares the screen with the one before and writes, row by row, only the span
that changed: a cursor move, then the characters with their colours.

The file (https://docs.asciinema.org/manual/asciicast/v2/) is a JSON header line (``version`` 2,
``width``, ``height``, ``timestamp``, ``title``) and then one ``[seconds, "o", data]`` line per
frame, in time order; ``[seconds, "r", "WxH"]`` when the screen changes size. Both
``personachat export --format cast`` (personachat/cast_render.py) and the app's ``/record``
(personachat/app/recording.py) write through this one writer.

Model output never reaches a player's terminal as an escape sequence: :func:`text_cells`, the way
text becomes cells, sanitizes it first (personachat/text.py), and the writer replaces any control
character a cell still holds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

Cell = tuple[str, str]
Row = list[Cell]

CAST_VERSION = 2
HIDE_CURSOR = "\x1b[?25l"
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_SGR = re.compile(r"[0-9;]*")


def sgr(
    fg: str | None = None,
    bg: str | None = None,
    *,
    bold: bool = False,
    dim: bool = False,
    italic: bool = False,
    reverse: bool = False,
) -> str:
    """SGR parameters for a style: colours as ``#rrggbb`` (24-bit), attributes as flags."""
    codes = [code for flag, code in ((bold, "1"), (dim, "2"), (italic, "3"), (reverse, "7")) if flag]
    for prefix, colour in (("38", fg), ("48", bg)):
        if colour:
            value = colour.lstrip("#")
            codes.append(f"{prefix};2;{int(value[0:2], 16)};{int(value[2:4], 16)};{int(value[4:6], 16)}")
    return ";".join(codes)


_WIDTHS: dict[str, int] = {}


def _cell_width(char: str) -> int:
    width = _WIDTHS.get(char)
    if width is None:
        from rich.cells import get_character_cell_size

        width = _WIDTHS[char] = get_character_cell_size(char)
    return width


def text_cells(text: str, style: str = "") -> Row:
    """``text`` as cells in ``style``, made safe to show first; a line break becomes a space."""
    from personachat.text import sanitize

    text = sanitize(text).replace("\n", " ")
    if text.isascii():  # sanitized, so printable: one cell each
        return [(char, style) for char in text]
    cells: Row = []
    for char in text:
        width = 1 if " " <= char < "\x7f" else _cell_width(char)
        if width == 0:
            # A combining mark: part of the character before it (a wide one's first cell).
            at = len(cells) - 1 - (len(cells) > 1 and cells[-1][0] == "")
            if at >= 0:
                cells[at] = (cells[at][0] + char, cells[at][1])
            continue
        cells.append((char, style))
        if width == 2:
            cells.append(("", style))
    return cells


def fit(row: Row, width: int, style: str = "") -> Row:
    """``row`` cut or padded (with blanks in ``style``) to exactly ``width`` cells."""
    if len(row) > width:
        cut = row[:width]
        if width and row[width][0] == "":
            cut[-1] = (" ", cut[-1][1])  # a wide character whose second half does not fit
        row = cut
    if row and row[0][0] == "":
        row = [(" ", row[0][1]), *row[1:]]  # a second half without its first
    return row + [(" ", style)] * (width - len(row))


def wrap(row: Row, width: int) -> list[Row]:
    """``row`` broken into rows of at most ``width`` cells, at spaces where it can (words longer
    than a row are cut); the space a row breaks at is dropped."""
    if width <= 0:
        return [row]
    rows: list[Row] = []
    start = 0
    while len(row) - start > width:
        end = start + width
        while row[end][0] == "" and end > start + 1:
            end -= 1  # never between the two cells of a wide character
        space = next((i for i in range(end, start, -1) if row[i][0] == " "), None)
        if space is not None:
            rows.append(row[start:space])
            start = space + 1
        else:
            rows.append(row[start:end])
            start = end
    rows.append(row[start:])
    return rows


class CastWriter:
    """Writes an asciicast v2 file, frame by frame, through ``write`` (a file's ``write``, a list's
    ``append``). Times are seconds from the start; a time earlier than the last one is moved up
    to it, so events are always in order."""

    def __init__(
        self,
        write: Callable[[str], Any],
        width: int,
        height: int,
        *,
        title: str,
        timestamp: int | None = None,
    ) -> None:
        from personachat.text import sanitize

        self._write = write
        self.width = width
        self.height = height
        self.time = 0.0
        self.events = 0
        self._shown: list[Row] | None = None  # what the player's screen holds now
        self._styles: set[str] = set()
        header: dict[str, Any] = {"version": CAST_VERSION, "width": width, "height": height}
        if timestamp is not None:
            header["timestamp"] = int(timestamp)
        header["title"] = sanitize(title)
        header["env"] = {"TERM": "xterm-256color"}
        write(json.dumps(header, ensure_ascii=False) + "\n")

    def frame(self, t: float, rows: Sequence[Row]) -> bool:
        """Show ``rows`` (the whole screen) at ``t``; writes what changed, and tells whether anything did."""
        data = self._changes(rows)
        if data:
            self._event(t, "o", data)
        return bool(data)

    def resize(self, t: float, width: int, height: int) -> None:
        """The screen is now ``width`` x ``height``; the next frame redraws it whole."""
        self.width, self.height = width, height
        self._shown = None
        self._event(t, "r", f"{width}x{height}")

    def end(self, t: float) -> None:
        """Mark the end at ``t`` (players take the last event's time as the recording's length)."""
        self._event(t, "o", HIDE_CURSOR)

    def _event(self, t: float, kind: str, data: str) -> None:
        self.time = max(round(float(t), 6), self.time)
        self.events += 1
        self._write(json.dumps([self.time, kind, data], ensure_ascii=False) + "\n")

    def _changes(self, rows: Sequence[Row]) -> str:
        width, height = self.width, self.height
        out: list[str] = []
        shown = self._shown
        if shown is None:
            out.append(HIDE_CURSOR + "\x1b[0m\x1b[2J")
        new_screen: list[Row] = []
        for y in range(height):
            row = rows[y] if y < len(rows) else []
            if len(row) != width or (row and row[0][0] == ""):
                row = fit(row, width)
            new_screen.append(row)
            before = shown[y] if shown is not None else None
            if before is row or before == row:
                continue
            start, end = 0, width
            if before is not None:
                start = next(x for x in range(width) if row[x] != before[x])
                end = next(x for x in range(width - 1, -1, -1) if row[x] != before[x]) + 1
                # Never start or end inside a wide character, old or new.
                while start > 0 and (row[start][0] == "" or before[start][0] == ""):
                    start -= 1
                while end < width and (row[end][0] == "" or before[end][0] == ""):
                    end += 1
            out.append(f"\x1b[{y + 1};{start + 1}H")
            out.append(self._run(row[start:end]))
        self._shown = new_screen
        if not out:
            return ""
        out.append("\x1b[0m")
        return "".join(out)

    def _run(self, cells: Row) -> str:
        """The cells as characters with their colours; a control character a cell holds is replaced."""
        if _CONTROL.search("".join(char for char, _ in cells)):
            cells = [(_CONTROL.sub("\ufffd", char), style) for char, style in cells]
        out: list[str] = []
        current: str | None = None
        for char, style in cells:
            if not char:
                continue
            if style != current:
                if style not in self._styles:
                    if not _SGR.fullmatch(style):
                        raise ValueError(f"not SGR parameters: {style!r}")
                    self._styles.add(style)
                out.append(f"\x1b[0;{style}m" if style else "\x1b[0m")
                current = style
            out.append(char)
        return "".join(out)
