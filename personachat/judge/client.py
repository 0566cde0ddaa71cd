"""Ask a served judge model about one answer: one call for the first token's top log-probabilities,
plus continuation calls when the judge writes numbers digit by digit.

Every call is ``max_tokens=1``, ``temperature=0``, ``logprobs=true``, ``top_logprobs=20`` on
``/v1/chat/completions``. Continuations append the digits written so far as an assistant message
and send ``continue_final_message=true``, ``add_generation_prompt=false`` (vLLM). Whether the judge
splits numbers is read once from its tokenizer through vLLM's ``/tokenize``; servers without it
fall back to :func:`~personachat.judge.score.looks_digit_split` per answer. An answer too long for
the judge's context is cut (and the cut recorded) until the prompt fits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import httpx

from personachat.backends.base import GenerationRequest
from personachat.backends.openai_http import OpenAIBackend
from personachat.errors import BackendError, PersonachatError
from personachat.judge.cache import CachedAnswer
from personachat.judge.prompts import JudgeMetric
from personachat.judge.records import JudgeIdentity
from personachat.judge.score import (
    detect_digit_split,
    looks_digit_split,
    score_digit_split,
    top_logprobs_from_choice,
)
from personachat.sampling import Sampling

JUDGE_SAMPLING = Sampling(temperature=0.0, top_p=1.0, max_tokens=1, n=1)
CUT_MARK = " [...]"
_CONTEXT_ERROR = re.compile(r"context length|context window|too long|max_model_len|exceeds", re.IGNORECASE)


def is_context_error(exc: BackendError) -> bool:
    """Whether the server refused a request because the prompt does not fit the model's context."""
    return exc.kind == "context" or (exc.status == 400 and bool(_CONTEXT_ERROR.search(str(exc))))


def cut_answer(answer: str, chars: int) -> str:
    """The first ``chars`` characters of ``answer``, marked as cut when anything was dropped."""
    return answer if chars >= len(answer) else answer[:chars] + CUT_MARK


def needs_continuations(metric: JudgeMetric, first: Mapping[str, float], digit_split: bool | None) -> bool:
    """Whether a 0-100 answer must be read digit by digit (known from the tokenizer, else guessed)."""
    if metric.kind != "score_0_100":
        return False
    return looks_digit_split(first) if digit_split is None else digit_split


