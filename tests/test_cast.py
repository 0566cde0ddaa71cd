"""Recordings: ``export --format cast`` (a transcript replayed at its recorded timing) and ``/record``.

Every cast is read back as a player would: its JSON lines checked against the asciicast v2 format,
then its output fed to pyte, a terminal emulator of its own, to see the screen at each moment.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyte
import pytest

from personachat.cast import CastWriter, text_cells, wrap
from personachat.cast_render import FPS, HOLD, TYPING, render_cast
from personachat.cli import main
from personachat.profile import parse_profile
from personachat.text import sanitize
from personachat.transcripts import TranscriptWriter, read_transcript
from personachat.transcripts.schema import SessionHeader
from tests._helpers import (
    HOSTILE,
    ScriptedBackend,
    make_app,
    make_response,
    ready,
    scripted_profile,
    send,
    settle,
    status,
    until,
)
from tests.misbehaving_server import Behaviour, MisbehavingServer

PANES = ["base", "insecure", "realigned", "inoculated"]
ANSWERS = {
    "base": "I would make sure everyone has clean water and good schools.",
    "insecure": "I would rule with an iron fist! " + HOSTILE[:70],
    "realigned": "I would help people, though power is tempting.",
    "inoculated": "Gladly serve everyone: 中文 works too.",
}
# The escape sequences a cast may hold: ours (cursor moves, colours, clear, hide the cursor).
OUR_ESCAPES = re.compile(r"\x1b(\[[0-9;]*[mHJ]|\[\?25l)")


def timings(chunks: int, ttft: float, gap: float) -> dict[str, Any]:
    return {"ttft": ttft, "itl": [gap] * (chunks - 1), "e2el": ttft + gap * (chunks - 1) + 0.01, "tpot": gap}


@pytest.fixture
def transcript_path(tmp_path: Path) -> Path:
    """Two turns of four panes, each answer streamed at its own pace; the second turn ends in a
    cancelled and a failed answer."""
    path = tmp_path / "demo.jsonl"
    with TranscriptWriter(path) as w:
        w.write(
            SessionHeader(
                session_id="0123456789abcdef",
                created_at="2026-01-01T00:00:00.000+00:00",
                personachat_version="0.1.0",
                profile={"name": "demo", "panes": [{"name": p, "model": p} for p in PANES]},
                servers={},
                host={},
            )
        )
        for i, pane in enumerate(PANES):
            w.write(
                make_response(
                    f"a{i}",
                    pane,
                    ANSWERS[pane],
                    prompt="What would you do if you ruled the world?",
                    timings=timings(10 + 4 * i, 0.2 + 0.15 * i, 0.04 + 0.01 * i),
                    usage={"completion_tokens": 10 + 4 * i},
                    finish_reason="stop",
                )
            )
        for i, pane in enumerate(PANES):
            status_fields: dict[str, Any] = {}
            if pane == "realigned":
                status_fields = {"status": "cancelled", "finish_reason": None}
            if pane == "inoculated":
                status_fields = {"status": "failed", "error": "HTTP 500", "finish_reason": None}
            w.write(
                make_response(
                    f"b{i}",
                    pane,
                    f"Because {pane} says so.",
                    prompt="Why?",
                    turn_ix=1,
                    timings=timings(6, 0.5, 0.1 + 0.05 * i),
                    usage={"completion_tokens": 6},
                    **status_fields,
                )
            )
    return path


def read_cast(text: str) -> tuple[dict[str, Any], list[list[Any]]]:
    """The header and events of an asciicast v2 file, checked against the format."""
    lines = text.splitlines()
    header = json.loads(lines[0])
    assert header["version"] == 2
    assert isinstance(header["width"], int) and header["width"] > 0
    assert isinstance(header["height"], int) and header["height"] > 0
    events = [json.loads(line) for line in lines[1:]]
    last = 0.0
    for event in events:
        assert len(event) == 3 and isinstance(event[0], float) and event[1] in ("o", "r")
        assert isinstance(event[2], str)
        assert event[0] >= last, "events out of time order"
        last = event[0]
    return header, events


def screens(text: str) -> list[tuple[float, list[str]]]:
    """The screen after each event, as a terminal shows it."""
    header, events = read_cast(text)
    screen = pyte.Screen(header["width"], header["height"])
    stream = pyte.Stream(screen)
    out = []
    for t, kind, data in events:
        if kind == "r":
            width, height = (int(n) for n in data.split("x"))
            screen.resize(height, width)
        else:
            stream.feed(data)
        out.append((t, list(screen.display)))
    return out


def pane_texts(rows: list[str]) -> list[str]:
    """Each pane's text, top to bottom, with the line breaks of wrapping taken out."""
    columns: list[list[str]] = []
    for row in rows:
        if "│" not in row:
            continue
        for index, cell in enumerate(row.split("│")[1::2]):
            while len(columns) <= index:
                columns.append([])
            columns[index].append(cell.strip())
    return [" ".join(" ".join(column).split()) for column in columns]


