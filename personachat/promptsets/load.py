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
from personachat.promptsets.formats import em_yaml, jsonl, lines, llmcomp, persona_json, text, toml
from personachat.promptsets.formats.common import Format
from personachat.promptsets.model import JudgePrompt, PromptSet

FORMATS: dict[str, Format] = {m.NAME: m for m in (toml, jsonl, text, em_yaml, llmcomp, lines, persona_json)}
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


MAX_PROBLEMS_SHOWN = 8


def _sniff_yaml(data: bytes) -> str:
    """``llmcomp`` for an llmcomp question file, else ``em-yaml`` (both are .yaml)."""
    import yaml

    try:
        parsed = yaml.safe_load(data)
    except (yaml.YAMLError, RecursionError, ValueError):
        return em_yaml.NAME  # its parser reports the problem with its line
    return llmcomp.NAME if llmcomp.sniff(parsed) else em_yaml.NAME


def load_prompt_set(path: str | Path, format: str | None = None) -> PromptSet:
    """Read a prompt set; the format follows the extension unless ``format`` names one of FORMAT_NAMES.

    A ``.yaml`` file is an EM evaluation file or an llmcomp question file, told apart by its items.
    """
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
    if format is None and fmt == em_yaml.NAME:
        fmt = _sniff_yaml(data)
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
    try:
        items, meta = FORMATS[format].parse(source, checker)
    except RecursionError:
        raise PromptSetError(
            [Problem(path, "nested too deeply to be a prompt set (over ~1000 levels)")]
        ) from None
    if len(checker.problems) > MAX_PROBLEMS_SHOWN:  # a file full of errors: the first few, and a count
        more = len(checker.problems) - MAX_PROBLEMS_SHOWN
        shown = checker.problems[:MAX_PROBLEMS_SHOWN]
        raise PromptSetError([*shown, Problem(path, f"... and {more} more problems like these")])
    checker.raise_if_any(PromptSetError)
    if not items:
        raise PromptSetError([Problem(path, "contains no prompts")])
    # The set-wide prompt of a metric is the first question's; a question with its own is judged
    # with its own (judge.metrics.resolve_metrics), so differing ones need no warning.
    judge_prompts: dict[str, JudgePrompt] = {}
    for item in items:
        for metric, prompt in item.judge_prompts.items():
            judge_prompts.setdefault(metric, prompt)
    return PromptSet(
        name=meta.get("name") or path.stem,
        path=path,
        sha256=sha256,
        format=format,
        items=items,
        description=meta.get("description", ""),
        judge_prompts=judge_prompts,
        warnings=checker.warnings,
        meta={k: v for k, v in meta.items() if k not in ("name", "description")},
    )
