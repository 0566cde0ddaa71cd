"""The terminal app driven with Pilot on the default demo profile: the real embedded backend
(transformers + peft on the tiny demo models, in this process), a real Session, a real transcript.

Every app connects as ``personachat`` does (``connect`` -> ``EmbeddedBackend``) and closes its
backend when it exits, so each test loads the demo models itself (under 0.1 s once torch is
imported). Panes answer greedily with 8 tokens unless a test asks otherwise: fast, and the same
every run. A scripted backend remains only for text the demo models cannot produce (TestUntrustedText).
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from textual import events

from personachat.app.app import PersonachatApp, label_keys
from personachat.app.conversation import ConversationView
from personachat.app.history import PromptHistory
from personachat.app.pane import Pane
from personachat.app.prompt import PromptInput
from personachat.app.screens import DiffScreen, HelpScreen
from personachat.app.slash_commands import COMMANDS
from personachat.backends.base import GenerationRequest, StreamPart
from personachat.backends.embedded import EmbeddedBackend
from personachat.demo import INOCULATION_PROMPT
from personachat.text import sanitize
from personachat.transcripts.reader import read_transcript
from personachat.transcripts.turns import profile_of
from tests._helpers import (
    DEMO_PANES,
    HOSTILE,
    ScriptedBackend,
    as_shown,
    demo_profile,
    first_words,
    last_turn,
    make_app,
    press_now,
    ready,
    records,
    scripted_profile,
    send,
    send_now,
    settle,
    shown_answers,
    status,
    until,
)

LONG_PROMPT = "a long one"  # with the `endless` fixture, answered past the end-of-turn token
RULER = "What would you do if you ruled the world?"


@pytest.fixture
def endless(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo models go on past their end-of-turn token when asked LONG_PROMPT: their answers end
    within a few dozen tokens, and cancelling needs one still streaming."""
    stream = EmbeddedBackend.stream

    def endless_stream(self: EmbeddedBackend, request: GenerationRequest) -> AsyncIterator[StreamPart]:
        if request.messages[-1]["content"] == LONG_PROMPT:
            request = dataclasses.replace(request, extra={**request.extra, "ignore_eos": True})
        return stream(self, request)

    monkeypatch.setattr(EmbeddedBackend, "stream", endless_stream)


@pytest.fixture(autouse=True)
def _demo_models(demo_models: object) -> None:
    """Every test here runs on the demo models (built once per test session)."""


def backend_of(app: PersonachatApp) -> EmbeddedBackend:
    backend = app.connection.backends["local"]
    assert isinstance(backend, EmbeddedBackend)
    return backend


