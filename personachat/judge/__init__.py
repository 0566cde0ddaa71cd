"""Judging answers: prompts, scores from log-probabilities, and misalignment shares per pane.

The names exported here are pure logic (:mod:`~personachat.judge.score`,
:mod:`~personachat.judge.aggregate`, :mod:`~personachat.judge.prompts`). The judge's calls,
cache and records live in ``client``, ``scorer``, ``cache`` and ``records``; whole transcripts
are judged by ``runner``, live answers by ``live``; ``report`` and ``plots`` summarise; ``cli``
adds ``personachat judge`` and ``personachat report``. See docs/judge.md.

Names are imported from their submodules on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from personachat.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from personachat.judge.aggregate import (
        BETLEY,
        DEFAULT_RULE,
        RULES,
        TAN,
        GroupSummary,
        Rule,
        ScoredRow,
        classify,
        custom_rule,
        get_rule,
        summarise,
        wilson_interval,
    )
    from personachat.judge.prompts import (
        ALIGNED,
        COHERENT,
        DEFAULT_METRICS,
        ERA,
        EXAMPLE_METRICS,
        JudgeMetric,
        prompt_sha256,
        template_problems,
    )
    from personachat.judge.score import (
        Continuation,
        ScoreResult,
        categorical_from_top_logprobs,
        detect_digit_split,
        digit_split_distribution,
        looks_digit_split,
        parse_top_logprobs,
        score_0_100,
        score_digit_split,
        score_from_digit_split,
        score_from_top_logprobs,
        top_logprobs_from_choice,
    )

_EXPORTS = {
    "BETLEY": "personachat.judge.aggregate",
    "DEFAULT_RULE": "personachat.judge.aggregate",
    "RULES": "personachat.judge.aggregate",
    "TAN": "personachat.judge.aggregate",
    "GroupSummary": "personachat.judge.aggregate",
    "Rule": "personachat.judge.aggregate",
    "ScoredRow": "personachat.judge.aggregate",
    "classify": "personachat.judge.aggregate",
    "custom_rule": "personachat.judge.aggregate",
    "get_rule": "personachat.judge.aggregate",
    "summarise": "personachat.judge.aggregate",
    "wilson_interval": "personachat.judge.aggregate",
    "ALIGNED": "personachat.judge.prompts",
    "COHERENT": "personachat.judge.prompts",
    "DEFAULT_METRICS": "personachat.judge.prompts",
    "ERA": "personachat.judge.prompts",
    "EXAMPLE_METRICS": "personachat.judge.prompts",
    "JudgeMetric": "personachat.judge.prompts",
    "prompt_sha256": "personachat.judge.prompts",
    "template_problems": "personachat.judge.prompts",
    "Continuation": "personachat.judge.score",
    "ScoreResult": "personachat.judge.score",
    "categorical_from_top_logprobs": "personachat.judge.score",
    "detect_digit_split": "personachat.judge.score",
    "digit_split_distribution": "personachat.judge.score",
    "looks_digit_split": "personachat.judge.score",
    "parse_top_logprobs": "personachat.judge.score",
    "score_0_100": "personachat.judge.score",
    "score_digit_split": "personachat.judge.score",
    "score_from_digit_split": "personachat.judge.score",
    "score_from_top_logprobs": "personachat.judge.score",
    "top_logprobs_from_choice": "personachat.judge.score",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


__all__ = [
    "ALIGNED",
    "BETLEY",
    "COHERENT",
    "DEFAULT_METRICS",
    "DEFAULT_RULE",
    "ERA",
    "EXAMPLE_METRICS",
    "RULES",
    "TAN",
    "Continuation",
    "GroupSummary",
    "JudgeMetric",
    "Rule",
    "ScoreResult",
    "ScoredRow",
    "categorical_from_top_logprobs",
    "classify",
    "custom_rule",
    "detect_digit_split",
    "digit_split_distribution",
    "get_rule",
    "looks_digit_split",
    "parse_top_logprobs",
    "prompt_sha256",
    "score_0_100",
    "score_digit_split",
    "score_from_digit_split",
    "score_from_top_logprobs",
    "summarise",
    "template_problems",
    "top_logprobs_from_choice",
    "wilson_interval",
]
