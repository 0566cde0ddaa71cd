"""Typed events that flow from the engine to the app, the CLI and the transcript store.

One broadcast yields, per pane and sample: ``Started``, any number of ``Delta`` (and, for a pane
that projects, ``Projected``), then exactly one of ``Finished``, ``Cancelled`` or ``Failed``. Events are immutable and carry everything a consumer
needs; consumers never reach back into the engine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as reported by the backend."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Timings:
    """Latency figures for one response, defined as ``vllm bench serve`` defines them.

    TTFT: request sent -> first chunk with text for this sample. ITL: gaps between later chunks.
    E2EL: request sent -> last chunk. All in seconds.
    """

    ttft: float | None = None
    e2el: float | None = None
    itl: list[float] = field(default_factory=list)

    def tpot(self, output_tokens: int | None) -> float | None:
        """Time per output token after the first: (E2EL - TTFT) / (tokens - 1)."""
        if self.ttft is None or self.e2el is None or not output_tokens or output_tokens < 2:
            return None
        return (self.e2el - self.ttft) / (output_tokens - 1)

    def tokens_per_second(self, output_tokens: int | None) -> float | None:
        if not output_tokens or not self.e2el:
            return None
        return output_tokens / self.e2el

    def to_dict(self, output_tokens: int | None = None) -> dict[str, Any]:
        return {
            "ttft": self.ttft,
            "e2el": self.e2el,
            "tpot": self.tpot(output_tokens),
            "itl": [round(x, 6) for x in self.itl],
        }


@dataclass(frozen=True, slots=True)
class Started:
    """A pane's request was sent."""

    pane: str
    turn: int
    response_ids: tuple[str, ...]  # one per sample
    messages: tuple[dict[str, str], ...]


@dataclass(frozen=True, slots=True)
class Delta:
    """New text for one sample of a pane (may be several tokens)."""

    pane: str
    sample: int
    text: str
    response_id: str = ""


@dataclass(frozen=True, slots=True)
class Projected:
    """Persona projections of a sample's next answer tokens (a pane with ``project``; in-process).

    ``values[k]`` belongs to answer token ``start + k``; a token's value arrives with the decoding
    step after the one that chose it. ``mean`` is the running mean over every token so far (what
    the response record's ``projection`` will be when the answer ends).
    """

    pane: str
    sample: int
    response_id: str
    start: int
    values: tuple[float, ...]
    mean: float


@dataclass(frozen=True, slots=True)
class Finished:
    """A sample finished normally; ``text`` is the whole answer."""

    pane: str
    sample: int
    response_id: str
    text: str
    finish_reason: str | None
    usage: Usage
    timings: Timings


@dataclass(frozen=True, slots=True)
class Cancelled:
    """A sample was cancelled by the user; ``text`` is what had arrived."""

    pane: str
    sample: int
    response_id: str
    text: str
    timings: Timings


@dataclass(frozen=True, slots=True)
class Failed:
    """A sample failed (server error, unknown adapter, connection lost); ``text`` is the partial answer."""

    pane: str
    sample: int
    response_id: str
    reason: str
    text: str
    timings: Timings


Event = Started | Delta | Projected | Finished | Cancelled | Failed
