"""The Backend interface: what the engine needs from a model server, whatever its kind.

A backend takes a :class:`GenerationRequest` (one pane's messages and sampling, for one model or
adapter) and yields :class:`StreamPart` values: text per sample index, one end part per sample,
and usage; in-process, also each answer token's persona projection when the pane asks for one. Timing is measured by the engine, not by backends, so that every backend is timed alike.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from personachat.errors import BackendError
from personachat.profile import ServerSpec
from personachat.sampling import Sampling
from personachat.steering import IN_PROCESS_ONLY, NO_ACTIVATIONS, ActivationSpec


@dataclass
class GenerationRequest:
    """One request: ``model`` is the served base name or an adapter name."""

    model: str
    messages: list[dict[str, str]]
    sampling: Sampling
    request_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # passed through to the API (e.g. logprobs)
    activations: ActivationSpec = NO_ACTIVATIONS  # steering, adapter scale, projection (in-process)


@dataclass(slots=True)
class TextPart:
    """New text for sample ``index``."""

    index: int
    text: str


@dataclass(slots=True)
class EndPart:
    """Sample ``index`` ended."""

    index: int
    finish_reason: str | None
    stop_reason: Any = None


@dataclass(slots=True)
class UsagePart:
    """Token usage, summed over all samples of the request."""

    prompt_tokens: int | None
    completion_tokens: int | None


@dataclass(slots=True)
class ServedPart:
    """Who answered: the URL that took the request, and the attempts that failed before it."""

    url: str
    failed_attempts: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class ProjectionPart:
    """Persona projections of sample ``index``'s next answer tokens, in order (``start``: the index
    of the first of them among the answer's tokens). In-process only, when the pane sets ``project``."""

    index: int
    start: int
    values: list[float]


StreamPart = TextPart | EndPart | UsagePart | ServedPart | ProjectionPart


@dataclass
class Completion:
    """A whole (non-streamed) answer for one sample."""

    index: int
    text: str
    finish_reason: str | None
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    served_by: str | None = None
    failed_attempts: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class EngineInfo:
    """Who answered: engine name and version, and each served model's identity."""

    engine: str
    version: str | None
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "version": self.version, "models": self.models}


ProgressCallback = Callable[[str], None]


class Backend(abc.ABC):
    """A model server as the engine sees it."""

    def __init__(self, server: ServerSpec):
        self.server = server
        self.retry_budget = server.retry_budget  # seconds to keep retrying a failing server

    async def start(self, progress: ProgressCallback | None = None) -> None:  # noqa: B027
        """Connect or load models; idempotent. The default does nothing."""

    @abc.abstractmethod
    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamPart]:
        """Stream the answer(s) to ``request``. Raises :class:`BackendError` for request errors."""

    async def complete(self, request: GenerationRequest) -> list[Completion]:
        """Whole answers for every sample; the default collects :meth:`stream`."""
        texts: dict[int, list[str]] = {}
        reasons: dict[int, str | None] = {}
        async for part in self.stream(request):
            if isinstance(part, TextPart):
                texts.setdefault(part.index, []).append(part.text)
            elif isinstance(part, EndPart):
                reasons[part.index] = part.finish_reason
        indexes = sorted(set(texts) | set(reasons))
        return [Completion(i, "".join(texts.get(i, [])), reasons.get(i)) for i in indexes]

    def check_activations(self, model: str, activations: ActivationSpec) -> None:
        """Raise :class:`BackendError` if ``model`` cannot be asked with ``activations`` here.

        Only the in-process backend steers, scales adapters and projects; it overrides this.
        """
        if activations.active:
            raise BackendError(
                f"{IN_PROCESS_ONLY}; server '{self.server.name}' is kind = \"{self.server.kind}\""
            )

    @abc.abstractmethod
    async def engine_info(self) -> EngineInfo:
        """Engine name, version and model identities, for the transcript header."""

    async def aclose(self) -> None:  # noqa: B027
        """Release connections or models."""
