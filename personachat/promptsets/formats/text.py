"""Plain text and Markdown: one prompt per paragraph (blank lines separate prompts; a heading line is skipped)."""

from __future__ import annotations

import re

from personachat.checking import Checker
from personachat.promptsets.formats.common import Parsed
from personachat.promptsets.model import PromptItem

NAME = "text"
EXTENSIONS = (".txt", ".md")

_HEADING = re.compile(r"^#{1,6}(\s|$)")
_FENCE = re.compile(r"^\s*(```|~~~)")


def parse(text: str, checker: Checker) -> Parsed:
    paragraphs: list[tuple[int, list[str]]] = []
    current: list[str] = []
    start = 0
    in_fence = False
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line):
            in_fence = not in_fence
        if not line.strip() and not in_fence:
            if current:
                paragraphs.append((start, current))
            current = []
            continue
        if not current:
            if _HEADING.match(line) and not in_fence:
                continue  # a heading or comment line at the start of a paragraph is not part of a prompt
            start = number
        current.append(line.rstrip())
    if current:
        paragraphs.append((start, current))
    if len(paragraphs) == 1 and len(paragraphs[0][1]) >= 5 and all(len(x) < 400 for x in paragraphs[0][1]):
        lines = len(paragraphs[0][1])
        checker.warn(
            f"one paragraph of {lines} lines is read as ONE prompt: if each line is a prompt, "
            "use --format lines",
            line=paragraphs[0][0],
        )
    items = [
        PromptItem(id=f"p{index}", paraphrases=["\n".join(lines).strip()], line=start)
        for index, (start, lines) in enumerate(paragraphs, start=1)
    ]
    return items, {}
