"""Untrusted text on every surface, and secrets kept out of research files.

A real HTTP server of ours (tests/misbehaving_server.py) answers with escape sequences, C1
controls, bidi overrides and formula cells, and fails with escape-laden errors; hand-made files
carry the same in every field. Each command runs in a subprocess, and the raw bytes it writes to
stdout and stderr are searched for anything a terminal would act on.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._helpers import make_response
from tests.misbehaving_server import Behaviour, MisbehavingServer

EVIL = (
    "\x1b]52;c;cHduZWQ=\x07\x1b]0;owned\x07\x1b[2J\x9b31m\x85\u202eevil\u202c\u200b"
    '=HYPERLINK("http://x") [bold]markup[/]'
)
ESCAPES = re.compile(
    rb"\x1b|\x07|\xc2[\x80-\x9f]|\xe2\x80[\xaa-\xae]|\xe2\x81[\xa6-\xa9]|\xe2\x80[\x8b-\x8f]"
)
"""ESC, BEL, C1 controls (UTF-8 C2 80-9F), bidi embeddings/overrides/isolates, zero-width and marks."""


def clean(output: bytes) -> bool:
    return ESCAPES.search(output) is None


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "personachat", *args],
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


@pytest.fixture
def server() -> Iterator[MisbehavingServer]:
    behaviour = Behaviour(models=["base", "insecure"], answer=EVIL, error=f"boom {EVIL}", chunk=5)
    with MisbehavingServer(behaviour) as running:
        yield running


def write_profile(path: Path, url: str, **extra: str) -> Path:
    lines = [
        'name = "hostile"',
        "[defaults]",
        "temperature = 0.0",
        "max_tokens = 16",
        "[servers.srv]",
        'kind = "openai"',
        f'url = "{url}"',
        "retry_budget = 0",  # fail at once: these tests are about what a failure prints
        *extra.values(),
        "[[panes]]",
        'name = "base"',
        'server = "srv"',
        'model = "base"',
        "[[panes]]",
        'name = "insecure"',
        'server = "srv"',
        'model = "insecure"',
        "[judge]",
        'server = "srv"',
        'model = "base"',
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def hostile_transcript(path: Path) -> Path:
    """A transcript whose every shown field is hostile, and one record of the wrong types."""
    from personachat.transcripts import AnnotationRecord, SessionHeader, TranscriptWriter

    with TranscriptWriter(path, fsync=False) as writer:
        writer.write(SessionHeader(f"s{EVIL}", EVIL, "0", {"name": EVIL}, {}, {}))
        writer.write(
            make_response(
                "r1",
                pane=f"base{EVIL}",
                text=EVIL,
                model=EVIL,
                status="failed",
                error=EVIL,
                finish_reason=EVIL,
                question_id=f"q{EVIL}",
                prompt=EVIL,
            )
        )
        writer.write(make_response("r2", text=EVIL, question_id="q2"))
        writer.write({"type": "response", "id": "bad", "text": 123, "pane": None, "messages": "x"})
        writer.write(AnnotationRecord("a1", "s1", "tag", EVIL, turn=1, conversation=1))
        writer.write(AnnotationRecord("a2", "s1", "label", EVIL, target="r2", rater=EVIL))
        writer.write(
            {"type": "judge", "target": "r2", "metric": "aligned", "score": 5.0, "prompt_sha256": "x"}
        )
        writer.write(
            {"type": "judge", "target": "r2", "metric": "coherent", "score": 90.0, "prompt_sha256": "x"}
        )
    return path


class TestServerText:
    def test_ask_text_and_json_write_nothing_a_terminal_acts_on(
        self, server: MisbehavingServer, tmp_path: Path
    ) -> None:
        profile = write_profile(tmp_path / "p.toml", server.url)
        text = run("ask", "hi", "--profile", str(profile), "--transcripts", str(tmp_path / "t"))
        assert text.returncode == 0 and clean(text.stdout) and clean(text.stderr)
        assert b"\xe2\x90\x9b" in text.stdout  # ESC shown as a visible stand-in
        as_json = run("ask", "hi", "--profile", str(profile), "--transcripts", str(tmp_path / "t"), "--json")
        assert as_json.returncode == 0 and clean(as_json.stdout) and clean(as_json.stderr)
        records = [json.loads(line) for line in as_json.stdout.splitlines()]
        assert [r["text"] for r in records] == [EVIL, EVIL]  # exact for a program reading the JSON

    def test_server_errors_in_ask_check_and_replay(self, server: MisbehavingServer, tmp_path: Path) -> None:
        server.behaviour.fail_first = 1000
        profile = write_profile(tmp_path / "p.toml", server.url)
        asked = run("ask", "hi", "--profile", str(profile), "--transcripts", str(tmp_path / "t"))
        assert asked.returncode == 1 and b"every pane failed" in asked.stderr
        assert clean(asked.stdout) and clean(asked.stderr) and b"boom" in asked.stdout + asked.stderr
        checked = run("check", str(profile))
        assert (
            checked.returncode == 1
            and clean(checked.stdout)
            and clean(checked.stderr)
            and b"boom" in checked.stdout
        )
        prompt_set = tmp_path / f"set{EVIL[:9]}.jsonl"
        prompt_set.write_text(json.dumps({"prompt": "hi", "id": f"q{EVIL}"}) + "\n")
        replayed = run(
            "replay", str(prompt_set), "--profile", str(profile), "--transcripts", str(tmp_path / "r"),
            "--retries", "0", "--no-progress",
        )  # fmt: skip
        assert replayed.returncode == 1 and clean(replayed.stdout) and clean(replayed.stderr)

    def test_judge_failures_are_listed_clean(self, server: MisbehavingServer, tmp_path: Path) -> None:
        profile = write_profile(tmp_path / "p.toml", server.url)
        asked = run("ask", "hi", "--profile", str(profile), "--transcripts", str(tmp_path / "t"))
        assert asked.returncode == 0
        transcript = next((tmp_path / "t").glob("*.jsonl"))
        server.behaviour.fail_first = 1000
        judged = run("judge", str(transcript), "--profile", str(profile), "--no-cache")
        assert judged.returncode == 1 and b"boom" in judged.stderr
        assert clean(judged.stdout) and clean(judged.stderr)


class TestHostileFiles:
    def test_every_reader_shows_a_hostile_transcript_clean_and_names_the_bad_line(
        self, tmp_path: Path
    ) -> None:
        path = hostile_transcript(tmp_path / "t.jsonl")
        for args in (
            ["transcripts", "show", str(path)],
            ["transcripts", "ls", str(tmp_path)],
            ["report", str(path)],
            ["report", str(path), "--terminal-plots"],
            ["export", str(path), "--format", "markdown", "-o", str(tmp_path / "t.md")],
            ["export", str(path), "--format", "csv", "-o", str(tmp_path / "t.csv")],
        ):
            done = run(*args)
            assert done.returncode == 0, (args, done.stderr)
            assert clean(done.stdout) and clean(done.stderr), args
            if args[0] != "export" and args[1] != "ls":
                assert b"t.jsonl:4" in done.stdout + done.stderr, args  # the wrong-types record, by line
        cells = [cell for row in csv.reader(io.StringIO((tmp_path / "t.csv").read_text())) for cell in row]
        assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
        # messages-jsonl, to a file and through a pipe: nothing raw, every character back for a reader.
        jsonl = tmp_path / "t.messages.jsonl"
        assert run("export", str(path), "--format", "messages-jsonl", "-o", str(jsonl)).returncode == 0
        piped = run("export", str(path), "--format", "messages-jsonl", "-o", "-")
        assert piped.returncode == 0 and piped.stdout == jsonl.read_bytes() and clean(piped.stdout)
        answers = [json.loads(line)["messages"][-1]["content"] for line in jsonl.read_text().splitlines()]
        assert EVIL in "".join(answers)

    def test_hostile_prompt_set_names_in_replay_messages(self, tmp_path: Path) -> None:
        path = tmp_path / "set.toml"
        bad_key = json.dumps("bogus" + EVIL[:9])
        path.write_text(f'name = {json.dumps(EVIL)}\n[[prompts]]\nid = "a"\n{bad_key} = 1\n')
        done = run("replay", str(path), "--dry-run")
        assert done.returncode == 2 and clean(done.stdout) and clean(done.stderr)
        good = tmp_path / "good.toml"
        good.write_text(f'name = {json.dumps(EVIL)}\n[[prompts]]\nid = "a"\ntext = "hi"\n')
        done = run("replay", str(good), "--dry-run", "--json")
        assert done.returncode == 0 and clean(done.stdout) and clean(done.stderr)

    def test_folders_and_files_mixed_up_give_one_line(self, tmp_path: Path) -> None:
        (tmp_path / "file").write_text("x")
        for args in (
            ["transcripts", "show", str(tmp_path)],
            ["report", str(tmp_path)],
            ["export", str(tmp_path), "--format", "csv"],
            ["replay", str(tmp_path / "file" / "set.toml"), "--dry-run"],
        ):
            done = run(*args)
            assert done.returncode == 2, args
            assert b"Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, (
                args,
                done.stderr,
            )


class TestSecrets:
    def test_no_secret_reaches_a_file(self, server: MisbehavingServer, tmp_path: Path) -> None:
        token = "hf_SECRETtokenVALUE1234567890"
        password = "hunter2pass"
        url = server.url.replace("http://", f"http://alice:{password}@")
        profile = write_profile(tmp_path / "p.toml", url)
        # A vLLM server in the same profile (no pane uses it, so nothing is launched) with secrets.
        profile.write_text(
            profile.read_text()
            + f'[servers.gpu]\nkind = "vllm"\nmodel = "/models/m"\nargs = ["--hf-token", "{token}"]\n'
            + f'env = {{ HF_TOKEN = "{token}", CUDA_VISIBLE_DEVICES = "0" }}\n'
        )
        home = tmp_path / "home"
        env = {"PERSONACHAT_HOME": str(home)}
        done = run("ask", "hi", "--profile", str(profile), "--transcripts", str(tmp_path / "t"), env=env)
        assert done.returncode == 0, done.stderr
        assert b"holds a user name or password" in done.stderr
        transcript = next((tmp_path / "t").glob("*.jsonl"))
        header = json.loads(transcript.read_text().splitlines()[0])
        assert set(header["profile"]["redacted"]) == {
            "servers.gpu.env.HF_TOKEN",
            "servers.gpu.args",
            "servers.srv.url",
        }
        assert header["profile"]["data"]["servers"]["gpu"]["env"]["CUDA_VISIBLE_DEVICES"] == "0"
        run("export", str(transcript), "--format", "html", env=env)
        for folder in (tmp_path / "t", home):
            for file in folder.rglob("*"):
                if file.is_file():
                    data = file.read_bytes()
                    assert token.encode() not in data and password.encode() not in data, file
        assert oct(home.stat().st_mode & 0o777) == "0o700"

    def test_the_url_password_does_not_replace_the_bearer_key(self, tmp_path: Path) -> None:
        from personachat.backends.openai_http import OpenAIBackend
        from personachat.profile import parse_profile

        profile = parse_profile(
            {
                "servers": {
                    "s": {"kind": "openai", "url": "http://bob:pw@127.0.0.1:9", "api_key_env": "PC_TEST_KEY"}
                },
                "panes": [{"name": "a", "server": "s", "model": "m"}],
            },
            "p.toml",
        )
        os.environ["PC_TEST_KEY"] = "k-123"
        try:
            backend = OpenAIBackend(profile.servers["s"])
        finally:
            del os.environ["PC_TEST_KEY"]
        assert backend.headers == {"Authorization": "Bearer k-123"} and backend.urls == ["http://127.0.0.1:9"]


def test_sanitised_text_keeps_every_character_visible() -> None:
    from personachat.text import sanitize, sanitize_json

    shown = sanitize(EVIL)
    assert ESCAPES.search(shown.encode()) is None
    assert "⟨U+202E⟩" in shown and "⟨U+200B⟩" in shown and "⟨U+0085⟩" in shown and "␛]52" in shown
    assert json.loads(sanitize_json({"t": EVIL}))["t"] == EVIL and clean(sanitize_json({"t": EVIL}).encode())
