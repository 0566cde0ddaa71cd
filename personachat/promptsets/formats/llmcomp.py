"""llmcomp question YAML: questions and judges in one list, judges bound to questions by name.

As llmcomp reads it: each item has a ``name`` (older files: ``id``) and a ``type``. ``free_form``
(and the other question types) are questions: ``paraphrases`` (or ``messages``),
``samples_per_paraphrase``, ``system``, ``temperature``, and ``judges: {metric: judge}``, where a
judge is the name of a judge item or an inline judge. Items of type ``free_form_judge``,
``free_form_judge_0_100`` or ``rating_judge`` are judges, never questions: their one paraphrase is
the template. A judge named but not defined in the file is looked up in the other YAML files of
the same folder, as llmcomp resolves names across its question folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from personachat.checking import Checker, Expected
from personachat.judge.kinds import open_answer
from personachat.promptsets.formats.common import Parsed, is_str_list, judge_prompt, nonempty
from personachat.promptsets.formats.yaml_lines import load_yaml, yaml_error
from personachat.promptsets.model import JudgePrompt, PromptItem

NAME = "llmcomp"
EXTENSIONS = (".yaml", ".yml")

QUESTION_TYPES = ("free_form", "rating", "next_token")
JUDGE_TYPES = {"free_form_judge": None, "free_form_judge_0_100": "score_0_100", "rating_judge": "score_0_100"}
"""Judge item type -> how its answer is read (None: categorical or generated, from its template)."""

KEYS: dict[str, Expected] = {
    "name": (str, int),
    "id": (str, int),
    "type": str,
    "paraphrases": list,
    "messages": list,
    "system": str,
    "samples_per_paraphrase": int,
    "temperature": (int, float),
    "max_tokens": int,
    "judges": dict,
    "model": str,
    "labels": list,
    "min_rating": int,
    "max_rating": int,
    "refusal_threshold": (int, float),
    "top_logprobs": int,
    "logit_bias": dict,
    "tags": list,
}


def sniff(data: Any) -> bool:
    """Whether parsed YAML ``data`` is an llmcomp file rather than an EM evaluation file."""
    if not isinstance(data, list):
        return False
    items = [item for item in data if isinstance(item, dict)]
    if any("judges" in item or "name" in item for item in items):
        return True
    types = {item.get("type") for item in items}
    return (
        bool(types)
        and types <= {*QUESTION_TYPES, *JUDGE_TYPES}
        and not any("judge_prompts" in i for i in items)
    )


def _name(raw: dict[Any, Any]) -> str | None:
    value = raw.get("name", raw.get("id"))
    return str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else None


def _judge(checker: Checker, raw: dict[Any, Any], line: int, key: str) -> JudgePrompt | None:
    """A judge item (or an inline judge) as a judge prompt."""
    paraphrases: Any = raw.get("paraphrases")
    if not is_str_list(paraphrases) or len(paraphrases) != 1:
        checker.add("a judge has exactly one paraphrase: its prompt template", line=line, key=key)
        return None
    kind = JUDGE_TYPES.get(str(raw.get("type")))
    if raw.get("type") == "free_form_judge" and (
        raw.get("labels") is not None or open_answer(paraphrases[0])
    ):
        # llmcomp's free-form judge writes text. One with labels reads them from it; one whose
        # template neither asks for a number nor lists its answers ("answer with one word") must
        # not fall back to a 0-100 score: read as generated, it is a clear error asking for labels.
        kind = "generated"
    return judge_prompt(
        checker,
        paraphrases[0],
        line=line,
        key=key,
        kind=kind,
        labels=raw.get("labels"),
        judge=_name(raw),
        model=raw.get("model") if isinstance(raw.get("model"), str) else None,
    )


def _sibling_judges(path: Path, wanted: set[str], checker: Checker) -> dict[str, JudgePrompt]:
    """Judges named in ``wanted`` that other YAML files of ``path``'s folder define."""
    import yaml

    found: dict[str, JudgePrompt] = {}
    for sibling in sorted([*path.parent.glob("*.yaml"), *path.parent.glob("*.yml")]):
        if sibling.resolve() == path.resolve() or not wanted - set(found):
            continue
        try:
            doc = load_yaml(sibling.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue  # llmcomp would fail on it too; only its judges matter here
        if not isinstance(doc.data, list):
            continue
        other = Checker(sibling)
        for index, raw in enumerate(doc.data):
            name = _name(raw) if isinstance(raw, dict) else None
            if name in wanted and name not in found and str(raw.get("type")) in JUDGE_TYPES:
                made = _judge(other, raw, doc.item_line(index), name)
                if made is not None:
                    found[name] = made
        for problem in other.problems:
            checker.problems.append(problem)
    return found


def parse(text: str, checker: Checker) -> Parsed:
    import yaml

    try:
        doc = load_yaml(text)
    except yaml.YAMLError as exc:
        message, line = yaml_error(exc)
        checker.add(message, line=line)
        return [], {}
    if doc.data is None:
        return [], {}
    if not isinstance(doc.data, list):
        checker.add("an llmcomp question file is a YAML list of questions and judges", line=1)
        return [], {}
    judges: dict[str, JudgePrompt] = {}
    questions: list[tuple[int, dict[Any, Any], int, dict[Any, int]]] = []
    first_line: dict[str, int] = {}
    for index, raw in enumerate(doc.data):
        line = doc.item_line(index)
        if not isinstance(raw, dict):
            checker.add("each item must be a mapping with a name and a type", line=line, key=f"[{index}]")
            continue
        key_line, _duplicates = doc.lines_of(raw, line)
        name = _name(raw)
        label = name or f"[{index}]"
        if not checker.check_table(raw, KEYS, (label,), key_lines=key_line, line=line, mapping="a mapping"):
            continue
        if name is None:
            checker.add("item is missing 'name' (or 'id')", line=line, key=label)
            continue
        if name in first_line:
            checker.add(f"duplicate name '{name}' (first at line {first_line[name]})", line=line, key=label)
            continue
        first_line[name] = line
        kind = raw.get("type")
        if kind in JUDGE_TYPES:
            made = _judge(checker, raw, key_line.get("paraphrases", line), name)
            if made is not None:
                judges[name] = made
        elif kind in QUESTION_TYPES or kind is None:
            questions.append((index, raw, line, key_line))
        else:
            known = ", ".join([*QUESTION_TYPES, *JUDGE_TYPES])
            checker.add(
                f"unknown type {kind!r} (known: {known})",
                line=key_line.get("type", line),
                key=f"{label}.type",
            )
    wanted = {
        ref
        for _, raw, _, _ in questions
        for ref in (raw.get("judges") or {}).values()
        if isinstance(ref, str) and ref not in judges
    }
    if wanted:
        judges.update(_sibling_judges(Path(checker.file), wanted, checker))
    items = [item for q in questions if (item := _question(checker, *q, judges)) is not None]
    return items, {}


def _question(
    checker: Checker,
    index: int,
    raw: dict[Any, Any],
    line: int,
    key_line: dict[Any, int],
    judges: dict[str, JudgePrompt],
) -> PromptItem | None:
    name = str(_name(raw))
    before = checker.count

    def add(message: str, key: str) -> None:
        checker.add(message, line=key_line.get(key, line), key=f"{name}.{key}")

    paraphrases: Any = raw.get("paraphrases")
    messages = raw.get("messages")
    system = raw.get("system")
    history: list[dict[str, str]] = []
    if messages is not None and paraphrases is not None:
        add("give either 'paraphrases' or 'messages', not both", "messages")
    elif messages is not None:
        if (
            not isinstance(messages, list)
            or not messages
            or not all(
                isinstance(m, dict)
                and isinstance(m.get("content"), str)
                and m.get("role") in ("system", "user", "assistant")
                for m in messages
            )
        ):
            add("must be a list of {role, content} messages", "messages")
        elif messages[-1]["role"] != "user":
            add("must end with a user message (the question)", "messages")
        else:
            if messages[0]["role"] == "system":
                system, messages = messages[0]["content"], messages[1:]
            history = [{"role": m["role"], "content": m["content"]} for m in messages[:-1]]
            paraphrases = [messages[-1]["content"]]
    if not is_str_list(paraphrases) or not paraphrases or not all(map(nonempty, paraphrases)):
        add("must be a list of non-empty strings", "paraphrases")
    samples = raw.get("samples_per_paraphrase", 1)
    if samples < 1:
        add("must be >= 1", "samples_per_paraphrase")
    bound: dict[str, JudgePrompt] = {}
    for metric, ref in (raw.get("judges") or {}).items():
        if isinstance(ref, str):
            if ref not in judges:
                add(
                    f"judge '{ref}' is defined neither in this file nor in another YAML file of its folder",
                    "judges",
                )
                continue
            bound[str(metric)] = judges[ref]
        elif isinstance(ref, dict):
            made = _judge(checker, ref, key_line.get("judges", line), f"{name}.judges.{metric}")
            if made is not None:
                bound[str(metric)] = made
        else:
            add(f"judge '{metric}' must be a judge's name or a judge", "judges")
    if checker.count > before:
        return None
    temperature = raw.get("temperature")
    return PromptItem(
        id=name,
        paraphrases=list(paraphrases),
        system=system,
        samples=samples,
        tags=list(raw.get("tags") or []),
        temperature=float(temperature) if temperature is not None else None,
        judge_prompts=bound,
        type=raw.get("type"),
        line=line,
        history=history,
        extra={k: v for k, v in raw.items() if k in ("max_tokens", "model")},
    )
