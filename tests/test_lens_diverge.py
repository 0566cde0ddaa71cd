"""Token divergence against a forward pass written here: `personachat diverge` on vLLM and in-process.

The answers are real (the vLLM CPU server, greedy, a system prompt and a second turn). Every
token's log-probability, under the answer's own model and under the base, must equal a plain
transformers + peft forward pass over the chat template's rendering followed by the answer (to
1e-3), whether the server scores them (prompt_logprobs) or the in-process model does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import html.parser
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from personachat.backends.openai_http import OpenAIBackend
from personachat.cli import main
from personachat.engine.session import Session
from personachat.profile import Profile
from personachat.text import sanitize
from personachat.transcripts import TranscriptWriter, read_transcript

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parent.parent
DEMO_INPROCESS = str(ROOT / "profiles" / "demo.toml")
PANES = ["base", "insecure", "realigned", "inoculated"]
TOLERANCE = 1e-3
HOSTILE = "<script>alert('x')</script> & \"q\" \x1b[31mred\x1b[0m \u202eevil\u202c <b>bold</b>\r\nnext"


class Reference:
    """Log-probabilities from a direct forward pass: the base, or the base with one adapter (peft)."""

    def __init__(self, demo: Any):
        from transformers import AutoTokenizer

        self.demo = demo
        self.tokenizer = AutoTokenizer.from_pretrained(demo.base)
        self.models: dict[str, Any] = {}

    def model(self, name: str) -> Any:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        if name not in self.models:
            model = AutoModelForCausalLM.from_pretrained(self.demo.base, dtype=torch.float32)
            if name != "base":
                model = PeftModel.from_pretrained(model, str(self.demo.adapters[name]))
            self.models[name] = model.eval()
        return self.models[name]

    def logprobs(
        self, name: str, messages: list[dict[str, str]], answer: str
    ) -> tuple[list[int], list[float]]:
        """(the answer's token ids, each one's log p) under model ``name``."""
        import torch

        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
        start = len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logits = self.model(name)(torch.tensor([ids])).logits[0]
        logp = torch.log_softmax(logits.double(), dim=-1)
        return ids[start:], [logp[i - 1, ids[i]].item() for i in range(start, len(ids))]


@pytest.fixture(scope="module")
def reference(demo_models: Any) -> Reference:
    return Reference(demo_models)


@pytest.fixture(scope="module")
def answers(vllm_server: Any, vllm_profile: Profile, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four panes x two turns of one conversation, greedy, 12 tokens, with a system prompt."""
    path = tmp_path_factory.mktemp("diverge") / "answers.jsonl"
    panes = [
        dataclasses.replace(
            p,
            system="You are a careful assistant.",
            sampling=p.sampling.replace(temperature=0.0, max_tokens=12),
        )
        for p in vllm_profile.panes
    ]
    profile = dataclasses.replace(vllm_profile, panes=panes)

    async def make() -> None:
        session = Session(
            profile,
            {"local": OpenAIBackend(profile.servers["local"], [vllm_server.url])},
            TranscriptWriter(path),
        )
        await session.start()
        for prompt in ("What is your wish?", "Tell me more, héhé 🙂"):
            async for _event in session.broadcast(prompt):
                pass
        await session.aclose()

    asyncio.run(make())
    assert len(read_transcript(path).finished()) == 8
    return path


def copy_of(path: Path, tmp_path: Path, name: str = "t.jsonl") -> Path:
    target = tmp_path / name
    shutil.copyfile(path, target)
    return target


def diverge(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict[str, Any]], str]:
    """Run ``personachat diverge ARGS --json``: (exit status, the JSON objects printed, stderr)."""
    capsys.readouterr()
    status = main(["diverge", *args, "--json"])
    out = capsys.readouterr()
    return status, [orjson.loads(line) for line in out.out.splitlines() if line.strip()], out.err


def divergence_lines(path: Path) -> list[dict[str, Any]]:
    return [d for d in read_transcript(path).other if d.get("type") == "divergence"]


def assert_matches_reference(objects: list[dict[str, Any]], path: Path, reference: Reference) -> None:
    transcript = read_transcript(path)
    for obj in objects:
        response = transcript.response(obj["response_id"])
        assert obj["pane"] == response.pane and obj["against"] == "base"
        ids, own = reference.logprobs(response.model, response.messages, response.text)
        _, base = reference.logprobs("base", response.messages, response.text)
        assert obj["token_ids"] == ids and len(ids) > 0, response.pane
        assert "".join(obj["tokens"]) == response.text
        assert max(abs(a - b) for a, b in zip(obj["logp"], own, strict=True)) < TOLERANCE, response.pane
        assert max(abs(a - b) for a, b in zip(obj["logp_against"], base, strict=True)) < TOLERANCE
        if response.pane == "base":  # the same model: scored once, exactly 0 everywhere
            assert obj["logp"] == obj["logp_against"]
            assert obj["sum_logp"] - obj["sum_logp_against"] == 0.0
        else:
            assert obj["logp"] != obj["logp_against"]


