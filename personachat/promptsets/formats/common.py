"""What every prompt-set format checks the same way: texts, string lists, messages, judge prompts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from personachat.chat import ROLES, Message
from personachat.checking import Checker, template_problems, type_error
from personachat.promptsets.model import JUDGE_KINDS, JudgePrompt, PromptItem

Parsed = tuple[list[PromptItem], dict[str, Any]]
"""What a format's ``parse`` returns: the items, and set-wide fields (``name``, ``description``)."""


class Format(Protocol):
    """A prompt-set format module (see :mod:`personachat.promptsets.formats`)."""

    NAME: str
    EXTENSIONS: tuple[str, ...]

    def parse(self, text: str, checker: Checker) -> Parsed: ...


def nonempty(value: str) -> bool:
    """True when ``value`` has text besides whitespace."""
    return bool(value.strip())


def is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def message_error(message: Any) -> str | None:
    """Why ``message`` is not a ``{"role", "content"}`` message, or None."""
    if not isinstance(message, dict):
        return "each message must be a table with 'role' and 'content'"
    extra = set(message) - {"role", "content"}
    if extra:
        return f"unknown key '{sorted(extra)[0]}' in a message (a message has 'role' and 'content')"
    if message.get("role") not in ROLES:
        return f"role must be one of {', '.join(ROLES)} (got {message.get('role')!r})"
    if not isinstance(message.get("content"), str):
        return "content must be a string"
    return None


def split_conversation(
    messages: list[Message], error: Callable[[str, int | None], None]
) -> tuple[str | None, list[Message], str] | None:
    """(system, history, prompt) of a conversation that ends with the user's prompt; None after ``error``.

    ``error(message, index)`` reports a problem (``index``: the message it is about, or None).
    """
    if not messages:
        error("must not be empty", None)
        return None
    system = None
    body = messages
    if messages[0]["role"] == "system":
        system = messages[0]["content"]
        body = messages[1:]
    for j, message in enumerate(body):
        if message["role"] == "system":
            error("a system message may only come first", j + len(messages) - len(body))
            return None
    if not body or body[-1]["role"] != "user":
        error("must end with a user message (the prompt)", None)
        return None
    if not nonempty(body[-1]["content"]):
        error("the last user message must not be empty", None)
        return None
    return system, body[:-1], body[-1]["content"]


def judge_prompt(
    checker: Checker,
    value: Any,
    *,
    line: int | None,
    key: str,
    kind: Any = None,
    labels: Any = None,
    judge: str | None = None,
    model: str | None = None,
) -> JudgePrompt | None:
    """One judge prompt: a template string, or a table ``{template, kind, labels}``; None after a problem."""
    if isinstance(value, dict):
        unknown = set(value) - {"template", "kind", "labels"}
        if unknown:
            checker.add(
                f"unknown key '{sorted(unknown)[0]}' (a judge prompt has template, kind, labels)",
                line=line,
                key=key,
            )
            return None
        kind = value.get("kind", kind)
        labels = value.get("labels", labels)
        value = value.get("template")
    if not isinstance(value, str):
        checker.add("must be a template string (or a table with template, kind, labels)", line=line, key=key)
        return None
    problems = template_problems(value)
    if problems:
        checker.add("; ".join(problems), line=line, key=key)
        return None
    if kind is not None and kind not in JUDGE_KINDS:
        checker.add(f"kind must be one of {', '.join(JUDGE_KINDS)} (got {kind!r})", line=line, key=key)
        return None
    if labels is not None and (not is_str_list(labels) or len(set(labels)) != len(labels) or len(labels) < 2):
        checker.add("labels must be a list of two or more different strings", line=line, key=key)
        return None
    source = f"{checker.file}:{line}" if line else str(checker.file)
    return JudgePrompt(value, kind, tuple(labels or ()), judge=judge, model=model, source=source)


def check_judge_prompts(
    checker: Checker,
    value: Any,
    line: int | None,
    key: str,
    mapping: str = "a table",
    *,
    kind: Any = None,
    labels: Any = None,
) -> dict[str, JudgePrompt]:
    """The metric -> judge prompt mapping ``value``, each checked (problems reported).

    ``kind``/``labels`` apply to every metric that does not say its own; ``labels`` may also be a
    mapping metric -> labels.
    """
    if not isinstance(value, dict):
        checker.add(type_error(value, dict, mapping) or "must be a table", line=line, key=key)
        return {}
    out: dict[str, JudgePrompt] = {}
    for metric, template in value.items():
        if not isinstance(metric, str):
            checker.add("must map metric names to templates", line=line, key=f"{key}.{metric}")
            continue
        own_labels = labels.get(metric) if isinstance(labels, dict) else labels
        made = judge_prompt(checker, template, line=line, key=f"{key}.{metric}", kind=kind, labels=own_labels)
        if made is not None:
            out[metric] = made
    return out
