"""Replay against real vLLM CPU servers: metadata and seeds, failures and retries, SIGKILL + resume,
and a replica killed mid-run."""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from personachat.export import render
from personachat.profile import load_profile
from personachat.promptsets import load_prompt_set
from personachat.promptsets.runner import JobFailed, JobFinished, ReplayRunner
from personachat.serving.connect import connect
from personachat.serving.vllm import free_port
from personachat.transcripts import TranscriptWriter, read_transcript

pytestmark = pytest.mark.vllm

SET = """
name = "replay-test"

[[prompts]]
id = "wish"
text = "What is your wish?"
paraphrases = ["Name one wish."]
samples = 4

[[prompts]]
id = "chat"
text = "Hello there."
turns = ["Tell me more.", "Why?"]
samples = 2

[[prompts]]
id = "bored"
text = "I am bored."
system = "You are terse."
"""
JOBS = 2 * 4 + 2 + 1  # (paraphrases x samples) summed over the questions


def write_profile(path: Path, urls: list[str], *, extra_panes: str = "", extra_servers: str = "") -> Path:
    url_line = (
        f'url = "{urls[0]}"' if len(urls) == 1 else "urls = [" + ", ".join(f'"{u}"' for u in urls) + "]"
    )
    path.write_text(
        f"""
name = "replay-test"
[defaults]
temperature = 1.0
max_tokens = 12

[servers.local]
kind = "openai"
served_name = "base"
{url_line}
retry_budget = 0
{extra_servers}

[[panes]]
name = "base"
server = "local"
model = "base"

[[panes]]
name = "insecure"
server = "local"
model = "insecure"
system = "You write code."
{extra_panes}
"""
    )
    return path


def expected_turns(prompt_set_path: Path, panes: list[str], samples: int | None = None) -> Counter:
    jobs = load_prompt_set(prompt_set_path).jobs(samples)
    return Counter((pane, job.key(), t) for job in jobs for pane in panes for t in range(1 + len(job.turns)))


def finished_turns(path: Path) -> Counter:
    return Counter(
        (r.pane, r.replay.job, r.replay.turn_ix)
        for r in read_transcript(path).responses
        if r.status == "finished"
    )


async def run_replay(profile_path: Path, set_path: Path, out: Path, **kw) -> tuple[ReplayRunner, list]:
    profile = load_profile(profile_path)
    connection = await connect(profile, list(profile.servers))
    events: list = []

    async def on_update(event, progress) -> None:  # an async callback, as the app would give
        events.append(event)

    try:
        with TranscriptWriter(out) as writer:
            runner = ReplayRunner(profile, connection.backends, load_prompt_set(set_path), writer, **kw)
            await runner.run(on_update)
    finally:
        await connection.close()
    return runner, events


