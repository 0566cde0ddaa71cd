"""One prompt per line (``--format lines``): a list of prompts, such as a paraphrase file.

Each non-empty line is one prompt, kept exactly as written (no stripping beyond the line end),
with the id ``lN`` of its line number N. Files with the ``.txt`` extension are read as paragraphs
(:mod:`personachat.promptsets.formats.text`) unless ``--format lines`` says otherwise.
"""

from __future__ import annotations

from personachat.checking import Checker
from personachat.promptsets.formats.common import Parsed, nonempty
from personachat.promptsets.model import PromptItem

NAME = "lines"
EXTENSIONS: tuple[str, ...] = ()


def parse(text: str, checker: Checker) -> Parsed:
    items = [
        PromptItem(id=f"l{number}", paraphrases=[line], line=number)
        for number, line in enumerate(text.splitlines(), start=1)
        if nonempty(line)
    ]
    return items, {}
