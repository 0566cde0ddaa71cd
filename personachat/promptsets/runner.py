"""Run a planned replay: send each unit at server speed, retry failed attempts, write the records.

Jobs go, per server, through a bounded queue to a dispatcher that keeps ``concurrency`` sequences in
flight per replica URL, so vLLM's continuous batching stays full. Nobody watches a replay, so
requests are not streamed (cheaper for the client, measured in docs/replay.md). What each request
sends is built by :func:`personachat.engine.requests.build_request`, as in the app.

A job's records are written together, fsync'd, when the job ends (all turns of a scripted
multi-turn job at once), so a transcript never holds half a job: after a SIGKILL, resuming runs
exactly the jobs that have no finished record. Records that finish together share one write and
one fsync (:class:`~personachat.transcripts.writer.RecordSink`). A failed attempt is recorded
(status ``failed``) and retried a bounded number of times; it never stops the run. See docs/replay.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from personachat.backends.base import Backend, Completion, GenerationRequest
from personachat.chat import Message
from personachat.engine.events import Timings
from personachat.engine.identity import PaneIdentity, describe_servers
from personachat.engine.records import build_response_record
from personachat.engine.requests import build_request, turn_tags
from personachat.errors import BackendError, PersonachatError
from personachat.profile import PaneSpec, Profile
from personachat.promptsets.model import PromptJob, PromptSet
from personachat.promptsets.plan import (
    ReplayError,
    ReplaySettings,
    Unit,
    check_panes,
    finished_jobs,
    job_overrides,
    job_ref,
    job_seed,
    plan_units,
    replay_start,
)
from personachat.promptsets.progress import (
    JobFailed,
    JobFinished,
    PaneProgress,
    ReplayEvent,
    ReplayProgress,
    UpdateCallback,
)
from personachat.sampling import Sampling
from personachat.selection import ALL_QUESTIONS, QuestionSelection
from personachat.transcripts.reader import Transcript
from personachat.transcripts.schema import ResponseRecord, new_id, now_iso
from personachat.transcripts.writer import RecordSink, TranscriptWriter

DEFAULT_CONCURRENCY = 16  # sequences in flight per replica URL (the demo server's --max-num-seqs)
DEFAULT_GROUP_SAMPLES = 8  # most samples asked in one request (the API's n)
DEFAULT_RETRIES = 2  # further attempts after a failed one


class _Slots:
    """A counting semaphore whose holders take several slots at once (one per sample in flight)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.free = capacity
        self._changed = asyncio.Condition()

    async def acquire(self, n: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.free >= min(n, self.capacity))
            self.free -= n

    async def release(self, n: int) -> None:
        async with self._changed:
            self.free += n
            self._changed.notify_all()


class _AttemptFailed(Exception):
    """One attempt of a unit failed; carries what the failed record needs."""

    def __init__(self, error: str, messages: list[Message], turn_ix: int, retryable: bool):
        super().__init__(error)
        self.error = error
        self.messages = messages
        self.turn_ix = turn_ix
        self.retryable = retryable


def _retryable(exc: BaseException) -> bool:
    """Whether another attempt may succeed: not for errors that fail the same way every time."""
    return exc.transient if isinstance(exc, BackendError) else True


# ------------------------------------------------------------------------------------------------
# The runner