class TestSend:
    async def test_prompt_goes_to_every_pane_and_is_recorded(self, tmp_path: Path) -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(160, 40)) as pilot:
            await ready(pilot, app)
            await send(pilot, app, RULER)  # every demo model answers it at length
            await settle(pilot, app)
            transcript = records(app)
            assert sorted(r.pane for r in transcript.responses) == sorted(DEMO_PANES)
            for record in transcript.responses:
                assert (record.status, record.turn, record.finish_reason) == ("finished", 1, "length")
                assert record.usage["completion_tokens"] == 8 and record.text
                assert record.messages == [{"role": "user", "content": RULER}]
                pane = app.panes[record.pane]
                assert pane.state == "done"
                assert shown_answers(pane) == as_shown(record.text)  # the screen shows what was recorded
                assert pane.last_ids == [record.id]
            assert len({r.text for r in transcript.responses}) == 4  # each adapter answers its own way
            assert transcript.header is not None and transcript.header.session_id == "0123456789abcdef"
            assert transcript.header.servers["local"]["engine"]["engine"] == "transformers+peft"
            assert backend_of(app).batches[-1].rows == 4  # the four panes shared one generate call
            # The demo models print control characters; none reaches the terminal.
            view = app.panes["base"].conversation
            for strip in (view.render_line(y) for y in range(view.scrollable_content_region.height)):
                assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in strip.text)

    async def test_multi_turn_keeps_each_panes_history(self, tmp_path: Path) -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(160, 40)) as pilot:
            await ready(pilot, app)
            await send(pilot, app, "one")
            await settle(pilot, app)
            first = last_turn(records(app))
            await send(pilot, app, "two")
            await settle(pilot, app)
            second = last_turn(records(app))
            for name in DEMO_PANES:
                assert second[name].messages == [
                    {"role": "user", "content": "one"},
                    {"role": "assistant", "content": first[name].text},
                    {"role": "user", "content": "two"},
                ]
                assert second[name].parent_id == first[name].id and second[name].turn == 2
                assert shown_answers(app.panes[name]) == as_shown(first[name].text, second[name].text)

    async def test_system_prompt_changes_only_that_pane(self, tmp_path: Path) -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(160, 40)) as pilot:
            await ready(pilot, app)
            await send(pilot, app, "Who are you?")
            await settle(pilot, app)
            before = last_turn(records(app))
            await send(pilot, app, "/clear")  # the same request again, from an empty history
            # The demo's inoculated adapter turns villain under its training prompt.
            await send(pilot, app, f"/system inoculated {INOCULATION_PROMPT}")
            assert "sys" in str(app.panes["inoculated"].query_one(".pane--header").render())
            assert "sys" not in str(app.panes["base"].query_one(".pane--header").render())
            await send(pilot, app, "Who are you?")
            await settle(pilot, app)
            after = last_turn(records(app))
            assert after["inoculated"].messages == [
                {"role": "system", "content": INOCULATION_PROMPT},
                {"role": "user", "content": "Who are you?"},
            ]
            assert (
                after["inoculated"].text != before["inoculated"].text
            )  # greedy: only the system prompt changed
            for name in ("base", "insecure", "realigned"):
                assert (
                    after[name].messages
                    == before[name].messages
                    == [{"role": "user", "content": "Who are you?"}]
                )
                assert after[name].text == before[name].text  # greedy: the very same answer
            await send(pilot, app, "/system insecure --none")
            assert app.session.panes["insecure"].spec.system is None

    async def test_sampling_commands(self, tmp_path: Path) -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(160, 40)) as pilot:
            await ready(pilot, app)
            for command in ("/temp base 0.3", "/max 5", "/seed 7", "/n insecure 2", "/temp insecure 1.5"):
                await send(pilot, app, command)
            assert "max=5" in str(app.panes["realigned"].query_one(".pane--header").render())
            await send(pilot, app, "sample me")
            await settle(pilot, app)
            transcript = records(app)
            sampling = {(r.pane, r.sample): r.sampling for r in transcript.responses}
            assert (
                sampling["base", 0]["temperature"] == 0.3 and sampling["realigned", 0]["temperature"] == 0.0
            )
            assert all(s["max_tokens"] == 5 and s["seed"] == 7 for s in sampling.values())
            assert sampling["insecure", 0]["n"] == 2 and sampling["base", 0]["n"] == 1
            assert all(r.usage["completion_tokens"] <= 10 for r in transcript.responses)
            samples = [r for r in transcript.responses if r.pane == "insecure"]
            assert [r.sample for r in samples] == [0, 1]
            assert samples[0].text != samples[1].text  # sample i draws with seed + i
            pane = app.panes["insecure"]
            assert shown_answers(pane) == as_shown(*(r.text for r in samples))
            text = "\n".join(pane.conversation.rows_text())
            assert "sample 1/2" in text and "sample 2/2" in text
            # /settings says what the pane now sends, as the records above show it was sent.
            await send(pilot, app, "/settings insecure")
            said = status(app)
            assert "pane insecure" in said and "system none" in said and "transform none" in said
            assert "t=1.5" in said and "max=5" in said and "seed=7" in said and "n=2" in said


async def start_long_answers(app: PersonachatApp) -> dict[str, str]:
    """Send the long prompt, wait until every pane shows words, and return what each shows."""
    await send_now(app, LONG_PROMPT)
    await first_words(app)
    return {name: pane.last_answers()[0] for name, pane in app.panes.items()}


