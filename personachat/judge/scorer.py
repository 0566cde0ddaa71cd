"""Score one response for one metric: from the cache when the judge already answered, else by asking it.

:class:`Scorer` is what the bulk runner and the live judge share. :func:`open_scorer` builds one
from a profile's ``[judge]`` table, reusing the caller's backends or connecting (and, for vLLM,
starting) the judge's server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from personachat.backends.base import Backend
from personachat.errors import PersonachatError
from personachat.judge.cache import CachedAnswer, JudgeCache, cache_key
from personachat.judge.client import JudgeClient, needs_continuations
from personachat.judge.kinds import read_label
from personachat.judge.prompts import JudgeMetric
from personachat.judge.records import JudgeIdentity, JudgeRecord
from personachat.judge.score import (
    ScoreResult,
    categorical_from_top_logprobs,
    score_from_digit_split,
    score_from_top_logprobs,
)
from personachat.profile import Profile
from personachat.serving.connect import Connection
from personachat.transcripts.schema import ResponseRecord


def score_cached(metric: JudgeMetric, answer: CachedAnswer, min_mass: float) -> ScoreResult:
    """The score (or label) a raw judge answer gives under ``min_mass``: pure."""
    if metric.kind == "generated":
        text = answer.text or ""
        label = read_label(text, metric.labels)
        detail: dict[str, Any] = {"label": label, "text": text}
        if label is None:
            detail["reason"] = "unparsed"  # the judge's text names no label: marked, never guessed
        return ScoreResult(None, 1.0 if label is not None else 0.0, "generated", {}, detail)
    if metric.kind == "categorical":
        return categorical_from_top_logprobs(answer.first, metric.labels, min_mass=min_mass)
    if answer.continuations is not None:
        return score_from_digit_split(answer.first, answer.continuations, min_mass=min_mass)
    return score_from_top_logprobs(answer.first, min_mass=min_mass)


class Scorer:
    """Judge responses with one judge model, through a cache. Identical (question, answer) pairs
    judged at the same time share one set of calls."""

    def __init__(
        self,
        client: JudgeClient,
        cache: JudgeCache | None = None,
        *,
        min_mass: float = 0.25,
        connection: Connection | None = None,
    ):
        self.client = client
        self.cache = cache if cache is not None else JudgeCache(None)
        self.min_mass = min_mass
        self._connection = connection
        self._inflight: dict[str, asyncio.Future[CachedAnswer]] = {}

    @property
    def identity(self) -> JudgeIdentity:
        return self.client.identity

    def _usable(self, metric: JudgeMetric, answer: CachedAnswer | None) -> bool:
        if answer is None:
            return False
        if metric.kind == "generated":
            return answer.text is not None
        return answer.continuations is not None or not needs_continuations(
            metric, answer.first, self.client.digit_split
        )

    async def _answer(self, metric: JudgeMetric, question: str, text: str) -> tuple[CachedAnswer, bool]:
        """(the judge's raw answer, whether it came without a call)."""
        key = cache_key(self.identity.key, metric.sha256, question, text)
        cached = self.cache.get(key)
        if self._usable(metric, cached):
            assert cached is not None
            return cached, True
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending), True
        future: asyncio.Future[CachedAnswer] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            answer = await self.client.ask(metric, question, text)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waits
            raise
        finally:
            del self._inflight[key]
        future.set_result(answer)
        self.cache.put(key, answer, judge=self.identity.key, metric=metric.name, prompt_sha256=metric.sha256)
        return answer, False

    async def score(
        self, response: ResponseRecord, metric: JudgeMetric, question: str | None = None
    ) -> JudgeRecord:
        """A judge record for ``response`` and ``metric``.

        ``question`` is the judge's ``{question}`` (:meth:`MetricPlan.question_for`: the prompt set's
        text); by default the last user message sent. Both are recorded when they differ.
        """
        question = response.prompt if question is None else question
        answer, cached = await self._answer(metric, question, response.text)
        result = score_cached(metric, answer, self.min_mass)
        extra: dict[str, Any] = {"min_mass": self.min_mass, "calls": 0 if cached else answer.calls}
        if answer.answer_chars is not None:
            extra["answer_chars"] = answer.answer_chars
            extra["answer_chars_total"] = len(response.text)
        extra["question"] = question
        if question != response.prompt:
            extra["sent"] = response.prompt  # what the pane sent (its transform applied)
        return JudgeRecord.from_result(
            result,
            session_id=response.session_id,
            target=response.id,
            metric=metric.name,
            kind=metric.kind,
            judge=self.identity,
            prompt_sha256=metric.sha256,
            cached=cached,
            extra_detail=extra,
        )

    async def aclose(self) -> None:
        """Close the cache file, and the judge's connection if this scorer opened it."""
        self.cache.close()
        if self._connection is not None:
            await self._connection.close()
            self._connection = None


async def open_scorer(
    profile: Profile,
    *,
    backends: dict[str, Backend] | None = None,
    start_missing: bool = True,
    progress: Callable[[str], None] | None = None,
    cache: bool | Path = True,
    min_mass: float | None = None,
    **client_options: Any,
) -> Scorer:
    """A started :class:`Scorer` for the profile's ``[judge]``.

    ``backends``: the caller's connected backends; the judge's server is used from there when
    present, else connected here (and closed by :meth:`Scorer.aclose`). ``cache``: True for the
    default cache folder, a folder, or False for none. ``min_mass`` defaults to ``[judge] threshold``.
    ``client_options`` go to :class:`JudgeClient`.
    """
    from personachat.backends.openai_http import OpenAIBackend
    from personachat.serving.connect import connect

    spec = profile.judge
    if min_mass is not None and not 0.0 <= min_mass <= 1.0:
        raise PersonachatError(f"the judge threshold (min mass) must be from 0 to 1, not {min_mass:g}")
    if spec is None:
        raise PersonachatError(
            f"profile '{profile.name}' has no [judge] table: add one with server = a server of the "
            "profile and model = a model it serves (see docs/judge.md)"
        )
    server = profile.servers.get(spec.server)
    if server is None:
        raise PersonachatError(f"[judge] server '{spec.server}' is not a server of profile '{profile.name}'")
    if server.kind == "transformers":
        raise PersonachatError(
            f"[judge] server '{spec.server}' is an in-process transformers server; the judge needs "
            "log-probabilities from a vllm or openai server"
        )
    if server.kind == "vllm" and spec.model not in server.models():
        raise PersonachatError(
            f"[judge] model '{spec.model}' is not served by server '{spec.server}' "
            f"(it serves: {', '.join(server.models())})"
        )
    connection = None
    backend = (backends or {}).get(spec.server)
    if backend is None:
        connection = await connect(profile, [spec.server], start_missing=start_missing, progress=progress)
        backend = connection.backends[spec.server]
    if not isinstance(backend, OpenAIBackend):
        raise PersonachatError(f"[judge] server '{spec.server}' does not speak the OpenAI HTTP API")
    client = JudgeClient(backend, spec.model, **client_options)
    try:
        identity = await client.start()
    except BaseException:
        if connection is not None:
            await connection.close()
        raise
    judge_cache = (
        JudgeCache(None)
        if cache is False
        else JudgeCache.for_judge(identity.key, None if cache is True else Path(cache))
    )
    return Scorer(
        client,
        judge_cache,
        min_mass=spec.threshold if min_mass is None else min_mass,
        connection=connection,
    )