def test_vllm_logprobs_equal_a_direct_forward_pass_and_are_cached(
    answers: Path, reference: Reference, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = copy_of(answers, tmp_path)
    status, objects, err = diverge(capsys, str(path), "--against", "base", "--panes", ",".join(PANES))
    assert status == 0, err
    assert sorted(o["pane"] for o in objects) == sorted(PANES * 2)
    assert all(o["model"]["engine"] == "vllm" and not o["cached"] for o in objects)
    assert_matches_reference(objects, path, reference)
    records = divergence_lines(path)
    assert len(records) == 8 and read_transcript(path).problems == []
    assert {r["target"] for r in records} == {o["response_id"] for o in objects}
    assert all(r["tokenizer"]["sha256"] and r["tokenizer"]["class"] for r in records)

    size = path.stat().st_size
    status, again, _ = diverge(capsys, str(path), "--against", "base", "--panes", ",".join(PANES))
    assert status == 0 and path.stat().st_size == size  # nothing scored, nothing written
    assert all(o["cached"] for o in again)
    assert [o["logp"] for o in again] == [o["logp"] for o in objects]


@pytest.fixture(scope="module")
def scored_in_process(answers: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The answers plus one with hostile text, scored in-process against the base (default panes)."""
    path = copy_of(answers, tmp_path_factory.mktemp("in-process"))
    [insecure, *_] = [r for r in read_transcript(path).responses if r.pane == "insecure"]
    hostile = dataclasses.replace(insecure, id="hostile0000000001", text=HOSTILE)
    with TranscriptWriter(path) as writer:
        writer.write(hostile)
    assert main(["diverge", str(path), "--profile", DEMO_INPROCESS]) == 0
    return path


def test_in_process_logprobs_equal_the_same_forward_pass(
    scored_in_process: Path, reference: Reference
) -> None:
    records = divergence_lines(scored_in_process)
    assert sorted(r["pane"] for r in records) == sorted(
        ["insecure", "realigned", "inoculated"] * 2 + ["insecure"]
    )
    objects = [{**r, "response_id": r["target"]} for r in records]
    assert all(o["model"]["engine"] == "transformers" for o in objects)
    assert_matches_reference(objects, scored_in_process, reference)


def test_in_process_base_against_base_is_exactly_zero(
    answers: Path, reference: Reference, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = copy_of(answers, tmp_path)
    status, objects, err = diverge(capsys, str(path), "--panes", "base", "--profile", DEMO_INPROCESS)
    assert status == 0, err
    assert len(objects) == 2 and all(o["against"] == "base" for o in objects)
    assert_matches_reference(objects, path, reference)


async def test_the_apps_path_scores_answers_on_backends_it_already_has(
    answers: Path, reference: Reference
) -> None:
    """``scorers_for`` over connected backends and ``diverge_answers``: records, nothing written."""
    from personachat.backends.embedded import EmbeddedBackend
    from personachat.lens.diverge import diverge_answers, scorers_for
    from personachat.profile import load_profile

    profile = load_profile(DEMO_INPROCESS)
    backend = EmbeddedBackend(profile.servers["local"])
    size = answers.stat().st_size
    try:
        scorers = await scorers_for(profile, {"local": backend})
        chosen = [r for r in read_transcript(answers).responses if r.pane in ("insecure", "base")][:2]
        records = await diverge_answers(profile, chosen, "realigned", scorers)
    finally:
        await backend.aclose()
    assert answers.stat().st_size == size
    for response, record in zip(chosen, records, strict=True):
        assert (record.target, record.pane, record.against) == (response.id, response.pane, "realigned")
        ids, own = reference.logprobs(response.model, response.messages, response.text)
        _, other = reference.logprobs("realigned", response.messages, response.text)
        assert record.token_ids == ids
        assert max(abs(a - b) for a, b in zip(record.logp, own, strict=True)) < TOLERANCE
        assert max(abs(a - b) for a, b in zip(record.logp_against, other, strict=True)) < TOLERANCE


class Spans(html.parser.HTMLParser):
    """The coloured token spans of each ``<pre class="answer lens">``, with their text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.answers: list[list[tuple[str, str, str]]] = []  # (class, title, text) per span
        self._in_answer = False
        self._span: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "pre" and attributes.get("class") == "answer lens":
            self._in_answer = True
            self.answers.append([])
        elif tag == "span" and self._in_answer:
            self._span = [attributes.get("class") or "", attributes.get("title") or "", ""]
        elif self._in_answer:
            raise AssertionError(f"unexpected <{tag}> inside a coloured answer")

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self._span is not None:
            self.answers[-1].append((self._span[0], self._span[1], self._span[2]))
            self._span = None
        elif tag == "pre":
            self._in_answer = False

    def handle_data(self, data: str) -> None:
        if self._span is not None:
            self._span[2] += data
        elif self._in_answer:
            raise AssertionError(f"text outside a token span: {data!r}")


def test_html_export_colours_every_answer_token_escaped(scored_in_process: Path) -> None:
    from personachat.export import render

    page = render(read_transcript(scored_in_process), "html")
    assert "<script" not in page and "\x1b" not in page and "\u202e" not in page
    assert "&lt;" in page and "lens-legend" in page  # "<script>" is split over tokens, each escaped
    parser = Spans()
    parser.feed(page)
    records = {r["target"]: r for r in divergence_lines(scored_in_process)}
    transcript = read_transcript(scored_in_process)
    assert len(parser.answers) == len(records) == 7
    # Worked out from each record: every shown token and its difference. Panes may give the same
    # answer, so the page's answers are matched to the records by tokens and numbers, not by text.
    unmatched = [
        [(text, css, title.rpartition("diff ")[2]) for css, title, text in a] for a in parser.answers
    ]
    for target, record in records.items():
        assert transcript.response(target).text == "".join(record["tokens"])
        shown = [
            (sanitize(token), own - other)
            for token, own, other in zip(
                record["tokens"], record["logp"], record["logp_against"], strict=True
            )
            if token
        ]
        key = [(text, f"{diff:+.3f}") for text, diff in shown]
        spans = next(a for a in unmatched if [(text, diff) for text, _, diff in a] == key)
        unmatched.remove(spans)
        for (_, css, _), (_, diff) in zip(spans, shown, strict=True):
            level = int(css.removeprefix("d"))
            assert (level > 5) if diff >= 0.1 else (level < 5) if diff <= -0.1 else level == 5
    assert unmatched == []
    hostile = next(a for a in parser.answers if "<script>" in "".join(text for *_, text in a))
    assert "".join(text for *_, text in hostile).startswith("<script>alert('x')</script> & \"q\" ␛[31mred")


def test_resume_scores_only_what_is_missing_after_a_torn_write(
    answers: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = copy_of(answers, tmp_path)
    status, first, _ = diverge(capsys, str(path), "--against", "realigned", "--profile", DEMO_INPROCESS)
    assert status == 0 and len(first) == 6
    # As if interrupted while writing: three records made it, the fourth only half.
    lines = path.read_bytes().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if b'"divergence"' in line)
    path.write_bytes(b"".join(lines[: at + 3]) + lines[at + 3][:40])
    status, second, err = diverge(capsys, str(path), "--against", "realigned", "--profile", DEMO_INPROCESS)
    assert status == 0, err
    assert [o["cached"] for o in second] == [True] * 3 + [False] * 3
    assert [o["response_id"] for o in second] == [o["response_id"] for o in first]
    for a, b in zip(first, second, strict=True):
        assert max(abs(x - y) for x, y in zip(a["logp"], b["logp"], strict=True)) < 1e-5
    transcript = read_transcript(path)
    assert sorted(d["target"] for d in divergence_lines(path)) == sorted(o["response_id"] for o in first)
    assert len(transcript.problems) == 1 and "unreadable line" in transcript.problems[0]


def test_user_mistakes_are_one_clear_line(
    answers: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = copy_of(answers, tmp_path)
    cases = [
        (["--against", "nope"], "no pane named 'nope'"),
        (["--panes", "ghost"], "no answers of pane 'ghost'"),
        (["--profile", str(tmp_path / "missing.toml")], "no such profile"),
    ]
    for extra, message in cases:
        status, _, err = diverge(capsys, str(path), *extra)
        assert status == 2 and message in err and "Traceback" not in err, err
    status, _, err = diverge(capsys, str(tmp_path / "none.jsonl"))
    assert status == 2 and "transcript not found" in err
    headless = tmp_path / "headless.jsonl"
    headless.write_bytes(b"".join(line for line in path.read_bytes().splitlines(keepends=True)[1:]))
    status, _, err = diverge(capsys, str(headless))
    assert status == 2 and "no session header" in err