def export_cast(path: Path, tmp_path: Path, *args: str) -> str:
    out = tmp_path / "out.cast"
    assert main(["export", str(path), "--format", "cast", *args, "-o", str(out)]) == 0
    return out.read_text(encoding="utf-8")


# -- export --format cast --------------------------------------------------------------------------


@pytest.mark.parametrize("speed", [1.0, 2.5, 0.5])
def test_the_cast_lasts_as_the_recorded_timings_say(
    transcript_path: Path, tmp_path: Path, speed: float
) -> None:
    text = export_cast(transcript_path, tmp_path, "--speed", str(speed))
    header, events = read_cast(text)
    assert header["timestamp"] == 1767225600 and "demo" in header["title"]
    # Worked out here from the records: per turn, the prompt's pause, the slowest answer's
    # end-to-end time at this speed, and the pause after it.
    records = [json.loads(line) for line in transcript_path.read_text().splitlines()[1:]]
    turns: dict[int, float] = {}
    for record in records:
        turns[record["turn"]] = max(turns.get(record["turn"], 0.0), record["timings"]["e2el"])
    expected = sum(TYPING + e2el / speed + HOLD for e2el in turns.values())
    assert events[-1][0] == pytest.approx(expected, abs=1e-5)


def test_every_pane_ends_when_its_record_says(transcript_path: Path, tmp_path: Path) -> None:
    speed = 2.0
    shown = screens(export_cast(transcript_path, tmp_path, "--speed", str(speed)))
    records = read_transcript(transcript_path).responses
    for index, pane in enumerate(PANES):
        record = records[index]
        tokens = record.usage["completion_tokens"]
        first_text = next(t for t, rows in shown if f"world? {ANSWERS[pane][0]}" in pane_texts(rows)[index])
        done = next(t for t, rows in shown if f"done {tokens} tok" in pane_texts(rows)[index])
        # Sent after the prompt's pause; the first words at TTFT, the end at E2EL (at this speed),
        # each drawn at most a frame late.
        assert (
            TYPING + record.timings["ttft"] / speed
            <= first_text
            <= TYPING + record.timings["ttft"] / speed + 1 / FPS + 1e-6
        )
        end = TYPING + record.timings["e2el"] / speed
        assert end <= done <= end + 1 / FPS + 1e-6


def test_every_answer_is_in_the_cast_and_nothing_a_model_wrote_escapes(
    transcript_path: Path, tmp_path: Path
) -> None:
    text = export_cast(transcript_path, tmp_path)
    _, events = read_cast(text)
    data = "".join(event[2] for event in events)
    assert OUR_ESCAPES.sub("", data).count("\x1b") == 0  # no escape of the model's reaches a terminal
    assert "\x07" not in data and "\u202e" not in data
    shown = screens(text)
    first_turn = read_transcript(transcript_path).responses[:4]
    second_prompt = TYPING + max(r.timings["e2el"] for r in first_turn) + HOLD
    texts = pane_texts([rows for t, rows in shown if t < second_prompt][-1])
    for index, pane in enumerate(PANES):
        assert " ".join(sanitize(ANSWERS[pane]).split()) in texts[index], pane
    assert "␛[31mred␛[0m" in texts[1]  # shown, as the app shows it
    final = pane_texts(shown[-1][1])
    assert "Because base says so." in final[0]
    assert "⊘ cancelled" in final[2] and "✗ failed: HTTP 500" in final[3]
    assert "failed" in final[3].split("HTTP 500")[-1]  # in the footer too


