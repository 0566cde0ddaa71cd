"""A session: each pane's own conversation, broadcast to all panes at once, as one stream of events.

The app and the headless CLI are two faces of this one class. Every response (finished, cancelled
or failed) is written to the transcript before its final event is yielded, so whatever a consumer
shows has already been saved. What a turn sends is built by
:func:`personachat.engine.requests.build_request`; per-send changes are arguments, never settings
changed and restored.

Conversations are exact: an answer is recorded in the conversation it was asked in, even when
``/clear`` started a new one while it streamed, and only answers that arrived (finished, or
cancelled with the text shown so far) become history; a failed turn is left out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import platform
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from personachat import __version__
from personachat.backends.base import (
    Backend,
    EndPart,
    GenerationRequest,
    ProjectionPart,
    ServedPart,
    TextPart,
    UsagePart,
)
from personachat.chat import Message
from personachat.engine.conversation import PaneConversation, SentTurn
from personachat.engine.events import (
    Cancelled,
    Delta,
    Event,
    Failed,
    Finished,
    Projected,
    Started,
    Timings,
    Usage,
)
from personachat.engine.identity import PaneIdentity, describe_servers
from personachat.engine.records import build_response_record
from personachat.engine.requests import NO_OVERRIDES, Overrides, fresh_seed, turn_tags
from personachat.errors import BackendError, PersonachatError
from personachat.profile import PaneSpec, Profile
from personachat.redaction import redact_profile
from personachat.sampling import Sampling
from personachat.steering import ActivationSpec, ProjectSpec, SteerSpec, check_adapter_scale
from personachat.transcripts.reader import Transcript
from personachat.transcripts.schema import (
    ANNOTATION_KINDS,
    AnnotationRecord,
    JobRef,
    ResponseRecord,
    SessionHeader,
    new_id,
    now_iso,
)
from personachat.transcripts.writer import TranscriptWriter


@dataclass
class _Job:
    """One pane's part of a broadcast."""

    state: PaneConversation
    request: GenerationRequest
    sent_turn: SentTurn
    turn_ix: int  # index of this user turn in the pane's conversation
    regenerated_from: list[str] | None = None


@dataclass
class _Outcome:
    texts: dict[int, list[str]]
    reasons: dict[int, str | None]
    timings: dict[int, Timings]
    usage: Usage
    served: ServedPart | None = None
    projections: dict[int, list[float]] = field(default_factory=dict)  # per sample, per answer token
    projection_sums: dict[int, float] = field(default_factory=dict)


