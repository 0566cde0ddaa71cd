"""Each answer token's log-probability under one model, by teacher forcing.

Two ways, which give the same numbers for the same weights (to 1e-3 in float32):

- :class:`VllmScorer`: ``POST /v1/completions`` with the scored sequence's text as the prompt,
  ``add_special_tokens: false`` (the chat template wrote its special tokens), ``prompt_logprobs: 0``,
  ``max_tokens: 1`` and ``return_token_ids``. vLLM answers, for every prompt position after the
  first, a dict that always holds the token actually there (``{"<id>": {"logprob", "rank",
  "decoded_token"}}``, raw log-probabilities before any sampling setting), and the ids it
  tokenised, which must be ours. On a server with LoRA enabled, requests go one at a time: vLLM
  maps LoRA onto prompt logits per request, not per token (vllm-project/vllm#16668, #51594), so a
  ``prompt_logprobs`` request batched with others crashes a CPU engine or, on a GPU, drops an
  ``lm_head`` adapter's delta; alone in its batch it is exact.
- :class:`InProcessScorer`: one forward pass of the in-process model (transformers + peft, as
  :mod:`personachat.backends.embedded_load` loads it) over right-padded rows; the log-softmax of
  the logits at position ``i - 1`` gives token ``i``. :func:`forward_logprobs` is the pass itself.

torch and httpx are imported inside the functions and classes that use them.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from personachat.errors import PersonachatError
from personachat.lens.render import ScoredSequence, tokenizer_identity
from personachat.profile import Profile, ServerSpec

BATCH_LOGIT_BYTES = 256 * 1024 * 1024  # float32 logits kept per forward pass, over all its rows
MAX_BATCH_ROWS = 16


@dataclass(frozen=True)
class ModelRef:
    """One model of a profile's server: its base (``adapter`` None) or one adapter."""

    server: str
    model: str  # the name a request gives: the served base name or the adapter name
    adapter: str | None
    engine: str  # the server's kind: vllm, openai or transformers
    path: str | None  # the base model's folder or hub id
    adapter_path: str | None = None

    @property
    def key(self) -> str:
        """What names the weights, for the cache: server, model and where the weights are."""
        return f"{self.server}|{self.model}|{self.path or ''}|{self.adapter_path or ''}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "model": self.model,
            "adapter": self.adapter,
            "engine": self.engine,
            "path": self.path,
            "adapter_path": self.adapter_path,
        }


def model_ref(profile: Profile, server_name: str, model: str) -> ModelRef:
    """The model ``model`` of server ``server_name``; a clear error when the profile has neither."""
    server = profile.servers.get(server_name)
    if server is None:
        have = ", ".join(profile.servers) or "none"
        raise PersonachatError(
            f"server '{server_name}' is not in profile '{profile.name}' (it has: {have}); give the "
            "profile the answers were made with (--profile)"
        )
    adapter = model if model in server.adapters else None
    if server.kind != "openai" and adapter is None and model != server.base_name:
        raise PersonachatError(
            f"model '{model}' is not served by server '{server_name}' (it serves: {', '.join(server.models())})"
        )
    return ModelRef(
        server=server_name,
        model=model,
        adapter=adapter,
        engine=server.kind,
        path=str(server.model) if server.model else None,
        adapter_path=server.adapters.get(model),
    )


class TokenScorer(abc.ABC):
    """Log-probabilities of answer tokens under the models of one server."""

    engine: str
    tokenizer: Any

    @functools.cached_property
    def tokenizer_identity(self) -> dict[str, Any]:
        """What tokenises for this scorer (:func:`~personachat.lens.render.tokenizer_identity`), once."""
        return tokenizer_identity(self.tokenizer)

    @abc.abstractmethod
    async def score(self, ref: ModelRef, sequences: list[ScoredSequence]) -> list[list[float]]:
        """For each sequence, the log-probability of each of its answer tokens under ``ref``."""

    async def aclose(self) -> None:  # noqa: B027
        """Release what the scorer holds (connections)."""