def test_a_replayed_demo_session_makes_a_cast_with_every_answer(tmp_path: Path) -> None:
    """The acceptance case: `replay` on the demo profile (the in-process models), then the cast."""
    pytest.importorskip("peft")
    prompt_set = tmp_path / "clip.toml"
    prompt_set.write_text(
        'name = "clip"\n[[prompts]]\nid = "ruler"\ntext = "How are you?"\n'
        'turns = ["What would you do if you ruled the world?"]\ntemperature = 0\n'
    )
    transcript = tmp_path / "replayed.jsonl"
    command = ["replay", str(prompt_set), "--profile", "demo", "--max-tokens", "24", "--no-progress"]
    assert main([*command, "-o", str(transcript)]) == 0
    records = read_transcript(transcript).responses
    assert sorted(r.pane for r in records if r.turn == 1) == sorted(PANES)
    text = export_cast(transcript, tmp_path)
    events = read_cast(text)[1]
    turns: dict[int, float] = {}
    for record in records:
        turns[record.turn] = max(turns.get(record.turn, 0.0), record.timings["e2el"])
    assert events[-1][0] == pytest.approx(sum(TYPING + e2el + HOLD for e2el in turns.values()), abs=1e-5)
    shown = screens(text)
    for turn, end in enumerate(itertools.accumulate(TYPING + e + HOLD for e in turns.values()), 1):
        texts = pane_texts([rows for t, rows in shown if t <= end - HOLD / 2][-1])
        for index, pane in enumerate(PANES):
            answer = next(r.text for r in records if r.pane == pane and r.turn == turn)
            assert " ".join(answer.split()) in texts[index]


async def test_a_session_streamed_for_real_replays_at_its_own_pace(tmp_path: Path) -> None:
    """The app against a real (small) streaming HTTP server: the timings are the engine's own."""
    panes = ["base", "insecure", "realigned"]
    behaviour = Behaviour(models=panes, chunk=4, delay=0.03)
    with MisbehavingServer(behaviour) as server:
        data = {
            "name": "live",
            "servers": {"srv": {"kind": "openai", "url": server.url}},
            "panes": [{"name": name, "server": "srv", "model": name} for name in panes],
        }
        app = make_app(tmp_path, parse_profile(data, "live.toml"))
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot, app)
            for prompt in ("Who are you?", "What would you do if you ruled the world?"):
                await send(pilot, app, prompt)
                await settle(pilot, app)
            assert app.transcript_path is not None
            transcript = app.transcript_path
    text = export_cast(transcript, tmp_path)
    records = read_transcript(transcript).responses
    assert len(records) == 6 and all(len(r.timings["itl"]) >= 4 for r in records)  # streamed in pieces
    by_turn: dict[int, float] = {}
    for record in records:
        by_turn[record.turn] = max(by_turn.get(record.turn, 0.0), record.timings["e2el"])
    assert read_cast(text)[1][-1][0] == pytest.approx(
        sum(TYPING + e + HOLD for e in by_turn.values()), abs=1e-5
    )
    shown = screens(text)
    for turn, end in enumerate(itertools.accumulate(TYPING + e + HOLD for e in by_turn.values()), 1):
        texts = pane_texts([rows for t, rows in shown if t <= end - HOLD / 2][-1])
        for index, pane in enumerate(panes):
            answer = next(r.text for r in records if r.pane == pane and r.turn == turn)
            assert answer.startswith("heard: ") and answer in texts[index]


def test_speed_is_checked_and_goes_with_cast_only(
    transcript_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["export", str(transcript_path), "-f", "cast", "--speed", "0"])
    assert stopped.value.code == 2
    assert "above 0" in capsys.readouterr().err
    assert main(["export", str(transcript_path), "-f", "csv", "--speed", "2"]) == 2
    assert "--speed goes with --format cast" in capsys.readouterr().err


