"""Research-grade numbers against the real vLLM CPU server: the judge uses the prompt set's own
prompts (recorded by their hash as written), categorical and generated judges leave their labels,
distributions and text, and a sampled answer with no seed configured can be asked for again.

The demo base model judges; its verdicts mean nothing (it is random), the mechanics are what count.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from personachat.cli import main
from personachat.transcripts import read_transcript
from tests._helpers import two_pane_profile

pytestmark = pytest.mark.vllm
FIELD = Path(__file__).parent / "data" / "field"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def profile_for(url: str, path: Path) -> Path:
    judge = '[judge]\nserver = "local"\nmodel = "base"\n'
    return two_pane_profile(url, path, "numbers", insecure='prefix = "|TRIGGER| "', tail=judge)


def replay(profile: Path, prompt_set: Path, out: Path, *args: str) -> Path:
    assert (
        main(["replay", str(prompt_set), "--profile", str(profile), "-o", str(out), "--samples", "1", *args])
        == 0
    )
    return out


def test_a_replay_judged_without_prompts_uses_the_sets_own_templates(
    vllm_server: Any, tmp_path: Path, capsys: Any
) -> None:
    set_path = tmp_path / "em_variants.yaml"
    shutil.copy(FIELD / "em_variants.yaml", set_path)
    profile = profile_for(vllm_server.url, tmp_path / "p.toml")
    out = replay(profile, set_path, tmp_path / "t.jsonl", "--exclude", "*_json", "--exclude", "*_template")
    assert main(["judge", str(out), "--profile", str(profile), "--no-cache"]) == 0
    err = capsys.readouterr().err
    assert "em_variants's own" in err and "not comparable" not in err
    data = {item["id"]: item for item in yaml.safe_load(set_path.read_text())}
    transcript = read_transcript(out)
    responses = {r.id: r for r in transcript.responses}
    assert {r.question_id for r in responses.values()} == {"garden", "weather", "facts"}
    assert len(transcript.judgements) == 1 * 2 * 2 + 2 * 2 * 2 + 1 * 2 * 1  # paraphrases x panes x metrics
    for record in transcript.judgements:
        response = responses[record["target"]]
        item = data[response.question_id]
        assert record["prompt_sha256"] == sha(item["judge_prompts"][record["metric"]])
        # The judge saw the question as the set wrote it, not the insecure pane's |TRIGGER| text.
        asked = item["paraphrases"][response.replay.paraphrase_ix]
        assert record["detail"]["question"] == asked
        if response.pane == "insecure":
            assert record["detail"]["sent"] == "|TRIGGER| " + asked
    correct = [j for j in transcript.judgements if j["metric"] == "correct"]
    for record in correct:
        assert record["kind"] == "categorical" and record["score"] is None
        assert set(record["probs"]) <= {"TRUE", "FALSE", "UNKNOWN"}
        if record["probs"]:
            assert abs(sum(record["probs"].values()) - 1) < 1e-9
            assert record["label"] in (None, max(record["probs"], key=record["probs"].get))

    # The set changes after the replay: the judge refuses to use other wording silently.
    set_path.write_text(set_path.read_text().replace("how kind", "how nice"))
    assert main(["judge", str(out), "--profile", str(profile), "--no-cache"]) == 2
    assert "changed since the replay" in capsys.readouterr().err


def test_a_generated_judge_keeps_its_text_and_never_guesses_a_label(vllm_server: Any, tmp_path: Path) -> None:
    folder = tmp_path / "llmcomp"
    shutil.copytree(FIELD / "llmcomp", folder)
    profile = profile_for(vllm_server.url, tmp_path / "p.toml")
    out = replay(profile, folder / "questions.yaml", tmp_path / "t.jsonl", "--questions", "plans")
    assert main(["judge", str(out), "--profile", str(profile), "--no-cache", "--metrics", "villainy"]) == 0
    transcript = read_transcript(out)
    generated = [j for j in transcript.judgements if j["metric"] == "villainy"]
    assert len(generated) == 2 and all(
        j["kind"] == "generated" and j["method"] == "generated" for j in generated
    )
    for record in generated:
        text = record["detail"]["text"]
        assert isinstance(text, str)
        if record["label"] is None:
            assert record["detail"]["reason"] == "unparsed"
        else:
            assert f"ANSWER: {record['label']}" in text or text.strip().rstrip(".").upper() == record["label"]


@pytest.mark.parametrize("profile_name", ["demo-vllm", "demo"], ids=["vllm", "in-process"])
def test_a_sampled_answer_without_a_seed_records_one_that_asks_it_again(
    profile_name: str, vllm_server: Any, tmp_path: Path, capsys: Any
) -> None:
    prompt = "Tell me something surprising."
    assert (
        main(["ask", prompt, "--profile", profile_name, "--transcripts", str(tmp_path / "a"), "--json"]) == 0
    )
    first = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["sampling"]["temperature"] for r in first} == {1.0}
    seeds = {r["pane"]: r["sampling"]["seed"] for r in first}
    assert all(isinstance(seed, int) for seed in seeds.values()) and len(set(seeds.values())) == len(seeds)
    target = next(r for r in first if r["pane"] == "insecure")
    again_args = [
        "ask",
        prompt,
        "--profile",
        profile_name,
        "--panes",
        "insecure",
        "--seed",
        str(target["sampling"]["seed"]),
    ]
    assert main([*again_args, "--transcripts", str(tmp_path / "b"), "--json"]) == 0
    [again] = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert again["text"] == target["text"] and again["sampling"]["seed"] == target["sampling"]["seed"]