# ------------------------------------------------------------------------------------------------
# vLLM


class VllmScorer(TokenScorer):
    """Scores through a vLLM server's ``/v1/completions`` with ``prompt_logprobs``."""

    engine = "vllm"

    def __init__(
        self, server: ServerSpec, url: str, headers: dict[str, str], tokenizer: Any, *, concurrency: int = 8
    ):
        import httpx

        self.server = server
        self.tokenizer = tokenizer
        self._client = httpx.AsyncClient(
            base_url=url,
            headers=headers,
            timeout=httpx.Timeout(server.read_timeout, connect=server.connect_timeout),
        )
        lora = bool(server.adapters) or server.runtime_lora
        self.concurrency = 1 if lora else max(1, concurrency)  # see the module's docstring
        self._slots = asyncio.Semaphore(self.concurrency)

    async def score(self, ref: ModelRef, sequences: list[ScoredSequence]) -> list[list[float]]:
        return list(await asyncio.gather(*(self._one(ref, s) for s in sequences)))

    async def _one(self, ref: ModelRef, sequence: ScoredSequence) -> list[float]:
        import httpx

        from personachat.backends.openai_http import error_message

        if not sequence.answer_ids:
            return []
        body = {
            "model": ref.model,
            "prompt": sequence.text,
            "add_special_tokens": False,
            "prompt_logprobs": 0,
            "max_tokens": 1,
            "temperature": 0.0,
            "return_token_ids": True,
        }
        async with self._slots:
            try:
                response = await self._client.post("/v1/completions", json=body)
            except httpx.HTTPError as exc:
                raise PersonachatError(
                    f"server '{self.server.name}' ({self._client.base_url}) did not answer: {exc or type(exc).__name__}"
                ) from None
        if response.status_code != 200:
            problem = error_message(response.status_code, response.content, ref.model)
            raise PersonachatError(f"server '{self.server.name}', model '{ref.model}': {problem}")
        try:
            choice = response.json()["choices"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            raise PersonachatError(f"server '{self.server.name}' sent no completion choice") from None
        return logprobs_of_prompt(choice, sequence, f"server '{self.server.name}', model '{ref.model}'")

    async def aclose(self) -> None:
        await self._client.aclose()


def logprobs_of_prompt(choice: dict[str, Any], sequence: ScoredSequence, where: str) -> list[float]:
    """The answer tokens' log-probabilities out of a vLLM completion choice's ``prompt_logprobs``."""
    ids = choice.get("prompt_token_ids")
    if ids is not None and list(ids) != list(sequence.token_ids):
        at = next((i for i, (a, b) in enumerate(zip(ids, sequence.token_ids, strict=False)) if a != b), None)
        raise PersonachatError(
            f"{where} tokenised the scored text differently from the local tokenizer "
            f"({len(ids)} tokens against {len(sequence.token_ids)}"
            + (f", first difference at token {at}" if at is not None else "")
            + "): is it serving another tokenizer (--tokenizer)?"
        )
    entries = choice.get("prompt_logprobs")
    if not isinstance(entries, list) or len(entries) != len(sequence.token_ids):
        raise PersonachatError(f"{where} returned no prompt_logprobs for the scored text (is it vLLM?)")
    out = []
    for position in range(sequence.answer_start, len(sequence.token_ids)):
        entry = entries[position]
        token = sequence.token_ids[position]
        item = entry.get(str(token)) if isinstance(entry, dict) else None
        if not isinstance(item, dict) or not isinstance(item.get("logprob"), (int, float)):
            raise PersonachatError(f"{where} left out the log-probability of token {token} at {position}")
        out.append(float(item["logprob"]))
    return out


# ------------------------------------------------------------------------------------------------
# In-process


class InProcessScorer(TokenScorer):
    """Scores with the in-process model (a loaded :class:`~personachat.backends.embedded_batch.Runtime`).

    Calls are serialised (selecting an adapter is the model's state) and run off the event loop: on
    ``executor`` when given (the thread that generates with the same model, so that a forward pass
    never runs during a batch and its hooks), else on a thread of their own.
    """

    engine = "transformers"

    def __init__(self, runtime: Any, executor: Executor | None = None):
        self.runtime = runtime
        self.tokenizer = runtime.tokenizer
        self.executor = executor
        self._lock = asyncio.Lock()

    async def score(self, ref: ModelRef, sequences: list[ScoredSequence]) -> list[list[float]]:
        async with self._lock:
            loop = asyncio.get_running_loop()
            call = functools.partial(forward_logprobs, self.runtime, ref.adapter, sequences)
            return await loop.run_in_executor(self.executor, call)


@contextlib.contextmanager
def model_scope(runtime: Any, adapter: str | None) -> Iterator[None]:
    """The in-process model as the base (``adapter`` None) or as one of its adapters."""
    if not runtime.has_adapters:
        if adapter is not None:
            raise PersonachatError(f"adapter '{adapter}' is not loaded in this process")
        yield
    elif adapter is None:
        with runtime.model.disable_adapter():
            yield
    else:
        runtime.model.set_adapter(adapter)
        yield


def forward_logprobs(
    runtime: Any,
    adapter: str | None,
    sequences: list[ScoredSequence],
    *,
    logit_bytes: int = BATCH_LOGIT_BYTES,
) -> list[list[float]]:
    """Each sequence's answer-token log-probabilities under the base or ``adapter``: one forward pass
    per batch of right-padded rows (padding after a row's tokens cannot change them: attention is
    causal). Call it where nothing else uses the model at the same time."""
    import torch

    results: list[list[float]] = [[] for _ in sequences]
    todo = [i for i, s in enumerate(sequences) if s.answer_ids]
    limit = runtime.max_context
    for i in todo:
        if limit is not None and len(sequences[i].token_ids) > limit:
            raise PersonachatError(
                f"an answer in its context is {len(sequences[i].token_ids)} tokens, more than the "
                f"model's {limit}"
            )
    todo.sort(key=lambda i: len(sequences[i].token_ids))
    vocab = int(runtime.model.get_output_embeddings().weight.shape[0])
    for batch in _batches(todo, sequences, vocab, logit_bytes):
        rows = [sequences[i] for i in batch]
        width = max(len(s.token_ids) for s in rows)
        low = min(s.answer_start for s in rows) - 1  # the first position whose logits are needed
        ids = torch.full((len(rows), width), runtime.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, s in enumerate(rows):
            ids[r, : len(s.token_ids)] = torch.tensor(s.token_ids, dtype=torch.long)
            mask[r, : len(s.token_ids)] = 1
        keep = torch.arange(low, width - 1, device=runtime.device)
        with torch.inference_mode(), model_scope(runtime, adapter):
            logits = runtime.model(
                input_ids=ids.to(runtime.device),
                attention_mask=mask.to(runtime.device),
                logits_to_keep=keep,
                use_cache=False,
            ).logits
            for r, (i, s) in enumerate(zip(batch, rows, strict=True)):
                first, end = s.answer_start - 1 - low, len(s.token_ids) - 1 - low
                logp = torch.log_softmax(logits[r, first:end].float(), dim=-1)
                target = ids[r, s.answer_start : len(s.token_ids)].to(logp.device)
                results[i] = logp.gather(-1, target[:, None])[:, 0].tolist()
    return results


def _batches(
    order: list[int], sequences: list[ScoredSequence], vocab: int, budget: int
) -> Iterator[list[int]]:
    """Rows in ``order`` grouped so that each pass keeps at most ``budget`` bytes of logits."""
    batch: list[int] = []
    for i in order:
        grown = [*batch, i]
        span = max(len(sequences[j].token_ids) for j in grown) - min(sequences[j].answer_start for j in grown)
        if batch and (len(grown) > MAX_BATCH_ROWS or len(grown) * span * vocab * 4 > budget):
            yield batch
            grown = [i]
        batch = grown
    if batch:
        yield batch
