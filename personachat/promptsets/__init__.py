"""Prompt sets: question files in several formats, expanded into jobs for replay.

The data model is :mod:`~personachat.promptsets.model`, the formats are
:mod:`~personachat.promptsets.formats`, loading is :mod:`~personachat.promptsets.load`; headless
replay (:mod:`~personachat.promptsets.plan`, :mod:`~personachat.promptsets.runner`) is not
imported here: it is only needed when a replay runs. See docs/prompt-sets.md.
"""

from personachat.promptsets.cursor import PromptCursor, PromptStep
from personachat.promptsets.load import FORMAT_NAMES, FORMATS, format_of, load_prompt_set, parse_prompt_set
from personachat.promptsets.model import PromptItem, PromptJob, PromptSet

__all__ = [
    "FORMATS",
    "FORMAT_NAMES",
    "PromptCursor",
    "PromptItem",
    "PromptJob",
    "PromptSet",
    "PromptStep",
    "format_of",
    "load_prompt_set",
    "parse_prompt_set",
]
