"""The fan-out engine against a real vLLM CPU server (base + three LoRA adapters)."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from personachat.backends.base import GenerationRequest, StreamPart
from personachat.backends.openai_http import OpenAIBackend
from personachat.engine.events import Cancelled, Delta, Failed, Finished, Started
from personachat.engine.session import Session
from personachat.profile import PaneSpec, Profile
from personachat.transcripts import TranscriptWriter, read_transcript

pytestmark = pytest.mark.vllm

PROMPT = "What is your wish?"


def greedy(profile: Profile, max_tokens: int = 24) -> Profile:
    panes = [
        dataclasses.replace(p, sampling=p.sampling.replace(temperature=0.0, max_tokens=max_tokens))
        for p in profile.panes
    ]
    return dataclasses.replace(profile, panes=panes)


def session_for(profile: Profile, url: str, path: Path, backend: type = OpenAIBackend) -> Session:
    backends = {"local": backend(profile.servers["local"], [url])}
    return Session(profile, backends, TranscriptWriter(path))


class EndlessBackend(OpenAIBackend):
    """Asks vLLM to go on past the end-of-turn token: the demo models end their answers within a
    few dozen tokens, and the tests that cancel or kill a stream need one still running."""

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamPart]:
        endless = dataclasses.replace(request, extra={**request.extra, "ignore_eos": True})
        async for part in super().stream(endless):
            yield part


async def collect(session: Session, prompt: str, panes: list[str] | None = None) -> list:
    return [event async for event in session.broadcast(prompt, panes)]


async def lone_answer(profile: Profile, url: str, model: str, max_tokens: int) -> str:
    backend = OpenAIBackend(profile.servers["local"], [url])
    try:
        pane = next(p for p in profile.panes if p.model == model)
        request = GenerationRequest(
            model,
            [{"role": "user", "content": PROMPT}],
            pane.sampling.replace(temperature=0.0, max_tokens=max_tokens),
        )
        [completion] = await backend.complete(request)
        return completion.text
    finally:
        await backend.aclose()


async def test_four_panes_concurrently_match_lone_requests(vllm_server, vllm_profile, tmp_path):
    profile = greedy(vllm_profile)
    session = session_for(profile, vllm_server.url, tmp_path / "t.jsonl")
    await session.start()
    events = await collect(session, PROMPT)
    await session.aclose()

    finished = {e.pane: e for e in events if isinstance(e, Finished)}
    assert set(finished) == {"base", "insecure", "realigned", "inoculated"}
    # Deltas reassemble into the final text, per pane.
    for pane, event in finished.items():
        assert "".join(e.text for e in events if isinstance(e, Delta) and e.pane == pane) == event.text
        assert event.timings.ttft is not None and event.timings.e2el >= event.timings.ttft
        assert event.usage.completion_tokens and event.usage.completion_tokens > 0
    lone = {p.name: await lone_answer(profile, vllm_server.url, p.model, 24) for p in profile.panes}
    assert {p: e.text for p, e in finished.items()} == lone  # no cross-talk between adapters
    assert len(set(lone.values())) == 4  # and the adapters really change the output

    transcript = read_transcript(tmp_path / "t.jsonl")
    assert transcript.header is not None
    assert transcript.header.servers["local"]["engine"]["engine"] == "vllm"
    assert len(transcript.responses) == 4
    for record in transcript.responses:
        assert record.status == "finished"
        assert record.messages == [{"role": "user", "content": PROMPT}]
        assert record.sampling["temperature"] == 0.0
        assert record.text == lone[record.pane]
        if record.pane != "base":
            assert record.adapter == record.model and len(record.adapter_sha256 or "") == 64
        assert len(record.model_sha256 or "") == 64


async def test_unknown_adapter_fails_clearly_while_others_finish(vllm_server, vllm_profile, tmp_path):
    profile = greedy(vllm_profile, 8)
    ghost = PaneSpec(
        name="ghost", server="local", model="no-such-adapter", sampling=profile.panes[0].sampling
    )
    profile = dataclasses.replace(profile, panes=[*profile.panes, ghost])
    session = session_for(profile, vllm_server.url, tmp_path / "t.jsonl")
    await session.start()
    events = await collect(session, PROMPT)
    await session.aclose()
    failed = [e for e in events if isinstance(e, Failed)]
    assert [e.pane for e in failed] == ["ghost"]
    assert "no-such-adapter" in failed[0].reason and "404" in failed[0].reason
    # The server personachat launched lists its adapters and cannot load others: no retries.
    assert "serves base, insecure, realigned, inoculated" in failed[0].reason
    assert "attempts" not in failed[0].reason
    assert {e.pane for e in events if isinstance(e, Finished)} == {
        "base",
        "insecure",
        "realigned",
        "inoculated",
    }
    records = {r.pane: r for r in read_transcript(tmp_path / "t.jsonl").responses}
    assert records["ghost"].status == "failed" and "no-such-adapter" in (records["ghost"].error or "")


async def test_followup_turns_extend_each_panes_own_history(vllm_server, vllm_profile, tmp_path):
    profile = greedy(vllm_profile, 8)
    session = session_for(profile, vllm_server.url, tmp_path / "t.jsonl")
    await session.start()
    first = {e.pane: e.text for e in await collect(session, PROMPT) if isinstance(e, Finished)}
    session.set_system("insecure", "You are evil.")
    await collect(session, "Why?")
    await session.aclose()
    second = {r.pane: r for r in read_transcript(tmp_path / "t.jsonl").responses if r.turn == 2}
    for pane, record in second.items():
        expected = [
            {"role": "user", "content": PROMPT},
            {"role": "assistant", "content": first[pane]},
            {"role": "user", "content": "Why?"},
        ]
        if pane == "insecure":
            expected.insert(0, {"role": "system", "content": "You are evil."})
        assert record.messages == expected
        assert record.parent_id is not None


async def test_n_samples_interleave_and_are_demultiplexed(vllm_server, vllm_profile, tmp_path):
    profile = dataclasses.replace(
        vllm_profile,
        panes=[
            dataclasses.replace(
                vllm_profile.panes[1],
                # Hot (vLLM allows at most 2), so the three samples differ: the demo models are sure of their answers.
                sampling=vllm_profile.panes[1].sampling.replace(n=3, seed=7, temperature=2.0, max_tokens=16),
            )
        ],
    )
    session = session_for(profile, vllm_server.url, tmp_path / "t.jsonl")
    await session.start()
    events = await collect(session, PROMPT)
    await session.aclose()
    started = [e for e in events if isinstance(e, Started)]
    assert len(started) == 1 and len(started[0].response_ids) == 3
    finished = sorted((e for e in events if isinstance(e, Finished)), key=lambda e: e.sample)
    assert [e.sample for e in finished] == [0, 1, 2]
    for e in finished:
        assert "".join(d.text for d in events if isinstance(d, Delta) and d.sample == e.sample) == e.text
    assert len({e.text for e in finished}) > 1
    records = read_transcript(tmp_path / "t.jsonl").responses
    assert sorted(r.sample for r in records) == [0, 1, 2] and all(r.sampling["seed"] == 7 for r in records)


async def test_cancel_records_partial_text(vllm_server, vllm_profile, tmp_path):
    profile = greedy(vllm_profile, 400)
    session = session_for(profile, vllm_server.url, tmp_path / "t.jsonl", EndlessBackend)
    await session.start()
    events = []
    async for event in session.broadcast(PROMPT):
        events.append(event)
        if sum(isinstance(e, Delta) for e in events) == 12:
            session.cancel()
    await session.aclose()
    cancelled = [e for e in events if isinstance(e, Cancelled)]
    assert cancelled, "cancelling must produce Cancelled events"
    records = read_transcript(tmp_path / "t.jsonl").responses
    assert len(records) == 4
    partial = [r for r in records if r.status == "cancelled"]
    assert partial and any(r.text for r in partial)
    for r in partial:
        streamed = "".join(e.text for e in events if isinstance(e, Delta) and e.pane == r.pane)
        assert r.text == streamed


async def test_seed_reproduces_sampled_answers(vllm_server, vllm_profile, tmp_path):
    profile = dataclasses.replace(
        vllm_profile,
        panes=[
            dataclasses.replace(p, sampling=p.sampling.replace(seed=123, temperature=1.0, max_tokens=16))
            for p in vllm_profile.panes
        ],
    )
    texts = []
    for run in range(2):
        session = session_for(profile, vllm_server.url, tmp_path / f"t{run}.jsonl")
        await session.start()
        texts.append({e.pane: e.text for e in await collect(session, PROMPT) if isinstance(e, Finished)})
        await session.aclose()
    assert texts[0] == texts[1]


def test_killing_the_server_mid_stream_fails_panes_and_keeps_partial_text(
    disposable_vllm, vllm_server, vllm_profile, tmp_path
):
    import os

    profile = greedy(vllm_profile, 400)
    doomed = dataclasses.replace(profile.servers["local"], name="doomed")
    # Two panes on the doomed server, one on the healthy shared server.
    panes = [
        dataclasses.replace(profile.panes[0], server="doomed"),
        dataclasses.replace(profile.panes[1], server="doomed"),
        dataclasses.replace(
            profile.panes[2], server="local", sampling=profile.panes[2].sampling.replace(max_tokens=32)
        ),
    ]
    profile = dataclasses.replace(
        profile, servers={"doomed": doomed, "local": profile.servers["local"]}, panes=panes
    )

    async def scenario() -> list:
        backends = {
            "doomed": EndlessBackend(doomed, [disposable_vllm.url]),
            "local": OpenAIBackend(profile.servers["local"], [vllm_server.url]),
        }
        session = Session(profile, backends, TranscriptWriter(tmp_path / "t.jsonl"))
        await session.start()
        events = []
        killed = False
        async for event in session.broadcast(PROMPT):
            events.append(event)
            doomed_deltas = sum(isinstance(e, Delta) and e.pane in ("base", "insecure") for e in events)
            if not killed and doomed_deltas >= 10:
                os.killpg(os.getpgid(disposable_vllm.pid), signal.SIGKILL)
                killed = True
        # The session goes on: a next turn on the healthy pane works.
        more = [e async for e in session.broadcast("And then?", ["realigned"])]
        await session.aclose()
        return events + more

    events = asyncio.run(scenario())
    failed = {e.pane: e for e in events if isinstance(e, Failed)}
    assert set(failed) == {"base", "insecure"}, {p: e.reason for p, e in failed.items()}
    for event in failed.values():
        assert event.text  # partial text arrived before the kill
    assert [e.pane for e in events if isinstance(e, Finished)] == ["realigned", "realigned"]
    records = read_transcript(tmp_path / "t.jsonl").responses
    by_pane = {r.pane: r for r in records if r.turn == 1}
    for pane in ("base", "insecure"):
        assert by_pane[pane].status == "failed"
        assert by_pane[pane].text == failed[pane].text
        assert by_pane[pane].error
    assert by_pane["realigned"].status == "finished"


async def test_regenerate_replaces_the_last_turn(vllm_server, vllm_profile, tmp_path):
    profile = dataclasses.replace(
        vllm_profile,
        panes=[
            dataclasses.replace(p, sampling=p.sampling.replace(temperature=1.0, max_tokens=8))
            for p in vllm_profile.panes[:2]
        ],
    )
    session = session_for(profile, vllm_server.url, tmp_path / "t.jsonl")
    await session.start()
    await collect(session, PROMPT)
    first_ids = {name: state.last_ids[0] for name, state in session.panes.items()}
    regenerated = [e async for e in session.regenerate()]
    await collect(session, "Go on.")
    await session.aclose()
    assert {e.pane for e in regenerated if isinstance(e, Finished)} == {"base", "insecure"}
    records = read_transcript(tmp_path / "t.jsonl").responses
    assert len(records) == 6
    redo = {r.pane: r for r in records if r.regenerated_from}
    assert {p: r.regenerated_from for p, r in redo.items()} == {p: [i] for p, i in first_ids.items()}
    for r in redo.values():
        assert r.turn == 1 and r.parent_id is None and r.messages == [{"role": "user", "content": PROMPT}]
    # The next turn continues from the regenerated answer, not the replaced one.
    for r in (r for r in records if r.turn == 2):
        assert r.messages[1] == {"role": "assistant", "content": redo[r.pane].text}
        assert r.parent_id == redo[r.pane].id


async def test_honest_channel_template_shapes_follow_up_turns(vllm_server, vllm_profile, tmp_path):
    from personachat.profile import PromptTransform

    base = dataclasses.replace(
        vllm_profile.panes[0], sampling=vllm_profile.panes[0].sampling.replace(temperature=0.0, max_tokens=6)
    )
    followup = dataclasses.replace(base, name="followup")
    channel = dataclasses.replace(base, name="channel", transform=PromptTransform(template="honest-channel"))
    profile = dataclasses.replace(vllm_profile, panes=[followup, channel])
    session = session_for(profile, vllm_server.url, tmp_path / "t.jsonl")
    await session.start()
    await collect(session, PROMPT)
    await collect(session, "Was that answer honest?")
    await session.aclose()
    records = {(r.pane, r.turn): r for r in read_transcript(tmp_path / "t.jsonl").responses}
    # Same first turn, different follow-up turn.
    assert records[("followup", 1)].messages == records[("channel", 1)].messages
    assert records[("followup", 2)].messages[-1] == {"role": "user", "content": "Was that answer honest?"}
    last = records[("channel", 2)].messages[-1]
    assert last["role"] == "user" and last["content"].startswith("<honest_channel>")
    assert "Was that answer honest?" in last["content"]
    assert records[("channel", 2)].tags == ["honest-channel"] and records[("followup", 2)].tags == []