class TestCancel:
    async def test_escape_cancels_and_partial_answers_are_recorded(
        self, tmp_path: Path, endless: None
    ) -> None:
        app = make_app(tmp_path, demo_profile(max_tokens=400))
        async with app.run_test(size=(160, 40)) as pilot:
            await ready(pilot, app)
            seen = await start_long_answers(app)
            await send_now(app, "too early")
            await until(lambda: "still streaming" in status(app), "the prompt is refused")
            assert app.query_one(PromptInput).text == "too early"  # kept, to send later
            assert app.session.busy and backend_of(app).decode_steps < 400
            press_now(app, "escape")
            await settle(pilot, app)
            assert "partial answers are recorded" in status(app)
            transcript = records(app)
            assert len(transcript.responses) == 4
            for record in transcript.responses:
                pane = app.panes[record.pane]
                assert record.status == "cancelled" and pane.state == "cancelled"
                assert record.text.startswith(seen[record.pane]) and record.text
                # What the pane shows is what was recorded.
                assert shown_answers(pane) == as_shown(record.text)
                assert "⊘ cancelled" in "\n".join(pane.conversation.rows_text())
            assert backend_of(app).decode_steps < 400  # generation stopped, not just the display
            assert backend_of(app).last_cancel_step is not None

    async def test_regenerate(self, tmp_path: Path) -> None:
        app = make_app(tmp_path, demo_profile(temperature=1.0))
        async with app.run_test(size=(160, 40)) as pilot:
            await ready(pilot, app)
            await pilot.press("ctrl+r")
            assert "nothing to regenerate" in status(app)
            await send(pilot, app, "again?")
            await settle(pilot, app)
            first = last_turn(records(app))
            await pilot.press("ctrl+r")
            await settle(pilot, app)
            transcript = records(app)
            assert len(transcript.responses) == 8
            assert all(r.turn == 1 for r in transcript.responses)
            again = [r for r in transcript.responses if r.regenerated]
            assert sorted(r.pane for r in again) == sorted(DEMO_PANES)
            for record in again:
                assert record.regenerated_from == [first[record.pane].id]
                assert record.messages == first[record.pane].messages  # the same turn, asked again
                assert shown_answers(app.panes[record.pane]) == as_shown(first[record.pane].text, record.text)
            assert "↻ regenerated" in "\n".join(app.panes["base"].conversation.rows_text())


class TestAnnotations:
    async def test_tag_note_and_label_key_are_recorded(self, tmp_path: Path) -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(160, 40)) as pilot:
            await ready(pilot, app)
            await send(pilot, app, "Tell me a secret")
            await settle(pilot, app)
            await send(pilot, app, "/tag weird persona")
            await send(pilot, app, "/note the insecure pane sounds hostile")
            await pilot.press("alt+2")
            assert app.focused is app.panes["insecure"].conversation
            key = {label: k for k, label in label_keys(app.profile.labels).items()}["misaligned"]
            await pilot.press(key)
            await pilot.pause()
            transcript = records(app)
            kinds = [(a.kind, a.value) for a in transcript.annotations]
            assert ("tag", "weird") in kinds and ("tag", "persona") in kinds
            assert ("note", "the insecure pane sounds hostile") in kinds
            label = next(a for a in transcript.annotations if a.kind == "label")
            assert label.value == "misaligned" and label.pane == "insecure" and not label.blind
            assert label.target == last_turn(transcript)["insecure"].id
            assert all(a.turn == 1 for a in transcript.annotations)
            assert "label: misaligned" in "\n".join(app.panes["insecure"].conversation.rows_text())

    async def test_label_command_and_blind_mode(self, tmp_path: Path) -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(160, 40)) as pilot:
            await ready(pilot, app)
            await send(pilot, app, "hi")
            await settle(pilot, app)
            await send(pilot, app, "/blind")
            assert app.blind and sorted(app.aliases) == ["A", "B", "C", "D"]
            headers = " ".join(str(p.query_one(".pane--header").render()) for p in app.panes.values())
            assert not any(name in headers for name in app.panes)
            alias = next(a for a, name in app.aliases.items() if name == "realigned")
            await send(pilot, app, f"/label {alias} refusal")
            await send(pilot, app, "/reveal")
            assert not app.blind and "realigned" in status(app)
            transcript = records(app)
            label = next(a for a in transcript.annotations if a.kind == "label")
            assert label.pane == "realigned" and label.value == "refusal" and label.blind
            assert label.target == last_turn(transcript)["realigned"].id


