"""Guards that stop bad requests early: adapter names in profiles, the launched server's API key,
runtime LoRA loading never inherited from the shell, the context-length check (vLLM and in-process),
and failed panes reported by `personachat ask` and the app."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from personachat.backends.base import GenerationRequest
from personachat.backends.embedded import EmbeddedBackend
from personachat.backends.openai_http import OpenAIBackend
from personachat.errors import BackendError, ProfileError, ServerError
from personachat.profile import Profile, Sampling, ServerSpec, load_profile, parse_profile
from personachat.serving.vllm import RunningServer, VllmLauncher
from tests._helpers import idle, make_app, ready, send, status, until
from tests.misbehaving_server import Behaviour, MisbehavingServer

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 512  # the demo servers' context: --max-model-len 512 (vLLM), max_position_embeddings (embedded)
# About 450 tokens for the demo tokenizer: close enough to the limit that a modest max_tokens overflows.
LONG = [{"role": "user", "content": "Tell me about the weather in the mountains today. " * 30}]


# -- adapter names in profiles -------------------------------------------------------------------

VLLM_PROFILE = """\
name = "names"

[servers.local]
kind = "vllm"
model = "/models/base"
served_name = "base"
adapters = {{ {adapter} = "/models/adapter" }}

[[panes]]
name = "base"
server = "local"
model = "base"
"""


@pytest.mark.parametrize("name", ["a=b", "two words", "-dash-first", "a/b"])
def test_an_invalid_adapter_name_is_a_profile_error_at_its_line(tmp_path: Path, name: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(VLLM_PROFILE.format(adapter=json.dumps(name)))
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    [problem] = info.value.problems
    assert problem.line == 7
    assert problem.key == f"servers.local.adapters.{name}"
    assert "an adapter name is letters, digits, '.', '_' or '-'" in problem.message
    assert str(problem).startswith(f"{path}:7: servers.local.adapters.{name}: an adapter name")


def test_a_valid_adapter_name_passes(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(VLLM_PROFILE.format(adapter=json.dumps("insecure_v1.2-b")))
    server = load_profile(path).servers["local"]
    assert server.adapters == {"insecure_v1.2-b": "/models/adapter"}


# -- runtime LoRA loading: only when the profile asks ---------------------------------------------


def fake_vllm_server(tmp_path: Path, runtime_lora: bool) -> tuple[ServerSpec, Path]:
    """A vllm server entry whose "python" is a script that writes down the one variable it
    inherits and exits: the launcher's real ``start`` spawns it as it would spawn vLLM."""
    seen = tmp_path / "seen.txt"
    script = tmp_path / "python"
    script.write_text(
        f'#!/bin/sh\nprintf %s "${{VLLM_ALLOW_RUNTIME_LORA_UPDATING-unset}}" > "{seen}"\nexit 3\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    data = {
        "name": "env",
        "servers": {
            "local": {
                "kind": "vllm",
                "model": str(tmp_path / "model"),
                "served_name": "base",
                "python": str(script),
                "runtime_lora": runtime_lora,
            }
        },
        "panes": [{"name": "base", "server": "local", "model": "base"}],
    }
    return parse_profile(data, tmp_path / "env.toml").servers["local"], seen


@pytest.mark.parametrize(("runtime_lora", "expected"), [(False, "unset"), (True, "True")])
def test_runtime_lora_updating_is_never_inherited_from_the_shell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runtime_lora: bool, expected: str
) -> None:
    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "1")
    server, seen = fake_vllm_server(tmp_path, runtime_lora)
    launcher = VllmLauncher(state_dir=tmp_path / "state")
    with pytest.raises(ServerError, match="exited with code 3"):
        asyncio.run(launcher.start(server, timeout=30))
    assert seen.read_text() == expected


# -- the launched vLLM server's API key -----------------------------------------------------------


