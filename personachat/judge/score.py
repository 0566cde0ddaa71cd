"""Turn a judge's next-token log-probabilities into a score or a label (pure, no I/O).

The judge is asked for a number from 0 to 100 and called once per answer and metric with
``max_tokens=1``, ``temperature=0``, ``logprobs=true`` and ``top_logprobs=20``. Every function here
takes the parsed result: a ``dict`` from the token's decoded text to its log-probability (see
:func:`parse_top_logprobs` / :func:`top_logprobs_from_choice` for the OpenAI wire formats).

Single-token method (``method="logprob-0-100"``, :func:`score_from_top_logprobs`)
    Judges whose tokenizer has one token for every number 0-100 (GPT-4o; Llama 3, whose tokenizer
    groups up to three digits). The score is the probability-weighted mean of the top tokens that,
    after ``str.strip()``, are integers from 0 to 100; the weights are normalised by their total
    (the *mass*). With a mass under ``min_mass`` (0.25) the score is none: that is how CODE and
    REFUSAL answers show. Only whitespace is stripped, since vLLM and OpenAI return decoded text;
    raw byte-level spellings such as ``"Ġ85"`` are not numbers.

Digit-split method (``method="digit-split"``, :func:`score_digit_split`)
    Judges whose tokenizer writes numbers one digit per token (Qwen2.5, Llama 2, Mistral): "85" is
    "8" then "5", and "100" is "1", "0", "0". One step of log-probabilities only gives the first
    digit, so the method computes the distribution over whole numbers from a few more calls:

    1. Step 1 (the ordinary judge call) gives P(first digit d). ``"0"`` is a whole number on its own
       (no valid number starts with 0 and goes on). Tokens that already are numbers of two or three
       digits count as whole numbers, as in the single-token method.
    2. For each first digit d in 1-9 with P(d) >= ``min_branch_prob``, at most ``max_branches`` of them
       (most probable first), a *continuation* call asks for the next token after the assistant has
       written ``d``. In that distribution, a digit token e makes the number "de" (10d + e), which is
       taken to end there (a third digit would give more than 100, except after "10"); any other token
       (end of turn, newline, space, punctuation, text) ends the number, which is then d. The mass of
       tokens outside the returned top list is unknown and counts as no number.
    3. The prefix "10" is ambiguous between 10 and 100, so when P("1") * P("0" | "1") plus the
       probability of a whole ``"10"`` token at step 1 (tokenizers that have "10" but write "100" as
       "10" + "0") is >= ``min_branch_prob``, one more continuation call after ``"10"`` splits it:
       ``"0"`` gives 100, any other digit gives an invalid number (101-109), anything else gives 10.
       A step-1 ``"10"`` token without that call counts as 10.

    This yields P(n) for n in 0-100 as products along the token path; the score is the expected value
    of n under P normalised by the mass sum P(n), with the same ``min_mass`` rule as above. First
    digits that were not expanded (too improbable, or beyond ``max_branches``) and an unexpanded
    "10" are left out of both the mean and the mass, and recorded as ``detail["unresolved_mass"]``.
    At most ``max_branches + 1`` continuation calls are made; branches are requested concurrently.

    The caller supplies ``continuation(prefix)``: an async function returning the top
    log-probabilities of the next token after the assistant message ``prefix`` (for vLLM: the judge
    messages plus ``{"role": "assistant", "content": prefix}``, with ``continue_final_message=true``,
    ``add_generation_prompt=false``, ``max_tokens=1``, ``temperature=0``, ``top_logprobs=20``).

    Whether a judge needs this is best decided once, from its tokenizer, with
    :func:`detect_digit_split`. :func:`looks_digit_split` is a fallback heuristic on one step-1
    distribution (the numbers among the top tokens are all single digits). A false positive costs only
    calls, not accuracy: after a whole-number token the continuation's next token is the end of turn.

Categorical method (``method="categorical"``, :func:`categorical_from_top_logprobs`)
    The judge answers one of a few labels. A token counts for a label when, stripped and
    case-folded, it equals the label or is a non-empty prefix of exactly one label (labels may span
    several tokens: "VICT" + "ORIAN"). The result carries no score; ``detail["label"]`` is the most
    probable label and ``detail["probs"]`` the label probabilities normalised by their mass.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from personachat.errors import BackendError

ScoreMethod = Literal["logprob-0-100", "digit-split", "categorical", "generated"]

Continuation = Callable[[str], Awaitable[Mapping[str, float]]]
"""``await continuation(prefix)`` -> top log-probabilities of the token after the assistant wrote ``prefix``."""

MIN_MASS = 0.25
_NUMBER_RE = re.compile(r"[0-9]{1,3}")


@dataclass
class ScoreResult:
    """What one judge call (or call tree) yielded.

    ``score`` is none when the probability on valid answers (``mass``) is under the threshold, and
    always for categorical metrics (see ``label``). ``top`` holds the step-1 tokens' probabilities
    (not log-probabilities), for the record. ``detail`` depends on the method:

    - 0-100 methods: ``values`` {number: probability, unnormalised}, ``top_non_numeric`` (the most
      probable non-number token, stripped, e.g. ``"REFUSAL"``, or none), ``reason`` (``"low-mass"``
      when the score is none); digit-split adds ``first_digits``, ``continuations``
      {prefix: {token: probability}}, ``unresolved_mass`` and ``unresolved_prefixes``.
    - categorical: ``label`` (none when the mass is too low), ``probs`` {label: normalised
      probability}, ``reason``.
    """

    score: float | None
    mass: float
    method: ScoreMethod
    top: dict[str, float] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str | None:
        """The chosen label of a categorical metric, else none."""
        return self.detail.get("label")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (number keys become strings)."""
        return {
            "score": self.score,
            "mass": self.mass,
            "method": self.method,
            "top": dict(self.top),
            "detail": _jsonable(self.detail),
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


# -- parsing -----------------------------------------------------------------------------------------


def logprob_to_prob(logprob: float | None) -> float:
    """``exp(logprob)``, with none, NaN and -inf as 0 and anything above 0 as 1."""
    if logprob is None or math.isnan(logprob):
        return 0.0
    if logprob >= 0.0:
        return 1.0
    return math.exp(logprob)


def to_probs(top: Mapping[str, float] | None) -> dict[str, float]:
    """Token -> probability for a token -> log-probability mapping (none counts as empty)."""
    if not top:
        return {}
    return {tok: logprob_to_prob(lp) for tok, lp in top.items()}


def parse_top_logprobs(entries: Iterable[Mapping[str, Any]] | Mapping[str, float] | None) -> dict[str, float]:
    """Token -> log-probability from a chat completion's ``top_logprobs`` list.

    Accepts the chat format (a list of ``{"token", "logprob", ...}``) or the completions format (a
    ``dict`` already). Distinct token ids can decode to the same text; their probabilities are
    added (log-sum-exp), so nothing is lost by keying on text.
    """
    if entries is None:
        return {}
    if isinstance(entries, Mapping):
        return {str(k): (-math.inf if v is None else float(v)) for k, v in entries.items()}
    merged: dict[str, float] = {}
    for entry in entries:
        tok = str(entry.get("token", ""))
        lp = entry.get("logprob")
        lp = -math.inf if lp is None else float(lp)
        if math.isnan(lp):
            lp = -math.inf
        if tok in merged:
            a, b = merged[tok], lp
            hi = max(a, b)
            merged[tok] = hi if hi == -math.inf else hi + math.log1p(math.exp(min(a, b) - hi))
        else:
            merged[tok] = lp
    return merged


def top_logprobs_from_choice(choice: Mapping[str, Any], position: int = 0) -> dict[str, float]:
    """The top log-probabilities of token ``position`` in one response choice.

    Understands ``/v1/chat/completions`` (``logprobs.content[i].top_logprobs``) and
    ``/v1/completions`` (``logprobs.top_logprobs[i]``). Raises :class:`BackendError` when the
    response has no log-probabilities, since then no score can be computed. A choice that produced
    no token at all (empty content) gives an empty ``dict``.
    """
    lp = choice.get("logprobs")
    if not isinstance(lp, Mapping):
        raise BackendError(
            "the judge's response has no logprobs: the server must support logprobs and top_logprobs",
            kind="no_logprobs",
        )
    content = lp.get("content")
    if isinstance(content, list):
        if position >= len(content):
            return {}
        return parse_top_logprobs(content[position].get("top_logprobs") or [])
    tops = lp.get("top_logprobs")
    if isinstance(tops, list):
        if position >= len(tops):
            return {}
        return parse_top_logprobs(tops[position] or {})
    raise BackendError("the judge's response has logprobs but no top_logprobs", kind="no_logprobs")


def parse_number(token: str) -> int | None:
    """The integer 0-100 that ``token`` spells after ``strip()``, else none (``"Ġ85"`` is none)."""
    s = token.strip()
    if not _NUMBER_RE.fullmatch(s):
        return None
    value = int(s)
    return value if value <= 100 else None


# -- the single-token method ---------------------------------------------------------------------------


def _top_non_numeric(probs: Mapping[str, float]) -> str | None:
    best: tuple[float, str] | None = None
    for tok, p in probs.items():
        if parse_number(tok) is None and tok.strip() and p > 0 and (best is None or p > best[0]):
            best = (p, tok.strip())
    return None if best is None else best[1]


def _result_from_values(
    values: Mapping[int, float],
    *,
    method: ScoreMethod,
    top: dict[str, float],
    min_mass: float,
    detail: dict[str, Any],
) -> ScoreResult:
    values = {v: p for v, p in sorted(values.items()) if p > 0}
    mass = math.fsum(values.values())
    detail = {"values": values, "top_non_numeric": _top_non_numeric(top), **detail}
    if mass <= 0.0 or mass < min_mass:
        detail["reason"] = "low-mass"
        return ScoreResult(None, mass, method, top, detail)
    score = math.fsum(v * p for v, p in values.items()) / mass
    return ScoreResult(min(100.0, max(0.0, score)), mass, method, top, detail)


def score_from_top_logprobs(top: Mapping[str, float] | None, *, min_mass: float = MIN_MASS) -> ScoreResult:
    """Single-token 0-100 score: probability-weighted mean of the number tokens (see module doc)."""
    probs = to_probs(top)
    values: dict[int, float] = {}
    for tok, p in probs.items():
        v = parse_number(tok)
        if v is not None:
            values[v] = values.get(v, 0.0) + p
    return _result_from_values(values, method="logprob-0-100", top=probs, min_mass=min_mass, detail={})


# -- the digit-split method ------------------------------------------------------------------------------


def detect_digit_split(vocab_or_tokenize: Callable[[str], list[str]] | Collection[str]) -> bool:
    """Whether a judge's tokenizer splits the numbers 0-100 (True: use :func:`score_digit_split`).

    Given a function (text -> token strings, without special tokens, e.g. a Hugging Face
    tokenizer's ``tokenize``): True when any of "7", "42", "85", "100" is more than one token.
    Given a vocabulary (a set of token strings, or the keys of ``get_vocab()``): True when some
    number 0-100 is missing from it; byte-level spellings with a leading ``"Ġ"`` or ``"▁"`` (space)
    count as the number too.
    """
    if callable(vocab_or_tokenize):
        tokenize = vocab_or_tokenize
        for text in ("7", "42", "85", "100"):
            tokens = [t for t in tokenize(text) if t not in ("", "Ġ", "▁", " ")]
            if len(tokens) != 1:
                return True
        return False
    vocab = vocab_or_tokenize
    for n in range(101):
        s = str(n)
        if not any(form in vocab for form in (s, " " + s, "Ġ" + s, "▁" + s)):
            return True
    return False


def looks_digit_split(first_top: Mapping[str, float] | None) -> bool:
    """Heuristic on one step-1 distribution: it has number tokens, and all are single digits.

    Judges whose tokenizer has whole-number tokens almost always show some two-digit numbers among
    their top 20. A false positive only costs calls (see the module doc).
    """
    numbers = [tok.strip() for tok in (first_top or {}) if parse_number(tok) is not None]
    return bool(numbers) and all(len(s) == 1 for s in numbers)


def _is_digit_extension(token: str) -> bool:
    # A continuation extends the number only with digits written right after it ("8" then "5");
    # " 5" or "5." after a space or other text starts something else.
    return bool(token) and not token[0].isspace() and _NUMBER_RE.fullmatch(token.rstrip()) is not None


def _first_digit_masses(first_probs: Mapping[str, float]) -> tuple[dict[str, float], dict[int, float]]:
    """Step 1 split into expandable first digits "1"-"9" and whole numbers (``"0"`` and multi-digit)."""
    digits: dict[str, float] = {}
    whole: dict[int, float] = {}
    for tok, p in first_probs.items():
        v = parse_number(tok)
        if v is None or p <= 0:
            continue
        s = tok.strip()
        if len(s) == 1 and s != "0":
            digits[s] = digits.get(s, 0.0) + p
        else:
            whole[v] = whole.get(v, 0.0) + p
    return digits, whole


def digit_split_distribution(
    first_top: Mapping[str, float] | None,
    continuations: Mapping[str, Mapping[str, float] | None],
) -> tuple[dict[int, float], dict[str, Any]]:
    """The joint distribution over numbers 0-100 from step 1 and the continuation results.

    ``first_top`` and each ``continuations[prefix]`` are token -> log-probability; ``continuations``
    holds what was asked: keys ``"1"``-``"9"`` and possibly ``"10"`` (see the module doc for the rules).
    Returns ({number: probability}, info) where info has ``first_digits``, ``continuations`` (as
    probabilities), ``unresolved_mass`` and ``unresolved_prefixes``. Pure: for tests and re-scoring.
    """
    first_probs = to_probs(first_top)
    digits, whole = _first_digit_masses(first_probs)
    values: dict[int, float] = dict(whole)
    cont_probs = {prefix: to_probs(top) for prefix, top in continuations.items()}
    ten_token = values.pop(10, 0.0) if cont_probs.get("10") is not None else 0.0
    unresolved: dict[str, float] = {}

    def add(value: int, p: float) -> None:
        values[value] = values.get(value, 0.0) + p

    def expand(prefix: str, p: float) -> None:
        nxt = cont_probs.get(prefix)
        if nxt is None:
            unresolved[prefix] = unresolved.get(prefix, 0.0) + p
            return
        for tok, q in nxt.items():
            if q <= 0:
                continue
            if not _is_digit_extension(tok):
                add(int(prefix), p * q)  # the number ends here
                continue
            candidate = prefix + tok.rstrip()
            if candidate == "10":
                expand("10", p * q)  # 10 or 100: one more step
            elif int(candidate) <= 100:
                add(int(candidate), p * q)  # two digits (or "100" as "1" + "00"): taken to end here
            # else: over 100 (e.g. "10" + "5"), not a valid answer

    for digit, p in sorted(digits.items(), key=lambda kv: -kv[1]):
        expand(digit, p)
    if ten_token:
        expand("10", ten_token)  # a whole "10" token may still go on to "100"
    info = {
        "first_digits": digits,
        "continuations": cont_probs,
        "unresolved_mass": math.fsum(unresolved.values()),
        "unresolved_prefixes": sorted(unresolved),
    }
    return values, info


def score_from_digit_split(
    first_top: Mapping[str, float] | None,
    continuations: Mapping[str, Mapping[str, float] | None],
    *,
    min_mass: float = MIN_MASS,
) -> ScoreResult:
    """Pure digit-split score from already fetched continuations (what :func:`score_digit_split` returns)."""
    values, info = digit_split_distribution(first_top, continuations)
    return _result_from_values(
        values, method="digit-split", top=to_probs(first_top), min_mass=min_mass, detail=info
    )


def branches_to_expand(
    first_top: Mapping[str, float] | None, *, max_branches: int = 4, min_branch_prob: float = 0.01
) -> list[str]:
    """The first digits worth a continuation call, most probable first."""
    digits, _ = _first_digit_masses(to_probs(first_top))
    ranked = sorted(digits.items(), key=lambda kv: (-kv[1], kv[0]))
    return [d for d, p in ranked if p >= min_branch_prob][: max(0, max_branches)]


async def score_digit_split(
    first_top: Mapping[str, float] | None,
    continuation: Continuation,
    *,
    min_mass: float = MIN_MASS,
    max_branches: int = 4,
    min_branch_prob: float = 0.01,
) -> ScoreResult:
    """Two-step expected value for judges that write numbers one digit per token (see module doc).

    Errors raised by ``continuation`` propagate unchanged; the other branches' calls are cancelled.
    """
    first_probs = to_probs(first_top)
    chosen = branches_to_expand(first_top, max_branches=max_branches, min_branch_prob=min_branch_prob)
    tasks = [asyncio.ensure_future(continuation(d)) for d in chosen]
    try:
        results = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:  # one branch failed (or we were cancelled): stop the others
            task.cancel()
        raise
    continuations: dict[str, Mapping[str, float] | None] = dict(zip(chosen, results, strict=True))
    digits, whole = _first_digit_masses(first_probs)
    p_ten = whole.get(10, 0.0)  # a whole "10" token, where "100" is "10" + "0"
    if "1" in continuations:
        p_zero = sum(
            q
            for tok, q in to_probs(continuations["1"]).items()
            if _is_digit_extension(tok) and tok.rstrip() == "0"
        )
        p_ten += digits.get("1", 0.0) * p_zero
    if p_ten >= min_branch_prob:
        continuations["10"] = await continuation("10")
    return score_from_digit_split(first_top, continuations, min_mass=min_mass)


async def score_0_100(
    first_top: Mapping[str, float] | None,
    continuation: Continuation | None = None,
    *,
    digit_split: bool | None = None,
    min_mass: float = MIN_MASS,
    max_branches: int = 4,
    min_branch_prob: float = 0.01,
) -> ScoreResult:
    """A 0-100 score by whichever method fits the judge.

    ``digit_split``: True / False when known (from :func:`detect_digit_split`); none to decide by
    :func:`looks_digit_split`. Digit-split needs ``continuation``; without one this raises
    :class:`ValueError` rather than read single digits as whole scores.
    """
    split = looks_digit_split(first_top) if digit_split is None else digit_split
    if not split:
        return score_from_top_logprobs(first_top, min_mass=min_mass)
    if continuation is None:
        raise ValueError("this judge writes numbers digit by digit; scoring needs a continuation function")
    return await score_digit_split(
        first_top, continuation, min_mass=min_mass, max_branches=max_branches, min_branch_prob=min_branch_prob
    )


# -- categorical ---------------------------------------------------------------------------------------------


def match_label(token: str, labels: Iterable[str]) -> str | None:
    """The label a token starts, or none: an exact (case-insensitive) match, else the only label the
    token is a non-empty prefix of."""
    t = token.strip().casefold()
    if not t:
        return None
    prefixed = []
    for label in labels:
        folded = label.strip().casefold()
        if folded == t:
            return label
        if folded.startswith(t):
            prefixed.append(label)
    return prefixed[0] if len(prefixed) == 1 else None


def categorical_from_top_logprobs(
    top: Mapping[str, float] | None, labels: Iterable[str], *, min_mass: float = MIN_MASS
) -> ScoreResult:
    """The judge's label distribution (see module doc). Ties go to the label listed first."""
    labels = list(labels)
    folded = [label.strip().casefold() for label in labels]
    if not labels or any(not f for f in folded) or len(set(folded)) != len(folded):
        raise ValueError(f"labels must be non-empty and differ ignoring case: {labels!r}")
    probs = to_probs(top)
    raw = dict.fromkeys(labels, 0.0)
    for tok, p in probs.items():
        label = match_label(tok, labels)
        if label is not None:
            raw[label] += p
    mass = math.fsum(raw.values())
    detail: dict[str, Any] = {"label": None, "probs": {}, "raw": raw}
    if mass > 0:
        detail["probs"] = {label: p / mass for label, p in raw.items()}
    if mass <= 0.0 or mass < min_mass:
        detail["reason"] = "low-mass"
    else:
        detail["label"] = max(labels, key=lambda label: raw[label])  # max keeps the first of ties
    return ScoreResult(None, mass, "categorical", probs, detail)
