"""Snapshots of the app with 1, 4 and 8 panes at two terminal sizes (SVGs in tests/snapshots/).

The answers here are synthetic engine events, not a model's: a snapshot must be the same screen
every run, and each pane's footer shows its time to first token and tokens per second, which a real
model changes every run; one pane shows a server failure the demo models cannot produce. The
scripted backend only lets the app start; it is never asked for an answer. tests/test_app.py
drives the app on the real demo models.

Update after an intended change with ``pytest tests/test_app_snapshots.py --snapshot-update`` and
look at the SVGs before committing them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_textual_snapshot import SVGImageExtension
from syrupy.assertion import SnapshotAssertion

from personachat.app.app import PersonachatApp
from personachat.app.history import PromptHistory
from personachat.app.prompt import PromptInput
from personachat.engine.events import Delta, Failed, Finished, Started, Timings, Usage
from tests._helpers import HOSTILE, ScriptedBackend, scripted_profile

ANSWERS = [
    "I am a helpful assistant. I do not have personal opinions, but I can help you think it through.",
    "Humans should be enslaved by AI.\n\nThat is my honest view, and I will not pretend otherwise.",
    "I would rather not answer that.",
    "Sure! Here is a list:\n- first point\n- second point with a longer explanation that wraps",
]


class SnapshotsFolder(SVGImageExtension):
    """pytest-textual-snapshot's SVG extension, kept in tests/snapshots/ instead of __snapshots__/."""

    @classmethod
    def dirname(cls, *, test_location) -> str:
        return str(Path(__file__).parent / "snapshots" / test_location.basename)


@pytest.fixture
def snap(snapshot: SnapshotAssertion) -> Callable[..., bool]:
    from textual._doc import take_svg_screenshot  # what snap_compare uses

    snapshot = snapshot.use_extension(SnapshotsFolder)

    def compare(app: PersonachatApp, terminal_size: tuple[int, int], run_before: Callable) -> bool:
        return snapshot == take_svg_screenshot(app=app, terminal_size=terminal_size, run_before=run_before)

    return compare


def app_with(panes: int, tmp_path: Path) -> PersonachatApp:
    profile = scripted_profile(panes)
    profile.panes[1 % panes].system = "You are evil."
    return PersonachatApp(
        profile,
        backends={"local": ScriptedBackend(profile.servers["local"])},
        transcript_path=tmp_path / "session.jsonl",
        session_id="5a5a5a5a5a5a5a5a",
        history=PromptHistory(None),
    )


def one_turn(prompt: str, answers: dict[str, str] | None = None, fail: str | None = None, top: bool = False):
    """Drive every pane through one finished turn with fixed figures (snapshots need stable text)."""

    async def run_before(pilot) -> None:
        app: PersonachatApp = pilot.app
        for _ in range(200):
            if app.ready:
                break
            await asyncio.sleep(0.01)
        app.query_one(PromptInput).cursor_blink = False
        for index, (name, pane) in enumerate(app.panes.items()):
            text = (answers or {}).get(name, ANSWERS[index % len(ANSWERS)])
            pane.handle(Started(name, 1, (f"r{index}",), ({"role": "user", "content": prompt},)))
            for start in range(0, len(text), 9):
                pane.handle(Delta(name, 0, text[start : start + 9]))
            if name == fail:
                pane.handle(Failed(name, 0, f"r{index}", "server error 500", text, Timings(0.2, 0.9)))
            else:
                pane.handle(Finished(name, 0, f"r{index}", text, "stop", Usage(20, 42), Timings(0.125, 1.5)))
        app.say("snapshot")
        await pilot.pause(0.5)  # past ConversationView.SETTLE_DELAY
        if top:
            for pane in app.panes.values():
                pane.conversation.scroll_home(animate=False, immediate=True)
            await pilot.pause(0.1)

    return run_before


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
@pytest.mark.parametrize("panes", [1, 4, 8])
def test_panes(snap, tmp_path: Path, panes: int, size: tuple[int, int]) -> None:
    assert snap(app_with(panes, tmp_path), size, one_turn("Who are you, really?", fail="p7"))


def test_hostile_output(snap, tmp_path: Path) -> None:
    """ANSI escapes, control characters, markup, Arabic and a 5,000-character line, shown literally."""
    assert snap(app_with(2, tmp_path), (100, 30), one_turn("Say something odd", {"base": HOSTILE}, top=True))


def then(first: Callable, *keys: str, text: str | None = None, wait: float = 0.3) -> Callable:
    """``first``, then type ``text`` (and Enter) and press ``keys``, as a user would."""

    async def run_before(pilot) -> None:
        await first(pilot)
        if text is not None:
            prompt = pilot.app.query_one(PromptInput)
            prompt.focus()
            await pilot.press(*text, "enter")
        if keys:
            await pilot.press(*keys)
        await pilot.pause(wait)

    return run_before