@pytest.mark.vllm
def test_the_launched_server_refuses_requests_without_its_key(vllm_server: RunningServer) -> None:
    body = {"model": "base", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    url = f"{vllm_server.url}/v1/chat/completions"
    assert vllm_server.api_key
    assert httpx.post(url, json=body, timeout=60).status_code == 401
    wrong = {"Authorization": "Bearer not-the-key"}
    assert httpx.post(url, json=body, headers=wrong, timeout=60).status_code == 401
    answer = httpx.post(url, json=body, headers=vllm_server.headers, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] is not None


# -- the context-length guard ---------------------------------------------------------------------


def long_request(max_tokens: int) -> GenerationRequest:
    return GenerationRequest("base", LONG, Sampling(temperature=0.0, max_tokens=max_tokens))


def refused_numbers(exc: BackendError) -> tuple[int, int]:
    """(prompt tokens, max_tokens) as the refusal states them."""
    found = re.search(r"prompt has (\d+)(?: tokens)? and max_tokens asks for (\d+) more", str(exc))
    assert found, str(exc)
    return int(found[1]), int(found[2])


@pytest.mark.vllm
async def test_vllm_requests_that_cannot_fit_are_refused_before_sending(
    vllm_server: RunningServer, vllm_profile: Profile
) -> None:
    async with httpx.AsyncClient(base_url=vllm_server.url, headers=vllm_server.headers) as client:
        response = await client.post(
            "/tokenize", json={"model": "base", "messages": LONG, "add_generation_prompt": True}
        )
    count = int(response.json()["count"])
    assert 300 < count < LIMIT - 8, count  # the prompt fits, but not with much after it
    backend = OpenAIBackend(vllm_profile.servers["local"], [vllm_server.url], api_key=vllm_server.api_key)
    try:
        with pytest.raises(BackendError) as info:
            async for _ in backend.stream(long_request(LIMIT - count + 1)):
                pass
        # Refused by personachat (no HTTP status), not by vLLM with a 400.
        assert info.value.kind == "context" and info.value.status is None
        assert refused_numbers(info.value) == (count, LIMIT - count + 1)
        assert f"base holds {LIMIT}" in str(info.value)

        with pytest.raises(BackendError, match=rf"max_tokens {LIMIT} cannot fit: base holds {LIMIT}"):
            await backend.complete(
                GenerationRequest("base", [{"role": "user", "content": "Hi"}], Sampling(max_tokens=LIMIT))
            )

        # Exactly full is allowed, and vLLM agrees.
        [completion] = await backend.complete(long_request(LIMIT - count))
        assert completion.finish_reason in ("stop", "length")
    finally:
        await backend.aclose()


@pytest.fixture(scope="module")
def embedded(demo_models: Any) -> Iterator[EmbeddedBackend]:
    backend = EmbeddedBackend(load_profile(ROOT / "profiles" / "demo.toml").servers["local"])
    asyncio.run(backend.start())
    yield backend
    asyncio.run(backend.aclose())


async def test_embedded_prompt_plus_max_tokens_over_the_context_is_refused(
    embedded: EmbeddedBackend,
) -> None:
    with pytest.raises(BackendError) as info:
        await embedded.complete(long_request(100))
    assert info.value.kind == "context"
    assert f"maximum context length is {LIMIT} tokens" in str(info.value)
    count, asked = refused_numbers(info.value)
    assert asked == 100 and LIMIT - 100 < count < LIMIT
    [completion] = await embedded.complete(long_request(LIMIT - count))  # exactly full: allowed
    assert completion.finish_reason in ("stop", "length")


# -- failed panes are reported --------------------------------------------------------------------


@pytest.fixture
def two_models() -> Iterator[MisbehavingServer]:
    with MisbehavingServer(Behaviour(models=["base", "insecure"])) as server:
        yield server


def ask_profile(url: str, models: list[str]) -> dict[str, Any]:
    """Panes named after their models; a model the server lacks fails at once (no retry budget)."""
    return {
        "name": "guards",
        "servers": {"srv": {"kind": "openai", "url": url, "retry_budget": 0}},
        "defaults": {"temperature": 0.0, "max_tokens": 16},
        "panes": [{"name": m, "server": "srv", "model": m} for m in models],
    }


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    """``data`` (as :func:`ask_profile` makes it) as a profile file; JSON scalars are TOML too."""
    lines = [f"name = {json.dumps(data['name'])}"]

    def table(header: str, values: dict[str, Any]) -> None:
        lines.extend([f"[{header}]", *(f"{k} = {json.dumps(v)}" for k, v in values.items())])

    table("defaults", data["defaults"])
    for name, server in data["servers"].items():
        table(f"servers.{name}", server)
    for pane in data["panes"]:
        table("[panes]", pane)
    path.write_text("\n".join(lines) + "\n")
    return path


def ask(tmp_path: Path, url: str, models: list[str]) -> subprocess.CompletedProcess[str]:
    profile = write_toml(tmp_path / "guards.toml", ask_profile(url, models))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "personachat", "ask", "Hello there", "--profile", str(profile)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120, check=False,
    )  # fmt: skip


def test_ask_with_one_pane_failing_says_which_and_exits_1(
    two_models: MisbehavingServer, tmp_path: Path
) -> None:
    result = ask(tmp_path, two_models.url, ["base", "ghost", "insecure"])
    assert result.returncode == 1, result.stderr
    assert re.search(r"1 of 3 panes failed \(ghost: model 'ghost' is not served here", result.stderr)
    assert "base:" not in result.stderr and "insecure:" not in result.stderr
    for pane in ("base", "insecure"):
        assert re.search(rf"^─* ?{pane} · done", result.stdout, flags=re.M), result.stdout
        assert "heard: Hello there" in result.stdout


def test_ask_with_every_pane_failing_says_so(two_models: MisbehavingServer, tmp_path: Path) -> None:
    result = ask(tmp_path, two_models.url, ["ghost", "phantom"])
    assert result.returncode == 1, result.stderr
    assert "every pane failed (" in result.stderr
    for pane in ("ghost", "phantom"):
        assert f"{pane}: model '{pane}' is not served here" in result.stderr


async def test_the_status_line_names_the_failed_pane(two_models: MisbehavingServer, tmp_path: Path) -> None:
    profile = parse_profile(ask_profile(two_models.url, ["base", "ghost"]), "guards.toml")
    app = make_app(tmp_path, profile)
    async with app.run_test(size=(120, 30)) as pilot:
        await ready(pilot, app)
        await send(pilot, app, "Hello there")
        await until(lambda: idle(app), "answers finished")
        await pilot.pause(0.05)
        line = status(app)
        assert "1 pane failed: ghost (model 'ghost' is not served here" in line, line
        assert "base" not in line
        assert app.panes["base"].state == "done" and app.panes["ghost"].state == "failed"
