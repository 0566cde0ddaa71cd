"""A report section as data: a titled table with notes, and what it adds to the report's JSON.

The comparisons (:mod:`~personachat.judge.paired`, :mod:`~personachat.judge.agreement`,
:mod:`~personachat.judge.ranking`, :mod:`~personachat.judge.series`) each return sections; the text,
HTML and JSON renderers of :mod:`~personachat.judge.report` read them all the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Section:
    """``rows`` of strings under ``header`` (the first ``left`` columns left-aligned); ``notes`` are
    lines under the table (what the figures mean); ``json``: keys for the report's JSON (lists of
    several sections under one key are joined)."""

    title: str
    header: tuple[str, ...]
    rows: list[list[str]]
    left: int = 1
    notes: list[str] = field(default_factory=list)
    json: dict[str, Any] = field(default_factory=dict)


def merge_json(sections: list[Section]) -> dict[str, Any]:
    """The sections' JSON keys, lists under the same key joined in order."""
    out: dict[str, Any] = {}
    for section in sections:
        for key, value in section.json.items():
            if isinstance(value, list) and isinstance(out.get(key), list):
                out[key] = [*out[key], *value]
            else:
                out[key] = value
    return out


def pct(x: float | None, digits: int = 1) -> str:
    """A share as a percentage (``-`` for none)."""
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def pp(x: float | None) -> str:
    """A difference of shares in percentage points, signed."""
    return "-" if x is None else f"{100 * x:+.1f}pp"


def pp_interval(low: float | None, high: float | None) -> str:
    return "-" if low is None or high is None else f"{100 * low:+.1f} to {100 * high:+.1f}pp"


def number(x: float | None, digits: int = 2) -> str:
    """``x`` with ``digits`` decimals (never ``-0.00``), ``-`` for none."""
    return "-" if x is None else f"{round(x, digits) + 0.0:.{digits}f}"


def interval(low: float | None, high: float | None, digits: int = 2) -> str:
    return "-" if low is None or high is None else f"{number(low, digits)} to {number(high, digits)}"


def p_value(p: float | None) -> str:
    """A p-value as papers print it: 3 significant digits, ``<0.0001`` below that."""
    if p is None:
        return "-"
    return "<0.0001" if p < 1e-4 else f"{p:.3g}"
