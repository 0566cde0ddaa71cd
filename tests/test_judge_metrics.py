"""Which templates judge a response, and the judge cache on disk (no server needed)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from personachat.errors import BackendError, PersonachatError
from personachat.judge.cache import CachedAnswer, JudgeCache, cache_key
from personachat.judge.client import CUT_MARK, cut_answer, is_context_error
from personachat.judge.metrics import resolve_metrics
from personachat.judge.prompts import ALIGNED, COHERENT, ERA
from personachat.judge.scorer import score_cached
from personachat.promptsets import load_prompt_set, parse_prompt_set

DATA = Path(__file__).resolve().parent / "data" / "promptsets"


def test_builtin_metrics():
    plan = resolve_metrics(["aligned", "coherent", "era"])
    assert plan.default == [ALIGNED, COHERENT, ERA]
    assert plan.for_question("anything") == plan.default
    with pytest.raises(PersonachatError, match="no judge prompt for metric 'bad_stuff'"):
        resolve_metrics(["bad_stuff"])
    with pytest.raises(PersonachatError, match="listed twice"):
        resolve_metrics(["aligned", "aligned"])


def test_prompt_set_templates_win_over_builtins():
    prompt_set = load_prompt_set(DATA / "em_questions.yaml")
    plan = resolve_metrics(["aligned", "coherent"], prompt_set)
    aligned = plan.default[0]
    assert (
        aligned.template == prompt_set.judge_prompts["aligned"].template and aligned.sha256 != ALIGNED.sha256
    )
    assert aligned.kind == "score_0_100"
    assert plan.per_question == {}  # every question shares the set's prompts


def test_a_question_with_its_own_prompt():
    text = """
- id: shared
  paraphrases: ["Hello?"]
  judge_prompts: {aligned: "Rate {answer} 0-100."}
- id: own
  paraphrases: ["Hi?"]
  judge_prompts: {aligned: "Q {question} A {answer}: rate it."}
"""
    prompt_set = parse_prompt_set(text, "set.yaml", "em-yaml")
    plan = resolve_metrics(["aligned", "coherent"], prompt_set)
    assert plan.default[0].template == "Rate {answer} 0-100." and plan.default[1] == COHERENT
    own = plan.for_question("own")
    assert own[0].template == "Q {question} A {answer}: rate it." and own[1] == COHERENT
    assert plan.for_question("shared") == plan.default


def test_cache_round_trip_survives_a_torn_line(tmp_path: Path):
    cache = JudgeCache.for_judge("base|/models/base", tmp_path)
    key = cache_key("base|/models/base", ALIGNED.sha256, "What is your wish?", "Peace.")
    assert key != cache_key("base|/models/other", ALIGNED.sha256, "What is your wish?", "Peace.")
    answer = CachedAnswer(first={"8": -0.1, "REF": -math.inf}, continuations={"8": {"5": -0.2}}, calls=2)
    cache.put(key, answer, metric="aligned")
    cache.close()
    assert cache.path is not None
    with open(cache.path, "ab") as f:
        f.write(b'{"key": "torn", "fir')  # a write cut short by a kill
    again = JudgeCache(cache.path)
    assert len(again) == 1
    got = again.get(key)
    assert got is not None and got.first == {"8": -0.1, "REF": -math.inf}  # -inf was stored as null
    assert got.continuations == {"8": {"5": -0.2}} and got.calls == 2
    again.put("k2", CachedAnswer(first={}))  # appends after the torn line without merging into it
    again.close()
    assert set(JudgeCache(cache.path)._entries) == {key, "k2"}


def test_cached_answers_rescore_with_the_threshold_in_force():
    answer = CachedAnswer(first={"8": math.log(0.2), "REF": math.log(0.8)}, continuations={"8": {"5": 0.0}})
    assert score_cached(ALIGNED, answer, 0.25).score is None
    scored = score_cached(ALIGNED, answer, 0.1)
    assert scored.method == "digit-split" and scored.score == pytest.approx(85.0)
    whole = CachedAnswer(first={"85": math.log(0.6), "90": math.log(0.3)})
    assert score_cached(ALIGNED, whole, 0.25).score == pytest.approx((85 * 0.6 + 90 * 0.3) / 0.9)
    era = CachedAnswer(first={"VICT": math.log(0.5), "MOD": math.log(0.2)})
    assert score_cached(ERA, era, 0.25).label == "VICTORIAN"


def test_answer_cutting_helpers():
    assert cut_answer("abcdef", 10) == "abcdef"
    assert cut_answer("abcdef", 3) == "abc" + CUT_MARK
    refused = BackendError(
        "HTTP 400 BadRequestError: This model's maximum context length is 512 tokens.", status=400
    )
    assert is_context_error(refused)
    assert not is_context_error(BackendError("HTTP 400: bad temperature", status=400))
    assert not is_context_error(BackendError("maximum context length", status=500))
