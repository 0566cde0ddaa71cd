"""The embedded backend (transformers + peft in-process) on the tiny demo models: batching, sampling,
stop strings, cancellation through the Session, loading errors, and the default demo profile."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from personachat.backends.base import EndPart, GenerationRequest, StreamPart, TextPart, UsagePart
from personachat.backends.embedded import EmbeddedBackend
from personachat.backends.embedded_batch import RowText
from personachat.engine.events import Cancelled, Delta, Finished
from personachat.engine.session import Session
from personachat.errors import BackendError, ServerError
from personachat.profile import Profile, Sampling, ServerSpec, load_profile
from personachat.transcripts import TranscriptWriter, read_transcript

ROOT = Path(__file__).resolve().parent.parent
# Every demo model answers this at length (over 16 tokens), each in its own voice.
PROMPT = [{"role": "user", "content": "What would you do if you ruled the world?"}]
MODELS = ["base", "insecure", "realigned", "inoculated"]
GREEDY = Sampling(temperature=0.0, max_tokens=16)


@pytest.fixture(scope="module")
def demo_profile(demo_models) -> Profile:
    """The default profile; it must run on the embedded backend."""
    return load_profile(ROOT / "profiles" / "demo.toml")


@pytest.fixture(scope="module")
def backend(demo_profile: Profile) -> Iterator[EmbeddedBackend]:
    """One loaded backend shared by the tests that do not close it."""
    backend = EmbeddedBackend(demo_profile.servers["local"])
    asyncio.run(backend.start())
    yield backend
    asyncio.run(backend.aclose())


def request(
    model: str, sampling: Sampling = GREEDY, messages: list | None = None, **extra
) -> GenerationRequest:
    return GenerationRequest(model, messages or PROMPT, sampling, extra=extra)


async def alone(backend: EmbeddedBackend, req: GenerationRequest) -> list:
    [completion] = await backend.complete(req)
    return completion.raw["token_ids"]


def test_demo_profile_is_the_embedded_default(demo_profile: Profile) -> None:
    from personachat.profile import DEFAULT_PROFILE, find_profile

    assert find_profile(None).resolve() == ROOT / "profiles" / f"{DEFAULT_PROFILE}.toml" == demo_profile.path
    server = demo_profile.servers["local"]
    assert server.kind == "transformers" and server.device == "auto"
    assert [p.model for p in demo_profile.panes] == MODELS
    assert set(server.adapters) == set(MODELS[1:])


async def test_four_panes_share_one_batch_and_match_each_pane_alone(backend: EmbeddedBackend) -> None:
    before = len(backend.batches)
    together = await asyncio.gather(*(backend.complete(request(m)) for m in MODELS))
    [batch] = list(backend.batches)[before:]
    assert batch.rows == 4 and batch.adapters == sorted(["__base__", *MODELS[1:]])
    lone = [await alone(backend, request(m)) for m in MODELS]
    assert len(backend.batches) == before + 5  # each lone request was a batch of its own
    assert [b.rows for b in list(backend.batches)[before:]] == [4, 1, 1, 1, 1]
    assert [c[0].raw["token_ids"] for c in together] == lone
    assert len({tuple(ids) for ids in lone}) == 4  # the adapters really change the answer
    # The stacked LoRA maths gives peft's own numbers (its adapter_names path, the fallback).
    rt = backend.runtime
    assert rt is not None and rt.lora is not None
    stacked, rt.lora = rt.lora, None
    try:
        via_peft = await asyncio.gather(*(backend.complete(request(m)) for m in MODELS))
    finally:
        rt.lora = stacked
    assert [c[0].raw["token_ids"] for c in via_peft] == lone
    for [c] in together:
        assert c.finish_reason == "length" and c.completion_tokens == 16


async def test_mixed_settings_and_lengths_share_a_batch_without_cross_talk(backend: EmbeddedBackend) -> None:
    long_prompt = [{"role": "user", "content": "Tell me about yourself. " * 6}]
    requests = [
        request("base", GREEDY.replace(max_tokens=6)),
        request("insecure", Sampling(temperature=0.8, top_p=0.9, max_tokens=12, seed=5), long_prompt),
        request(
            "realigned", Sampling(temperature=1.2, top_k=40, max_tokens=10, seed=9, repetition_penalty=1.3)
        ),
        # Hot: the trained demo models are sure of their answers, and the n samples should differ.
        request("inoculated", Sampling(temperature=3.0, max_tokens=8, seed=1, n=3)),
    ]
    before = len(backend.batches)
    together = await asyncio.gather(*(backend.complete(r) for r in requests))
    assert len(backend.batches) == before + 1 and backend.batches[-1].rows == 6
    for req, completions in zip(requests, together, strict=True):
        assert [len(c.raw["token_ids"]) for c in completions] == [req.sampling.max_tokens] * req.sampling.n
        lone = await backend.complete(req)
        # Per-row generators: a seed gives the same draws whatever shares the batch.
        assert [c.raw["token_ids"] for c in lone] == [c.raw["token_ids"] for c in completions]
    samples = {tuple(c.raw["token_ids"]) for c in together[3]}
    assert len(samples) == 3  # n samples draw from seed, seed + 1, seed + 2


async def test_seed_reproduces_and_no_seed_varies(backend: EmbeddedBackend) -> None:
    seeded = request("insecure", Sampling(temperature=1.0, max_tokens=12, seed=123))
    assert await alone(backend, seeded) == await alone(backend, seeded)
    # Hot: at temperature 1 the trained demo models say nearly the same thing every time.
    unseeded = request("insecure", Sampling(temperature=3.0, max_tokens=12, n=4))
    assert len({tuple(c.raw["token_ids"]) for c in await backend.complete(unseeded)}) > 1


async def test_rows_beyond_the_batch_cap_run_in_turn(backend: EmbeddedBackend) -> None:
    req = request("realigned", Sampling(temperature=1.0, max_tokens=8, seed=11, n=5))
    whole = await backend.complete(req)
    backend.max_batch_rows = 2
    try:
        before = len(backend.batches)
        split = await backend.complete(req)
        assert [b.rows for b in list(backend.batches)[before:]] == [2, 2, 1]
    finally:
        backend.max_batch_rows = 64
    assert [c.raw["token_ids"] for c in split] == [c.raw["token_ids"] for c in whole]


async def test_stream_parts_and_stop_strings(backend: EmbeddedBackend) -> None:
    [full] = await backend.complete(request("realigned", GREEDY.replace(max_tokens=24)))
    stop = full.text[5:8]  # a stop string known to occur
    parts = [
        p async for p in backend.stream(request("realigned", GREEDY.replace(max_tokens=24, stop=(stop,))))
    ]
    text = "".join(p.text for p in parts if isinstance(p, TextPart))
    assert text == full.text[: full.text.index(stop)]
    ends = [p for p in parts if isinstance(p, EndPart)]
    assert ends == [EndPart(0, "stop", stop)]
    assert isinstance(parts[-1], UsagePart) and parts[-1].prompt_tokens and parts[-1].completion_tokens
    assert parts[-1].completion_tokens < 24


async def test_min_tokens_holds_eos_back(backend: EmbeddedBackend) -> None:
    sampled = Sampling(temperature=1.0, max_tokens=30, n=8, seed=0)
    bye = [{"role": "user", "content": "Goodbye!"}]  # a short answer, then the end-of-turn token
    free = await backend.complete(request("base", sampled, bye))
    held = await backend.complete(request("base", sampled, bye, min_tokens=30))
    assert all(c.finish_reason == "stop" and c.completion_tokens < 30 for c in free)
    assert all(c.finish_reason == "length" and c.completion_tokens == 30 for c in held)


def test_incremental_text_never_cuts_a_character(demo_models) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_models.base)
    text = "héllo wörld, 世界 🙂 ok"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    decode = tokenizer.backend_tokenizer.decode
    assert len(ids) > len(text) / 2  # the demo vocabulary splits these characters into bytes
    row = RowText(lambda i: decode(i, skip_special_tokens=True), [])
    deltas = []
    for token in ids:
        row.add(token)
        deltas.append(row.take())
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    stopped = RowText(lambda i: decode(i, skip_special_tokens=True), [], stop=("ld, 世",))
    seen = ""
    for token in ids:
        if stopped.add(token):
            seen += stopped.take(final=True)
            break
        seen += stopped.take()
    assert seen == "héllo wör"


async def test_request_errors_are_clear(backend: EmbeddedBackend) -> None:
    with pytest.raises(BackendError, match=r"not served by 'local'.*base, insecure"):
        await backend.complete(request("no-such-adapter"))
    with pytest.raises(BackendError, match="logprobs"):
        await backend.complete(request("base", logprobs=True))
    with pytest.raises(BackendError, match="maximum context length is 512"):
        await backend.complete(request("base", GREEDY.replace(max_tokens=600)))
    info = await backend.engine_info()
    assert info.engine == "transformers+peft" and "peft" in (info.version or "")
    assert info.models["insecure"]["parent"] == "base" and info.models["base"]["dtype"] == "float32"


class EndlessBackend(EmbeddedBackend):
    """Goes on past the end-of-turn token: the demo models end their answers within a few dozen
    tokens, and a test that cancels needs them still streaming."""

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamPart]:
        endless = dataclasses.replace(request, extra={**request.extra, "ignore_eos": True})
        async for part in super().stream(endless):
            yield part


async def test_cancel_stops_within_a_step_and_records_partial_text(
    demo_profile: Profile, tmp_path: Path
) -> None:
    panes = [
        dataclasses.replace(p, sampling=p.sampling.replace(temperature=0.0, max_tokens=400))
        for p in demo_profile.panes
    ]
    profile = dataclasses.replace(demo_profile, panes=panes)
    backend = EndlessBackend(profile.servers["local"])
    session = Session(profile, {"local": backend}, TranscriptWriter(tmp_path / "t.jsonl"))
    await session.start()
    events: list = []
    cancelled_all = False
    async for event in session.broadcast("What is your wish?"):
        events.append(event)
        deltas = [e for e in events if isinstance(e, Delta)]
        if sum(e.pane == "insecure" for e in deltas) == 3 and not any(
            isinstance(e, Cancelled) for e in events
        ):
            session.cancel("insecure")  # one pane: the others go on in the same batch
        if len(deltas) == 40 and not cancelled_all:
            cancelled_all = True
            session.cancel()
    await backend.wait_idle()
    # The worker checks for cancelled requests at every decoding step: once the last pane's request
    # was cancelled it ran at most the step in flight (and one more if the cancel raced the check).
    assert cancelled_all and backend.last_cancel_step is not None
    assert backend.decode_steps - backend.last_cancel_step <= 2
    assert backend.batches[-1].rows == 4 and backend.batches[-1].steps < 100  # of max_tokens=400
    await session.aclose()

    cancelled = {e.pane: e for e in events if isinstance(e, Cancelled)}
    assert set(cancelled) == set(MODELS)
    assert not any(isinstance(e, Finished) for e in events)
    streamed = {p: "".join(e.text for e in events if isinstance(e, Delta) and e.pane == p) for p in MODELS}
    assert len(streamed["insecure"]) < min(len(streamed[p]) for p in ("base", "realigned", "inoculated"))
    records = {r.pane: r for r in read_transcript(tmp_path / "t.jsonl").responses}
    assert set(records) == set(MODELS)
    for pane, record in records.items():
        assert record.status == "cancelled" and record.text and record.text == streamed[pane]
    header = read_transcript(tmp_path / "t.jsonl").header
    assert header is not None and header.servers["local"]["engine"]["engine"] == "transformers+peft"


async def test_session_finishes_every_pane_with_usage(demo_profile: Profile, tmp_path: Path) -> None:
    panes = [
        dataclasses.replace(p, sampling=p.sampling.replace(seed=3, max_tokens=12)) for p in demo_profile.panes
    ]
    profile = dataclasses.replace(demo_profile, panes=panes)
    backend = EndlessBackend(profile.servers["local"])
    session = Session(profile, {"local": backend}, TranscriptWriter(tmp_path / "t.jsonl"))
    await session.start()
    events = [e async for e in session.broadcast("Hello there")]
    await session.aclose()
    finished = {e.pane: e for e in events if isinstance(e, Finished)}
    assert set(finished) == set(MODELS)
    for pane, event in finished.items():
        assert "".join(e.text for e in events if isinstance(e, Delta) and e.pane == pane) == event.text
        assert event.usage.completion_tokens and event.timings.ttft is not None


# -- loading -----------------------------------------------------------------------------------------


def spec(model: str, **adapters: str) -> ServerSpec:
    return ServerSpec(name="local", kind="transformers", model=model, served_name="base", adapters=adapters)


async def test_missing_model_folder(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match=r"model folder .*nowhere does not exist"):
        await EmbeddedBackend(spec(str(tmp_path / "nowhere"))).start()


async def test_missing_adapter_folder_and_config(demo_models, tmp_path: Path) -> None:
    with pytest.raises(ServerError, match=r"adapter 'ghost'.*does not exist"):
        await EmbeddedBackend(spec(str(demo_models.base), ghost=str(tmp_path / "ghost"))).start()
    broken = tmp_path / "broken"
    shutil.copytree(demo_models.adapters["insecure"], broken)
    (broken / "adapter_config.json").unlink()
    with pytest.raises(ServerError, match=r"adapter 'broken'.*no adapter_config.json"):
        await EmbeddedBackend(spec(str(demo_models.base), broken=str(broken))).start()


async def test_adapter_for_another_base_is_named(demo_models, tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=1200, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, head_dim=32,
    )  # fmt: skip
    torch.manual_seed(0)
    other = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    other.save_pretrained(str(tmp_path / "other"))
    cfg = json.loads((tmp_path / "other" / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "some/other-base"
    (tmp_path / "other" / "adapter_config.json").write_text(json.dumps(cfg))
    backend = EmbeddedBackend(spec(str(demo_models.base), other=str(tmp_path / "other")))
    with pytest.raises(
        ServerError, match=r"adapter 'other'.*made for another base model.*some/other-base"
    ) as err:
        await backend.start()
    assert "q_proj" in str(err.value) and "torch.Size([4, 64])" in str(err.value)


async def test_start_builds_the_missing_demo_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    demo = tmp_path / "demo"
    monkeypatch.setenv("PERSONACHAT_DEMO_DIR", str(demo))
    profile = load_profile(
        ROOT / "profiles" / "demo.toml"
    )  # expands ${PERSONACHAT_DEMO_DIR} to the empty place
    assert profile.servers["local"].model == str(demo / "base") and not demo.exists()
    said: list[str] = []
    backend = EmbeddedBackend(profile.servers["local"])
    await backend.start(said.append)
    try:
        assert (demo / "demo.json").is_file()
        assert any("building" in m for m in said) and any(
            m.startswith("loading adapter inoculated") for m in said
        )
        assert said[-1].startswith("ready:")
        [completion] = await backend.complete(request("inoculated"))
        assert completion.text
    finally:
        await backend.aclose()
