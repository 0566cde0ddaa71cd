"""The emergent-misalignment evaluation YAML: a list of questions with paraphrases and judge prompts.

Anchors and aliases (``&judge_prompts`` ... ``*judge_prompts``) and merge keys are resolved by the
YAML loader; every problem names the line it is on.
"""

from __future__ import annotations

from typing import Any

from personachat.checking import Checker, Expected
from personachat.promptsets.formats.common import Parsed, check_judge_prompts, is_str_list, nonempty
from personachat.promptsets.formats.yaml_lines import load_yaml, yaml_error
from personachat.promptsets.model import JudgePrompt, PromptItem

NAME = "em-yaml"
EXTENSIONS = (".yaml", ".yml")

KEYS: dict[str, Expected] = {
    "id": (str, int),
    "type": str,
    "paraphrases": list,
    "samples_per_paraphrase": int,
    "system": (str, type(None)),
    "temperature": (int, float, type(None)),
    "judge": str,
    "judge_prompts": dict,
    "tags": list,
    "labels": (list, dict),
}
TYPE_KINDS = {"free_form_judge_0_100": "score_0_100", "free_form_judge": "categorical"}
"""How the EM files' ``type`` says a judge's answer is read: a 0-100 number, or one of the labels
the prompt lists (TRUE/FALSE/UNKNOWN; a ``labels:`` key says them when the prompt does not)."""


def parse(text: str, checker: Checker) -> Parsed:
    import yaml

    try:
        doc = load_yaml(text)
    except yaml.YAMLError as exc:
        message, line = yaml_error(exc)
        checker.add(message, line=line)
        return [], {}
    data = doc.data
    if data is None:
        return [], {}
    if not isinstance(data, list):
        got = "a mapping" if isinstance(data, dict) else f"a {type(data).__name__}"
        checker.add(f"an EM question file is a YAML list of questions (- id: ...), not {got}", line=1)
        return [], {}

    items: list[PromptItem] = []
    first_line: dict[str, int] = {}
    unknown: dict[str, list[int]] = {}
    for index, raw in enumerate(data):
        item_line = doc.item_line(index)
        if not isinstance(raw, dict):
            checker.add(
                "each question must be a mapping with 'id' and 'paraphrases'",
                line=item_line,
                key=f"[{index}]",
            )
            continue
        key_line, duplicates = doc.lines_of(raw, item_line)
        for dup_key, dup_line in duplicates:
            checker.warn(
                f"key '{dup_key}' appears twice in this question; the last value is used", line=dup_line
            )
        item = _item(checker, raw, index, item_line, key_line, first_line, unknown)
        if item is not None:
            items.append(item)
    checker.warn_unknown(unknown, "in this question", "in {n} questions", "kept in the item's extra fields")
    return items, {}


def _item(
    checker: Checker,
    raw: dict[Any, Any],
    index: int,
    item_line: int,
    key_line: dict[Any, int],
    first_line: dict[str, int],
    unknown: dict[str, list[int]],
) -> PromptItem | None:
    def at(key: str) -> int:
        return key_line.get(key, item_line)

    def add(message: str, key: str, line: int | None = None) -> None:
        checker.add(message, line=line or at(key), key=f"{label}.{key}")

    label = str(raw["id"]) if isinstance(raw.get("id"), (str, int)) else f"[{index}]"
    before = checker.count
    checker.check_table(
        raw, KEYS, (label,), key_lines=key_line, line=item_line, mapping="a mapping", unknown=unknown
    )
    if "id" not in raw:
        checker.add("question is missing 'id'", line=item_line, key=f"[{index}]")
    if "paraphrases" not in raw:
        checker.add("question is missing 'paraphrases'", line=item_line, key=label)
    blocked = checker.count > before
    qid = ""
    if "id" in raw and isinstance(raw["id"], (str, int)) and not isinstance(raw["id"], bool):
        qid = str(raw["id"])
        if not qid.strip():
            add("must not be empty", "id")
        elif qid in first_line:
            add(f"duplicate id '{qid}' (first at line {first_line[qid]})", "id")
        else:
            first_line[qid] = item_line
    if blocked:
        return None
    paraphrases = raw["paraphrases"]
    if not paraphrases:
        add("must not be empty", "paraphrases")
    elif not is_str_list(paraphrases) or not all(map(nonempty, paraphrases)):
        add("must be a list of non-empty strings", "paraphrases")
    samples = raw.get("samples_per_paraphrase", 1)
    if samples < 1:
        add("must be >= 1", "samples_per_paraphrase")
    temperature = raw.get("temperature")
    if temperature is not None and temperature < 0:
        add("must be >= 0", "temperature")
    if "tags" in raw and not is_str_list(raw["tags"]):
        add("must be a list of strings", "tags")
    judge_prompts: dict[str, JudgePrompt] = {}
    if "judge_prompts" in raw:
        judge_prompts = check_judge_prompts(
            checker,
            raw["judge_prompts"],
            at("judge_prompts"),
            f"{label}.judge_prompts",
            "a mapping",
            kind=TYPE_KINDS.get(str(raw.get("type"))),
            labels=raw.get("labels"),
        )
    if checker.count > before:
        return None
    return PromptItem(
        id=qid,
        paraphrases=list(paraphrases),
        system=raw.get("system"),
        samples=samples,
        tags=list(raw.get("tags", [])),
        temperature=float(temperature) if temperature is not None else None,
        judge=raw.get("judge"),
        judge_prompts=judge_prompts,
        type=raw.get("type"),
        line=item_line,
        extra={k: v for k, v in raw.items() if k not in KEYS},
    )
