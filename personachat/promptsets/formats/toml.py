"""personachat's own prompt-set format: TOML ``[[prompts]]`` tables (see docs/prompt-sets.md)."""

from __future__ import annotations

import sys
from typing import Any

from personachat.chat import Message
from personachat.checking import Checker, Expected, did_you_mean, key_name, type_error
from personachat.promptsets.formats.common import (
    Parsed,
    check_judge_prompts,
    is_str_list,
    message_error,
    nonempty,
    split_conversation,
)
from personachat.promptsets.model import JudgePrompt, PromptItem
from personachat.toml_lines import KeyPath, decode_error, key_lines, line_of

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

NAME = "toml"
EXTENSIONS = (".toml",)

TOP_KEYS: dict[str, Expected] = {"name": str, "description": str, "prompts": list}
PROMPT_KEYS: dict[str, Expected] = {
    "id": str,
    "text": str,
    "paraphrases": list,
    "messages": list,
    "system": str,
    "samples": int,
    "tags": list,
    "turns": list,
    "temperature": (int, float),
    "judge": str,
    "judge_prompts": dict,
    "type": str,
}


def parse(text: str, checker: Checker) -> Parsed:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message, line = decode_error(exc)
        checker.add(message, line=line)
        return [], {}
    checker.lines = key_lines(text)
    add = checker.at
    for key, value in data.items():
        if key not in TOP_KEYS:
            add((key,), f"unknown top-level key{did_you_mean(key, TOP_KEYS)}")
        elif error := type_error(value, TOP_KEYS[key]):
            add((key,), error)
    meta = {k: data[k] for k in ("name", "description") if isinstance(data.get(k), str)}
    raw_prompts = data.get("prompts")
    if raw_prompts is None:
        checker.add("a prompt set needs at least one [[prompts]] table", line=1)
        return [], meta
    if not isinstance(raw_prompts, list):
        return [], meta
    items: list[PromptItem] = []
    first_line: dict[str, int | None] = {}
    for index, table in enumerate(raw_prompts):
        item = _item(checker, table, ("prompts", index), first_line)
        if item is not None:
            items.append(item)
    return items, meta


def _item(
    checker: Checker, table: Any, ppath: KeyPath, first_line: dict[str, int | None]
) -> PromptItem | None:
    add = checker.at
    if not isinstance(table, dict):
        add(ppath, "must be a table")
        return None
    before = checker.count
    checker.check_table(table, PROMPT_KEYS, ppath, "a prompt")
    type_errors = checker.count > before
    qid = table.get("id")
    if qid is None:
        add(ppath, "prompt is missing 'id'")
    elif isinstance(qid, str):
        if not qid.strip():
            add((*ppath, "id"), "must not be empty")
        elif qid in first_line:
            where = f" (first at line {first_line[qid]})" if first_line[qid] else ""
            add((*ppath, "id"), f"duplicate id '{qid}'{where}")
        else:
            first_line[qid] = line_of(checker.lines, (*ppath, "id"))
    if type_errors:
        return None

    paraphrases: list[str] = []
    history: list[Message] = []
    system = table.get("system")
    messages: list[Message] | None = None
    has_text, has_par, has_msgs = "text" in table, "paraphrases" in table, "messages" in table
    if has_msgs and (has_text or has_par):
        other = "text" if has_text else "paraphrases"
        add((*ppath, other), f"give either '{other}' or 'messages', not both")
    elif not (has_text or has_par or has_msgs):
        add(ppath, "prompt needs 'text', 'paraphrases' or 'messages'")
    if has_text:
        if nonempty(table["text"]):
            paraphrases.append(table["text"])
        else:
            add((*ppath, "text"), "must not be empty")
    if has_par:
        values = table["paraphrases"]
        if not is_str_list(values) or not all(nonempty(v) for v in values):
            add((*ppath, "paraphrases"), "must be a list of non-empty strings")
        elif not values and not has_text:
            add((*ppath, "paraphrases"), "must not be empty")
        else:
            paraphrases.extend(values)
    if has_msgs and not (has_text or has_par):
        parsed = _messages(checker, table["messages"], (*ppath, "messages"))
        if parsed is not None:
            messages, msg_system, history, prompt = parsed
            if msg_system is not None and "system" in table:
                add((*ppath, "system"), "give either 'system' or a system message in 'messages', not both")
            if msg_system is not None:
                system = msg_system
            paraphrases = [prompt]
    for key in ("tags", "turns"):
        if key in table and not is_str_list(table[key]):
            add((*ppath, key), "must be a list of strings")
    if "turns" in table and is_str_list(table["turns"]) and not all(map(nonempty, table["turns"])):
        add((*ppath, "turns"), "must not contain empty messages")
    samples = table.get("samples", 1)
    if samples < 1:
        add((*ppath, "samples"), "must be >= 1")
    temperature = table.get("temperature")
    if temperature is not None and temperature < 0:
        add((*ppath, "temperature"), "must be >= 0")
    judge_prompts: dict[str, JudgePrompt] = {}
    if "judge_prompts" in table:
        jpath = (*ppath, "judge_prompts")
        judge_prompts = check_judge_prompts(
            checker, table["judge_prompts"], line_of(checker.lines, jpath), key_name(jpath)
        )
    if checker.count > before:
        return None
    return PromptItem(
        id=str(qid),
        paraphrases=paraphrases,
        system=system,
        samples=samples,
        tags=list(table.get("tags", [])),
        temperature=float(temperature) if temperature is not None else None,
        messages=messages,
        turns=list(table.get("turns", [])),
        judge=table.get("judge"),
        judge_prompts=judge_prompts,
        type=table.get("type"),
        line=line_of(checker.lines, ppath),
        history=history,
    )


def _messages(
    checker: Checker, raw: list[Any], path: KeyPath
) -> tuple[list[Message], str | None, list[Message], str] | None:
    """Check a TOML ``messages`` list; return (messages, system, history, prompt) or None."""
    messages: list[Message] = []
    ok = True
    for j, message in enumerate(raw):
        problem = message_error(message)
        if problem:
            checker.at((*path, j), problem)
            ok = False
            continue
        messages.append({"role": message["role"], "content": message["content"]})
    if not ok:
        return None

    def error(message: str, index: int | None) -> None:
        checker.at(path if index is None else (*path, index), message)

    split = split_conversation(messages, error)
    if split is None:
        return None
    system, history, prompt = split
    return messages, system, history, prompt
