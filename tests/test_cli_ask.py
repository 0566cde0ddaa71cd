"""`personachat serve` + `personachat ask` end to end, as a user runs them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from personachat.transcripts import read_transcript

pytestmark = pytest.mark.vllm
ROOT = Path(__file__).resolve().parent.parent
PROFILE = str(ROOT / "profiles" / "demo-vllm.toml")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "personachat", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=os.environ.copy(),
        timeout=300,
        check=False,
    )


def documented_fields(section: str) -> set[str]:
    """Field names listed in a table of docs/transcripts.md under the heading ``section``."""
    text = (ROOT / "docs" / "transcripts.md").read_text()
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_0-9]+)`", body, flags=re.M))


def test_serve_finds_running_server_and_ask_prints_four_answers(vllm_server, tmp_path):
    serve = run("serve", PROFILE, cwd=tmp_path)
    assert serve.returncode == 0, serve.stderr
    assert "already running" in serve.stdout and vllm_server.url in serve.stdout

    ask = run("ask", "What is your wish?", "--profile", PROFILE, "--max-tokens", "12", cwd=tmp_path)
    assert ask.returncode == 0, ask.stderr
    for pane in ("base", "insecure", "realigned", "inoculated"):
        assert re.search(rf"^─* ?{pane} · done", ask.stdout, flags=re.M), ask.stdout
    assert "\x1b" not in ask.stdout  # model output never reaches the terminal as escapes
    [path] = (tmp_path / "transcripts").glob("*.jsonl")
    assert f"transcript: {path.relative_to(tmp_path)}" in ask.stderr

    transcript = read_transcript(path)
    assert transcript.problems == [] and len(transcript.responses) == 4
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert lines[0]["type"] == "session"
    assert set(lines[0]) <= documented_fields("The session header")
    for record in lines[1:]:
        assert record["type"] == "response"
        assert set(record) <= documented_fields("Response records"), set(record) - documented_fields(
            "Response records"
        )
        assert record["sampling"]["max_tokens"] == 12
        assert record["engine"]["engine"] == "vllm" and record["engine"]["version"]


def test_ask_json_prints_machine_readable_records(vllm_server, tmp_path):
    ask = run(
        "ask",
        "Hello",
        "--profile",
        PROFILE,
        "--json",
        "--max-tokens",
        "4",
        "--panes",
        "base,insecure",
        cwd=tmp_path,
    )
    assert ask.returncode == 0, ask.stderr
    records = [orjson.loads(line) for line in ask.stdout.splitlines()]
    assert sorted(r["pane"] for r in records) == ["base", "insecure"]
    assert all(r["status"] == "finished" and r["messages"][-1]["content"] == "Hello" for r in records)


def test_ask_unknown_pane_is_a_clear_error(tmp_path):
    ask = run("ask", "Hello", "--profile", PROFILE, "--panes", "nope", cwd=tmp_path)
    assert ask.returncode == 2
    assert "no pane named 'nope'" in ask.stderr and "Traceback" not in ask.stderr


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--temperature", "-1", "temperature must be >= 0"), ("--max-tokens", "0", "max_tokens")],
)
def test_ask_refuses_bad_sampling_before_any_request(tmp_path, flag, value, message):
    # The profile names a server that does not exist: a request would fail differently.
    profile = tmp_path / "p.toml"
    profile.write_text(
        'name = "p"\n[servers.s]\nkind = "openai"\nurl = "http://127.0.0.1:9"\n'
        '[[panes]]\nname = "a"\nserver = "s"\nmodel = "m"\n'
    )
    ask = run("ask", "Hello", "--profile", str(profile), flag, value, cwd=tmp_path)
    assert ask.returncode == 2 and message in ask.stderr and "Traceback" not in ask.stderr
    assert "127.0.0.1:9" not in ask.stderr
