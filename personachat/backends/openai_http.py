"""OpenAI-compatible chat completions over HTTP (vLLM, or any compatible endpoint), streamed as SSE.

One ``httpx.AsyncClient`` per URL with explicit timeouts and pool limits. The SSE parser works on
bytes and decodes each event with orjson: on a two-core machine every client CPU-second is taken
from the server, so the hot path allocates as little as it can. A server entry may list several
URLs (replicas of the same models): requests go to the one with the fewest outstanding requests,
and a replica that refuses connections is skipped for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from personachat.backends.base import (
    Backend,
    Completion,
    EndPart,
    EngineInfo,
    GenerationRequest,
    ServedPart,
    StreamPart,
    TextPart,
    UsagePart,
)
from personachat.errors import MODEL_MISSING, BackendError
from personachat.profile import ServerSpec, api_root

_CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)
_LOST_ERRORS = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.ReadTimeout)
REPLICA_RETRY_AFTER = 5.0  # seconds a refusing replica is skipped


def worth_retrying(exc: BaseException) -> bool:
    """Whether a failed attempt may succeed later (see :attr:`BackendError.transient`)."""
    if isinstance(exc, (*_CONNECT_ERRORS, *_LOST_ERRORS)):
        return True
    return isinstance(exc, BackendError) and exc.transient


class RetryBudget:
    """The attempts of one request: exponential backoff with jitter, within ``budget`` seconds."""

    def __init__(self, budget: float):
        self.deadline = time.monotonic() + max(budget, 0.0)
        self.delay = 0.25
        self.failed: list[dict[str, Any]] = []

    async def wait(self, url: str, exc: BaseException) -> None:
        """Record a failed attempt and sleep before the next; re-raise (as a BackendError) when the
        budget cannot cover another wait or the failure will not go away."""
        if isinstance(exc, BackendError):
            message = str(exc)
        elif isinstance(exc, _CONNECT_ERRORS):
            message = f"{url} is unreachable ({type(exc).__name__})"
        else:
            message = f"connection to {url} lost ({type(exc).__name__})"
        self.failed.append({"url": url, "error": message[:300], "at": round(time.time(), 3)})
        pause = self.delay * (0.5 + random.random())
        if not worth_retrying(exc) or time.monotonic() + pause > self.deadline:
            if isinstance(exc, BackendError) and len(self.failed) == 1:
                raise exc
            tries = f" (after {len(self.failed)} attempts)" if len(self.failed) > 1 else ""
            status = exc.status if isinstance(exc, BackendError) else None
            kind = exc.kind if isinstance(exc, BackendError) else "unreachable"
            if isinstance(exc, _LOST_ERRORS):
                kind = "lost"
            raise BackendError(f"{message}{tries}", status=status, kind=kind, attempts=self.failed) from None
        self.delay = min(self.delay * 2, 8.0)
        await asyncio.sleep(pause)


def request_body(request: GenerationRequest, *, stream: bool, vllm: bool) -> dict[str, Any]:
    """The JSON body for ``/v1/chat/completions``: every sampling setting explicit.

    ``vllm`` adds vLLM's extra parameters with neutral values when unset, because vLLM otherwise
    takes them from the model's ``generation_config.json`` (Qwen ships top_k=20, for example).
    """
    s = request.sampling
    body: dict[str, Any] = {
        "model": request.model,
        "messages": request.messages,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "max_tokens": s.max_tokens,
        "n": s.n,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    if s.seed is not None:
        body["seed"] = s.seed
    if s.stop:
        body["stop"] = list(s.stop)
    if s.top_k is not None or vllm:
        body["top_k"] = s.top_k if s.top_k is not None else 0
    if s.repetition_penalty is not None or vllm:
        body["repetition_penalty"] = s.repetition_penalty if s.repetition_penalty is not None else 1.0
    body.update(request.extra)
    return body


def error_message(status: int, payload: bytes, model: str) -> BackendError:
    """Turn an HTTP error body (either OpenAI error shape) into a clear :class:`BackendError`."""
    message, kind = payload.decode("utf-8", "replace").strip()[:500], None
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        err: dict[str, Any] = data["error"] if isinstance(data.get("error"), dict) else data
        message = str(err.get("message") or message)
        kind = err.get("type")
    if status == 404 and ("model" in message.lower() or kind == "NotFoundError"):
        # A router or a dynamic loader still loading it answers so for a while: worth waiting for.
        return BackendError(
            f"model '{model}' is not served here (HTTP 404: {message})", status=status, kind=MODEL_MISSING
        )
    return BackendError(f"HTTP {status}{f' {kind}' if kind else ''}: {message}", status=status, kind=kind)


def served_by(url: str, headers: httpx.Headers) -> str:
    """The URL that answered, and the replica behind a router when the router says which."""
    for name in ("x-served-by", "x-worker-url", "x-backend-server"):
        if headers.get(name):
            return f"{url} -> {headers[name]}"
    return url


def url_credentials(url: str) -> tuple[str, str] | None:
    """(user, password) written in ``url`` (``https://user:pw@host``), or None."""
    parsed = httpx.URL(url)
    return (parsed.username, parsed.password) if parsed.username or parsed.password else None


def strip_credentials(url: str) -> str:
    """``url`` without user info: what is shown, logged and recorded."""
    parsed = httpx.URL(url)
    return str(parsed.copy_with(username=None, password=None)) if parsed.userinfo else url


class OpenAIBackend(Backend):
    """Chat completions against one or more OpenAI-compatible URLs serving the same models."""

    def __init__(
        self,
        server: ServerSpec,
        urls: list[str] | None = None,
        *,
        max_connections: int = 256,
        api_key: str | None = None,
        workers: list[str] | None = None,
    ):
        super().__init__(server)
        self.urls = [api_root(strip_credentials(u)) for u in (urls or server.urls)]
        if not self.urls:
            raise BackendError(f"server '{server.name}' has no URL")
        self._vllm = server.kind == "vllm"
        if api_key is None and server.api_key_env:
            api_key = os.environ.get(server.api_key_env)
            if not api_key:
                raise BackendError(
                    f"server '{server.name}': environment variable {server.api_key_env} (the API key) is not set"
                )
        from personachat.server_keys import key_for

        # A server personachat launched takes only its own key (each replica its own).
        keys = {url: api_key if api_key is not None else key_for(url) for url in self.urls}
        # Credentials written in a URL are used as HTTP basic auth, unless a bearer key is given.
        basic = url_credentials((urls or server.urls)[0])
        auth = httpx.BasicAuth(*basic) if basic and not any(keys.values()) else None
        timeout = httpx.Timeout(
            connect=server.connect_timeout, read=server.read_timeout, write=30.0, pool=None
        )
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)

        def headers_for(url: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {keys[url]}"} if keys[url] else {}

        self.headers = headers_for(self.urls[0])
        self._clients = {
            url: httpx.AsyncClient(
                base_url=url, timeout=timeout, limits=limits, headers=headers_for(url), auth=auth
            )
            for url in self.urls
        }
        self._outstanding = dict.fromkeys(self.urls, 0)
        self._down_until = dict.fromkeys(self.urls, 0.0)
        self.answered = dict.fromkeys(self.urls, 0)  # successful requests per replica
        self._info: EngineInfo | None = None
        self.workers = list(workers or self.urls)  # where adapters are loaded: behind a router, each worker
        self._keys = {url: keys.get(url) or api_key or key_for(url) for url in self.workers}
        self._auth = auth

    # -- replica choice -------------------------------------------------------------------------

    def _pick(self, tried: set[str]) -> str | None:
        now = time.monotonic()
        candidates = [u for u in self.urls if u not in tried]
        if not candidates:
            return None
        up = [u for u in candidates if self._down_until[u] <= now] or candidates
        return min(up, key=lambda u: self._outstanding[u])

    def _take(self, tried: set[str]) -> str:
        """Choose a replica not tried yet for one request and count it as outstanding there."""
        url = self._pick(tried)
        if url is None:
            raise BackendError(
                f"server '{self.server.name}' is unreachable ({', '.join(self.urls)})", kind="unreachable"
            )
        tried.add(url)
        self._outstanding[url] += 1  # the caller's ``finally`` gives it back
        return url

    def _mark_down(self, url: str) -> None:
        self._down_until[url] = time.monotonic() + REPLICA_RETRY_AFTER

    # -- requests -------------------------------------------------------------------------------

    # -- the context ----------------------------------------------------------------------------

    async def check_context(self, request: GenerationRequest) -> None:
        """Refuse, before sending, a request whose prompt plus ``max_tokens`` cannot fit the context.

        The context length comes from ``/v1/models`` (vLLM's ``max_model_len``). Counting the prompt
        costs a ``/tokenize`` call, made only when a cheap upper bound (every byte a token) says
        the request might not fit. Servers that report neither are not checked.
        """
        info = await self.engine_info()
        entry = info.models.get(request.model) or info.models.get(self.server.base_name) or {}
        limit = entry.get("max_model_len")
        if not isinstance(limit, int) or limit <= 0:
            return
        max_tokens = request.sampling.max_tokens
        if max_tokens >= limit:
            raise BackendError(
                f"max_tokens {max_tokens} cannot fit: {request.model} holds {limit} tokens, prompt "
                "included; lower max_tokens",
                kind="context",
            )
        bound = sum(len(m.get("content", "").encode()) + 16 for m in request.messages) + 16
        if bound + max_tokens <= limit:
            return
        count = await self._prompt_tokens(request)
        if count is not None and count + max_tokens > limit:
            raise BackendError(
                f"the prompt has {count} tokens and max_tokens asks for {max_tokens} more, but "
                f"{request.model} holds {limit}: lower max_tokens or start a new conversation (/clear)",
                kind="context",
            )

    async def _prompt_tokens(self, request: GenerationRequest) -> int | None:
        """The prompt's token count as the server renders it (vLLM's ``/tokenize``), or None."""
        body = {"model": request.model, "messages": request.messages, "add_generation_prompt": True}
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
            response = await self._clients[self.urls[0]].post("/tokenize", json=body)
            if response.status_code == 200:
                return int(response.json()["count"])
        return None

    def _never_served(self, exc: BaseException, model: str) -> BaseException:
        """``exc``, unless it is a 404 for a model that this vLLM server, launched by personachat
        without runtime adapter loading, does not list: then a final error (it will never load it;
        waiting out the retry budget would only delay the answer)."""
        server = self.server
        if (
            isinstance(exc, BackendError)
            and exc.kind == MODEL_MISSING
            and self._vllm
            and not server.runtime_lora
            and model not in server.models()
        ):
            served = ", ".join(server.models())
            return BackendError(f"{exc}; server '{server.name}' serves {served}", status=exc.status)
        return exc

    def _next_url(self, tried: set[str]) -> str:
        """A replica for the next attempt; every replica again once each was tried."""
        if len(tried) >= len(self.urls):
            tried.clear()
        return self._take(tried)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamPart]:
        """Stream the answer; failed attempts are retried (see :class:`RetryBudget`) as long as no
        text has arrived. The first part says which URL answered (:class:`ServedPart`)."""
        self.check_activations(request.model, request.activations)  # steering etc.: in-process only
        await self.check_context(request)
        body = orjson.dumps(request_body(request, stream=True, vllm=self._vllm))
        budget = RetryBudget(self.retry_budget)
        tried: set[str] = set()
        while True:
            url = self._next_url(tried)
            yielded = False
            try:
                async for part in self._stream_from(url, body, request.model, budget.failed):
                    yielded = yielded or isinstance(part, TextPart)
                    yield part
                self.answered[url] += 1
                return
            except (*_CONNECT_ERRORS, *_LOST_ERRORS, BackendError) as exc:
                if yielded:  # text was shown: asking again would give another answer
                    if isinstance(exc, BackendError):
                        raise
                    raise BackendError(
                        f"connection to {url} lost mid-answer ({type(exc).__name__})", kind="lost"
                    ) from None
                if isinstance(exc, (*_CONNECT_ERRORS, *_LOST_ERRORS)):
                    self._mark_down(url)
                await budget.wait(url, self._never_served(exc, request.model))
            finally:
                self._outstanding[url] -= 1

    async def _stream_from(
        self, url: str, body: bytes, model: str, failed: list[dict[str, Any]]
    ) -> AsyncIterator[StreamPart]:
        client = self._clients[url]
        headers = {"Content-Type": "application/json"}
        async with client.stream("POST", "/v1/chat/completions", content=body, headers=headers) as response:
            if response.status_code != 200:
                raise error_message(response.status_code, await response.aread(), model)
            yield ServedPart(served_by(url, response.headers), list(failed))
            buffer = b""
            async for chunk in response.aiter_raw():
                buffer += chunk
                if b"\n" not in chunk:
                    continue
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        return
                    for part in _parts(orjson.loads(payload)):
                        yield part
            raise httpx.RemoteProtocolError("stream ended without [DONE]")

    async def complete(self, request: GenerationRequest) -> list[Completion]:
        self.check_activations(request.model, request.activations)
        await self.check_context(request)
        payload = request_body(request, stream=False, vllm=self._vllm)
        if self._vllm and request.sampling.n > 1:
            # vLLM sums usage over the n samples; the token ids give each sample's own count.
            payload.setdefault("return_token_ids", True)
        body = orjson.dumps(payload)
        budget = RetryBudget(self.retry_budget)
        tried: set[str] = set()
        while True:
            url = self._next_url(tried)
            try:
                response = await self._clients[url].post(
                    "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
                )
                if response.status_code != 200:
                    raise error_message(response.status_code, response.content, request.model)
            except (*_CONNECT_ERRORS, *_LOST_ERRORS, BackendError) as exc:
                if isinstance(exc, (*_CONNECT_ERRORS, *_LOST_ERRORS)):
                    self._mark_down(url)
                await budget.wait(url, self._never_served(exc, request.model))
                continue
            finally:
                self._outstanding[url] -= 1
            self.answered[url] += 1
            answered_by = served_by(url, response.headers)
            data = orjson.loads(response.content)
            usage = data.get("usage") or {}
            choices = data.get("choices") or []
            single = usage.get("completion_tokens") if len(choices) == 1 else None
            return [
                Completion(
                    index=c.get("index", i),
                    text=(c.get("message") or {}).get("content") or "",
                    finish_reason=c.get("finish_reason"),
                    completion_tokens=len(c["token_ids"]) if c.get("token_ids") is not None else single,
                    prompt_tokens=usage.get("prompt_tokens"),
                    raw=c,
                    served_by=answered_by,
                    failed_attempts=list(budget.failed),
                )
                for i, c in enumerate(choices)
            ]

    async def engine_info(self) -> EngineInfo:
        if self._info is not None:
            return self._info
        client = self._clients[self.urls[0]]
        version = None
        engine = "openai-compatible"
        # Identity is best effort: an endpoint without /version or /v1/models still answers chats,
        # and the transcript then records what is unknown as null.
        with contextlib.suppress(httpx.HTTPError, ValueError):
            r = await client.get("/version")
            if r.status_code == 200:
                version = r.json().get("version")
                engine = "vllm"
        models: dict[str, dict[str, Any]] = {}
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            r = await client.get("/v1/models")
            if r.status_code == 200:
                for m in r.json().get("data", []):
                    models[m["id"]] = {k: m.get(k) for k in ("root", "parent", "max_model_len") if k in m}
        self._info = EngineInfo(engine=engine, version=version, models=models)
        return self._info

    async def models(self) -> list[str]:
        """Names the (first) server lists under ``/v1/models``."""
        self._info = None
        return list((await self.engine_info()).models)

    async def load_adapter(self, name: str, path: str) -> None:
        """Load a LoRA adapter at run time on every worker (vLLM's ``/v1/load_lora_adapter``; the
        server must allow it: ``runtime_lora = true``). Raises :class:`BackendError` with vLLM's
        reason when a worker refuses."""
        body = {"lora_name": name, "lora_path": path}
        timeout = httpx.Timeout(
            connect=self.server.connect_timeout, read=self.server.read_timeout, write=30, pool=None
        )
        for url in self.workers:
            key = self._keys.get(url)
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            async with httpx.AsyncClient(
                base_url=url, timeout=timeout, headers=headers, auth=self._auth
            ) as client:
                try:
                    response = await client.post("/v1/load_lora_adapter", json=body)
                except httpx.HTTPError as exc:
                    raise BackendError(
                        f"{url} is unreachable ({type(exc).__name__})", kind="unreachable"
                    ) from None
            if response.status_code == 404 and b"load_lora_adapter" not in response.content:
                raise BackendError(
                    f"{url} cannot load adapters at run time: set runtime_lora = true on the server "
                    "(vLLM's VLLM_ALLOW_RUNTIME_LORA_UPDATING) and restart it",
                    status=404,
                )
            if response.status_code != 200:
                raise error_message(response.status_code, response.content, name)
        self._info = None  # the served models changed

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()


def _parts(event: Any) -> list[StreamPart]:
    """The stream parts in one SSE event (one choice per chunk, or usage, or an error)."""
    if not isinstance(event, dict):
        return []
    if "error" in event or event.get("object") == "error":
        err: dict[str, Any] = event["error"] if isinstance(event.get("error"), dict) else event
        raise BackendError(f"server error mid-stream: {err.get('message', err)}", kind=err.get("type"))
    parts: list[StreamPart] = []
    for choice in event.get("choices") or ():
        index = choice.get("index", 0)
        delta = choice.get("delta") or {}
        text = delta.get("content")
        if text:
            parts.append(TextPart(index, text))
        reason = choice.get("finish_reason")
        if reason is not None:
            parts.append(EndPart(index, reason, choice.get("stop_reason")))
    usage = event.get("usage")
    if usage and not event.get("choices"):
        parts.append(UsagePart(usage.get("prompt_tokens"), usage.get("completion_tokens")))
    return parts