class JudgeClient:
    """One judge model on one OpenAI-compatible server (vLLM or other).

    ``calls`` counts completion requests sent (failed ones included). ``digit_split``: True / False
    when known; none to detect at :meth:`start`. ``min_branch_prob`` / ``max_branches`` bound the
    digit-split continuation calls (see :func:`~personachat.judge.score.score_digit_split`).
    ``extra`` is merged into every request body (e.g. ``chat_template_kwargs``).
    """

    def __init__(
        self,
        backend: OpenAIBackend,
        model: str,
        *,
        top_logprobs: int = 20,
        digit_split: bool | None = None,
        min_branch_prob: float = 0.01,
        max_branches: int = 4,
        max_answer_chars: int = 20_000,
        extra: Mapping[str, Any] | None = None,
    ):
        self.backend = backend
        self.model = model
        self.top_logprobs = top_logprobs
        self.digit_split = digit_split
        self.min_branch_prob = min_branch_prob
        self.max_branches = max_branches
        self.max_answer_chars = max_answer_chars
        self.extra = dict(extra or {})
        self.calls = 0
        self.identity = JudgeIdentity(server=backend.server.name, model=model)

    async def start(self) -> JudgeIdentity:
        """Check the server serves the model, learn its identity, and detect digit-split tokenizers."""
        info = await self.backend.engine_info()
        if info.models and self.model not in info.models:
            raise PersonachatError(
                f"judge model '{self.model}' is not served by server '{self.backend.server.name}' "
                f"(it serves: {', '.join(info.models)}); fix [judge] model in the profile"
            )
        root = (info.models.get(self.model) or {}).get("root")
        self.identity = JudgeIdentity(
            server=self.backend.server.name,
            model=self.model,
            engine={"engine": info.engine, "version": info.version},
            root=str(root) if root else None,
        )
        if self.digit_split is None and info.engine == "vllm":
            self.digit_split = await self._detect_digit_split()
        return self.identity

    async def _detect_digit_split(self) -> bool | None:
        """Ask vLLM's ``/tokenize`` how the judge writes 7, 42, 85 and 100; none if it cannot say."""
        headers = dict(self.backend.headers)
        pieces: dict[str, list[str]] = {}
        try:
            async with httpx.AsyncClient(base_url=self.backend.urls[0], timeout=30.0, headers=headers) as c:
                for text in ("7", "42", "85", "100"):
                    body = {
                        "model": self.model,
                        "prompt": text,
                        "add_special_tokens": False,
                        "return_token_strs": True,
                    }
                    r = await c.post("/tokenize", json=body)
                    strs = r.json().get("token_strs") if r.status_code == 200 else None
                    if not isinstance(strs, list):
                        return None
                    pieces[text] = [str(s) for s in strs]
        except (httpx.HTTPError, ValueError):
            return None
        return detect_digit_split(lambda text: pieces[text])

    async def _top(self, messages: list[dict[str, str]], *, prefix: str | None = None) -> dict[str, float]:
        extra: dict[str, Any] = {"logprobs": True, "top_logprobs": self.top_logprobs, **self.extra}
        if prefix is not None:
            messages = [*messages, {"role": "assistant", "content": prefix}]
            extra.update(continue_final_message=True, add_generation_prompt=False)
        request = GenerationRequest(self.model, messages, JUDGE_SAMPLING, extra=extra)
        self.calls += 1
        completions = await self.backend.complete(request)
        if not completions:
            raise BackendError(f"judge '{self.model}' returned no choice")
        return top_logprobs_from_choice(completions[0].raw)

    async def _generate(self, metric: JudgeMetric, messages: list[dict[str, str]]) -> str:
        """A generated judge answer: the judge's whole text at temperature 0 (reasoning, then a label).

        It may write ``metric.max_tokens`` tokens, or half the judge's context when that is less
        (small judges), so that the prompt still fits.
        """
        info = await self.backend.engine_info()
        context = (info.models.get(self.model) or {}).get("max_model_len")
        max_tokens = metric.max_tokens
        if isinstance(context, int) and context > 0:
            max_tokens = min(max_tokens, max(16, context // 2))
        sampling = JUDGE_SAMPLING.replace(max_tokens=max_tokens)
        request = GenerationRequest(self.model, messages, sampling, extra=dict(self.extra))
        self.calls += 1
        completions = await self.backend.complete(request)
        if not completions:
            raise BackendError(f"judge '{self.model}' returned no choice")
        return completions[0].text

    async def _ask_once(
        self, metric: JudgeMetric, messages: list[dict[str, str]]
    ) -> tuple[dict[str, float], dict[str, dict[str, float]] | None]:
        first = await self._top(messages)
        if not needs_continuations(metric, first, self.digit_split):
            return first, None
        continuations: dict[str, dict[str, float]] = {}

        async def continuation(prefix: str) -> dict[str, float]:
            continuations[prefix] = await self._top(messages, prefix=prefix)
            return continuations[prefix]

        # Run for the calls it makes; the score is computed again from what was fetched.
        await score_digit_split(
            first, continuation, max_branches=self.max_branches, min_branch_prob=self.min_branch_prob
        )
        return first, continuations

    async def ask(self, metric: JudgeMetric, question: str, answer: str) -> CachedAnswer:
        """The judge's raw answer about ``answer`` for ``metric`` (cut to fit the context if need be).

        Raises :class:`BackendError` when the server fails, or when even the answer-free prompt
        is too long for the judge.
        """
        chars = min(len(answer), self.max_answer_chars)
        start_calls = self.calls
        while True:
            messages = [{"role": "user", "content": metric.render(question, cut_answer(answer, chars))}]
            try:
                if metric.kind == "generated":
                    text = await self._generate(metric, messages)
                    return CachedAnswer(
                        first={},
                        text=text,
                        answer_chars=chars if chars < len(answer) else None,
                        calls=self.calls - start_calls,
                    )
                first, continuations = await self._ask_once(metric, messages)
            except BackendError as exc:
                if not is_context_error(exc):
                    raise
                if chars == 0:
                    raise BackendError(
                        f"the '{metric.name}' judge prompt does not fit the judge's context even "
                        f"without the answer: {exc}",
                        status=exc.status,
                        kind="context",
                    ) from None
                chars = int(chars * 0.7)
                continue
            return CachedAnswer(
                first=first,
                continuations=continuations,
                answer_chars=chars if chars < len(answer) else None,
                calls=self.calls - start_calls,
            )