class ReplayRunner:
    """Runs a prompt set on a profile's panes, writing every job's records to one transcript.

    Use it from the CLI (``personachat replay``) or the app: ``await runner.run(on_update)`` calls
    ``on_update(event, progress)`` (plain or async) after each job attempt; ``runner.events()``
    yields the same events as an async iterator; ``runner.cancel()`` stops early (unfinished jobs
    are simply not recorded, and a resume runs them). Backends are started here but not closed.
    """

    def __init__(
        self,
        profile: Profile,
        backends: dict[str, Backend],
        prompt_set: PromptSet,
        writer: TranscriptWriter,
        *,
        panes: Iterable[str] | None = None,
        samples: int | None = None,
        base_seed: int = 0,
        max_tokens: int | None = None,
        extra: dict[str, Any] | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        group_samples: int = DEFAULT_GROUP_SAMPLES,
        retries: int = DEFAULT_RETRIES,
        retry_delay: float = 0.5,
        resume: Transcript | None = None,
        session_id: str | None = None,
        identities: dict[str, Any] | None = None,
        write_header: bool = True,
        selection: QuestionSelection = ALL_QUESTIONS,
    ):
        names = check_panes(panes or [p.name for p in profile.panes], [p.name for p in profile.panes])
        for what, value in (("concurrency", concurrency), ("group_samples", group_samples)):
            if value < 1:
                raise ReplayError(f"{what} must be at least 1, not {value}")
        if retries < 0:
            raise ReplayError(f"retries must be 0 or more, not {retries}")
        if samples is not None and samples < 1:
            raise ReplayError(f"samples must be at least 1, not {samples}")
        self.profile = profile
        self.backends = backends
        self.prompt_set = prompt_set.select(selection)
        prompt_set = self.prompt_set
        self.writer = writer
        self.panes = [
            p
            if max_tokens is None
            else dataclasses.replace(p, sampling=p.sampling.replace(max_tokens=max_tokens))
            for name in names
            for p in profile.panes
            if p.name == name
        ]
        self.base_seed = base_seed
        self.extra = dict(extra or {})
        self.concurrency = concurrency
        self.group_samples = group_samples
        self.retries = retries
        self.retry_delay = retry_delay
        self.jobs = prompt_set.jobs(samples)
        self.settings = ReplaySettings(
            promptset={
                "name": prompt_set.name,
                "sha256": prompt_set.sha256,
                "path": str(prompt_set.path),
                "format": prompt_set.format,
            },
            panes=[p.settings() for p in self.panes],
            samples=samples,
            base_seed=base_seed,
            max_tokens=max_tokens,
            extra=self.extra,
            selection={"only": list(selection.only), "exclude": list(selection.exclude)}
            if selection.active
            else None,
        )
        self.resume = resume
        self.done: set[tuple[str, str]] = set()
        if resume is not None:
            if resume.header is None:
                raise ReplayError(f"{resume.path} has no session header; it cannot be resumed")
            differences = self.settings.differences(replay_start(resume))
            if differences:
                raise ReplayError(
                    f"cannot resume {resume.path}: "
                    + "; ".join(differences)
                    + " (resume with the same settings)"
                )
            session_id = resume.header.session_id
            turns = {job.key(): 1 + len(job.turns) for job in self.jobs}
            self.done = finished_jobs(resume, turns)
        self.session_id = session_id or new_id()
        self.identities: dict[str, Any] = identities or {}
        self.write_header = write_header and resume is None
        self.progress = ReplayProgress(panes={p.name: PaneProgress(total=len(self.jobs)) for p in self.panes})
        for pane, _ in self.done:
            if pane in self.progress.panes:
                self.progress.panes[pane].skipped += 1
        self._identity: dict[str, PaneIdentity] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._on_update: UpdateCallback | None = None
        self._cancelled = False

    @property
    def pane_names(self) -> list[str]:
        return [p.name for p in self.panes]

    # -- planning ------------------------------------------------------------------------------

    def units(self) -> list[Unit]:
        """The requests still to send, panes interleaved job by job, in prompt-set order."""
        return plan_units(self.panes, self.jobs, self.done, self.group_samples)

    # -- running -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the backends, describe the servers and write the header (or a resume marker)."""
        missing = {p.server for p in self.panes} - set(self.backends)
        if missing:
            raise ReplayError(f"no backend for server(s) {', '.join(sorted(missing))}")
        for name in {p.server for p in self.panes}:
            await self.backends[name].start()
        if not self.identities:
            self.identities = await describe_servers(self.profile, self.backends)
        self._identity = {p.name: PaneIdentity.of(self.profile, self.identities, p) for p in self.panes}
        if self.write_header:
            from personachat.engine.session import Session

            header = Session(
                self.profile, self.backends, session_id=self.session_id, identities=self.identities
            ).header()
            self.writer.write(header)
            self.write_header = False
        record: dict[str, Any]
        if self.resume is None:
            record = {"type": "replay", "event": "start", "session_id": self.session_id}
            record.update(self.settings.to_dict())
            record.update(jobs=len(self.jobs), created_at=now_iso())
        else:
            record = {
                "type": "replay",
                "event": "resume",
                "session_id": self.session_id,
                "created_at": now_iso(),
                "already_finished": len(self.done),
            }
        self.writer.write(record)

    async def run(self, on_update: UpdateCallback | None = None) -> ReplayProgress:
        """Run every job not finished yet; returns the final counts. Never stops for a failed job."""
        self._on_update = on_update
        await self.start()
        units = [] if self._cancelled else self.units()
        by_server: dict[str, list[Unit]] = {}
        for unit in units:
            by_server.setdefault(unit.pane.server, []).append(unit)
        self.progress.started_at = time.monotonic()
        cpu_at_start = time.process_time()
        sink = RecordSink(self.writer)
        self._tasks = [asyncio.create_task(self._serve(name, us, sink)) for name, us in by_server.items()]
        try:
            await asyncio.gather(*self._tasks)
        except asyncio.CancelledError:
            if not self._cancelled:
                raise
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await sink.aclose()
            self.progress.ended_at = time.monotonic()
            self.progress.cpu_seconds = time.process_time() - cpu_at_start
        self.writer.write(
            {
                "type": "replay",
                "event": "cancelled" if self._cancelled else "end",
                "session_id": self.session_id,
                "created_at": now_iso(),
                "finished": self.progress.finished,
                "failed": self.progress.failed,
                "already_finished": self.progress.skipped,
                "jobs": self.progress.total,
                "elapsed_s": round(self.progress.elapsed, 3),
                "output_tokens": self.progress.output_tokens,
                "client_cpu_s": round(self.progress.cpu_seconds, 3),
            }
        )
        return self.progress

    async def events(self) -> AsyncIterator[ReplayEvent]:
        """Run and yield each job event as it happens (an alternative to ``run(on_update)``)."""
        queue: asyncio.Queue[ReplayEvent | None] = asyncio.Queue()
        task = asyncio.create_task(self.run(lambda event, _progress: queue.put_nowait(event)))
        task.add_done_callback(lambda _t: queue.put_nowait(None))
        try:
            while (event := await queue.get()) is not None:
                yield event
            await task  # re-raise what stopped the run
        finally:
            if not task.done():
                self.cancel()
                await asyncio.gather(task, return_exceptions=True)

    def cancel(self) -> None:
        """Stop sending; requests in flight are abandoned and their jobs stay unrecorded."""
        self._cancelled = True
        for task in self._tasks:
            task.cancel()

    async def _serve(self, server: str, units: list[Unit], sink: RecordSink) -> None:
        """Feed one server's units through a bounded queue, keeping its slots full."""
        backend = self.backends[server]
        replicas = len(getattr(backend, "urls", None) or [None])
        slots = _Slots(self.concurrency * replicas)
        queue: asyncio.Queue[Unit | None] = asyncio.Queue(maxsize=slots.capacity)

        async def produce() -> None:
            for unit in units:
                await queue.put(unit)
            await queue.put(None)

        producer = asyncio.create_task(produce())
        running: set[asyncio.Task[None]] = set()
        errors: list[BaseException] = []

        def finished(task: asyncio.Task[None]) -> None:
            running.discard(task)
            if not task.cancelled() and task.exception() is not None:
                errors.append(task.exception())  # type: ignore[arg-type]

        try:
            while (unit := await queue.get()) is not None and not errors:
                await slots.acquire(unit.size)
                task = asyncio.create_task(self._run_unit(backend, unit, sink, slots))
                running.add(task)
                task.add_done_callback(finished)
            while running and not errors:
                await asyncio.wait(set(running), return_when=asyncio.FIRST_EXCEPTION)
            if errors:
                raise errors[0]  # a transcript that cannot be written stops the run
        finally:
            producer.cancel()
            for task in list(running):
                task.cancel()
            await asyncio.gather(producer, *running, return_exceptions=True)

    async def _run_unit(self, backend: Backend, unit: Unit, sink: RecordSink, slots: _Slots) -> None:
        try:
            for attempt in range(1, self.retries + 2):
                try:
                    records = await self._attempt(backend, unit, attempt)
                except _AttemptFailed as failure:
                    will_retry = failure.retryable and attempt <= self.retries
                    failed = [
                        self._failed_record(unit, i, attempt, failure, will_retry) for i in range(unit.size)
                    ]
                    await sink.write(failed)
                    for i, job in enumerate(unit.jobs):
                        counts = self.progress.panes[unit.pane.name]
                        if will_retry:
                            counts.retries += 1
                        else:
                            counts.failed += 1
                        await self._emit(
                            JobFailed(unit.pane.name, job, failure.error, attempt, will_retry, failed[i])
                        )
                    if not will_retry:
                        return
                    await asyncio.sleep(self.retry_delay * 2 ** (attempt - 1))
                    continue
                await sink.write([r for rs in records for r in rs])
                counts = self.progress.panes[unit.pane.name]
                for job, job_records in zip(unit.jobs, records, strict=True):
                    counts.finished += 1
                    self.progress.output_tokens += sum(
                        r.usage.get("completion_tokens") or 0 for r in job_records
                    )
                    await self._emit(JobFinished(unit.pane.name, job, tuple(job_records), attempt))
                return
        finally:
            await slots.release(unit.size)

    async def _emit(self, event: ReplayEvent) -> None:
        if self._on_update is None:
            return
        result = self._on_update(event, self.progress)
        if inspect.isawaitable(result):
            await result

    def _request(
        self, pane: PaneSpec, job: PromptJob, history: list[Message], text: str, turn_ix: int, n: int
    ) -> GenerationRequest:
        """The request for turn ``turn_ix`` of ``job`` on ``pane`` (``n`` samples from the job's seed on)."""
        request = build_request(
            pane,
            history,
            text,
            turn_ix=turn_ix,
            overrides=job_overrides(job),
            seed=job_seed(self.base_seed, self.prompt_set.sha256, pane.name, job),
            extra=self.extra,
        )
        request.sampling = request.sampling.replace(n=n)
        return request

    async def _ask(
        self, backend: Backend, request: GenerationRequest, turn_ix: int
    ) -> tuple[list[Completion], float]:
        messages, n = request.messages, request.sampling.n
        sent = time.perf_counter()
        try:
            completions = await backend.complete(request)
        except asyncio.CancelledError:
            raise
        except PersonachatError as exc:
            raise _AttemptFailed(str(exc), messages, turn_ix, _retryable(exc)) from None
        except Exception as exc:  # a backend bug must not stop the other jobs
            raise _AttemptFailed(f"{type(exc).__name__}: {exc}", messages, turn_ix, True) from None
        completions.sort(key=lambda c: c.index)
        if [c.index for c in completions] != list(range(n)):
            error = f"the server returned {len(completions)} of {n} answers"
            raise _AttemptFailed(error, messages, turn_ix, True)
        if any(c.finish_reason is None for c in completions):
            raise _AttemptFailed("an answer came without a finish reason", messages, turn_ix, True)
        return completions, time.perf_counter() - sent

    async def _attempt(self, backend: Backend, unit: Unit, attempt: int) -> list[list[ResponseRecord]]:
        """Send one unit; its records per job (one per turn). Raises _AttemptFailed."""
        pane, first = unit.pane, unit.jobs[0]
        request = self._request(pane, first, list(first.messages or ()), first.text, 0, unit.size)
        completions, e2el = await self._ask(backend, request, 0)
        out: list[list[ResponseRecord]] = []
        for job, conversation, completion in zip(unit.jobs, unit.conversations, completions, strict=True):
            # Sample i of a group was drawn from seed + i: the seed that reproduces it alone.
            sampling = request.sampling.replace(
                n=1, seed=job_seed(self.base_seed, self.prompt_set.sha256, pane.name, job)
            )
            out.append(
                [
                    self._record(
                        pane,
                        job,
                        conversation,
                        0,
                        attempt,
                        request.messages,
                        sampling,
                        completion,
                        e2el,
                        None,
                    )
                ]
            )
        if not first.turns:
            return out
        # A scripted multi-turn job (always alone in its unit): each turn continues the pane's answer.
        records = out[0]
        for turn_ix, text in enumerate(first.turns, start=1):
            history = [*_without_system(request.messages), {"role": "assistant", "content": records[-1].text}]
            request = self._request(pane, first, history, text, turn_ix, 1)
            completions, e2el = await self._ask(backend, request, turn_ix)
            records.append(
                self._record(
                    pane,
                    first,
                    unit.conversations[0],
                    turn_ix,
                    attempt,
                    request.messages,
                    request.sampling,
                    completions[0],
                    e2el,
                    records[-1].id,
                )
            )
        return out

    def _record(
        self,
        pane: PaneSpec,
        job: PromptJob,
        conversation: int,
        turn_ix: int,
        attempt: int,
        messages: list[Message],
        sampling: Sampling,
        completion: Completion,
        e2el: float,
        parent_id: str | None,
    ) -> ResponseRecord:
        return build_response_record(
            self._identity[pane.name],
            record_id=new_id(),
            session_id=self.session_id,
            conversation=conversation,
            turn=turn_ix + 1,
            pane=pane.name,
            sample=job.sample_ix,
            messages=messages,
            sampling=sampling.to_dict(),
            status="finished",
            text=completion.text,
            finish_reason=completion.finish_reason,
            usage={
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
                "scope": "response",
            },
            timings=Timings(e2el=e2el).to_dict(),
            tags=turn_tags(pane, turn_ix),
            parent_id=parent_id,
            replay=job_ref(self.prompt_set, job, turn_ix, attempt),
            served_by=completion.served_by,
            failed_attempts=completion.failed_attempts,
            activations=pane.activations,
            projection=completion.raw.get("projection"),
        )

    def _failed_record(
        self, unit: Unit, index: int, attempt: int, failure: _AttemptFailed, will_retry: bool
    ) -> ResponseRecord:
        job = unit.jobs[index]
        request = self._request(unit.pane, job, list(job.messages or ()), job.text, 0, 1)
        return build_response_record(
            self._identity[unit.pane.name],
            record_id=new_id(),
            session_id=self.session_id,
            conversation=unit.conversations[index],
            turn=failure.turn_ix + 1,
            pane=unit.pane.name,
            sample=job.sample_ix,
            messages=failure.messages,
            sampling=request.sampling.to_dict(),
            status="failed",
            text="",
            error=failure.error,
            replay=dataclasses.replace(
                job_ref(self.prompt_set, job, failure.turn_ix, attempt), will_retry=will_retry
            ),
            activations=unit.pane.activations,
        )


def _without_system(messages: list[Message]) -> list[Message]:
    return messages[1:] if messages and messages[0]["role"] == "system" else list(messages)
