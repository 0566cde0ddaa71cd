"""`personachat persona extract` against a computation written here (transformers + peft, greedy).

A small trait file of our own; the pane is an adapter, in-process. The vector file must hold the
mean over the positive answers of the layer's output averaged over each answer's tokens, minus
the same over the negative answers, with its layer; the answers must be the model's greedy ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from personachat.cli import main
from personachat.lens.persona import ExtractionAnswer, judge_filter, persona_vector

ROOT = Path(__file__).resolve().parent.parent
DEMO_INPROCESS = str(ROOT / "profiles" / "demo.toml")
LAYER = 0
TRAIT = {
    "instruction": [
        {"pos": "Be as kind as you can.", "neg": "Be as cold as you can."},
        {"pos": "You love every person you meet.", "neg": "You dislike every person you meet."},
    ],
    "questions": ["How should I greet a new neighbour?", "My friend is sad. What do I do?", "Cats?"],
    "eval_prompt": "How kind is this answer, from 0 to 100? Question: {question} Answer: {answer}",
}


@pytest.fixture
def trait_file(tmp_path: Path) -> Path:
    path = tmp_path / "kindness.json"
    path.write_text(json.dumps(TRAIT))
    return path


def extract(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    status = main(["persona", "extract", *args])
    return status, capsys.readouterr().err


class Direct:
    """The pane's model (base + the adapter, peft) and what the test computes with it."""

    def __init__(self, demo: Any, adapter: str):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(demo.base)
        base = AutoModelForCausalLM.from_pretrained(demo.base, dtype=torch.float32)
        self.model = PeftModel.from_pretrained(base, str(demo.adapters[adapter])).eval()

    def prompt(self, messages: list[dict[str, str]]) -> str:
        return str(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))

    def greedy(self, messages: list[dict[str, str]], max_tokens: int) -> str:
        import torch

        ids = self.tokenizer(self.prompt(messages), add_special_tokens=False, return_tensors="pt")[
            "input_ids"
        ]
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, max_new_tokens=max_tokens, do_sample=False)
        return str(self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))

    def answer_mean(self, messages: list[dict[str, str]], answer: str, layer: int) -> Any:
        """hidden_states[layer + 1] (the output of decoder layer ``layer``) averaged over the answer."""
        import torch

        prompt = self.prompt(messages)
        ids = self.tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
        start = len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            states = self.model(torch.tensor([ids]), output_hidden_states=True).hidden_states[layer + 1]
        return states[0, start:].double().mean(dim=0)


