"""Load a prompt set: pick its format (by extension or by name), parse it, report every problem at once.

Each format is a module of :mod:`personachat.promptsets.formats`; ``FORMATS`` below is the one list
of them. Every problem in a file is reported as a :class:`~personachat.errors.PromptSetError` naming
the file, the line and what is wrong; all problems of a file are reported together where parsing
can go on. See docs/prompt-sets.md for the formats.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from personachat.checking import Checker
from personachat.errors import Problem, PromptSetError
from personachat.promptsets.formats import em_yaml, jsonl, text, toml
from personachat.promptsets.formats.common import Format
from personachat.promptsets.model import PromptSet

FORMATS: dict[str, Format] = {m.NAME: m for m in (toml, jsonl, text, em_yaml)}
"""Format name -> its module; the first format that claims an extension reads files with it."""
FORMAT_NAMES: tuple[str, ...] = tuple(FORMATS)
EXTENSIONS: dict[str, str] = {}
for _format in FORMATS.values():
    for _extension in _format.EXTENSIONS:
        EXTENSIONS.setdefault(_extension, _format.NAME)


def format_of(path: str | Path) -> str:
    """The format name for ``path``'s extension; ``PromptSetError`` for an unsupported one."""
    suffix = Path(path).suffix.lower()
    if suffix not in EXTENSIONS:
        shown = f"'{suffix}'" if suffix else "no extension"
        known = ", ".join(list(EXTENSIONS)[:-1]) + f" or {list(EXTENSIONS)[-1]}"
        raise PromptSetError([Problem(path, f"unsupported prompt set format ({shown}): use {known}")])
    return EXTENSIONS[suffix]


def _check_format(path: str | Path, format: str) -> None:
    if format not in FORMATS:
        raise PromptSetError(
            [Problem(path, f"unknown format {format!r} (use one of {', '.join(FORMAT_NAMES)})")]
        )


def load_prompt_set(path: str | Path, format: str | None = None) -> PromptSet:
    """Read a prompt set; the format follows the extension unless ``format`` names one of FORMAT_NAMES."""
    path = Path(path)
    fmt = format or format_of(path)
    _check_format(path, fmt)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PromptSetError([Problem(path, "prompt set not found")]) from None
    except IsADirectoryError:
        raise PromptSetError([Problem(path, "is a folder, not a prompt set file")]) from None
    except OSError as exc:
        raise PromptSetError([Problem(path, f"cannot read prompt set: {exc.strerror}")]) from None
    return parse_prompt_set(data, path, fmt)


def parse_prompt_set(data: bytes | str, path: str | Path, format: str) -> PromptSet:
    """Parse the contents of a prompt set file (``path`` is only used in messages and for the name)."""
    path = Path(path)
    _check_format(path, format)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    sha256 = hashlib.sha256(raw).hexdigest()
    try:
        source = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PromptSetError([Problem(path, f"not UTF-8 text (byte {exc.start})", line=line)]) from None
    checker = Checker(path)
    items, meta = FORMATS[format].parse(source, checker)
    checker.raise_if_any(PromptSetError)
    if not items:
        raise PromptSetError([Problem(path, "contains no prompts")])
    judge_prompts: dict[str, str] = {}
    for item in items:
        for metric, template in item.judge_prompts.items():
            if metric not in judge_prompts:
                judge_prompts[metric] = template
            elif judge_prompts[metric] != template:
                checker.warn(
                    f"question '{item.id}' has its own '{metric}' judge prompt; "
                    "the set-wide judge_prompts keep the first one",
                    line=item.line,
                )
    return PromptSet(
        name=meta.get("name") or path.stem,
        path=path,
        sha256=sha256,
        format=format,
        items=items,
        description=meta.get("description", ""),
        judge_prompts=judge_prompts,
        warnings=checker.warnings,
    )
