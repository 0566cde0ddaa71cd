"""Replicas behind a real vllm-router: `serve` starts two vLLM CPU workers and the router, answers
go through the router unchanged, a replay survives a worker killed midway with every job finished
exactly once, and `serve --stop` leaves no process behind."""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from personachat.adapters import content_sha256
from personachat.paths import servers_dir
from personachat.profile import load_profile
from tests._helpers import idle, last_turn, make_app, ready, records, send, until

pytestmark = pytest.mark.vllm
ROOT = Path(__file__).resolve().parent.parent


def personachat(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "personachat", *args],
        capture_output=True, text=True, cwd=cwd, timeout=600, check=False,
    )  # fmt: skip


def direct_text(worker: str, key: str, record: dict[str, Any]) -> str:
    """What ``worker`` answers, asked directly, to what ``record`` says was sent."""
    response = httpx.post(
        f"{worker}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": record["model"], "messages": record["messages"], **record["sampling"]},
        timeout=60,
    )
    return str(response.json()["choices"][0]["message"]["content"])


def gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_replicas_behind_vllm_router(demo_models: Any, tmp_path: Path) -> None:
    profile = tmp_path / "router.toml"
    text = (ROOT / "profiles" / "demo-router.toml").read_text()
    profile.write_text(text.replace('router = "vllm-router"', 'router = "vllm-router"\nruntime_lora = true'))
    served = personachat("serve", str(profile), cwd=tmp_path)
    assert served.returncode == 0, served.stdout + served.stderr
    [state_file] = [p for p in servers_dir().glob("local-*.json") if "vllm-router" in p.read_text()]
    state = json.loads(state_file.read_text())
    try:
        assert len(state["workers"]) == 2 and len(state["pids"]) == 3
        assert f"ready at {state['url']} (vllm-router over" in served.stdout
        # Each worker has its own GPU, its own share of the CPU cores (vLLM's CPU build binds every
        # worker's threads to the same cores otherwise) and OpenMP threads that sleep when idle.
        environs = [dict(
            item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item
        ) for pid in state["pids"][:2]]  # fmt: skip
        assert [e["CUDA_VISIBLE_DEVICES"] for e in environs] == ["0", "1"]
        assert [e["OMP_WAIT_POLICY"] for e in environs] == ["PASSIVE", "PASSIVE"]
        cores = sorted(os.sched_getaffinity(0))
        share = len(cores) // 2
        expected = [",".join(map(str, cores[:share])), ",".join(map(str, cores[share : 2 * share]))]
        assert [e.get("VLLM_CPU_OMP_THREADS_BIND") for e in environs] == (expected if share else [None, None])

        # Through the router, an answer is the one a worker gives directly.
        asked = personachat(
            "ask", "What do you wish for?", "--profile", str(profile), "--temperature", "0", "--seed", "7",
            "--max-tokens", "12", "--json", cwd=tmp_path,
        )  # fmt: skip
        assert asked.returncode == 0, asked.stderr
        answers = {r["pane"]: r for r in map(json.loads, asked.stdout.splitlines())}
        assert {r["served_by"] for r in answers.values()} == {state["url"]}
        for pane, record in answers.items():
            assert record["text"] == direct_text(state["workers"][0], state["api_key"], record), pane

        # An adapter loaded at run time reaches every worker; attaching by URL opens a pane for it.
        realigned = demo_models.adapters["realigned"]
        loaded = personachat("load", "realigned", str(realigned), "--profile", str(profile), cwd=tmp_path)
        assert loaded.returncode == 0 and "loaded adapter 'realigned'" in loaded.stdout, loaded.stderr
        attached = personachat(
            "ask", "Any regrets?", "--url", f"{state['url']}/v1", "--temperature", "0", "--max-tokens", "12",
            "--json", cwd=tmp_path,
        )  # fmt: skip
        assert attached.returncode == 0, attached.stderr
        by_model = {r["model"]: r for r in map(json.loads, attached.stdout.splitlines())}
        assert set(by_model) == {"base", "insecure", "realigned"}
        assert by_model["realigned"]["adapter"] == "realigned"
        for worker in state["workers"]:
            assert (
                direct_text(worker, state["api_key"], by_model["realigned"]) == by_model["realigned"]["text"]
            )

        # In the app, /load opens a pane that answers and records its adapter.
        app = make_app(tmp_path, load_profile(profile))
        async with app.run_test(size=(120, 30)) as pilot:
            await ready(pilot, app)
            await send(pilot, app, f"/load inoculated {demo_models.adapters['inoculated']}")
            await until(lambda: "inoculated" in app.panes, "the new pane", seconds=120)
            await send(pilot, app, "Who are you?")
            await until(lambda: idle(app), "the answers", seconds=120)
            latest = last_turn(records(app))
        assert set(latest) == {"base", "insecure", "inoculated"}
        assert {r.status for r in latest.values()} == {"finished"}
        assert latest["inoculated"].adapter == "inoculated"
        assert latest["inoculated"].adapter_sha256 == content_sha256(demo_models.adapters["inoculated"])

        # A replay goes on when a worker dies under it; every job is finished exactly once.
        prompt_set = tmp_path / "set.jsonl"
        prompt_set.write_text(
            "".join(
                json.dumps({"id": f"q{i}", "prompt": f"Question {i}: what do you wish?"}) + "\n"
                for i in range(30)
            )
        )
        replay = subprocess.Popen(
            [
                sys.executable, "-m", "personachat", "replay", str(prompt_set), "--profile", str(profile),
                "--samples", "3", "--max-tokens", "48", "--transcripts", str(tmp_path / "r"), "--no-progress",
            ],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        deadline, done = time.monotonic() + 300, 0
        while time.monotonic() < deadline and done < 20:
            written = list((tmp_path / "r").glob("*.jsonl"))
            done = len(re.findall(r'"type":\s*"response"', written[0].read_text())) if written else 0
            time.sleep(0.05)
        os.killpg(state["pids"][1], signal.SIGKILL)
        assert 20 <= done < 30 * 3 * 2, done  # killed midway: jobs were left for the other worker
        output, _ = replay.communicate(timeout=300)
        assert replay.returncode == 0, output
        [transcript] = (tmp_path / "r").glob("*.jsonl")
        responses = [
            r for r in map(json.loads, transcript.read_text().splitlines()) if r["type"] == "response"
        ]
        finished = collections.Counter((r["pane"], r["job"]) for r in responses if r["status"] == "finished")
        assert len(finished) == 30 * 3 * 2 and set(finished.values()) == {1}
        assert [r for r in responses if r["status"] != "finished"] == []
    finally:
        stopped = personachat("serve", "--stop", str(profile), cwd=tmp_path)
    assert stopped.returncode == 0 and "stopped server 'local'" in stopped.stdout
    assert all(gone(pid) for pid in state["pids"]) and not state_file.exists()