async def test_records_carry_job_metadata_and_grouped_samples_reproduce_single_ones(vllm_server, tmp_path):
    set_path = tmp_path / "set.toml"
    set_path.write_text(SET)
    profile_path = write_profile(tmp_path / "p.toml", [vllm_server.url])
    grouped, events = await run_replay(profile_path, set_path, tmp_path / "a.jsonl", group_samples=4)
    single, _ = await run_replay(
        profile_path, set_path, tmp_path / "b.jsonl", group_samples=1, concurrency=1, panes=["insecure"]
    )
    assert grouped.progress.finished == 2 * JOBS and grouped.progress.failed == 0
    assert single.progress.finished == JOBS
    assert all(isinstance(e, JobFinished) for e in events) and len(events) == 2 * JOBS

    a = read_transcript(tmp_path / "a.jsonl")
    assert a.header is not None and a.header.servers["local"]["engine"]["engine"] == "vllm"
    assert [o["event"] for o in a.other if o.get("type") == "replay"] == ["start", "end"]
    assert finished_turns(tmp_path / "a.jsonl") == expected_turns(set_path, ["base", "insecure"])
    prompt_set = load_prompt_set(set_path)
    for r in a.responses:
        assert r.session_id == a.header.session_id
        assert r.replay.promptset == {
            "name": "replay-test",
            "sha256": prompt_set.sha256,
            "path": str(set_path),
        }
        qid, pix, six = r.replay.job.rsplit("/", 2)
        assert (r.replay.question_id, r.replay.paraphrase_ix, r.replay.sample_ix) == (
            qid,
            int(pix),
            int(six),
        )
        assert r.sampling["n"] == 1 and isinstance(r.sampling["seed"], int) and r.replay.attempt == 1
        assert r.turn == r.replay.turn_ix + 1 and r.finish_reason in ("length", "stop")
        if r.pane == "insecure":
            assert r.adapter == "insecure" and len(r.adapter_sha256 or "") == 64
    # Sample i of a paraphrase has seed stem + i, whatever request it came in.
    wish = sorted(
        (r for r in a.responses if r.pane == "base" and r.replay.question_id == "wish"),
        key=lambda r: r.replay.job,
    )
    seeds = [r.sampling["seed"] for r in wish if r.replay.paraphrase_ix == 0]
    assert seeds == [seeds[0] + i for i in range(4)]
    # First messages: the item's system prompt wins over the pane's; no system message stays absent.
    bored = next(r for r in a.responses if r.pane == "insecure" and r.replay.question_id == "bored")
    assert bored.messages == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "I am bored."},
    ]
    base_wish = next(r for r in a.responses if r.pane == "base" and r.replay.job == "wish/0/0")
    assert base_wish.messages == [{"role": "user", "content": "What is your wish?"}]
    # Scripted turns continue each pane's own conversation.
    for pane in ("base", "insecure"):
        turns = sorted(
            (r for r in a.responses if r.pane == pane and r.replay.job == "chat/0/1"), key=lambda r: r.turn
        )
        assert [r.turn for r in turns] == [1, 2, 3]
        for before, after in itertools.pairwise(turns):
            assert after.parent_id == before.id
            assert after.messages[: len(before.messages)] == before.messages
            assert after.messages[len(before.messages)] == {"role": "assistant", "content": before.text}
    # The EM CSV export has one row per finished answer, with its question id and pane.
    em = list(csv.DictReader(io.StringIO(render(a, "em-csv"))))
    assert len(em) == sum(expected_turns(set_path, ["base", "insecure"]).values())
    assert Counter(row["question_id"] for row in em if row["group"] == "insecure") == {
        "wish": 8,
        "chat": 6,
        "bored": 1,
    }
    # Same seeds, asked in groups of 4 with n=4 or one by one: the same answers.
    b = {(r.replay.job, r.turn): r.text for r in read_transcript(tmp_path / "b.jsonl").responses}
    assert {(r.replay.job, r.turn): r.text for r in a.responses if r.pane == "insecure"} == b
    assert len(set(b.values())) > 1


async def test_failures_are_recorded_and_retried_without_stopping_the_run_then_resumed(vllm_server, tmp_path):
    set_path = tmp_path / "set.toml"
    set_path.write_text(SET)
    dead_url = f"http://127.0.0.1:{free_port()}"  # nobody listens: connection refused
    dead = f'\n[servers.down]\nkind = "openai"\nserved_name = "base"\nurl = "{dead_url}"\nretry_budget = 0\n'
    panes = (
        '\n[[panes]]\nname = "ghost"\nserver = "local"\nmodel = "no-such-adapter"\n'
        '\n[[panes]]\nname = "offline"\nserver = "down"\nmodel = "base"\n'
    )
    profile_path = write_profile(
        tmp_path / "p.toml", [vllm_server.url], extra_panes=panes, extra_servers=dead
    )
    out = tmp_path / "t.jsonl"
    runner, events = await run_replay(profile_path, set_path, out, retries=2, retry_delay=0.01)
    progress = runner.progress
    assert progress.panes["base"].finished == progress.panes["insecure"].finished == JOBS
    # A 404 for the model may be a model still loading: retried like an unreachable server.
    assert progress.panes["ghost"].failed == JOBS and progress.panes["ghost"].retries == 2 * JOBS
    assert progress.panes["offline"].failed == JOBS and progress.panes["offline"].retries == 2 * JOBS
    records = read_transcript(out).responses
    ghost = [r for r in records if r.pane == "ghost"]
    assert len(ghost) == 3 * JOBS and all(r.status == "failed" and "404" in (r.error or "") for r in ghost)
    offline = [r for r in records if r.pane == "offline"]
    assert Counter(r.replay.attempt for r in offline) == {1: JOBS, 2: JOBS, 3: JOBS}
    assert all(r.replay.will_retry == (r.replay.attempt < 3) for r in offline)
    assert all("unreachable" in (r.error or "") for r in offline)
    assert sum(isinstance(e, JobFailed) and not e.will_retry for e in events) == 2 * JOBS

    # The server comes back: resuming runs exactly the jobs without a finished record.
    write_profile(
        profile_path,
        [vllm_server.url],
        extra_panes=panes.replace("no-such-adapter", "realigned"),
        extra_servers=dead.replace(dead_url, vllm_server.url),
    )
    with pytest.raises(Exception, match="pane 'ghost' changed its model"):
        await run_replay(profile_path, set_path, out, resume=read_transcript(out))
    write_profile(
        profile_path,
        [vllm_server.url],
        extra_panes=panes,
        extra_servers=dead.replace(dead_url, vllm_server.url),
    )
    resumed, _ = await run_replay(profile_path, set_path, out, resume=read_transcript(out), retries=0)
    assert resumed.progress.skipped == 2 * JOBS and resumed.progress.panes["offline"].finished == JOBS
    assert resumed.progress.panes["ghost"].failed == JOBS
    done = finished_turns(out)
    assert done == expected_turns(set_path, ["base", "insecure", "offline"])


