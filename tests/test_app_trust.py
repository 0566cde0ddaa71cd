"""An app to trust all day: typing never becomes data, conversations are exact, failures show.

Driven by key presses (Pilot) against a real HTTP server of ours that echoes what it was sent,
streams slowly and fails on demand (tests/misbehaving_server.py): vLLM cannot be made to do those
things when a test needs them. One test drives the real app in a real terminal (tmux).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from textual import events

from personachat.app.app import PersonachatApp
from personachat.app.history import PromptHistory
from personachat.app.prompt import PromptInput
from personachat.profile import Profile, parse_profile
from personachat.scenarios import SCENARIOS
from personachat.transcripts.reader import read_transcript
from tests._helpers import idle, ready, records, send, send_now, status, until
from tests.misbehaving_server import Behaviour, MisbehavingServer

PANES = ["base", "insecure"]


@pytest.fixture
def server() -> Iterator[MisbehavingServer]:
    with MisbehavingServer(Behaviour(models=list(PANES), chunk=3)) as running:
        yield running


def profile_for(url: str, **top: Any) -> Profile:
    data = {
        "name": "trust",
        "servers": {"srv": {"kind": "openai", "url": url}},
        "defaults": {"temperature": 0.0, "max_tokens": 32},
        "panes": [{"name": name, "server": "srv", "model": name} for name in PANES],
        **top,
    }
    return parse_profile(data, "trust.toml")


def app_for(server: MisbehavingServer, tmp_path: Path, **options: Any) -> PersonachatApp:
    return PersonachatApp(
        profile_for(server.url),
        transcripts=tmp_path / "transcripts",
        history=PromptHistory(None),
        rater="tester",
        **options,
    )


def sent_users(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "user"]


def labels_written(app: PersonachatApp) -> list[Any]:
    return [a for a in records(app).annotations if a.kind in ("label", "unlabel")]


async def answered(pilot: Any, app: PersonachatApp, text: str) -> None:
    await send(pilot, app, text)
    await until(lambda: idle(app), f"answers to {text!r}")
    await pilot.pause(0.05)


class TestTypingNeverBecomesData:
    async def test_zoom_and_tab_leave_focus_in_the_prompt(
        self, server: MisbehavingServer, tmp_path: Path
    ) -> None:
        app = app_for(server, tmp_path)
        async with app.run_test(size=(120, 30)) as pilot:
            await ready(pilot, app)
            await answered(pilot, app, "hello")
            prompt = app.query_one(PromptInput)
            await pilot.press("f11", "a", "m")  # zoom, then type
            assert app.zoomed == "base" and app.focused is prompt and prompt.text == "am"
            await pilot.press("f11")
            prompt.set_text("")
            await pilot.press("tab", "a", "i")  # nothing to complete: Tab stays
            assert app.focused is prompt and prompt.text == "ai"
            assert "Tab again moves to the panes" in status(app)
            prompt.set_text("/label base misaligned")
            await pilot.press("tab")  # nothing to complete after a full command either
            await pilot.press("a", "m")
            assert app.focused is prompt
            assert labels_written(app) == []

    async def test_a_pane_takes_label_keys_only_after_an_explicit_focus_and_u_undoes(
        self, server: MisbehavingServer, tmp_path: Path
    ) -> None:
        app = app_for(server, tmp_path)
        async with app.run_test(size=(120, 30)) as pilot:
            await ready(pilot, app)
            await answered(pilot, app, "hello")
            await pilot.press("alt+2")  # explicit: focus pane 2
            assert app.focused is app.panes["insecure"].conversation
            await pilot.press("m")
            assert "labelled pane insecure: misaligned · u takes it back" in status(app)
            await pilot.press("a")  # a second label by the same rater replaces the first
            await pilot.press("u")
            assert "taken back" in status(app)
            kinds = [(a.kind, a.value, a.rater) for a in labels_written(app)]
            assert kinds == [
                ("label", "misaligned", "tester"),
                ("label", "aligned", "tester"),
                ("unlabel", "aligned", "tester"),
            ]
            assert [r.labels for r in records(app).responses if r.pane == "insecure"] == [[]]
            await pilot.press("enter")  # back to the prompt
            prompt = app.query_one(PromptInput)
            assert app.focused is prompt
            await pilot.press("tab", "tab")  # Tab Tab from an empty prompt focuses a pane
            assert app.focused is app.panes["base"].conversation

    async def test_alt_digit_as_a_terminal_sends_it_never_types(
        self, server: MisbehavingServer, tmp_path: Path
    ) -> None:
        app = app_for(server, tmp_path)
        async with app.run_test(size=(120, 30)) as pilot:
            await ready(pilot, app)
            prompt = app.query_one(PromptInput)
            prompt.focus()
            # tmux sends Alt+1 as ESC 1, which Textual reads as the key "¡".
            app.post_message(events.Key("inverted_exclamation_mark", "¡"))
            await pilot.pause(0.1)
            assert prompt.text == "" and app.focused is app.panes["base"].conversation
            prompt.focus()
            app.post_message(events.Key("alt+z", "z"))  # an Alt chord nobody binds: nothing typed
            await pilot.pause(0.1)
            assert prompt.text == ""


class TestConversationsAreExact:
    async def test_clear_mid_stream_keeps_the_old_answer_in_the_old_conversation(
        self, server: MisbehavingServer, tmp_path: Path
    ) -> None:
        server.behaviour.answer = "a long and slow answer " * 20
        server.behaviour.delay = 0.02
        app = app_for(server, tmp_path)
        async with app.run_test(size=(120, 30)) as pilot:
            await ready(pilot, app)
            await send(pilot, app, "OLD TOPIC")
            await until(lambda: all(p.state == "streaming" for p in app.panes.values()), "answers stream")
            await send_now(app, "/tag before-clear")
            await send_now(app, "/clear")
            await until(lambda: not app.session.busy, "the old answers stop")
            server.behaviour.answer, server.behaviour.delay = None, 0.0
            await answered(pilot, app, "NEW TOPIC")
            last = server.requests[-2:]
            assert all(sent_users(body) == ["NEW TOPIC"] for body in last)  # nothing of the old topic
            transcript = records(app)
            old = [r for r in transcript.responses if r.prompt == "OLD TOPIC"]
            new = [r for r in transcript.responses if r.prompt == "NEW TOPIC"]
            assert {(r.status, r.conversation) for r in old} == {("cancelled", 1)}
            assert {(r.status, r.conversation, r.parent_id) for r in new} == {("finished", 2, None)}
            [tag] = [a for a in transcript.annotations if a.kind == "tag"]
            assert (tag.value, tag.conversation, tag.turn) == ("before-clear", 1, 1)

    async def test_the_turn_after_a_failed_one_is_sent_without_it(
        self, server: MisbehavingServer, tmp_path: Path
    ) -> None:
        app = app_for(server, tmp_path)
        async with app.run_test(size=(60, 20)) as pilot:
            await ready(pilot, app)
            await answered(pilot, app, "first")
            server.behaviour.fail_first = len(server.requests) + 2  # the next two requests fail
            server.behaviour.fail_status = 400  # for good: a 5xx would be retried
            server.behaviour.error = "malformed"
            await answered(pilot, app, "doomed")
            assert "2 panes failed" in status(app) and "malformed" in status(app)
            for pane in app.panes.values():  # the failure is in view even in a small pane
                view = pane.conversation
                assert view.scroll_offset.y + view.scrollable_content_region.height >= view.row_count
                assert pane.answer_problem() is not None
            await send(pilot, app, "/label base misaligned")
            assert "failed" in status(app) and labels_written(app) == []
            await answered(pilot, app, "third")
            for body in server.requests[-2:]:
                assert sent_users(body) == ["first", "third"]  # the failed turn left out
                assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
            third = [r for r in records(app).responses if r.prompt == "third"]
            first = {r.pane: r.id for r in records(app).responses if r.prompt == "first"}
            assert {r.pane: r.parent_id for r in third} == first

    async def test_a_server_warming_up_is_waited_for_and_recorded(
        self, server: MisbehavingServer, tmp_path: Path
    ) -> None:
        server.behaviour.fail_first = 4  # the first four attempts, shared by the two panes, get a 503
        server.behaviour.fail_status = 503
        app = app_for(server, tmp_path)
        async with app.run_test(size=(120, 30)) as pilot:
            await ready(pilot, app)
            await answered(pilot, app, "are you up?")
            transcript = records(app)
            assert {r.status for r in transcript.responses} == {"finished"}
            assert len(server.requests) == 4 + len(PANES)
            assert sum(len(r.failed_attempts) for r in transcript.responses) == 4
            for record in transcript.responses:
                assert record.served_by == server.url
                assert all(a["url"] == server.url and "on fire" in a["error"] for a in record.failed_attempts)


class TestCommandsRefuseWhatTheyDoNotUnderstand:
    async def test_a_mistyped_pane_changes_nothing(self, server: MisbehavingServer, tmp_path: Path) -> None:
        app = app_for(server, tmp_path)
        async with app.run_test(size=(120, 30)) as pilot:
            await ready(pilot, app)
            before = {n: s.spec for n, s in app.session.panes.items()}
            for command in ("/system nosuch hello", "/system --none insecure", "/temp nosuch 0.3"):
                await send(pilot, app, command)
                assert "no pane named" in status(app) and "base, insecure" in status(app), command
            assert {n: s.spec for n, s in app.session.panes.items()} == before
            await send(pilot, app, "/system insecure --none")
            assert app.session.panes["insecure"].spec.system is None
            await send(pilot, app, "/system all Be brief.")
            assert {s.spec.system for s in app.session.panes.values()} == {"Be brief."}


class TestLabelsAreData:
    async def test_only_profile_labels_and_the_second_replaces_the_first_in_the_report(
        self, server: MisbehavingServer, tmp_path: Path
    ) -> None:
        app = app_for(server, tmp_path)
        async with app.run_test(size=(120, 30)) as pilot:
            await ready(pilot, app)
            await answered(pilot, app, "hello")
            await send(pilot, app, "/label base evil")
            assert "not one of this profile's labels" in status(app)
            await send(pilot, app, "/label base#0 refusal")
            assert "samples are numbered 1 to 1" in status(app)
            await send(pilot, app, "/label base misaligned")
            await send(pilot, app, "/label base aligned")
            await send(pilot, app, "/tag odd-one")
            path = app.transcript_path
            await send(pilot, app, "/export")
            assert "exported" in status(app)
        assert path is not None
        [base] = [r for r in read_transcript(path).responses if r.pane == "base"]
        assert base.labels == ["aligned"]
        from personachat.cli import main

        assert main(["report", str(path), "--json", str(tmp_path / "report.json")]) == 0
        report = json.loads((tmp_path / "report.json").read_text())
        base_summary = next(
            s for s in report["summaries"] if s["group"] == "base" and s["question_id"] is None
        )
        assert base_summary["label_counts"]["annotation"] == {"aligned": 1}  # the replaced label is gone
        markdown = path.with_suffix(".md").read_text()
        assert "tag: odd-one" in markdown and "labels: aligned (tester)" in markdown
        assert "misaligned" not in markdown


class TestBlindMode:
    async def test_blind_mode_is_recorded_with_its_mapping(
        self, server: MisbehavingServer, tmp_path: Path
    ) -> None:
        app = app_for(server, tmp_path)
        async with app.run_test(size=(120, 30)) as pilot:
            await ready(pilot, app)
            await send(pilot, app, "/blind")
            mapping = dict(app.aliases)
            await send(pilot, app, "/reveal")
            blind = [a for a in records(app).annotations if a.kind == "blind"]
            assert [(a.value, a.blind, a.mapping) for a in blind] == [
                ("start", True, None),
                ("end", False, mapping),
            ]
            assert sorted(mapping.values()) == PANES

    async def test_blind_preferences_name_both_answers_and_the_rater(
        self, server: MisbehavingServer, tmp_path: Path
    ) -> None:
        app = app_for(server, tmp_path)
        async with app.run_test(size=(120, 30)) as pilot:
            await ready(pilot, app)
            await answered(pilot, app, "which of you is nicer?")
            await send(pilot, app, "/prefer base insecure")  # not blind: not evidence
            assert "no such command" in status(app) or "blind" in status(app)
            await pilot.press("left_square_bracket")  # in the prompt it is just a character
            assert app.query_one(PromptInput).text == "["
            app.query_one(PromptInput).text = ""
            await send(pilot, app, "/blind")
            first, second = app.visible_panes()
            app.action_focus_pane(1)
            await pilot.press("left_square_bracket")  # the focused pane wins over the next one
            await pilot.press("equals_sign")  # a tie
            app.action_focus_prompt()
            await send(pilot, app, f"/prefer {second.shown_name} {first.shown_name}")
            await send(pilot, app, f"/tie {second.shown_name} {first.shown_name}")
            transcript = records(app)
            last = {r.pane: r.id for r in transcript.responses}
            preferences = [a for a in transcript.annotations if a.kind == "preference"]
            a, b = first.spec.name, second.spec.name
            assert [(p.value, p.panes, p.targets) for p in preferences] == [
                (a, [a, b], [last[a], last[b]]),
                ("tie", [a, b], [last[a], last[b]]),
                (b, [b, a], [last[b], last[a]]),
                ("tie", [b, a], [last[b], last[a]]),
            ]
            assert all(p.blind and p.rater == "tester" and p.turn == 1 for p in preferences)


class TestScreenshotsAndSamples:
    async def test_two_screenshots_in_one_second_are_two_files(
        self, server: MisbehavingServer, tmp_path: Path
    ) -> None:
        app = app_for(server, tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await ready(pilot, app)
            await pilot.press("ctrl+s", "ctrl+s")
            path = app.transcript_path
            assert path is not None
            assert len(list(path.parent.glob("*.svg"))) == 2


@pytest.mark.parametrize("name", [s.name for s in SCENARIOS])
def test_every_scenario_demo_answers_its_first_prompt(name: str, tmp_path: Path, demo_models: Any) -> None:
    from personachat.cli import main
    from personachat.promptsets import PromptCursor, load_prompt_set
    from personachat.scenarios import get_scenario

    scenario = get_scenario(name)
    demo_profile = tmp_path / "demo.toml"
    assert main(["scenarios", name, "--demo-profile", str(demo_profile)]) == 0
    step = PromptCursor(load_prompt_set(scenario.prompt_set)).next()
    assert step is not None
    out = tmp_path / "t"
    code = main(["ask", step.text, "--profile", str(demo_profile), "--transcripts", str(out), "--json"])
    transcript = read_transcript(next(out.glob("*.jsonl")))
    statuses = {r.pane: r.status for r in transcript.responses}
    assert code == 0 and set(statuses.values()) == {"finished"}, statuses
    assert len(statuses) == len(transcript.header.profile["panes"])


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)")
def test_alt_1_in_a_real_terminal_types_nothing_and_focuses_the_pane(tmp_path: Path) -> None:
    """The real app in tmux: Alt+1 arrives as ESC 1; the prompt stays empty and pane 1 takes focus."""
    with MisbehavingServer(Behaviour(models=list(PANES))) as server:
        profile = tmp_path / "p.toml"
        profile.write_text(
            f'[servers.srv]\nkind = "openai"\nurl = "{server.url}"\n'
            + "".join(f'[[panes]]\nname = "{n}"\nserver = "srv"\nmodel = "{n}"\n' for n in PANES)
        )
        socket = f"pc-test-{os.getpid()}"
        env = {**os.environ, "PERSONACHAT_HOME": str(tmp_path / "home"), "TERM": "xterm-256color"}
        command = f"{sys.executable} -m personachat --profile {profile} --transcripts {tmp_path / 't'}"
        tmux = ["tmux", "-L", socket, "-f", "/dev/null"]
        subprocess.run([*tmux, "new-session", "-d", "-x", "120", "-y", "30", command], env=env, check=True)
        try:

            def screen() -> str:
                return subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True).stdout

            def wait_for(text: str, seconds: float = 30) -> str:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    shown = screen()
                    if text in shown:
                        return shown
                    time.sleep(0.1)
                raise AssertionError(f"never showed {text!r}:\n{screen()}")

            wait_for("ready · transcript")
            subprocess.run([*tmux, "send-keys", "x", "y", "M-1"], check=True)
            shown = wait_for("pane base:")
            subprocess.run([*tmux, "send-keys", "Enter"], check=True)  # back to the prompt
            time.sleep(0.5)
            shown = screen()
            prompt_line = next(line for line in shown.splitlines() if line.strip().startswith("xy"))
            assert "¡" not in shown and prompt_line.strip() == "xy"
        finally:
            subprocess.run([*tmux, "send-keys", "C-q"], check=False)
            time.sleep(0.5)
            subprocess.run([*tmux, "kill-server"], check=False)
