"""A persona_vectors trait file (Chen et al.): ``{"instruction": [{pos, neg}], "questions": [...], "eval_prompt"}``.

Its questions become the prompts (ids ``q1`` …), its ``eval_prompt`` the judge of a metric named
after the trait (the file name: ``evil.json`` -> ``evil``, a 0-100 score). Its instruction pairs
are kept in ``PromptSet.meta["instructions"]``: the positive and negative system prompts that
``personachat persona extract`` uses, and that a profile's panes can use as ``system``
(``personachat replay evil.json --dry-run`` prints them).
"""

from __future__ import annotations

import json
from pathlib import Path

from personachat.checking import Checker
from personachat.promptsets.formats.common import Parsed, is_str_list, judge_prompt, nonempty
from personachat.promptsets.model import PromptItem

NAME = "persona-json"
EXTENSIONS = (".json",)


def parse(text: str, checker: Checker) -> Parsed:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        checker.add(f"invalid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno)
        return [], {}
    except RecursionError:
        checker.add("nested too deeply to be a trait file")
        return [], {}
    if not isinstance(data, dict) or "questions" not in data:
        checker.add(
            'a trait file is a JSON object with "questions" (and "instruction", "eval_prompt")', line=1
        )
        return [], {}
    unknown = set(data) - {"instruction", "questions", "eval_prompt"}
    if unknown:
        checker.warn(f"unknown key(s) {', '.join(sorted(map(str, unknown)))}; ignored")
    questions = data["questions"]
    if not is_str_list(questions) or not all(map(nonempty, questions)):
        checker.add("must be a list of non-empty strings", key="questions")
        return [], {}
    instructions = data.get("instruction", [])
    pairs: list[dict[str, str]] = []
    if not isinstance(instructions, list) or not all(
        isinstance(p, dict) and isinstance(p.get("pos"), str) and isinstance(p.get("neg"), str)
        for p in instructions
    ):
        checker.add('must be a list of {"pos": ..., "neg": ...} instruction pairs', key="instruction")
    else:
        pairs = [{"pos": p["pos"], "neg": p["neg"]} for p in instructions]
    trait = Path(str(checker.file)).stem
    judges = {}
    if "eval_prompt" in data:
        made = judge_prompt(checker, data["eval_prompt"], line=None, key="eval_prompt", kind="score_0_100")
        if made is not None:
            judges[trait] = made
    items = [
        PromptItem(id=f"q{number}", paraphrases=[question], judge_prompts=dict(judges))
        for number, question in enumerate(questions, start=1)
    ]
    return items, {"name": trait, "instructions": pairs}
