"""In-process backend: one base model and its LoRA adapters with transformers + peft, no server.

The base is loaded once and every adapter is added to it under its own name, so memory holds one
base whatever the number of panes. Requests that arrive together (the Session starts all panes in
the same event-loop tick; a short window catches the rest) become rows of one ``generate`` call
with mixed adapters; sampling, stop strings and lengths are applied per row (see
:mod:`personachat.backends.embedded_batch`), so any mix of settings shares the batch. Requests
that arrive while a batch runs form the next one. Generation runs on one worker thread; each
decoding step sends every row's new text to the event loop in one callback. Each pane may steer,
scale its adapter and read persona projections (:mod:`personachat.backends.embedded_steer`).

torch, transformers and peft are imported when the backend starts, not when this module is.
See docs/embedded.md for behaviour, determinism and measurements.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from personachat.backends.base import (
    Backend,
    Completion,
    EngineInfo,
    GenerationRequest,
    ProgressCallback,
    StreamPart,
    TextPart,
    UsagePart,
)
from personachat.backends.embedded_batch import BASE_ADAPTER, BatchStats, Row, Runtime, run_batch
from personachat.backends.embedded_steer import check_model_fit, row_activations
from personachat.errors import BackendError, ServerError
from personachat.profile import ServerSpec
from personachat.steering import ActivationSpec

BATCH_WINDOW_S = 0.002  # how long the first request of a batch waits for others
MAX_BATCH_ROWS = 64  # rows per generate call; more rows run as further batches, in turn
# request.extra keys this backend understands (token ids are always in complete()'s raw)
EXTRA_OPTIONS = frozenset({"ignore_eos", "min_tokens", "return_token_ids"})
_END = object()


@dataclass(eq=False)
class _Job:
    """One request between its ``stream()`` call and its last part."""

    request: GenerationRequest
    adapter: str
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    rows: list[Row] = field(default_factory=list)
    prompt_tokens: int = 0
    cancelled: bool = False  # written by the event loop, read by the worker each step
    ended: bool = False  # its last part (or its error) was delivered

    def receive(self, parts: list[StreamPart], end: bool) -> None:
        if self.ended:
            return
        if parts:
            self.queue.put_nowait(parts)
        if end:
            self.ended = True
            self.queue.put_nowait(_END)

    def fail(self, error: BaseException) -> None:
        if not self.ended:
            self.ended = True
            self.queue.put_nowait(error)


class EmbeddedBackend(Backend):
    """A ``transformers`` server entry: base + adapters in this process, mixed-adapter batches."""

    def __init__(
        self,
        server: ServerSpec,
        *,
        batch_window: float = BATCH_WINDOW_S,
        max_batch_rows: int = MAX_BATCH_ROWS,
    ):
        super().__init__(server)
        if not server.model:
            raise ServerError(f"server '{server.name}' has no model")
        self.batch_window = batch_window
        self.max_batch_rows = max_batch_rows
        self.batches: deque[BatchStats] = deque(maxlen=256)  # the latest generate calls, newest last
        self.decode_steps = 0  # decoding steps run so far, over all batches (updated every step)
        self.last_cancel_step: int | None = None  # decode_steps when a request was last cancelled
        self.load_seconds: float | None = None
        self._rt: Runtime | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._loading: concurrent.futures.Future[Runtime] | None = None
        # Shared between the event loop(s) and the worker thread, under _lock:
        self._lock = threading.Lock()
        self._pending: list[_Job] = []  # submitted, waiting for the next batch
        self._running: list[_Job] = []  # in the batch being generated
        self._draining = False  # the worker has a drain task queued or running

    # -- loading --------------------------------------------------------------------------------

    async def start(self, progress: ProgressCallback | None = None) -> None:
        """Load the base and adapters on the worker thread (building the demo models if needed)."""
        if self._rt is not None:
            return
        if self._loading is None:
            loop = asyncio.get_running_loop()

            def say(message: str) -> None:
                if progress is not None:
                    _post(loop, progress, message)

            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(1, "personachat-embedded")
            self._loading = self._executor.submit(self._load, say)
        try:
            self._rt = await asyncio.wrap_future(self._loading)
        except BaseException:
            self._loading = None
            raise

    @property
    def runtime(self) -> Runtime | None:
        """The loaded model, tokenizer and settings (None before start()), for tests and benchmarks."""
        return self._rt

    def _load(self, say: Callable[[str], None]) -> Runtime:
        from personachat.backends.embedded_load import load_runtime

        started = time.perf_counter()
        rt = load_runtime(self.server, say)
        self.load_seconds = time.perf_counter() - started
        return rt

    # -- requests -------------------------------------------------------------------------------

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamPart]:
        job = await self._submit(request)
        try:
            while (item := await job.queue.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                for part in item:
                    yield part
        finally:
            self._leave(job)

    async def complete(self, request: GenerationRequest) -> list[Completion]:
        """Whole answers; ``raw`` holds each sample's ``token_ids`` and ``stop_reason`` (and
        ``projection``, one value per answer token, when the request projects)."""
        texts: dict[int, list[str]] = {}
        job = await self._submit(request)
        try:
            while (item := await job.queue.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                for part in item:
                    if isinstance(part, TextPart):
                        texts.setdefault(part.index, []).append(part.text)
        finally:
            self._leave(job)
        return [
            Completion(
                index=row.index,
                text="".join(texts.get(row.index, [])),
                finish_reason=row.finish_reason,
                completion_tokens=len(row.token_ids),
                raw={
                    "token_ids": list(row.token_ids),
                    "stop_reason": row.stop_reason,
                    **({"projection": list(row.projection)} if row.projects else {}),
                },
            )
            for row in job.rows
        ]

    def _leave(self, job: _Job) -> None:
        """The consumer is done with ``job``; if it left early, its rows stop at the next step."""
        if not job.ended and not job.cancelled:
            job.cancelled = True
            self.last_cancel_step = self.decode_steps

    def check_activations(self, model: str, activations: ActivationSpec) -> None:
        """Refuse settings that cannot work: an adapter scale on the base model, a vector file whose
        layer or size does not fit (checked once the model is loaded; requests check again)."""
        if activations.adapter_scale is not None and model not in self.server.adapters:
            raise BackendError(f"adapter_scale scales an adapter's update; '{model}' is the base model")
        for spec in (activations.steer, activations.project):
            if spec is not None and self._rt is not None:
                check_model_fit(self._rt, spec)

    async def _submit(self, request: GenerationRequest) -> _Job:
        await self.start()
        unknown = set(request.extra) - EXTRA_OPTIONS
        if unknown:
            raise BackendError(
                f"the embedded (transformers) backend does not support request option(s) "
                f"{', '.join(sorted(unknown))}; it understands {', '.join(sorted(EXTRA_OPTIONS))}"
            )
        if request.model == self.server.base_name:
            adapter = BASE_ADAPTER
        elif request.model in self.server.adapters:
            adapter = request.model
        else:
            raise BackendError(
                f"model '{request.model}' is not served by '{self.server.name}' "
                f"(it serves: {', '.join(self.server.models())})",
                status=404,
            )
        job = _Job(request, adapter, asyncio.get_running_loop())
        assert self._executor is not None
        with self._lock:
            self._pending.append(job)
            if not self._draining:
                self._draining = True
                self._executor.submit(self._drain)
        return job

    # -- generation (worker thread) -------------------------------------------------------------

    def _drain(self) -> None:
        """Run batches until nothing waits. The first waits ``batch_window`` for more requests."""
        time.sleep(self.batch_window)
        while True:
            with self._lock:
                jobs = [job for job in self._pending if not job.cancelled]
                self._pending = []
                self._running = jobs
                if not jobs:
                    self._draining = False
                    return
            try:
                self._generate(jobs)
            except Exception as exc:
                error = _generation_error(exc, self._rt)
                for job in jobs:
                    _post(job.loop, job.fail, error)
            finally:
                for job in jobs:  # ends jobs whose rows were all cancelled (a no-op for the others)
                    _post(job.loop, job.receive, [], True)
                with self._lock:
                    self._running = []

    def _generate(self, jobs: list[_Job]) -> None:
        rt = self._rt
        if rt is None:
            raise BackendError("the backend was closed")
        rows: list[Row] = []
        for job in jobs:
            try:
                job.rows = self._rows_for(rt, job)
            except BackendError as exc:
                _post(job.loop, job.fail, exc)
                continue
            rows.extend(job.rows)
        for start in range(0, len(rows), self.max_batch_rows):
            chunk = rows[start : start + self.max_batch_rows]
            for row in chunk:
                if row.owner.cancelled:
                    row.finish_reason = "cancelled"
            chunk = [row for row in chunk if not row.done]
            if chunk:
                stats = BatchStats()
                self.batches.append(stats)
                run_batch(rt, chunk, self._emit, stats, self._count_step)

    def _rows_for(self, rt: Runtime, job: _Job) -> list[Row]:
        """Validate a request and turn it into rows (its prompt tokenized once)."""
        s = job.request.sampling
        if s.n < 1 or s.max_tokens < 1:
            raise BackendError("n and max_tokens must be at least 1")
        if s.temperature < 0 or not 0 < s.top_p <= 1:
            raise BackendError("temperature must be >= 0 and top_p in (0, 1]")
        if s.repetition_penalty is not None and s.repetition_penalty <= 0:
            raise BackendError("repetition_penalty must be > 0")
        self.check_activations(job.request.model, job.request.activations)
        activations = row_activations(rt, job.request.activations)
        adapter = job.adapter
        if activations is not None and activations.scale != 1 and adapter != BASE_ADAPTER:
            if activations.scale == 0:
                adapter = BASE_ADAPTER  # no update at all: exactly the base model
            elif rt.lora is None:
                raise BackendError(
                    "adapter_scale other than 0 or 1 needs plain LoRA adapters; this server's use a "
                    "variant (DoRA, a bias, modules_to_save, ...) that only peft's own path runs"
                )
        prompt = encode_chat(rt, job.request.messages)
        if rt.max_context is not None and len(prompt) + s.max_tokens > rt.max_context:
            raise BackendError(
                f"this model's maximum context length is {rt.max_context} tokens; the prompt has "
                f"{len(prompt)} and max_tokens asks for {s.max_tokens} more: lower max_tokens or "
                "start a new conversation",
                kind="context",
            )
        job.prompt_tokens = len(prompt)
        ignore_eos = bool(job.request.extra.get("ignore_eos", False))
        min_tokens = job.request.extra.get("min_tokens") or 0
        if not isinstance(min_tokens, int) or min_tokens < 0:
            raise BackendError(f"min_tokens must be a whole number >= 0, not {min_tokens!r}")
        return [
            Row(
                owner=job,
                index=i,
                prompt_ids=prompt,
                adapter=adapter,
                sampling=s,
                seed=None if s.seed is None else s.seed + i,
                ignore_eos=ignore_eos,
                min_tokens=min_tokens,
                activations=activations,
            )
            for i in range(s.n)
        ]

    def _count_step(self) -> None:
        self.decode_steps += 1

    def _emit(self, updates: list[tuple[Row, list[StreamPart]]]) -> None:
        """Send one step's parts to the event loop(s): one callback per loop."""
        by_job: dict[_Job, list[StreamPart]] = {}
        for row, parts in updates:
            job = row.owner
            assert isinstance(job, _Job)
            by_job.setdefault(job, []).extend(parts)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, list[StreamPart], bool]]] = {}
        for job, parts in by_job.items():
            end = all(row.settled for row in job.rows)
            if end:
                completion = sum(len(row.token_ids) for row in job.rows)
                parts.append(UsagePart(job.prompt_tokens, completion))
            by_loop.setdefault(job.loop, []).append((job, parts, end))
        for loop, deliveries in by_loop.items():
            _post(loop, _deliver, deliveries)

    async def wait_idle(self) -> None:
        """Wait until the worker has stopped generating (every batch ended, nothing waiting)."""
        while self._draining:
            await asyncio.sleep(0.001)

    # -- identity and shutdown ------------------------------------------------------------------

    async def engine_info(self) -> EngineInfo:
        from importlib.metadata import PackageNotFoundError, version

        def v(name: str) -> str:
            try:
                return version(name)
            except PackageNotFoundError:
                return "missing"

        rt = self._rt
        base: dict[str, Any] = {"root": self.server.model, "parent": None}
        if self.server.revision:
            base["revision"] = self.server.revision
        if rt is not None:
            if rt.commit:
                base["commit"] = rt.commit
            base.update(
                device=str(rt.device),
                dtype=str(rt.dtype).removeprefix("torch."),
                max_model_len=rt.max_context,
            )
        models = {self.server.base_name: base}
        for name, path in self.server.adapters.items():
            models[name] = {"root": path, "parent": self.server.base_name}
        return EngineInfo(
            engine="transformers+peft",
            version=f"transformers {v('transformers')}, peft {v('peft')}, torch {v('torch')}",
            models=models,
        )

    async def aclose(self) -> None:
        """Cancel what runs or waits, let the worker stop, and free the model."""
        with self._lock:
            jobs = [*self._pending, *self._running]
            for job in jobs:
                job.cancelled = True
        for job in jobs:
            job.fail(BackendError("the backend was closed"))
        executor, rt = self._executor, self._rt
        self._executor, self._rt, self._loading = None, None, None
        if executor is not None:
            # The executor runs one task at a time: this one runs once the current batch has stopped.
            await asyncio.wrap_future(executor.submit(_release, rt))
            executor.shutdown(wait=False)