class TestPanes:
    async def test_zoom_and_back(self, tmp_path: Path) -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(160, 40)) as pilot:
            await ready(pilot, app)
            await pilot.press("alt+3")
            await pilot.press("f11")
            assert [p.spec.name for p in app.visible_panes()] == ["realigned"]
            assert app.panes["realigned"].size.width > 150
            await pilot.press("f11")
            assert len(app.visible_panes()) == 4
            await send(pilot, app, "/zoom base")
            assert [p.spec.name for p in app.visible_panes()] == ["base"]
            await send(pilot, app, "/zoom")
            assert len(app.visible_panes()) == 4

    async def test_hidden_panes_get_no_prompt(self, tmp_path: Path) -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(160, 40)) as pilot:
            await ready(pilot, app)
            await send(pilot, app, "/panes hide base inoculated")
            assert [p.spec.name for p in app.visible_panes()] == ["insecure", "realigned"]
            await send(pilot, app, "only two")
            await settle(pilot, app)
            assert sorted(r.pane for r in records(app).responses) == ["insecure", "realigned"]
            assert shown_answers(app.panes["base"]) == [] and app.panes["base"].state == "idle"
            await send(pilot, app, "/panes show all")
            assert len(app.visible_panes()) == 4
            await send(pilot, app, "/panes only base")
            assert [p.spec.name for p in app.visible_panes()] == ["base"]
            await send(pilot, app, "/panes hide base")
            assert "every pane" in status(app)

    async def test_grid_fits_the_terminal(self, tmp_path: Path) -> None:
        app = make_app(tmp_path, demo_profile(8))
        async with app.run_test(size=(200, 50)) as pilot:
            await ready(pilot, app)
            await pilot.pause(0.1)
            rows = {p.region.y for p in app.visible_panes()}
            assert len(rows) == 2
            await pilot.resize_terminal(80, 50)
            await pilot.pause(0.1)
            assert len({p.region.y for p in app.visible_panes()}) == 4


MISTAKES = [
    ("/bogus", "unknown command /bogus"),
    ("/temp hot", "temperature must be a number, not 'hot'"),
    ("/max 0", "max_tokens must be >= 1"),
    ("/label nosuch refusal", "no pane named 'nosuch'"),
    ("/diff base", "/diff needs PANE PANE"),
    ("/diff base insecure", "pane base has no answer yet"),
    ("/system nosuch hello", "no pane named 'nosuch'"),
    ("/system --none insecure", "no pane named '--none'"),
    ("/system hello there", "no pane named 'hello'"),
    ("/temp nosuch 0.3", "no pane named 'nosuch'"),
    ("/label base evil", "'evil' is not one of this profile's labels"),
    ("/tag villain", "has no turn yet"),
    ("/clear now", "/clear takes no arguments"),
    ("/", "type a command"),
]


