"""Prompt sets: question files in several formats, expanded into jobs for replay.

The data model is :mod:`~personachat.promptsets.model`, the formats are
:mod:`~personachat.promptsets.formats`, loading is :mod:`~personachat.promptsets.load`; headless
replay (:mod:`~personachat.promptsets.plan`, :mod:`~personachat.promptsets.runner`) is not
imported here: it is only needed when a replay runs. See docs/prompt-sets.md.

Names are imported from their submodules on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from personachat.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from personachat.promptsets.cursor import (
        PromptCursor,
        PromptStep,
    )
    from personachat.promptsets.load import (
        FORMAT_NAMES,
        FORMATS,
        format_of,
        load_prompt_set,
        parse_prompt_set,
    )
    from personachat.promptsets.model import (
        PromptItem,
        PromptJob,
        PromptSet,
    )

_EXPORTS = {
    "PromptCursor": "personachat.promptsets.cursor",
    "PromptStep": "personachat.promptsets.cursor",
    "FORMAT_NAMES": "personachat.promptsets.load",
    "FORMATS": "personachat.promptsets.load",
    "format_of": "personachat.promptsets.load",
    "load_prompt_set": "personachat.promptsets.load",
    "parse_prompt_set": "personachat.promptsets.load",
    "PromptItem": "personachat.promptsets.model",
    "PromptJob": "personachat.promptsets.model",
    "PromptSet": "personachat.promptsets.model",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


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
