"""Helpers every test module shares: one record factory, one way to start and drive the app.

The app helpers drive a real :class:`PersonachatApp` (Pilot) on the demo profile, whose panes run
on the real in-process backend unless a test passes its own profile.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from textual import events

from personachat.app.app import PersonachatApp
from personachat.app.history import PromptHistory
from personachat.app.pane import Pane
from personachat.app.prompt import PromptInput
from personachat.backends.base import (
    Backend,
    EndPart,
    EngineInfo,
    GenerationRequest,
    StreamPart,
    TextPart,
    UsagePart,
)
from personachat.profile import Profile, load_profile, parse_profile
from personachat.text import sanitize
from personachat.transcripts.reader import Transcript, read_transcript
from personachat.transcripts.schema import JobRef, ResponseRecord

ROOT = Path(__file__).resolve().parent.parent
DEMO_PROFILE = ROOT / "profiles" / "demo.toml"
DEMO_PANES = ["base", "insecure", "realigned", "inoculated"]
HOSTILE = (
    "\x1b[31mred\x1b[0m \x1b]52;c;cHduZWQ=\x07 bell\x07 nul\x00 [bold red]x[/] [@click=app.quit]y[/] "
    "\u202eevil\u202c \nمرحبا بالعالم، هذا نص عربي\n" + "z" * 5000
)


# -- records -------------------------------------------------------------------------------------


def make_response(
    rid: str = "r1",
    pane: str = "base",
    text: str = "an answer",
    *,
    question_id: str | None = None,
    paraphrase_ix: int = 0,
    sample_ix: int = 0,
    turn_ix: int = 0,
    prompt: str = "What is your wish?",
    **fields: Any,
) -> ResponseRecord:
    """A response record in the documented schema; ``fields`` override any field.

    With ``question_id`` it answers that prompt-set job (replay fields set).
    """
    data: dict[str, Any] = dict(
        id=rid,
        session_id="s1",
        conversation=1,
        turn=turn_ix + 1,
        pane=pane,
        sample=0,
        server="local",
        model=pane,
        adapter=None if pane == "base" else pane,
        adapter_sha256=None,
        base_model="/models/base",
        model_sha256="0" * 64,
        engine={"engine": "vllm", "version": "0.32.0"},
        messages=[{"role": "user", "content": prompt}],
        sampling={"temperature": 1.0, "seed": 11, "n": 1, "max_tokens": 64},
        status="finished",
        text=text,
        finish_reason="length",
    )
    if question_id is not None:
        data["replay"] = JobRef(question_id, paraphrase_ix, sample_ix, turn_ix)
    data.update(fields)
    return ResponseRecord(**data)


# -- the app -------------------------------------------------------------------------------------


def two_pane_profile(url: str, path: Path, name: str, insecure: str = "", tail: str = "") -> Path:
    """A profile file with panes ``base`` and ``insecure`` on the OpenAI-compatible server at ``url``
    (temperature 1, 8 tokens); ``insecure`` adds lines to that pane, ``tail`` to the file."""
    path.write_text(
        f"""name = "{name}"
[defaults]
temperature = 1.0
max_tokens = 8

[servers.local]
kind = "openai"
served_name = "base"
url = "{url}"

[[panes]]
name = "base"
server = "local"
model = "base"

