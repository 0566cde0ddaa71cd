"""A session: each pane's own conversation, broadcast to all panes at once, as one stream of events.

The app and the headless CLI are two faces of this one class. Every response (finished, cancelled
or failed) is written to the transcript before its final event is yielded, so whatever a consumer
shows has already been saved.
"""

from __future__ import annotations

import asyncio
import dataclasses
import platform
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from personachat import __version__
from personachat.backends.base import Backend, EndPart, GenerationRequest, TextPart, UsagePart
from personachat.engine.events import Cancelled, Delta, Event, Failed, Finished, Started, Timings, Usage
from personachat.engine.records import build_response_record, pane_identity
from personachat.errors import PersonachatError
from personachat.profile import PaneSpec, Profile, Sampling
from personachat.templates import get_template
from personachat.transcripts.schema import (
    AnnotationRecord,
    ResponseRecord,
    SessionHeader,
    new_id,
    now_iso,
)
from personachat.transcripts.writer import TranscriptWriter

Message = dict[str, str]


@dataclass
class PaneConversation:
    """What the session knows about one pane: its settings (changeable mid-session) and history."""

    spec: PaneSpec
    history: list[Message] = field(default_factory=list)  # user/assistant turns, no system message
    turn_sizes: list[int] = field(default_factory=list)  # how many history messages each turn added
    last_prompt: str | None = None  # the user's text of the last turn, before the pane's transform
    last_ids: list[str] = field(default_factory=list)
    answer_ids: list[str] = field(default_factory=list)  # the answer (sample 0) of each turn

    @property
    def parent_id(self) -> str | None:
        """The previous answer this pane's next answer follows."""
        return self.answer_ids[-1] if self.answer_ids else None

    def messages_for(self, user_text: str) -> list[Message]:
        """The exact messages this pane sends for ``user_text``: system (if any), history, the turn."""
        messages: list[Message] = []
        if self.spec.system is not None:
            messages.append({"role": "system", "content": self.spec.system})
        messages.extend(self.history)
        messages.extend(turn_messages(self.spec, user_text, len(self.turn_sizes)))
        return messages

    def record_turn(self, sent: list[Message], answer: str) -> None:
        """Extend the history with the turn just sent (as sent) and the answer."""
        start = len(self.history) + (1 if sent and sent[0]["role"] == "system" else 0)
        turn = [*sent[start:], {"role": "assistant", "content": answer}]
        self.history.extend(turn)
        self.turn_sizes.append(len(turn))

    def drop_last_turn(self) -> None:
        if self.turn_sizes:
            del self.history[-self.turn_sizes.pop() :]
            self.answer_ids.pop()

    def reset(self) -> None:
        self.history.clear()
        self.turn_sizes.clear()
        self.last_prompt = None
        self.last_ids = []
        self.answer_ids.clear()


def turn_messages(spec: PaneSpec, text: str, turn_ix: int) -> list[Message]:
    """The messages of one user turn: the pane's prefix/suffix, shaped by its named template."""
    return get_template(spec.transform.template).render(spec.transform.apply(text), turn_ix)


def turn_tags(spec: PaneSpec, turn_ix: int) -> list[str]:
    """Tags recorded on an answer because of the pane's template (e.g. ``honest-channel``)."""
    tag = get_template(spec.transform.template).tag
    return [tag] if tag and turn_ix > 0 else []


