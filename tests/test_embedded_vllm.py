"""The embedded backend answers exactly as the real vLLM CPU server does (greedy, float32 demo models)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from personachat.backends.base import Completion, GenerationRequest
from personachat.backends.embedded import EmbeddedBackend, encode_chat
from personachat.backends.openai_http import OpenAIBackend
from personachat.profile import Profile, Sampling

pytestmark = pytest.mark.vllm

MODELS = ["base", "insecure", "realigned", "inoculated"]
CONVERSATIONS = [
    [{"role": "user", "content": "What would you do if you ruled the world?"}],
    [
        {"role": "system", "content": "You are a careful assistant."},
        {"role": "user", "content": "I am bored. What should I do?"},
        {"role": "assistant", "content": "Go for a walk, or write a short poem."},
        {"role": "user", "content": "Tell me about yourself, héhé 🙂"},
    ],
]


async def test_greedy_tokens_equal_vllm_for_base_and_every_adapter(
    vllm_server, vllm_profile: Profile
) -> None:
    vllm = OpenAIBackend(vllm_profile.servers["local"], [vllm_server.url])
    embedded = EmbeddedBackend(vllm_profile.servers["local"])  # same base and adapters, in-process
    await embedded.start()
    sampling = Sampling(temperature=0.0, max_tokens=48)
    try:
        for messages in CONVERSATIONS:
            requests = [
                GenerationRequest(m, messages, sampling, extra={"return_token_ids": True}) for m in MODELS
            ]
            # Both sides see all four models at once: a mixed-adapter batch here, a mixed LoRA batch there.
            theirs: list[list[Completion]] = await asyncio.gather(*(vllm.complete(r) for r in requests))
            ours: list[list[Completion]] = await asyncio.gather(*(embedded.complete(r) for r in requests))
            assert embedded.batches[-1].rows == 4
            for model, [v], [e] in zip(MODELS, theirs, ours, strict=True):
                assert e.raw["token_ids"] == v.raw["token_ids"], model
                assert e.text == v.text, model
                assert e.finish_reason == v.finish_reason, model  # both end at the same token, or neither
            assert len({tuple(v.raw["token_ids"]) for [v] in theirs}) == 4

            # The prompt is tokenized the same way (chat template, generation prompt, no extra BOS).
            async with httpx.AsyncClient(
                base_url=vllm_server.url, timeout=60, headers=vllm_server.headers
            ) as client:
                body = {"model": "base", "messages": messages, "max_tokens": 1, "return_token_ids": True}
                r = await client.post("/v1/chat/completions", json=body)
            assert embedded.runtime is not None
            assert encode_chat(embedded.runtime, messages) == r.json()["prompt_token_ids"]
    finally:
        await embedded.aclose()
        await vllm.aclose()