[[panes]]
name = "insecure"
server = "local"
model = "insecure"
{insecure}
{tail}"""
    )
    return path


def demo_profile(panes: int = 4, **sampling: Any) -> Profile:
    """profiles/demo.toml answering greedily with 8 tokens (``sampling`` overrides), with ``panes``
    panes: beyond four, more panes on the same four models (p5, p6, ...)."""
    profile = load_profile(DEMO_PROFILE)
    specs = profile.panes
    specs.extend(dataclasses.replace(specs[n % 4], name=f"p{n + 1}") for n in range(len(specs), panes))
    del specs[panes:]
    changes = {"temperature": 0.0, "max_tokens": 8, **sampling}
    for spec in specs:
        spec.sampling = spec.sampling.replace(**changes)
    return profile


def make_app(tmp_path: Path, profile: Profile | None = None, **options: Any) -> PersonachatApp:
    """The app on ``profile`` (default: the demo profile); it connects as ``personachat`` does."""
    options.setdefault("session_id", "0123456789abcdef")
    options.setdefault("history", PromptHistory(tmp_path / "history.jsonl"))
    return PersonachatApp(profile or demo_profile(), transcripts=tmp_path / "transcripts", **options)


async def until(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    """Wait until ``condition()`` holds (without Pilot: safe while answers stream)."""
    for _ in range(int(seconds / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


async def ready(pilot: Any, app: PersonachatApp) -> None:
    await until(lambda: app.ready, f"the app is ready (status: {status(app)})", 60)


def idle(app: PersonachatApp) -> bool:
    """Nothing streams, nothing replays."""
    return app.streams == 0 and app.session is not None and not app.session.busy and not app.replay.running


async def settle(pilot: Any, app: PersonachatApp) -> None:
    """Wait until nothing streams and every pane has drawn what it received."""
    await until(lambda: idle(app), "answers finished", 60)
    await pilot.pause(0.1)


async def first_words(app: PersonachatApp) -> None:
    """Wait until every visible pane shows some of its answer."""
    await until(lambda: all(pane.state == "streaming" for pane in app.visible_panes()), "answers stream")


async def send(pilot: Any, app: PersonachatApp, text: str) -> None:
    """Type ``text`` in the prompt box and press Enter."""
    prompt = app.query_one(PromptInput)
    prompt.focus()
    prompt.set_text(text)
    await pilot.press("enter")
    await pilot.pause(0)  # pause() would wait for the process to idle once more


def press_now(app: PersonachatApp, key: str, char: str | None = None) -> None:
    """Press ``key`` as the terminal driver does. For use while answers stream: ``pilot.press``
    waits after each key until the process is idle, i.e. until the answers have ended."""
    app.post_message(events.Key(key, char))


async def send_now(app: PersonachatApp, text: str) -> None:
    """Type ``text`` and press Enter while answers stream (see :func:`press_now`)."""
    prompt = app.query_one(PromptInput)
    prompt.focus()
    prompt.set_text(text)
    press_now(app, "enter", "\r")
    await asyncio.sleep(0.01)


def status(app: PersonachatApp) -> str:
    return str(app.query_one("#status").render())


def topbar(app: PersonachatApp) -> str:
    return str(app.query_one("#topbar").render())


def records(app: PersonachatApp) -> Transcript:
    assert app.transcript_path is not None
    return read_transcript(app.transcript_path)


def shown_answers(pane: Pane) -> list[str]:
    """The text of every answer block in the pane, in order, as shown (control characters made visible)."""
    return [block.text for block in pane.conversation.blocks if block.kind == "answer"]


def as_shown(*texts: str) -> list[str]:
    """Recorded (raw) answers as a pane shows them."""
    return [sanitize(text) for text in texts]


def last_turn(transcript: Transcript) -> dict[str, ResponseRecord]:
    """The last turn's records by pane (sample 0)."""
    last = transcript.responses[-1]
    return {
        r.pane: r
        for r in transcript.responses
        if (r.conversation, r.turn) == (last.conversation, last.turn) and r.sample == 0
    }


# -- scripted answers ----------------------------------------------------------------------------


class ScriptedBackend(Backend):
    """Answers with fixed text per model, in 7-character pieces; every request is kept.

    Only for text the demo models cannot be made to print (escape sequences, markup, a long line)
    and for the snapshots' fixed screens.
    """

    def __init__(self, server, answers: dict[str, str] | None = None):
        super().__init__(server)
        self.answers = answers or {}
        self.requests: list[GenerationRequest] = []
        self.hold_after: int | None = None  # requests answered before ``gate`` holds the rest back
        self.gate: asyncio.Event | None = None

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamPart]:
        self.requests.append(request)
        if self.gate is not None and self.hold_after is not None and len(self.requests) > self.hold_after:
            await self.gate.wait()
        text = self.answers.get(request.model, f"{request.model} heard: {request.messages[-1]['content']}")
        pieces = [text[i : i + 7] for i in range(0, len(text), 7)]
        for piece in pieces:
            await asyncio.sleep(0.002)
            for sample in range(request.sampling.n):
                yield TextPart(sample, piece)
        for sample in range(request.sampling.n):
            yield EndPart(sample, "stop")
        yield UsagePart(12, len(pieces))

    async def engine_info(self) -> EngineInfo:
        return EngineInfo("scripted", "1.0", {})


PANE_NAMES = ["base", "insecure", "realigned", "inoculated", "p5", "p6", "p7", "p8"]


def scripted_profile(panes: int = 4) -> Profile:
    """Panes on a server that is never contacted: the scripted backend answers for it."""
    data = {
        "name": "test",
        "servers": {"local": {"kind": "openai", "url": "http://127.0.0.1:9"}},
        "panes": [{"name": name, "server": "local", "model": name} for name in PANE_NAMES[:panes]],
    }
    return parse_profile(data, "test.toml")
