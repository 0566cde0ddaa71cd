"""The sequence an answer is scored on, and which of its tokens are the answer's.

The scored sequence is the chat-template rendering of the answer record's exact ``messages`` with
the generation prompt, followed by the answer text, tokenised as *one* string without added
special tokens (the template writes its own): the text the model saw and wrote, tokenised as the
server tokenises a prompt. The answer's tokens are the ones after as many tokens as the rendered
prompt alone has. Where the prompt's last characters and the answer's first merge into one token
(rare: templates end the generation prompt with a special token or a newline), the prompt's own
tokens are not a prefix of the whole; ``prefix_matches`` records it. The re-tokenised answer may
differ from the ids the model sampled (a text has one canonical tokenization, a sampler need not
follow it): the scores are those of the text, which is what every pane's model can be asked about.

Heavy libraries are imported inside the functions that need them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personachat.errors import PersonachatError
from personachat.paths import looks_like_path
from personachat.profile import ServerSpec

CONTEXT_TOKENS = 4  # prompt tokens decoded before the answer, so its first piece keeps its space


@dataclass(frozen=True)
class ScoredSequence:
    """One answer in its context: the scored text, its token ids and where the answer starts."""

    text: str  # rendered prompt + answer
    token_ids: tuple[int, ...]
    answer_start: int  # the number of tokens of the rendered prompt alone
    prefix_matches: bool  # the prompt's own tokens are the first ``answer_start`` of ``token_ids``

    @property
    def answer_ids(self) -> tuple[int, ...]:
        return self.token_ids[self.answer_start :]


def render_prompt(tokenizer: Any, messages: list[dict[str, Any]]) -> str:
    """``messages`` through the tokenizer's chat template, with the generation prompt, as text."""
    if not getattr(tokenizer, "chat_template", None):
        raise PersonachatError(
            f"the tokenizer of {tokenizer.name_or_path} has no chat template: answers cannot be scored "
            "in their chat context (add chat_template.jinja to the model folder)"
        )
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # jinja errors, templates that refuse a role
        raise PersonachatError(f"the chat template refused these messages: {exc}") from None
    return str(text)


def encode(tokenizer: Any, text: str) -> list[int]:
    """``text``'s token ids, no special tokens added (as vLLM with ``add_special_tokens: false``)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def render_sequence(tokenizer: Any, messages: list[dict[str, Any]], answer: str) -> ScoredSequence:
    """The scored sequence of ``answer`` given ``messages`` (see the module's docstring)."""
    prompt = render_prompt(tokenizer, messages)
    prompt_ids = encode(tokenizer, prompt)
    if not prompt_ids:
        raise PersonachatError("the chat template rendered these messages as no tokens at all")
    text = prompt + answer
    ids = encode(tokenizer, text)
    start = len(prompt_ids)
    return ScoredSequence(text, tuple(ids), start, ids[:start] == prompt_ids)


def token_pieces(tokenizer: Any, sequence: ScoredSequence) -> list[str]:
    """The text of each answer token; together they make the decoded answer.

    A character split over several tokens belongs to the token that completes it (the others get
    ``""``). Decoding starts a few prompt tokens early, so a tokenizer that drops a leading space
    at the start of a decode still gives the first token its space.
    """
    ids = list(sequence.token_ids)
    start = sequence.answer_start
    low = max(0, start - CONTEXT_TOKENS)

    def decode(end: int) -> str:
        return str(
            tokenizer.decode(ids[low:end], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        )

    shown = decode(start)
    pieces = []
    for end in range(start + 1, len(ids) + 1):
        text = decode(end)
        if end < len(ids) and text.endswith("\ufffd"):
            pieces.append("")  # an incomplete character: the next token completes it
            continue
        same = len(shown) if text.startswith(shown) else _common_prefix(text, shown)
        pieces.append(text[same:])
        shown = text
    return pieces


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def tokenizer_identity(tokenizer: Any) -> dict[str, Any]:
    """What tokenised the scored sequences: its name, class, size and content hashes."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = backend.to_str()
    else:  # a slow tokenizer: its vocabulary and special tokens
        import json

        spec = json.dumps([sorted(tokenizer.get_vocab().items()), tokenizer.all_special_tokens])
    template = getattr(tokenizer, "chat_template", None) or ""
    return {
        "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "sha256": hashlib.sha256(spec.encode("utf-8")).hexdigest(),
        "chat_template_sha256": hashlib.sha256(str(template).encode("utf-8")).hexdigest(),
    }


def tokenizer_source(server: ServerSpec) -> str:
    """Where a server's tokenizer is: vLLM's ``--tokenizer`` argument if given, else its model."""
    args = list(server.args)
    for i, arg in enumerate(args):
        if arg == "--tokenizer" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--tokenizer="):
            return arg.split("=", 1)[1]
    if not server.model:
        raise PersonachatError(
            f"server '{server.name}' names no model: scoring answers needs its tokenizer; set model = "
            "the model's folder or hub id in the profile"
        )
    return str(server.model)


def load_tokenizer(server: ServerSpec) -> Any:
    """The tokenizer a server uses, loaded here (transformers); a clear error when it cannot be."""
    from transformers import AutoTokenizer

    source = tokenizer_source(server)
    if looks_like_path(source) or Path(source).expanduser().exists():
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise PersonachatError(f"server '{server.name}': model folder {folder} does not exist")
        source = str(folder)
    try:
        return AutoTokenizer.from_pretrained(source, revision=server.revision)
    except (OSError, ValueError) as exc:
        raise PersonachatError(
            f"server '{server.name}': cannot load the tokenizer of {source}: {exc}"
        ) from None