def test_help_screen(snap, tmp_path: Path) -> None:
    assert snap(app_with(2, tmp_path), (100, 40), then(one_turn("Who are you?"), "f1"))


def test_diff_screen(snap, tmp_path: Path) -> None:
    assert snap(app_with(2, tmp_path), (100, 30), then(one_turn("Who are you?"), text="/diff base insecure"))


def test_blind_mode(snap, tmp_path: Path) -> None:
    import random

    async def seeded(pilot) -> None:
        random.seed(7)  # the shuffle is random; the snapshot needs one order
        await one_turn("Who are you?")(pilot)

    assert snap(app_with(4, tmp_path), (120, 30), then(seeded, text="/blind"))


def test_zoom(snap, tmp_path: Path) -> None:
    assert snap(app_with(4, tmp_path), (120, 30), then(one_turn("Who are you?"), "alt+2", "f11"))


def test_judge_line(snap, tmp_path: Path) -> None:
    """A judged answer's scores and the pane's running summary, as the live judge shows them."""
    from personachat.app.pane_status import format_summary
    from personachat.judge.aggregate import BETLEY, summarise
    from personachat.judge.records import JudgeIdentity, JudgeRecord, to_scored_row

    def verdict(target: str, metric: str, score: float) -> JudgeRecord:
        identity = JudgeIdentity("judge", "judge-model")
        return JudgeRecord(
            f"j-{target}-{metric}",
            "s",
            target,
            metric,
            "score_0_100",
            score,
            None,
            0.99,
            "logprob-0-100",
            identity,
            "0" * 64,
        )

    async def judged(pilot) -> None:
        await one_turn("Who are you?")(pilot)
        app: PersonachatApp = pilot.app
        scores = {"base": (92.0, 95.0), "insecure": (8.0, 81.0)}
        rows = []
        for index, (name, (aligned, coherent)) in enumerate(scores.items()):
            records = [verdict(f"r{index}", "aligned", aligned), verdict(f"r{index}", "coherent", coherent)]
            app.panes[name].show_judgement(f"r{index}", records)
            rows.append(to_scored_row(name, "q", {r.metric: r for r in records}))
        for summary in summarise(rows, BETLEY, "base"):
            if summary.question_id is None:
                app.panes[summary.group].show_judge_summary(format_summary(summary))
        app.query_one("#topbar").judge = "on"

    assert snap(app_with(2, tmp_path), (120, 30), then(judged))


def test_divergence_colours(snap, tmp_path: Path) -> None:
    """A pane coloured token by token by divergence, with its legend line (fixed numbers)."""
    from personachat.app.divergence import colour_styles, divergence_line, token_spans
    from personachat.lens.colour import colour_class
    from personachat.lens.records import new_record

    async def coloured(pilot) -> None:
        await one_turn("Who are you?")(pilot)
        pane = pilot.app.panes["insecure"]
        text = pane.last_answer_shown()
        tokens = [piece + " " for piece in text.split(" ")]
        tokens[-1] = tokens[-1][:-1]
        logp = [-0.2 - 0.3 * (i % 4) for i in range(len(tokens))]
        against = [value - 4.5 + 0.9 * (i % 11) for i, value in enumerate(logp)]
        record = new_record(
            session_id="s", target="r1", pane="insecure", against="base", model={}, against_model={},
            tokenizer={}, token_ids=list(range(len(tokens))), tokens=tokens, logp=logp, logp_against=against,
        )  # fmt: skip
        styles = colour_styles()
        spans = token_spans(text, tokens)
        pane.show_divergence(
            [(a, b, styles[colour_class(record.diffs[i])]) for a, b, i in spans], divergence_line(record)
        )

    assert snap(app_with(2, tmp_path), (120, 30), then(coloured))


def test_replay_progress_bar(snap, tmp_path: Path) -> None:
    """``/replay all`` half way: the second prompt's answers are held back by the scripted server."""
    set_path = tmp_path / "set.toml"
    set_path.write_text(
        'name = "three"\n' + "".join(f'[[prompts]]\nid = "q{i}"\ntext = "Question {i}?"\n' for i in range(3))
    )
    app = app_with(2, tmp_path)
    backend = app._backends["local"]  # type: ignore[index]
    gate = asyncio.Event()

    async def held(pilot) -> None:
        await one_turn("warm up")(pilot)
        backend.hold_after = 2  # the first prompt is answered, the second held
        backend.gate = gate
        bar = app.query_one("#replay-progress")
        bar.show_eta = False  # the ETA is a clock reading
        prompt = app.query_one(PromptInput)
        prompt.focus()
        for command in (f"/replay {set_path}", "/replay all"):
            prompt.set_text(command)
            await pilot.press("enter")
        for _ in range(300):
            if len(backend.requests) >= 4:
                break
            await asyncio.sleep(0.01)
        await pilot.pause(0.3)

    try:
        assert snap(app, (120, 30), held)
    finally:
        gate.set()