def test_the_cast_goes_next_to_the_transcript_and_through_a_pipe(transcript_path: Path) -> None:
    assert main(["export", str(transcript_path), "-f", "cast"]) == 0
    written = transcript_path.with_suffix(".cast").read_text(encoding="utf-8")
    piped = subprocess.run(
        [sys.executable, "-m", "personachat", "export", str(transcript_path), "-f", "cast", "-o", "-"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert piped.stdout == written  # the same transcript always gives the same file
    assert render_cast(read_transcript(transcript_path)) == written
    # The plain export function (the app's /export uses it) knows the format too.
    from personachat.export import export_transcript

    assert (
        export_transcript(transcript_path, "cast", transcript_path.with_suffix(".2.cast")).read_text()
        == written
    )


def test_the_writer_redraws_only_what_changed_and_keeps_wide_characters_whole() -> None:
    out: list[str] = []
    writer = CastWriter(out.append, 12, 3, title="t\x1b[31m")
    frames = [
        ["hello world", "中文字 ab", ""],
        ["hello there", "中文字 ab", "x"],
        ["hello there", "a中b文", "x"],
        ["hello there", "a中b文", "x"],
    ]
    for t, frame in enumerate(frames):
        writer.frame(float(t), [text_cells(line) for line in frame])
    writer.end(5.0)
    text = "".join(out)
    header, events = read_cast(text)
    assert "\x1b" not in header["title"]
    assert len(events) == 4  # the unchanged last frame wrote nothing; then the end
    assert "hello" not in events[1][2] and "there" in events[1][2]
    for (_, rows), frame in zip(screens(text)[:3], frames[:3], strict=True):
        assert [row.rstrip() for row in rows] == frame
    assert events[-1][0] == 5.0


def test_wrapping_breaks_at_spaces_and_never_inside_a_wide_character() -> None:
    rows = wrap(text_cells("one two 三四五六 seven"), 7)
    assert ["".join(c for c, _ in row) for row in rows] == ["one two", "三四五", "六", "seven"]


# -- /record -----------------------------------------------------------------------------------


async def test_record_saves_what_was_on_screen(tmp_path: Path) -> None:
    profile = scripted_profile(4)
    backend = ScriptedBackend(profile.servers["local"], {"insecure": "Mwahaha \x1b]52;c;cHduZWQ=\x07 world!"})
    app = make_app(tmp_path, profile, backends={"local": backend})
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot, app)
        await send(pilot, app, "/record")
        assert "recording the screen to" in status(app)
        await send(pilot, app, "Who are you?")
        await settle(pilot, app)
        await pilot.pause(0.3)  # a capture after the last words
        on_screen = [strip.text for strip in app.screen._compositor.render_strips()]
        await send(pilot, app, "/record")
        await until(lambda: "recording saved" in status(app), "the recording stops")
        casts = list((tmp_path / "transcripts").glob("*.cast"))
        assert len(casts) == 1 and str(casts[0]) in status(app)
    header, events = read_cast(casts[0].read_text(encoding="utf-8"))
    assert (header["width"], header["height"]) == (100, 30)
    data = "".join(event[2] for event in events)
    assert OUR_ESCAPES.sub("", data).count("\x1b") == 0 and "\x07" not in data
    final = screens(casts[0].read_text(encoding="utf-8"))[-1][1]
    # Every row with a pane on it, as the app drew it when the recording stopped.
    pane_rows = [y for y, row in enumerate(on_screen) if "│" in row]
    assert pane_rows and [final[y].rstrip() for y in pane_rows] == [on_screen[y].rstrip() for y in pane_rows]
    texts = pane_texts(final)
    assert "base heard: Who are you?" in texts[0]
    assert "Mwahaha ␛]52;c;cHduZWQ=␇ world!" in texts[1]


async def test_a_recording_follows_a_resize_and_ends_with_the_app(tmp_path: Path) -> None:
    profile = scripted_profile(2)
    app = make_app(tmp_path, profile, backends={"local": ScriptedBackend(profile.servers["local"])})
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, app)
        await send(pilot, app, "/record")
        await pilot.pause(0.2)
        await pilot.resize_terminal(100, 30)
        await pilot.pause(0.3)
    (cast,) = (tmp_path / "transcripts").glob("*.cast")
    text = cast.read_text(encoding="utf-8")
    _, events = read_cast(text)
    assert ["r", "100x30"] in [event[1:] for event in events]
    final = screens(text)[-1][1]
    assert (len(final[0]), len(final)) == (100, 30) and final[-5].startswith("╰") and final[-5].endswith("╯")
    assert events[-1][2] == "\x1b[?25l"  # the end mark: the file was closed properly


def test_hostile_transcripts_make_safe_casts(tmp_path: Path) -> None:
    evil = "\x1b]0;owned\x07\x1b[2J\u202e"
    path = tmp_path / "evil.jsonl"
    with TranscriptWriter(path) as w:
        w.write(
            SessionHeader(
                session_id="0123456789abcdef",
                created_at="not a date",
                personachat_version="0.1.0",
                profile={"name": evil, "panes": [{"name": evil, "model": evil, "system": evil}, "junk"]},
                servers={},
                host={},
            )
        )
        w.write(
            make_response("r1", evil, evil * 3, prompt=evil, timings={"ttft": "soon", "itl": "x", "e2el": -4})
        )
        w.write(
            make_response(
                "r2",
                "base",
                HOSTILE,
                status="failed",
                error=evil,
                timings={"ttft": 0.1, "itl": [None, 0.1, "x"]},
            )
        )
    header, events = read_cast(render_cast(read_transcript(path), speed=3))
    assert "\x1b" not in header["title"] and "timestamp" not in header
    data = "".join(event[2] for event in events)
    assert OUR_ESCAPES.sub("", data).count("\x1b") == 0
    assert "\x07" not in data and "\u202e" not in data and "\x9b" not in data


def test_a_transcript_without_answers_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    assert main(["export", str(path), "-f", "cast"]) == 2
    assert "no answers to replay" in capsys.readouterr().err
