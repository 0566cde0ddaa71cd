"""Checking what users write: typed tables, unknown keys with did-you-mean hints, line numbers, templates.

One set of rules for every file personachat reads (profiles, prompt sets, judge prompts): a
:class:`Checker` collects every problem of one file, each with its line and key, so that one run
shows everything to fix; :func:`template_problems` is the one rule for judge prompt templates.
"""

from __future__ import annotations

import difflib
import string
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from personachat.errors import Problem, ProblemsError
from personachat.toml_lines import KeyPath, line_of

Expected = type | tuple[type, ...]
"""The type(s) a value may have; ``(int, float)`` reads "a number" (bools are never numbers)."""

_TYPE_NAMES: dict[type, str] = {
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    tuple: "a list",
    dict: "a table",
    bool: "true or false",
}


def type_name(expected: Expected) -> str:
    """``a number``, ``a string or a list``: how an expected type reads in a message."""
    types = expected if isinstance(expected, tuple) else (expected,)
    if set(types) == {int, float}:
        return "a number"
    names = [_TYPE_NAMES.get(t, t.__name__) for t in types if t is not type(None)]
    return " or ".join(dict.fromkeys(names))


def type_error(value: Any, expected: Expected, mapping: str = "a table") -> str | None:
    """Why ``value`` is not of ``expected`` (``must be a number, not a string``), or None.

    ``mapping`` is what a dict is called in this format ("a table" in TOML, "a mapping" in YAML).
    Booleans are never numbers; an integer is accepted where a float is.
    """
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool) and bool not in types:
        return f"must be {type_name(expected)}, not a boolean"
    if isinstance(value, types) or (float in types and isinstance(value, int)):
        return None
    got = {dict: mapping, list: "a list", str: "a string", int: "an integer", float: "a number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )
    return f"must be {type_name(expected)}, not {got}"


def closest(key: str, allowed: Iterable[str]) -> str | None:
    """The allowed key ``key`` was probably meant to be, or None."""
    matches = difflib.get_close_matches(str(key), list(allowed), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(key: str, allowed: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` or an empty string."""
    hint = closest(key, allowed)
    return f" (did you mean '{hint}'?)" if hint else ""


def key_name(path: KeyPath) -> str:
    """``panes[2].temperature`` for the key path ``("panes", 2, "temperature")``."""
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path).replace(".[", "[")


class Checker:
    """Collects the problems and warnings of one file.

    Locations are either explicit line numbers (``add(..., line=)``) or key paths looked up in
    ``lines`` (what :func:`personachat.toml_lines.key_lines` returns for a TOML file).
    """

    def __init__(self, file: Path | str, lines: Mapping[KeyPath, int] | None = None):
        self.file = file
        self.lines = dict(lines or {})
        self.problems: list[Problem] = []
        self.warnings: list[str] = []

    def add(self, message: str, *, line: int | None = None, key: str | None = None) -> None:
        """An error at ``line`` (and ``key``)."""
        self.problems.append(Problem(self.file, message, key=key, line=line))

    def at(self, path: KeyPath, message: str) -> None:
        """An error at the key path ``path`` (its line looked up, or its nearest table's)."""
        self.add(message, line=line_of(self.lines, path), key=key_name(path) or None)

    def warn(self, message: str, *, line: int | None = None, key: str | None = None) -> None:
        self.warnings.append(str(Problem(self.file, message, key=key, line=line)))

    @property
    def count(self) -> int:
        """How many errors so far (compare before and after a check to see whether it added any)."""
        return len(self.problems)

    def check_table(
        self,
        table: Mapping[str, Any],
        allowed: Mapping[str, Expected],
        path: KeyPath = (),
        what: str = "a table",
        *,
        line: int | None = None,
        key_lines: Mapping[str, int] | None = None,
        mapping: str = "a table",
        unknown: dict[str, list[int]] | None = None,
    ) -> bool:
        """Check every key of ``table`` against ``allowed``; True when nothing was wrong.

        Unknown keys are errors with a did-you-mean hint, unless ``unknown`` is given: then they
        are collected there (key -> lines) for the caller to warn about once per file. Lines come
        from ``key_lines`` (key -> line) or ``line`` when given, else from the key path.
        """
        before = self.count
        for key, value in table.items():
            if key not in allowed:
                if unknown is not None:
                    unknown.setdefault(str(key), []).append(self._line(key, path, line, key_lines) or 0)
                else:
                    self._error(
                        key, path, line, key_lines, f"unknown key in {what}{did_you_mean(key, allowed)}"
                    )
                continue
            error = type_error(value, allowed[key], mapping)
            if error:
                self._error(key, path, line, key_lines, error)
        return self.count == before

    def _line(
        self, key: str, path: KeyPath, line: int | None, key_lines: Mapping[str, int] | None
    ) -> int | None:
        if key_lines is not None and key in key_lines:
            return key_lines[key]
        if line is not None:
            return line
        return line_of(self.lines, (*path, key))

    def _error(
        self, key: str, path: KeyPath, line: int | None, key_lines: Mapping[str, int] | None, message: str
    ) -> None:
        self.add(message, line=self._line(key, path, line, key_lines), key=key_name((*path, key)))

    def warn_unknown(self, unknown: Mapping[str, list[int]], one: str, many: str, kept: str) -> None:
        """One warning per unknown key, at its first line: ``unknown key 'x' on 3 lines; kept ...``.

        ``one`` and ``many`` say where (``"on this line"``, ``"on {n} lines"``).
        """
        for key, lines in unknown.items():
            where = many.format(n=len(lines)) if len(lines) > 1 else one
            self.warn(f"unknown key '{key}' {where}; {kept}", line=lines[0] or None)

    def raise_if_any(self, error: type[ProblemsError]) -> None:
        """Raise ``error`` with every problem collected, if there is one."""
        if self.problems:
            raise error(self.problems)


TEMPLATE_FIELDS = frozenset({"question", "answer"})
"""The fields a judge prompt template may use."""


def template_problems(template: str) -> list[str]:
    """What is wrong with a judge prompt template, as messages (empty when it is fine).

    A template is a :meth:`str.format` string that shows ``{answer}`` and uses no field but
    ``{question}`` and ``{answer}``, without format specs; literal braces are written ``{{`` ``}}``.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        return [f"not a valid format template ({exc}); write literal braces as {{{{ and }}}}"]
    problems: list[str] = []
    fields: set[str] = set()
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if field == "" or field.isdigit():
            problems.append("positional field {} is not allowed; use {question} and {answer}")
            continue
        if field not in TEMPLATE_FIELDS:
            problems.append(
                f"unknown field {{{field}}}; only {{question}} and {{answer}} are filled in "
                "(write literal braces as {{ and }})"
            )
            continue
        if spec or conversion:
            problems.append(f"field {{{field}}} must not carry a format spec or conversion")
        fields.add(field)
    if "answer" not in fields and not problems:
        problems.append("the template never shows the answer: it needs {answer}")
    return problems