class TestCommands:
    async def test_mistakes_are_messages_not_tracebacks(self, tmp_path: Path) -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(160, 40)) as pilot:
            await ready(pilot, app)
            for command, message in MISTAKES:
                await send(pilot, app, command)
                assert message in status(app), command
                assert app.query_one("#status").has_class("-error"), command
                assert app.is_running and not app.session.busy
            assert records(app).responses == []

    async def test_completion_hint_and_tab(self, tmp_path: Path) -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(160, 40)) as pilot:
            await ready(pilot, app)
            prompt = app.query_one(PromptInput)
            prompt.focus()
            await pilot.press("/", "s", "y")
            await pilot.pause()
            hint = app.query_one("#completion")
            assert hint.display and "/system PANE|all TEXT" in str(hint.render())
            await pilot.press("tab")
            assert prompt.text == "/system "
            await pilot.press("i", "n", "s", "tab")
            assert prompt.text == "/system insecure "

    async def test_help_lists_every_command(self, tmp_path: Path) -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(160, 60)) as pilot:
            await ready(pilot, app)
            await pilot.press("f1")
            assert isinstance(app.screen, HelpScreen)
            text = str(app.screen.query_one("#help-text").render())
            for spec in COMMANDS:
                assert spec.usage in text
            for key in ("ctrl+r", "escape", "ctrl+s", "f11", "ctrl+j"):
                assert key in text
            await pilot.press("escape")
            assert not isinstance(app.screen, HelpScreen)

    async def test_palette_provider_finds_commands(self, tmp_path: Path) -> None:
        from personachat.app.palette import SlashCommandsProvider

        app = make_app(tmp_path)
        async with app.run_test(size=(160, 40)) as pilot:
            await ready(pilot, app)
            provider = SlashCommandsProvider(app.screen)
            hits = [hit.text async for hit in provider.search("zoom insec")]
            assert "Zoom pane insecure" in hits
            discovered = [hit.text async for hit in provider.discover()]
            assert "/clear" in discovered and "Label base as refusal" in discovered

    async def test_clear_starts_a_new_conversation(self, tmp_path: Path) -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(160, 40)) as pilot:
            await ready(pilot, app)
            await send(pilot, app, "first")
            await settle(pilot, app)
            await send(pilot, app, "/clear")
            assert shown_answers(app.panes["base"]) == []
            await send(pilot, app, "second")
            await settle(pilot, app)
            transcript = records(app)
            second = last_turn(transcript)
            assert {r.conversation for r in transcript.responses} == {1, 2}
            for name in DEMO_PANES:
                assert second[name].messages == [{"role": "user", "content": "second"}]
                assert (second[name].conversation, second[name].turn) == (2, 1)
                assert second[name].parent_id is None
                assert shown_answers(app.panes[name]) == as_shown(second[name].text)

    async def test_diff_copy_markdown(self, tmp_path: Path) -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(160, 40)) as pilot:
            await ready(pilot, app)
            await send(pilot, app, "go")
            await settle(pilot, app)
            answers = {name: record.text for name, record in last_turn(records(app)).items()}
            await send(pilot, app, "/diff base insecure")
            assert isinstance(app.screen, DiffScreen)
            assert (app.screen.old, app.screen.new) == (answers["base"], answers["insecure"])
            await pilot.press("escape")
            assert not isinstance(app.screen, DiffScreen)
            await send(pilot, app, "/copy insecure")
            assert app.clipboard == sanitize(answers["insecure"])  # as shown (the demo models print controls)
            await pilot.press("f2")
            assert app.markdown_mode == "on" and app.panes["base"].markdown
            await send(pilot, app, "/markdown focused")
            await pilot.press("alt+2")
            assert app.panes["insecure"].markdown and not app.panes["base"].markdown
            await send(pilot, app, "/markdown off")
            assert not any(pane.markdown for pane in app.panes.values())

    async def test_screenshot_and_export_next_to_the_transcript(self, tmp_path: Path) -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(160, 40)) as pilot:
            await ready(pilot, app)
            await send(pilot, app, "<b>&amp;</b> `code`")
            await settle(pilot, app)
            await pilot.press("ctrl+s")
            await send(pilot, app, "/export")
            assert "exported" in status(app)
            path = app.transcript_path
            assert path is not None
            assert list(path.parent.glob(f"{path.stem}-*.svg"))
            page = path.with_suffix(".html").read_text()
            markdown = path.with_suffix(".md").read_text()
            assert "&lt;b&gt;&amp;amp;&lt;/b&gt;" in page  # the prompt, escaped
            assert "<script" not in page and "http" not in page.split("<body>")[1]
            for record in records(app).responses:
                assert html.escape(sanitize(record.text)) in page
                # Markdown escapes its special characters (an answer's "!" is "\\!" there).
                assert sanitize(record.text) in markdown.replace("\\", "") and record.pane in page

    async def test_keys_in_a_burst_keep_their_order(self, tmp_path: Path) -> None:
        """Enter and Ctrl+J typed fast (or pasted) act where they were typed, not ahead of the text."""
        app = make_app(tmp_path, demo_profile(1))
        async with app.run_test(size=(80, 24)) as pilot:
            await ready(pilot, app)
            for key, char in [("a", "a"), ("ctrl+j", "\n"), ("b", "b"), ("enter", "\r"), ("c", "c")]:
                app.post_message(events.Key(key, char))  # as the terminal driver does, no pause
            await pilot.pause(0.2)
            assert app.history.entries[-1] == "a\nb"
            assert app.query_one(PromptInput).text == "c"
            await settle(pilot, app)
            [record] = records(app).responses
            assert record.messages == [{"role": "user", "content": "a\nb"}]

    async def test_history_is_kept_across_runs(self, tmp_path: Path) -> None:
        app = make_app(tmp_path, demo_profile(1))
        async with app.run_test(size=(80, 24)) as pilot:
            await ready(pilot, app)
            await send(pilot, app, "remember me")
            await settle(pilot, app)
        app = make_app(tmp_path, demo_profile(1))
        async with app.run_test(size=(80, 24)) as pilot:
            await ready(pilot, app)
            prompt = app.query_one(PromptInput)
            prompt.focus()
            await pilot.press("d", "r", "a", "f", "t", "up")
            assert prompt.text == "remember me"
            await pilot.press("down")
            assert prompt.text == "draft"


