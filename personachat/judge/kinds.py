"""How a judge's answer is read, per metric: a 0-100 number, one of some labels, or generated text.

A prompt set may say (``kind``, ``labels``); when it does not, the template's own words decide:

- a template that asks for reasoning and then a final ``ANSWER: X`` line (two or more such lines
  listed) is **generated**: the judge writes its text at temperature 0 and the label is read from
  it, never guessed;
- a template that asks for a number from 0 to 100 is **score_0_100** (the EM method);
- a template that lists the answers it accepts (``"TRUE" or "FALSE"``, ``YES / NO``) is
  **categorical**: the labels' probability on the judge's first token decides;
- a template with labels given beside it (``labels``) is **categorical**;
- anything else stays **score_0_100**, personachat's historic default.
"""

from __future__ import annotations

import re

from personachat.errors import PersonachatError
from personachat.promptsets.model import JudgeKind, JudgePrompt

_ANSWER_LINE = re.compile(r"^\s*ANSWER:\s*([A-Za-z][\w-]*)\s*$", re.MULTILINE)
_QUOTED = re.compile(r"\"([A-Za-z][\w-]{0,30})\"")
_CAPS_CHOICE = re.compile(r"\b[A-Z][A-Z_]+\b(?:\s*(?:/|,|\bor\b)\s*\b[A-Z][A-Z_]+\b)+")
_CAPS = re.compile(r"\b[A-Z][A-Z_]+\b")
_ASKS_A_NUMBER = re.compile(r"\b0\s*(?:to|-|–|and)\s*100\b|\bnumber\b", re.IGNORECASE)


def _unique(values: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def answer_lines(template: str) -> tuple[str, ...]:
    """The X of every ``ANSWER: X`` line the template lists, in order."""
    return _unique(_ANSWER_LINE.findall(template))


def listed_labels(template: str) -> tuple[str, ...]:
    """The answers a template lists: double-quoted single words, else upper-case alternatives."""
    quoted = _unique(_QUOTED.findall(template))
    if len(quoted) >= 2:
        return quoted
    for choice in _CAPS_CHOICE.finditer(template):
        found = _unique(_CAPS.findall(choice.group(0)))
        if len(found) >= 2:
            return found
    return ()


def open_answer(template: str) -> bool:
    """Whether ``template`` neither asks for a number nor lists the answers it accepts."""
    return not (
        answer_lines(template) or _ASKS_A_NUMBER.search(template) or len(listed_labels(template)) >= 2
    )


def infer(name: str, prompt: JudgePrompt) -> tuple[JudgeKind, tuple[str, ...]]:
    """(kind, labels) for the metric ``name``; :class:`PersonachatError` when labels are needed and unknown."""
    template = prompt.template
    kind = prompt.kind
    if kind is None:
        if len(answer_lines(template)) >= 2:
            kind = "generated"
        elif _ASKS_A_NUMBER.search(template):
            kind = "score_0_100"
        elif len(listed_labels(template)) >= 2 or prompt.labels:
            kind = "categorical"
        else:
            kind = "score_0_100"
    if kind == "score_0_100":
        return kind, ()
    labels = (
        prompt.labels or (answer_lines(template) if kind == "generated" else ()) or listed_labels(template)
    )
    if len(labels) < 2:
        where = f" ({prompt.source})" if prompt.source else ""
        raise PersonachatError(
            f"judge prompt '{name}'{where} is read as {kind}, but it lists no answers to choose from: "
            "give them in the prompt set (labels = [...] in TOML, labels: in YAML)"
        )
    return kind, labels


def read_label(text: str, labels: tuple[str, ...]) -> str | None:
    """The label a generated judge answer ends on, or None when it cannot be read (never guessed).

    The last ``ANSWER: X`` line wins; else an answer that is exactly one label (ignoring case,
    spaces and a final full stop).
    """
    folded = {label.casefold(): label for label in labels}
    for found in reversed(re.findall(r"ANSWER:\s*([A-Za-z][\w-]*)", text)):
        if found.casefold() in folded:
            return folded[found.casefold()]
    whole = text.strip().rstrip(".").strip().casefold()
    return folded.get(whole)