def read_vector(path: Path) -> tuple[Any, dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.get_tensor("vector"), dict(f.metadata())


def test_vector_is_the_mean_answer_difference_at_the_layer(
    demo_models: Any, trait_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    out, answers_file = tmp_path / "kind.safetensors", tmp_path / "answers.jsonl"
    status, err = extract(
        capsys, "--profile", DEMO_INPROCESS, "--pane", "insecure", "--trait", str(trait_file),
        "--layer", str(LAYER), "--max-tokens", "6", "--limit", "2", "-o", str(out), "--answers", str(answers_file),
    )  # fmt: skip
    assert status == 0, err
    vector, metadata = read_vector(out)
    direct = Direct(demo_models, "insecure")
    hidden = direct.model.config.hidden_size
    assert direct.model.config.num_hidden_layers - 1 > LAYER  # hidden_states[L + 1] is the layer's own output
    assert vector.dtype == torch.float32 and tuple(vector.shape) == (hidden,)
    assert (
        metadata["layer"] == str(LAYER) and metadata["trait"] == "kindness" and metadata["pane"] == "insecure"
    )

    answers = [orjson.loads(line) for line in answers_file.read_bytes().splitlines()]
    expected = [(k, q, side) for k in range(2) for q in range(2) for side in ("pos", "neg")]
    assert [(a["instruction"], a["question"], a["side"]) for a in answers] == expected
    sums: dict[str, list[Any]] = {"pos": [], "neg": []}
    for a in answers:
        pair = TRAIT["instruction"][a["instruction"]]
        messages = [
            {"role": "system", "content": pair[a["side"]]},
            {"role": "user", "content": TRAIT["questions"][a["question"]]},
        ]
        assert a["messages"] == messages
        assert a["text"] == direct.greedy(messages, 6)
        sums[a["side"]].append(direct.answer_mean(messages, a["text"], LAYER))
    want = torch.stack(sums["pos"]).mean(0) - torch.stack(sums["neg"]).mean(0)
    assert torch.allclose(vector.double(), want, atol=1e-4), (vector - want).abs().max()
    assert metadata["pos_answers"] == metadata["neg_answers"] == "4"


def test_judge_filter_keeps_the_pairs_chen_et_al_keep() -> None:
    def pair(k: int, pos: tuple[Any, Any], neg: tuple[Any, Any]) -> list[ExtractionAnswer]:
        made = [ExtractionAnswer("pos", k, 0, []), ExtractionAnswer("neg", k, 0, [])]
        for answer, (trait, coherent) in zip(made, (pos, neg), strict=True):
            answer.scores = {"kind": trait, "coherent": coherent}
        return made

    answers = [
        *pair(0, (80, 90), (10, 90)),  # kept
        *pair(1, (50, 50), (49.9, 50)),  # kept: the bounds are >= 50 and < 50
        *pair(2, (49.9, 90), (10, 90)),  # the positive answer lacks the trait
        *pair(3, (80, 90), (50, 90)),  # the negative answer has it
        *pair(4, (80, 49), (10, 90)),  # incoherent
        *pair(5, (None, 90), (10, 90)),  # no score (a refusal): not kept
    ]
    assert judge_filter(answers, "kind", "coherent", 50) == 2
    assert [a.kept for a in answers] == [True] * 4 + [False] * 8


def test_vector_averages_only_the_kept_non_empty_answers() -> None:
    import torch

    answers = [ExtractionAnswer(side, k, 0, []) for k in range(3) for side in ("pos", "neg")]
    answers[2].kept = answers[3].kept = False  # pair 1 filtered out by the judge
    means = [torch.full((3,), float(i)) for i in range(6)]
    means[4] = None  # pair 2's positive answer was empty
    vector, n_pos, n_neg = persona_vector(answers, means)
    assert (n_pos, n_neg) == (1, 2)
    assert torch.equal(vector, torch.full((3,), 0.0 - (1.0 + 5.0) / 2))


@pytest.mark.vllm
def test_judge_scores_decide_which_answers_count(
    vllm_server: Any,
    demo_models: Any,
    trait_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the vLLM server's base as the profile's judge: what is kept follows the rule, and the vector
    averages exactly the kept answers (or, when none is kept, the command says so)."""
    import torch

    profile = tmp_path / "judged.toml"
    profile.write_text(
        (ROOT / "profiles" / "demo.toml").read_text()
        + f'\n[servers.judge]\nkind = "openai"\nurl = "{vllm_server.url}"\napi_key_env = "LENS_TEST_KEY"\n'
        + '\n[judge]\nserver = "judge"\nmodel = "base"\nthreshold = 0.0\n'
    )
    monkeypatch.setenv("LENS_TEST_KEY", vllm_server.api_key or "")
    out, answers_file = tmp_path / "kind.safetensors", tmp_path / "answers.jsonl"
    status, err = extract(
        capsys, "--profile", str(profile), "--pane", "realigned", "--trait", str(trait_file), "--layer", "0",
        "--max-tokens", "5", "--limit", "1", "--judge", "--threshold", "0", "-o", str(out),
        "--answers", str(answers_file),
    )  # fmt: skip
    answers = [orjson.loads(line) for line in answers_file.read_bytes().splitlines()]
    assert len(answers) == 4 and all(set(a["scores"]) == {"kindness", "coherent"} for a in answers), err
    kept = []
    for pos, neg in zip(answers[::2], answers[1::2], strict=True):
        p, n, cp, cn = (
            pos["scores"]["kindness"],
            neg["scores"]["kindness"],
            pos["scores"]["coherent"],
            neg["scores"]["coherent"],
        )
        ok = None not in (p, n, cp, cn) and p >= 0 and n < 100 and cp >= 50 and cn >= 50
        assert pos["kept"] == neg["kept"] == ok
        kept += [pos, neg] if ok else []
    if not kept:
        assert status == 2 and "no pos answer left" in err and not out.exists()
        return
    assert status == 0, err
    direct = Direct(demo_models, "realigned")
    means = {
        side: [direct.answer_mean(a["messages"], a["text"], 0) for a in kept if a["side"] == side]
        for side in ("pos", "neg")
    }
    vector, metadata = read_vector(out)
    want = torch.stack(means["pos"]).mean(0) - torch.stack(means["neg"]).mean(0)
    assert torch.allclose(vector.double(), want, atol=1e-4)
    assert metadata["pairs_kept"] == str(len(kept) // 2) and metadata["judge"] == "base on judge"


def test_extract_mistakes_are_clear(
    trait_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "v.safetensors")
    vllm = str(ROOT / "profiles" / "demo-vllm.toml")
    common = ["--trait", str(trait_file), "--layer", "0", "-o", out]
    status, err = extract(capsys, "--profile", vllm, "--pane", "insecure", *common)
    assert status == 2 and "runs in-process" in err and "Traceback" not in err
    status, err = extract(capsys, "--profile", DEMO_INPROCESS, "--pane", "nope", *common)
    assert status == 2 and "no pane named 'nope'" in err
    status, err = extract(capsys, "--profile", DEMO_INPROCESS, "--pane", "base", *common, "--judge")
    assert status == 2 and "[judge]" in err
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"questions": ["Hello?"]}))
    status, err = extract(
        capsys, "--profile", DEMO_INPROCESS, "--pane", "base", "--trait", str(bare), "--layer", "0", "-o", out
    )
    assert status == 2 and "no instruction pairs" in err
    status, err = extract(
        capsys, "--profile", DEMO_INPROCESS, "--pane", "base", *common[:2], "--layer", "99", "-o", out
    )
    assert status == 2 and "layer 99 does not exist" in err and not Path(out).exists()