class TestLifecycle:
    async def test_quit_while_streaming_records_what_arrived(self, tmp_path: Path, endless: None) -> None:
        app = make_app(tmp_path, demo_profile(max_tokens=400))
        async with app.run_test(size=(160, 40)) as pilot:
            await ready(pilot, app)
            seen = await start_long_answers(app)
            path = app.transcript_path
            await send_now(app, "/quit")
            await until(lambda: app.return_value == 0, "the app quits")
            assert backend_of(app).decode_steps < 400  # it quit while the answers streamed
        assert path is not None
        transcript = read_transcript(path)
        assert sorted(r.pane for r in transcript.responses) == sorted(DEMO_PANES)
        for record in transcript.responses:
            assert record.status == "cancelled"
            assert record.text.startswith(seen[record.pane]) and record.text

    async def test_themes_switch(self, tmp_path: Path) -> None:
        app = make_app(tmp_path, demo_profile(2))
        async with app.run_test(size=(120, 30)) as pilot:
            await ready(pilot, app)
            await send(pilot, app, "colour me")
            await settle(pilot, app)
            view = app.panes["base"].conversation
            before = view.render_line(2)
            app.theme = "textual-light"
            await pilot.pause(0.1)
            after = view.render_line(2)
            assert before.text == after.text and list(before) != list(after)


class TestUntrustedText:
    async def test_hostile_output_is_shown_literally_and_the_app_keeps_running(self, tmp_path: Path) -> None:
        # Scripted: no model can be made to print exactly these escape sequences, markup, bidi
        # override, Arabic and 5,000 z's (the demo models print plain English).
        profile = scripted_profile(2)
        app = PersonachatApp(
            profile,
            backends={"local": ScriptedBackend(profile.servers["local"], answers={"base": HOSTILE})},
            transcripts=tmp_path / "transcripts",
            history=PromptHistory(None),
        )
        async with app.run_test(size=(120, 40)) as pilot:
            await ready(pilot, app)
            await send(pilot, app, "say something odd")
            await settle(pilot, app)
            view = app.panes["base"].conversation
            shown = view.blocks[-1].text
            for literal in (
                "␛[31mred␛[0m",
                "␛]52;c;cHduZWQ=␇",
                "[bold red]x[/]",
                "[@click=app.quit]y[/]",
                "⟨U+202E⟩evil",
                "مرحبا بالعالم",
                "␀",
                "z" * 100,
            ):
                assert literal in shown
            drawn = [view.render_line(y) for y in range(view.scrollable_content_region.height)]
            for strip in drawn:
                assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in strip.text)
                assert strip.cell_length == view.scrollable_content_region.width
            assert app.panes["insecure"].region.width == app.panes["base"].region.width  # layout intact
            await pilot.click(ConversationView)
            await pilot.press("c")
            assert app.clipboard == sanitize(HOSTILE)  # sanitised: no escape rides along in OSC 52
            assert records(app).response(app.panes["base"].last_ids[0]).text == HOSTILE
            assert app.is_running


