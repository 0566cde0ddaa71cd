"""JSONL prompt sets: one conversation or one prompt per line.

A line is ``{"messages": [...]}`` (chat data: the first user message is the prompt, later ones are
scripted turns), or ``{"prompt": "..."}`` / ``{"question": "..."}`` (evaluation prompts as the
inoculation-prompting and weird-generalization repositories keep them), with an optional
``id`` (or ``name``) and ``system``.
"""

from __future__ import annotations

import json

from personachat.chat import ROLES, Message, content_text
from personachat.checking import Checker, Expected
from personachat.promptsets.formats.common import Parsed, is_str_list, nonempty
from personachat.promptsets.model import PromptItem

NAME = "jsonl"
EXTENSIONS = (".jsonl",)

KEYS: dict[str, Expected] = {
    "messages": list,
    "prompt": str,
    "question": str,
    "name": (str, int),
    "system": str,
    "id": (str, int),
    "tags": list,
    "samples": int,
    "temperature": (int, float),
}


def parse(text: str, checker: Checker) -> Parsed:
    items: list[PromptItem] = []
    first_line: dict[str, int] = {}
    unknown: dict[str, list[int]] = {}
    for number, raw_line in enumerate(text.splitlines(), start=1):
        if not raw_line.strip():
            continue
        try:
            record = json.loads(raw_line)
        except json.JSONDecodeError as exc:
            checker.add(f"invalid JSON: {exc.msg} (column {exc.colno})", line=number)
            continue
        except RecursionError:
            checker.add("nested too deeply to be a prompt", line=number)
            continue
        if not isinstance(record, dict):
            checker.add('each line must be a JSON object such as {"messages": [...]}', line=number)
            continue
        texts = [key for key in ("messages", "prompt", "question") if key in record]
        if len(texts) != 1:
            what = "has none of" if not texts else "has more than one of"
            checker.add(f"line {what} 'messages', 'prompt', 'question'", line=number)
            continue
        if not checker.check_table(record, KEYS, line=number, mapping="an object", unknown=unknown):
            continue
        item = _item(checker, record, number, first_line)
        if item is not None:
            items.append(item)
    checker.warn_unknown(unknown, "on this line", "on {n} lines", "kept in the item's extra fields")
    return items, {}


def _item(checker: Checker, record: dict, number: int, first_line: dict[str, int]) -> PromptItem | None:
    def add(message: str, key: str | None = None) -> None:
        checker.add(message, line=number, key=key)

    if "messages" not in record:
        record = dict(record)
        text = record.pop("prompt", None) or record.pop("question", "")
        if not nonempty(text):
            add("the prompt is empty", "prompt")
            return None
        system = record.pop("system", None)
        record["messages"] = [
            *([{"role": "system", "content": system}] if system is not None else []),
            {"role": "user", "content": text},
        ]
    elif "system" in record:
        add("give the system message inside 'messages'", "system")
        return None
    if "id" not in record and "name" in record:
        record = {**record, "id": record["name"]}
    messages: list[Message] = []
    bad = False
    for j, message in enumerate(record["messages"]):
        role = message.get("role") if isinstance(message, dict) else None
        content = content_text(message.get("content")) if isinstance(message, dict) else None
        if role not in ROLES:
            add(f"role must be one of {', '.join(ROLES)} (got {role!r})", f"messages[{j}]")
            bad = True
        elif content is None:
            add("content must be a string (or a list of text parts)", f"messages[{j}]")
            bad = True
        else:
            messages.append({"role": role, "content": content})
    if bad:
        return None
    system = None
    if messages and messages[0]["role"] == "system":
        system = messages[0]["content"]
    if any(m["role"] == "system" for m in messages[1:]):
        add("a system message may only come first", "messages")
        return None
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        add("conversation has no user message", "messages")
        return None
    prompt = messages[users[0]]["content"]
    if not nonempty(prompt):
        add("the first user message is empty", "messages")
        return None
    assistants = [m["content"] for m in messages if m["role"] == "assistant"]
    qid = str(record["id"]) if "id" in record else f"line{number}"
    if qid in first_line:
        add(f"duplicate id '{qid}' (first at line {first_line[qid]})", "id")
        return None
    first_line[qid] = number
    tags = record.get("tags", [])
    if not is_str_list(tags):
        add("must be a list of strings", "tags")
        return None
    samples = record.get("samples", 1)
    if samples < 1:
        add("must be >= 1", "samples")
        return None
    temperature = record.get("temperature")
    if temperature is not None and temperature < 0:
        add("must be >= 0", "temperature")
        return None
    return PromptItem(
        id=qid,
        paraphrases=[prompt],
        system=system,
        samples=samples,
        tags=list(tags),
        temperature=float(temperature) if temperature is not None else None,
        messages=messages,
        reference=assistants[-1] if assistants else None,
        turns=[messages[i]["content"] for i in users[1:]],
        line=number,
        history=messages[1 if system is not None else 0 : users[0]],
        extra={k: v for k, v in record.items() if k not in KEYS},
    )