@dataclass
class _Outcome:
    texts: dict[int, list[str]]
    reasons: dict[int, str | None]
    timings: dict[int, Timings]
    usage: Usage


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
        sha = None
        if path and path.exists():
            import hashlib

            sha = hashlib.sha256(path.read_bytes()).hexdigest()
        return SessionHeader(
            session_id=self.session_id,
            created_at=now_iso(),
            personachat_version=__version__,
            profile={
                "name": self.profile.name,
                "path": str(path) if path else None,
                "sha256": sha,
                "data": self.profile.raw,
                "panes": [{**p.settings(), "label": p.label} for p in self.profile.panes],
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

    # -- changing panes ------------------------------------------------------------------------

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
        """Change sampling settings (temperature, max_tokens, seed, n, ...) for one pane or all."""
        names = {f.name for f in dataclasses.fields(Sampling)}
        unknown = set(changes) - names
        if unknown:
            raise PersonachatError(f"unknown sampling setting(s): {', '.join(sorted(unknown))}")
        for state in self._targets(pane):
            state.spec = dataclasses.replace(state.spec, sampling=state.spec.sampling.replace(**changes))

    def set_label(self, pane: str, label: str) -> None:
        for state in self._targets(pane):
            state.spec = dataclasses.replace(state.spec, label=label)

    def clear(self) -> None:
        """Start a new conversation in every pane (same session, same transcript)."""
        self.cancel()
        self.conversation += 1
        self.turn = 0
        for state in self.panes.values():
            state.reset()

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
        blind: bool = False,
    ) -> AnnotationRecord:
        """Record a tag, note or label now. Without ``target`` it applies to the turn."""
        if kind not in ("tag", "note", "label"):
            raise PersonachatError(f"unknown annotation kind '{kind}'")
        record = AnnotationRecord(
            id=new_id(),
            session_id=self.session_id,
            kind=kind,
            value=value,
            target=target,
            turn=self.turn if turn is None else turn,
            conversation=self.conversation,
            pane=pane,
            blind=blind,
        )
        if self.writer:
            self.writer.write(record)
        return record

    # -- generation ----------------------------------------------------------------------------

    async def broadcast(
        self, prompt: str, panes: list[str] | None = None, *, meta: dict[str, Any] | None = None
    ) -> AsyncIterator[Event]:
        """Send ``prompt`` as the next user turn to ``panes`` (default: all) and stream the events."""
        targets = [self.panes[name] for name in (panes or list(self.panes))]
        self.turn += 1
        jobs: list[tuple[PaneConversation, list[Message], dict[str, Any]]] = []
        for state in targets:
            state.last_prompt = prompt
            jobs.append((state, state.messages_for(prompt), {}))
        async for event in self._run(jobs, meta or {}):
            yield event

    async def regenerate(self, panes: list[str] | None = None) -> AsyncIterator[Event]:
        """Ask the last turn again in ``panes`` (default: all that have one), replacing its answer."""
        jobs: list[tuple[PaneConversation, list[Message], dict[str, Any]]] = []
        for state in (self.panes[name] for name in (panes or list(self.panes))):
            if state.last_prompt is None:
                continue
            state.drop_last_turn()
            jobs.append((state, state.messages_for(state.last_prompt), {"regenerated_from": state.last_ids}))
        if not jobs:
            raise PersonachatError("nothing to regenerate yet")
        async for event in self._run(jobs, {"regenerated": True}):
            yield event

    async def _run(
        self, jobs: list[tuple[PaneConversation, list[Message], dict[str, Any]]], meta: dict[str, Any]
    ) -> AsyncIterator[Event]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        turn = self.turn
        tasks = []
        for state, messages, own_meta in jobs:
            task = asyncio.create_task(self._run_pane(state, messages, turn, {**meta, **own_meta}, queue))
            self._tasks[state.spec.name] = task
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
        self,
        state: PaneConversation,
        messages: list[Message],
        turn: int,
        meta: dict[str, Any],
        queue: asyncio.Queue[Event | None],
    ) -> None:
        spec = state.spec
        n = spec.sampling.n
        ids = [new_id() for _ in range(n)]
        outcome = _Outcome(
            texts={i: [] for i in range(n)},
            reasons={},
            timings={i: Timings() for i in range(n)},
            usage=Usage(),
        )
        queue.put_nowait(Started(spec.name, turn, tuple(ids), tuple(dict(m) for m in messages)))
        backend = self.backends[spec.server]
        request = GenerationRequest(
            model=spec.model, messages=messages, sampling=spec.sampling, request_id=ids[0]
        )
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
        except asyncio.CancelledError:
            status = "cancelled"
        except PersonachatError as exc:
            status, error = "failed", str(exc)
        except Exception as exc:  # a backend bug must not take the other panes down
            status, error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            end = time.perf_counter() - sent
            for i in range(n):
                if outcome.timings[i].e2el is None:
                    outcome.timings[i].e2el = end
            self._finish(state, messages, turn, ids, outcome, status, error, meta, queue)
            queue.put_nowait(None)

    def _finish(
        self,
        state: PaneConversation,
        messages: list[Message],
        turn: int,
        ids: list[str],
        outcome: _Outcome,
        status: str,
        error: str | None,
        meta: dict[str, Any],
        queue: asyncio.Queue[Event | None],
    ) -> None:
        spec = state.spec
        identity = pane_identity(self.profile, self.identities, spec)
        n = len(ids)
        for i, rid in enumerate(ids):
            text = "".join(outcome.texts[i])
            # A sample that ended before a cancel or failure of its siblings is still finished.
            sample_status = "finished" if i in outcome.reasons and status != "finished" else status
            if status == "finished" and i not in outcome.reasons:
                sample_status, error = "failed", error or "stream ended without a finish reason"
            usage = outcome.usage
            record = build_response_record(
                identity,
                record_id=rid,
                session_id=self.session_id,
                conversation=self.conversation,
                turn=turn,
                pane=spec.name,
                sample=i,
                messages=messages,
                sampling=spec.sampling.to_dict(),
                status=sample_status,
                text=text,
                finish_reason=outcome.reasons.get(i),
                error=error if sample_status == "failed" else None,
                usage={**usage.to_dict(), "scope": "request" if n > 1 else "response"},
                timings=outcome.timings[i].to_dict(usage.completion_tokens if n == 1 else None),
                parent_id=state.parent_id,
                meta=dict(meta),
            )
            record.tags = turn_tags(spec, len(state.turn_sizes))
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
        state.last_ids = ids
        # The conversation continues from sample 0, whatever happened to it: its text is what the
        # researcher saw.
        state.record_turn(messages, "".join(outcome.texts[0]))
        state.answer_ids.append(ids[0])


async def describe_servers(profile: Profile, backends: dict[str, Backend]) -> dict[str, Any]:
    """Identity of every server for the transcript header: engine version, model and adapter hashes."""
    from personachat.adapters import AdapterError, content_sha256, model_sha256

    out: dict[str, Any] = {}
    for name, server in profile.servers.items():
        backend = backends.get(name)
        info = await backend.engine_info() if backend else None
        entry: dict[str, Any] = {
            "kind": server.kind,
            "model": server.model,
            "served_name": server.base_name,
            "engine": {"engine": info.engine, "version": info.version} if info else {},
            "urls": getattr(backend, "urls", None),
            "model_sha256": None,
            "adapters": {},
        }
        models = info.models if info else {}
        base_path = server.model or (models.get(server.base_name) or {}).get("root")
        if base_path:
            try:
                entry["model_sha256"] = model_sha256(base_path)
            except (AdapterError, OSError):
                entry["model_sha256"] = None
        adapter_paths = dict(server.adapters)
        for model_name, m in models.items():
            if m.get("parent") and model_name not in adapter_paths and m.get("root"):
                adapter_paths[model_name] = m["root"]
        for adapter, path in adapter_paths.items():
            try:
                sha = content_sha256(path)
            except (AdapterError, OSError):
                sha = None
            entry["adapters"][adapter] = {"path": path, "sha256": sha}
        out[name] = entry
    return out