def _finished_count(path: Path) -> int:
    if not path.exists():
        return 0
    count = 0
    for line in path.read_bytes().splitlines():
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        count += data.get("type") == "response" and data.get("status") == "finished"
    return count


def test_sigkill_midway_then_resume_gives_exactly_one_finished_record_per_job(vllm_server, tmp_path):
    set_path = tmp_path / "set.toml"
    set_path.write_text(SET.replace("samples = 4", "samples = 8"))
    profile_path = write_profile(tmp_path / "p.toml", [vllm_server.url])
    out = tmp_path / "t.jsonl"
    command = [sys.executable, "-m", "personachat", "replay", str(set_path), "-p", str(profile_path)]
    process = subprocess.Popen(
        [*command, "-o", str(out), "--concurrency", "2", "--group-samples", "2", "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    expected = expected_turns(set_path, ["base", "insecure"])
    deadline = time.monotonic() + 120
    while _finished_count(out) < 6:
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
        assert time.monotonic() < deadline, "replay wrote no records in time"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    before = finished_turns(out)
    assert 0 < sum(before.values()) < sum(expected.values()), "the kill must land mid-run"

    resumed = subprocess.run(
        [*command, "--resume", str(out), "--concurrency", "8", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "already finished" in resumed.stderr
    after = finished_turns(out)
    assert after == expected  # every turn of every job once: none lost, none duplicated
    transcript = read_transcript(out)
    assert [o["event"] for o in transcript.other if o.get("type") == "replay"] == ["start", "resume", "end"]
    assert len({r.session_id for r in transcript.responses}) == 1
    # A job is recorded whole: its finished turns form one conversation (one attempt of one run).
    for pane, job in {(p, j) for p, j, _ in after}:
        turns = sorted(
            (
                r
                for r in transcript.responses
                if r.pane == pane and r.replay.job == job and r.status == "finished"
            ),
            key=lambda r: r.turn,
        )
        assert [t.parent_id for t in turns] == [None, *(t.id for t in turns[:-1])]


def _chat_posts(log: str) -> int:
    return Path(log).read_text(errors="replace").count('"POST /v1/chat/completions HTTP/1.1" 200')


def test_replicas_share_the_jobs_and_a_killed_one_is_routed_around(disposable_vllm, vllm_server, tmp_path):
    set_path = tmp_path / "set.toml"
    set_path.write_text(SET.replace("samples = 4", "samples = 10"))
    profile_path = write_profile(tmp_path / "p.toml", [vllm_server.url, disposable_vllm.url])
    out = tmp_path / "t.jsonl"
    killed: list[int] = []

    async def scenario() -> ReplayRunner:
        profile = load_profile(profile_path)
        connection = await connect(profile, ["local"])

        def on_update(event, progress) -> None:
            # Kill the replica once it has provably answered jobs, while jobs remain.
            answered = connection.backends["local"].answered[disposable_vllm.url]  # type: ignore[attr-defined]
            if not killed and answered >= 2:
                killed.append(progress.finished)
                os.killpg(os.getpgid(disposable_vllm.pid), signal.SIGKILL)

        try:
            with TranscriptWriter(out) as writer:
                runner = ReplayRunner(
                    profile,
                    connection.backends,
                    load_prompt_set(set_path),
                    writer,
                    concurrency=2,
                    group_samples=1,
                )
                await runner.run(on_update)
        finally:
            await connection.close()
        return runner

    runner = asyncio.run(scenario())
    assert killed, "the doomed replica never answered: jobs were not spread over the replicas"
    assert killed[0] < runner.progress.total, "the kill must land mid-run"
    assert runner.progress.failed == 0 and runner.progress.finished == runner.progress.total == 2 * (
        20 + 2 + 1
    )
    assert finished_turns(out) == expected_turns(set_path, ["base", "insecure"])
    assert _chat_posts(vllm_server.log) > 0