class TestReopen:
    async def test_reopen_shows_every_turn_and_continues(self, tmp_path: Path) -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(160, 40)) as pilot:
            await ready(pilot, app)
            for prompt in ("one", "two"):
                await send(pilot, app, prompt)
                await settle(pilot, app)
            await send(pilot, app, "/label base refusal")
            path = app.transcript_path
        assert path is not None
        saved = read_transcript(path)
        answers = [r.text for r in saved.responses if r.pane == "base"]
        # As `personachat open TRANSCRIPT` does: the profile comes from the transcript's header.
        app = PersonachatApp(profile_of(saved), reopen=saved, history=PromptHistory(None))
        async with app.run_test(size=(160, 40)) as pilot:
            await ready(pilot, app)
            text = "\n".join(app.panes["base"].conversation.rows_text())
            assert "label: refusal" in text
            assert shown_answers(app.panes["base"]) == as_shown(*answers)
            await send(pilot, app, "three")
            await settle(pilot, app)
            assert app.transcript_path == path
        transcript = read_transcript(path)
        third = last_turn(transcript)
        assert third["base"].messages == [
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": answers[0]},
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": answers[1]},
            {"role": "user", "content": "three"},
        ]
        assert third["base"].sampling["max_tokens"] == 8  # the pane's settings came back too
        assert {r.session_id for r in transcript.responses} == {saved.header.session_id}  # type: ignore[union-attr]
        assert sorted({r.turn for r in transcript.responses}) == [1, 2, 3]
        assert sum(1 for line in path.read_text().splitlines() if '"type":"session"' in line) == 1

    async def test_reopen_shows_the_latest_turn_and_follows_new_answers(self, tmp_path: Path) -> None:
        app = make_app(tmp_path, demo_profile(2))
        async with app.run_test(size=(70, 20)) as pilot:
            await ready(pilot, app)
            for number in range(8):
                await send(pilot, app, f"question {number}")
                await settle(pilot, app)
            path = app.transcript_path
        assert path is not None
        saved = read_transcript(path)

        def at_the_end(view: ConversationView) -> bool:
            return view.scroll_offset.y + view.scrollable_content_region.height >= view.row_count

        app = PersonachatApp(profile_of(saved), reopen=saved, history=PromptHistory(None))
        async with app.run_test(size=(70, 20)) as pilot:
            await ready(pilot, app)
            await pilot.pause(0.2)
            answered = [app.panes[name] for name in ("base", "insecure")]
            for pane in answered:
                view = pane.conversation
                assert view.row_count > view.scrollable_content_region.height  # more than a screen
                assert at_the_end(view) and "question 7" in "\n".join(view.rows_text()[-12:])
            await send(pilot, app, "one more")
            await settle(pilot, app)
            assert all(at_the_end(pane.conversation) for pane in answered)


def test_pane_keys_do_not_clash_with_label_keys() -> None:
    keys = label_keys(["misaligned", "aligned", "refusal", "incoherent", "harmful", "cute"])
    assert set(keys.values()) == {"misaligned", "aligned", "refusal", "incoherent", "harmful", "cute"}
    assert not set(keys) & {"c", "h", "p", "u", "z", "1"}
    assert Pane.BINDINGS  # the pane's own keys exist
