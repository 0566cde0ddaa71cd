"""The one request builder: what a pane sends for one user turn, as a pure function of its inputs.

The app's turns, its ``/replay`` steps, regenerate and headless replay all call
:func:`build_request`, so the same pane, history, text and overrides always give the same messages
and sampling. Nothing here touches a session: per-send changes (a prompt-set item's own system
prompt or temperature) are :class:`Overrides` passed in, never settings changed and restored.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from personachat.backends.base import GenerationRequest
from personachat.chat import Message
from personachat.profile import PaneSpec
from personachat.sampling import Sampling
from personachat.templates import get_template


@dataclass(frozen=True)
class Overrides:
    """Changes to a pane's settings for one send only.

    ``system`` replaces the pane's system prompt when it is not ``None`` (``""`` included); a
    prompt-set item that sets none keeps the pane's. ``sampling`` replaces sampling settings
    (``{"temperature": 0.0}``); they are checked like any other.
    """

    system: str | None = None
    sampling: Mapping[str, Any] = field(default_factory=dict)


NO_OVERRIDES = Overrides()


def turn_messages(spec: PaneSpec, text: str, turn_ix: int) -> list[Message]:
    """The messages of one user turn: the pane's prefix/suffix, shaped by its named template."""
    return get_template(spec.transform.template).render(spec.transform.apply(text), turn_ix)


def turn_tags(spec: PaneSpec, turn_ix: int) -> list[str]:
    """Tags recorded on an answer because of the pane's template (e.g. ``honest-channel``)."""
    tag = get_template(spec.transform.template).tag
    return [tag] if tag and turn_ix > 0 else []


def fresh_seed() -> int:
    """A random seed for a sampled request with none configured: sent and recorded, so it can be rerun."""
    return secrets.randbelow(2**31)


def effective_sampling(
    spec: PaneSpec, overrides: Overrides = NO_OVERRIDES, seed: int | None = None
) -> Sampling:
    """The pane's sampling with ``overrides`` applied; ``seed`` (when given) is the seed to send."""
    sampling = spec.sampling.replace(**overrides.sampling) if overrides.sampling else spec.sampling
    if seed is not None:
        sampling = sampling.replace(seed=seed)
    return sampling


def build_messages(
    spec: PaneSpec,
    history: Sequence[Message],
    text: str,
    turn_ix: int,
    overrides: Overrides = NO_OVERRIDES,
) -> list[Message]:
    """System (the override's, else the pane's, if any), the history as it was sent, then the turn.

    ``turn_ix`` is the index of this user turn in the conversation (0 for the first), which a
    template such as the honest channel uses to shape follow-ups.
    """
    system = overrides.system if overrides.system is not None else spec.system
    messages: list[Message] = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    messages.extend(dict(m) for m in history)
    messages.extend(turn_messages(spec, text, turn_ix))
    return messages


def build_request(
    spec: PaneSpec,
    history: Sequence[Message],
    text: str,
    *,
    turn_ix: int,
    overrides: Overrides = NO_OVERRIDES,
    seed: int | None = None,
    request_id: str = "",
    extra: Mapping[str, Any] | None = None,
) -> GenerationRequest:
    """The exact request ``spec``'s pane sends for the user turn ``text`` after ``history``."""
    return GenerationRequest(
        model=spec.model,
        messages=build_messages(spec, history, text, turn_ix, overrides),
        sampling=effective_sampling(spec, overrides, seed),
        request_id=request_id,
        extra=dict(extra or {}),
        activations=spec.activations,
    )