class Session:
    """Fan-out over a profile's panes; see the module docstring."""

    def __init__(
        self,
        profile: Profile,
        backends: dict[str, Backend],
        writer: TranscriptWriter | None = None,
        *,
        session_id: str | None = None,
        identities: dict[str, Any] | None = None,
    ):
        self.profile = profile
        self.backends = backends
        self.writer = writer
        self.session_id = session_id or new_id()
        self.panes: dict[str, PaneConversation] = {
            p.name: PaneConversation(dataclasses.replace(p)) for p in profile.panes
        }
        self.conversation = 1
        self.turn = 0
        self.identities: dict[str, Any] = identities or {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._header_written = False
        # Called with each response record right after it is written (headless --json, live judge).
        self.record_listeners: list[Callable[[ResponseRecord], None]] = []

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(
        self, progress: Callable[[str], None] | None = None, *, write_header: bool = True
    ) -> None:
        """Start every backend (loading models where needed) and write the session header."""
        for backend in self.backends.values():
            await backend.start(progress)
        if not self.identities:
            self.identities = await describe_servers(self.profile, self.backends)
        if write_header and self.writer and not self._header_written:
            self.writer.write(self.header())
            self._header_written = True

    def header(self) -> SessionHeader:
        """The session header: profile, versions, model identities, host."""
        path = self.profile.path
        sha = hashlib.sha256(path.read_bytes()).hexdigest() if path and path.is_file() else None
        data, redacted = redact_profile(self.profile.raw)  # secrets never reach the research record
        return SessionHeader(
            session_id=self.session_id,
            created_at=now_iso(),
            personachat_version=__version__,
            profile={
                "name": self.profile.name,
                "path": str(path) if path else None,
                "sha256": sha,
                "data": data,
                **({"redacted": redacted} if redacted else {}),
                "panes": [_pane_entry(p) for p in self.profile.panes],
            },
            servers=self.identities,
            host={
                "hostname": socket.gethostname(),
                "platform": platform.platform(),
                "python": sys.version.split()[0],
            },
        )

    async def aclose(self) -> None:
        """Cancel what still runs and close backends and the transcript."""
        self.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        for backend in self.backends.values():
            await backend.aclose()
        if self.writer:
            self.writer.close()

    def restore(self, transcript: Transcript) -> None:
        """Continue where ``transcript`` (a saved session of this profile) ended.

        Each pane gets back its last system prompt and sampling; the session continues the last
        conversation and turn, with each pane's history rebuilt from the answers that entered it
        (failed answers never did; a regenerated answer replaces the one before it).
        """
        if transcript.header is not None:
            self.session_id = transcript.header.session_id
        if not transcript.responses:
            return
        conversation = transcript.responses[-1].conversation
        self.conversation = conversation
        self.turn = max(r.turn for r in transcript.responses if r.conversation == conversation)
        samples: dict[tuple[int, int, str], list[str]] = {}
        for record in transcript.responses:
            samples.setdefault((record.conversation, record.turn, record.pane), []).append(record.id)
        for record in transcript.responses:
            state = self.panes.get(record.pane)
            if state is None or record.sample != 0:
                continue
            messages = record.messages
            system = messages[0]["content"] if messages and messages[0].get("role") == "system" else None
            sampling = Sampling.from_dict(record.sampling) if record.sampling else state.spec.sampling
            activations = ActivationSpec.from_record(record.steer, record.adapter_scale, record.project)
            state.spec = dataclasses.replace(
                state.spec, system=system, sampling=sampling, activations=activations
            )
            if record.conversation != conversation:
                continue
            if state.last is not None and state.last.in_history and record.regenerated:
                state.drop_last_turn()
            ids = samples[(record.conversation, record.turn, record.pane)]
            n = int(record.sampling.get("n", 1) or 1)
            state.last = SentTurn(
                prompt=_typed_prompt(record.prompt, state.spec),
                overrides=NO_OVERRIDES,
                replay=record.replay,
                ids=ids[ids.index(record.id) :][:n],
            )
            if record.status != "failed":
                state.add_turn(messages, record.text, record.id)
                state.last.in_history = True

    # -- changing panes ------------------------------------------------------------------------

    def add_pane(self, spec: PaneSpec, adapter: dict[str, Any] | None = None) -> None:
        """Open a pane mid-session (an adapter loaded at run time). ``adapter`` (``{"path",
        "sha256"}``) makes its records name the adapter and its content hash."""
        if spec.name in self.panes:
            raise PersonachatError(f"there is already a pane named '{spec.name}'")
        self.profile.panes.append(spec)
        self.panes[spec.name] = PaneConversation(dataclasses.replace(spec))
        if adapter is not None:
            self.profile.servers[spec.server].adapters[spec.model] = str(adapter.get("path"))
            served = self.identities.setdefault(spec.server, {}).setdefault("adapters", {})
            served[spec.model] = dict(adapter)

    def _targets(self, pane: str | None) -> list[PaneConversation]:
        if pane in (None, "all"):
            return list(self.panes.values())
        if pane not in self.panes:
            raise PersonachatError(f"no pane named '{pane}' (panes: {', '.join(self.panes)})")
        return [self.panes[pane]]

    def set_system(self, pane: str | None, text: str | None) -> None:
        """Set (``text``) or remove (``None``: send no system message) the system prompt."""
        for state in self._targets(pane):
            state.spec = dataclasses.replace(state.spec, system=text)

    def set_sampling(self, pane: str | None, **changes: Any) -> None:
        """Change sampling settings (temperature, max_tokens, seed, n, ...) for one pane or all.

        Raises :class:`PersonachatError` for an unknown setting or a value out of range.
        """
        try:
            Sampling.check(changes)
        except ValueError as exc:
            raise PersonachatError(str(exc)) from None
        for state in self._targets(pane):
            state.spec = dataclasses.replace(state.spec, sampling=state.spec.sampling.replace(**changes))

    def set_steer(self, pane: str | None, steer: SteerSpec | None) -> None:
        """Steer one pane (or all) from the next turn on; ``None`` stops steering.

        ``steer`` is ``SteerSpec.load(FILE, alpha=A, layer=L)``. Raises :class:`PersonachatError`
        (nothing changed) when a pane's backend cannot steer or the vector does not fit its model.
        """
        self._set_activations(pane, steer=steer)

    def set_adapter_scale(self, pane: str | None, scale: float | None) -> None:
        """Multiply an adapter pane's LoRA update by ``scale`` (0: the base model; ``None``: as trained)."""
        self._set_activations(pane, adapter_scale=None if scale is None else check_adapter_scale(scale))

    def set_project(self, pane: str | None, project: ProjectSpec | None) -> None:
        """Record persona projections (``ProjectSpec.load(FILE)``) for one pane or all; ``None`` stops."""
        self._set_activations(pane, project=project)

    def _set_activations(self, pane: str | None, **changes: Any) -> None:
        targets = self._targets(pane)
        for state in targets:  # every pane is checked first: all change, or none
            changed = dataclasses.replace(state.spec.activations, **changes)
            self.backends[state.spec.server].check_activations(state.spec.model, changed)
        for state in targets:
            changed = dataclasses.replace(state.spec.activations, **changes)
            state.spec = dataclasses.replace(state.spec, activations=changed)

    def clear(self, prefill: Sequence[Message] = ()) -> None:
        """Start a new conversation in every pane (same session, same transcript).

        Answers still streaming are cancelled; they are recorded in the conversation they were
        asked in and never enter the new one's history. ``prefill`` starts every pane's history
        (a prompt-set job's prefilled messages).
        """
        self.cancel()
        self.conversation += 1
        self.turn = 0
        for state in self.panes.values():
            state.reset(prefill)

    def new_conversation(self, prefill: Sequence[Message] = ()) -> None:
        """Like :meth:`clear`, but a conversation with nothing in it yet is reused (same number)."""
        if self.turn or any(state.history for state in self.panes.values()):
            self.clear(prefill)
        else:
            for state in self.panes.values():
                state.reset(prefill)

    def cancel(self, pane: str | None = None) -> None:
        """Cancel running requests of one pane, or all; their partial answers are recorded."""
        for name, task in list(self._tasks.items()):
            if pane in (None, "all", name) and not task.done():
                task.cancel()

    @property
    def busy(self) -> bool:
        return any(not t.done() for t in self._tasks.values())

    # -- annotations ---------------------------------------------------------------------------

    def annotate(
        self,
        kind: str,
        value: str,
        *,
        target: str | None = None,
        pane: str | None = None,
        turn: int | None = None,
        conversation: int | None = None,
        blind: bool = False,
        rater: str | None = None,
        mapping: dict[str, str] | None = None,
        panes: list[str] | None = None,
        targets: list[str] | None = None,
    ) -> AnnotationRecord:
        """Record a tag, note, label (or its retraction) now. Without ``target`` it applies to the turn."""
        if kind not in ANNOTATION_KINDS:
            raise PersonachatError(f"unknown annotation kind '{kind}'")
        record = AnnotationRecord(
            id=new_id(),
            session_id=self.session_id,
            kind=kind,
            value=value,
            target=target,
            turn=self.turn if turn is None else turn,
            conversation=self.conversation if conversation is None else conversation,
            pane=pane,
            blind=blind,
            rater=rater,
            mapping=mapping,
            panes=panes,
            targets=targets,
        )
        if self.writer:
            self.writer.write(record)
        return record

    # -- generation ----------------------------------------------------------------------------

    async def broadcast(
        self,
        prompt: str,
        panes: list[str] | None = None,
        *,
        overrides: Overrides = NO_OVERRIDES,
        replay: JobRef | None = None,
    ) -> AsyncIterator[Event]:
        """Send ``prompt`` as the next user turn to ``panes`` (default: all) and stream the events.

        ``overrides`` change the panes' settings for this turn only; ``replay`` says which
        prompt-set job the turn answers (recorded with every response).
        """
        names = panes or list(self.panes)
        unknown = [name for name in names if name not in self.panes]
        if unknown:
            raise PersonachatError(f"no pane named {', '.join(unknown)} (panes: {', '.join(self.panes)})")
        self.turn += 1
        jobs = [self._job(self.panes[name], prompt, overrides, replay) for name in names]
        async for event in self._run(jobs):
            yield event

    async def regenerate(self, panes: list[str] | None = None) -> AsyncIterator[Event]:
        """Ask the last turn again in ``panes`` (default: all that have one), replacing its answer."""
        jobs: list[_Job] = []
        for state in (self.panes[name] for name in (panes or list(self.panes))):
            last = state.last
            if last is None:
                continue
            if last.in_history:
                state.drop_last_turn()
            job = self._job(state, last.prompt, last.overrides, last.replay)
            job.regenerated_from = list(last.ids)
            jobs.append(job)
        if not jobs:
            raise PersonachatError("nothing to regenerate yet")
        async for event in self._run(jobs):
            yield event

    def _job(self, state: PaneConversation, prompt: str, overrides: Overrides, replay: JobRef | None) -> _Job:
        sampling = state.spec.sampling
        temperature = overrides.sampling.get("temperature", sampling.temperature)
        # A sampled request with no seed configured gets a fresh one, sent and recorded, so that
        # the answer can be asked for again exactly (`personachat ask --seed`).
        sampled = temperature > 0 and sampling.seed is None and "seed" not in overrides.sampling
        seed = fresh_seed() if sampled else None
        request = state.request(prompt, overrides, seed=seed)
        ids = [new_id() for _ in range(request.sampling.n)]
        request.request_id = ids[0]
        return _Job(state, request, SentTurn(prompt, overrides, replay, ids), state.turn_ix)

    async def _run(self, jobs: list[_Job]) -> AsyncIterator[Event]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        turn, conversation = self.turn, self.conversation
        tasks = []
        for job in jobs:
            job.state.last = job.sent_turn
            task = asyncio.create_task(self._run_pane(job, turn, conversation, queue))
            self._tasks[job.state.spec.name] = task
            tasks.append(task)
        remaining = len(tasks)
        try:
            while remaining:
                event = await queue.get()
                if event is None:
                    remaining -= 1
                    continue
                yield event
        finally:
            # The consumer went away (or was cancelled): stop the panes, let them record, then drain.
            for task in tasks:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _run_pane(
        self, job: _Job, turn: int, conversation: int, queue: asyncio.Queue[Event | None]
    ) -> None:
        spec, request = job.state.spec, job.request
        ids = job.sent_turn.ids
        n = len(ids)
        outcome = _Outcome(
            texts={i: [] for i in range(n)},
            reasons={},
            timings={i: Timings() for i in range(n)},
            usage=Usage(),
        )
        queue.put_nowait(Started(spec.name, turn, tuple(ids), tuple(dict(m) for m in request.messages)))
        backend = self.backends[spec.server]
        sent = time.perf_counter()
        last: dict[int, float] = {}
        status, error = "finished", None
        try:
            async for part in backend.stream(request):
                now = time.perf_counter()
                if isinstance(part, TextPart):
                    i = part.index
                    if i not in outcome.texts:
                        continue
                    timing = outcome.timings[i]
                    if i in last:
                        timing.itl.append(now - last[i])
                    else:
                        timing.ttft = now - sent
                    last[i] = now
                    outcome.texts[i].append(part.text)
                    queue.put_nowait(Delta(spec.name, i, part.text, ids[i]))
                elif isinstance(part, EndPart):
                    outcome.reasons[part.index] = part.finish_reason
                    if part.index in outcome.timings:
                        outcome.timings[part.index].e2el = now - sent
                elif isinstance(part, UsagePart):
                    outcome.usage = Usage(part.prompt_tokens, part.completion_tokens)
                elif isinstance(part, ProjectionPart) and part.index in outcome.texts:
                    values = outcome.projections.setdefault(part.index, [])
                    values.extend(part.values)
                    total = outcome.projection_sums.get(part.index, 0.0) + sum(part.values)
                    outcome.projection_sums[part.index] = total
                    mean = total / len(values)
                    event = Projected(
                        spec.name, part.index, ids[part.index], part.start, tuple(part.values), mean
                    )
                    queue.put_nowait(event)
                elif isinstance(part, ServedPart):
                    outcome.served = part
        except asyncio.CancelledError:
            status = "cancelled"
        except PersonachatError as exc:
            status, error = "failed", str(exc)
            if isinstance(exc, BackendError) and exc.attempts:
                outcome.served = ServedPart("", list(exc.attempts))
        except Exception as exc:  # a backend bug must not take the other panes down
            status, error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            end = time.perf_counter() - sent
            for i in range(n):
                if outcome.timings[i].e2el is None:
                    outcome.timings[i].e2el = end
            self._finish(job, turn, conversation, outcome, status, error, queue)
            queue.put_nowait(None)

    def _finish(
        self,
        job: _Job,
        turn: int,
        conversation: int,
        outcome: _Outcome,
        status: str,
        error: str | None,
        queue: asyncio.Queue[Event | None],
    ) -> None:
        state, request = job.state, job.request
        spec = state.spec
        identity = PaneIdentity.of(self.profile, self.identities, spec)
        ids = job.sent_turn.ids
        n = len(ids)
        current = conversation == self.conversation  # False once /clear started a new conversation
        statuses: list[str] = []
        for i, rid in enumerate(ids):
            text = "".join(outcome.texts[i])
            # A sample that ended before a cancel or failure of its siblings is still finished.
            sample_status = "finished" if i in outcome.reasons and status != "finished" else status
            if status == "finished" and i not in outcome.reasons:
                sample_status, error = "failed", error or "stream ended without a finish reason"
            statuses.append(sample_status)
            usage = outcome.usage
            record = build_response_record(
                identity,
                record_id=rid,
                session_id=self.session_id,
                conversation=conversation,
                turn=turn,
                pane=spec.name,
                sample=i,
                messages=request.messages,
                sampling=request.sampling.to_dict(),
                status=sample_status,
                text=text,
                finish_reason=outcome.reasons.get(i),
                error=error,
                usage={**usage.to_dict(), "scope": "request" if n > 1 else "response"},
                timings=outcome.timings[i].to_dict(usage.completion_tokens if n == 1 else None),
                tags=turn_tags(spec, job.turn_ix),
                parent_id=state.parent_id if current else None,
                regenerated_from=job.regenerated_from,
                replay=job.sent_turn.replay,
                served_by=outcome.served.url or None if outcome.served else None,
                failed_attempts=outcome.served.failed_attempts if outcome.served else None,
                activations=request.activations,
                projection=outcome.projections.get(i),
            )
            if self.writer:
                self.writer.write(record)
            for listener in self.record_listeners:
                listener(record)
            timings = outcome.timings[i]
            if sample_status == "finished":
                queue.put_nowait(Finished(spec.name, i, rid, text, outcome.reasons.get(i), usage, timings))
            elif sample_status == "cancelled":
                queue.put_nowait(Cancelled(spec.name, i, rid, text, timings))
            else:
                queue.put_nowait(Failed(spec.name, i, rid, error or "failed", text, timings))
        # The conversation continues from sample 0 as the researcher saw it: a finished answer, or a
        # cancelled one cut where it stopped. A failed answer never enters the history.
        if current and statuses[0] != "failed":
            state.add_turn(request.messages, "".join(outcome.texts[0]), ids[0])
            job.sent_turn.in_history = True


def _pane_entry(pane: PaneSpec) -> dict[str, Any]:
    """A pane in the session header: what it sends, its label, and its checkpoint step if any."""
    entry: dict[str, Any] = {**pane.settings(), "label": pane.label}
    if pane.step is not None:
        entry["step"] = pane.step
    if pane.series is not None:
        entry["series"] = pane.series
    return entry


def _typed_prompt(sent: str, spec: PaneSpec) -> str:
    """The prompt as typed: the sent user message without the pane's prefix and suffix."""
    transform = spec.transform
    if transform.prefix and sent.startswith(transform.prefix):
        sent = sent[len(transform.prefix) :]
    if transform.suffix and sent.endswith(transform.suffix):
        sent = sent[: -len(transform.suffix)]
    return sent