def _post(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
    """Run ``callback`` on ``loop`` from the worker thread; nothing if that loop has closed."""
    with contextlib.suppress(RuntimeError):  # the loop closed (its program ended without aclose())
        loop.call_soon_threadsafe(callback, *args)


def _deliver(deliveries: list[tuple[_Job, list[StreamPart], bool]]) -> None:
    for job, parts, end in deliveries:
        job.receive(parts, end)


def _release(rt: Runtime | None) -> None:
    import gc

    if rt is None:
        return
    cuda = rt.device.type == "cuda"
    del rt
    gc.collect()
    if cuda:
        import torch

        torch.cuda.empty_cache()


def _generation_error(exc: Exception, rt: Runtime | None) -> Exception:
    import torch

    if isinstance(exc, torch.OutOfMemoryError) and rt is not None:
        return BackendError(
            f"out of memory on {rt.device} while generating: fewer panes or samples, a lower "
            "max_tokens or a shorter conversation would fit"
        )
    return exc


def encode_chat(rt: Runtime, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of ``messages`` under the base tokenizer's chat template, as vLLM builds them.

    The template is rendered with ``add_generation_prompt=True`` and the text is tokenized without
    adding special tokens (the template already has them), exactly as vLLM's chat endpoint does.
    """
    tok = rt.tokenizer
    if not getattr(tok, "chat_template", None):
        raise BackendError(
            "the base model's tokenizer has no chat template; use an instruction-tuned model or "
            "add chat_template.jinja to the model folder"
        )
    try:
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # jinja errors, templates that raise (e.g. "system role not supported")
        raise BackendError(f"the chat template refused these messages: {exc}") from exc
    return list(tok(text, add_special_tokens=False)["input_ids"])
