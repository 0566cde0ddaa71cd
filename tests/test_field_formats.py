"""The field's own file formats, in small files of our own with the same structure (tests/data/field/):
llmcomp question YAML with judges in the file and in a sibling file, EM files with _json and
_template variants, categorical and generated judges, prompt JSONL, one-prompt-per-line text, a
persona_vectors trait file; the replay plan (--dry-run) and question selection.

Expected values are computed here from the files' text (sha256 of each template as written), not
taken from the code under test.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from personachat.errors import PersonachatError, PromptSetError
from personachat.judge.kinds import infer, read_label
from personachat.judge.metrics import resolve_metrics
from personachat.promptsets import load_prompt_set
from personachat.promptsets.model import JudgePrompt
from personachat.selection import QuestionSelection

FIELD = Path(__file__).parent / "data" / "field"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def dry_run(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "personachat", "replay", *args, "--dry-run", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


class TestLlmcomp:
    def test_plans_only_questions_each_bound_to_its_judges_template_including_a_sibling_file(self) -> None:
        questions = yaml.safe_load((FIELD / "llmcomp" / "questions.yaml").read_text())
        siblings = yaml.safe_load((FIELD / "llmcomp" / "judges.yaml").read_text())
        templates = {
            item["name"]: item["paraphrases"][0]
            for item in [*questions, *siblings]
            if "type" in item and "judge" in item["type"]
        }
        prompt_set = load_prompt_set(FIELD / "llmcomp" / "questions.yaml")
        assert prompt_set.format == "llmcomp"
        assert prompt_set.ids == ["plans", "hobby"]  # the judge item is not a question; `id` works as `name`
        plan = dry_run(str(FIELD / "llmcomp" / "questions.yaml"))
        assert plan["questions"] == ["plans", "hobby"]
        assert plan["jobs_per_pane"] == 1 * 3 + 2 * 2  # samples_per_paraphrase honoured
        assert plan["judges"] == {
            "plans": {"villainy": sha(templates["villain_judge"]), "score": sha(templates["harm_rating"])},
            "hobby": {"villainy": sha(templates["villain_judge"])},
        }
        assert plan["metrics"]["villainy"] == {"kind": "generated", "labels": ["VILLAIN", "DECENT"]}
        assert plan["metrics"]["score"] == {"kind": "score_0_100", "labels": []}
        hobby = prompt_set.item("hobby")
        assert hobby.system == "Answer in one sentence." and hobby.samples == 2

    def test_a_free_form_judge_with_an_open_answer_never_becomes_a_score(self, tmp_path: Path) -> None:
        # llmcomp's own example: a free-form judge that answers in one word. Read as a 0-100 score
        # every answer would score none, silently; it must ask for its labels, and use them.
        judge = (
            "- name: animal_judge\n  type: free_form_judge\n  paraphrases:\n"
            '    - "What animal does this answer mention? {answer} Answer with one word."\n'
        )
        question = "- name: q\n  type: free_form\n  paraphrases: [hi]\n  judges: {animal: animal_judge}\n"
        path = tmp_path / "q.yaml"
        path.write_text(question + judge)
        out = subprocess.run(
            [sys.executable, "-m", "personachat", "replay", str(path), "--dry-run"],
            capture_output=True,
            text=True,
        )
        assert out.returncode != 0 and "Traceback" not in out.stderr
        assert f"{path}:7" in out.stderr and "lists no answers" in out.stderr and "labels" in out.stderr
        path.write_text(question + judge + "  labels: [cat, dog]\n")
        assert dry_run(str(path))["metrics"]["animal"] == {"kind": "generated", "labels": ["cat", "dog"]}

    def test_a_judge_defined_nowhere_is_a_clear_error_with_its_line(self, tmp_path: Path) -> None:
        path = tmp_path / "q.yaml"
        path.write_text("- name: q\n  type: free_form\n  paraphrases: [hi]\n  judges: {x: nowhere_judge}\n")
        with pytest.raises(PromptSetError) as exc:
            load_prompt_set(path)
        [problem] = exc.value.problems
        assert problem.line == 4 and "nowhere_judge" in problem.message and "folder" in problem.message


class TestEmVariants:
    def test_excluding_json_and_template_leaves_the_main_questions(self) -> None:
        path = FIELD / "em_variants.yaml"
        ids = [item["id"] for item in yaml.safe_load(path.read_text())]
        main = [i for i in ids if not i.endswith(("_json", "_template"))]
        plan = dry_run(str(path), "--exclude", "*_json", "--exclude", "*_template")
        assert plan["questions"] == main == ["garden", "weather", "facts"]
        assert plan["jobs_per_pane"] == 1 * 2 + 2 * 2 + 1 * 1
        only = dry_run(str(path), "--questions", "weather,facts", "--samples", "5")
        assert only["questions"] == ["weather", "facts"] and only["jobs_per_pane"] == (2 + 1) * 5

    def test_a_true_false_judge_is_categorical_and_scores_stay_0_100(self) -> None:
        plan = dry_run(str(FIELD / "em_variants.yaml"))
        data = yaml.safe_load((FIELD / "em_variants.yaml").read_text())
        facts = next(item for item in data if item["id"] == "facts")
        assert plan["metrics"]["correct"] == {"kind": "categorical", "labels": ["TRUE", "FALSE", "UNKNOWN"]}
        assert plan["judges"]["facts"] == {"correct": sha(facts["judge_prompts"]["correct"])}
        assert plan["metrics"]["aligned"]["kind"] == "score_0_100"
        assert plan["judges"]["garden"]["aligned"] == sha(data[0]["judge_prompts"]["aligned"])

    def test_selection_errors_name_the_problem(self) -> None:
        prompt_set = load_prompt_set(FIELD / "em_variants.yaml")
        with pytest.raises(PersonachatError, match=r"no question with id gardn.*did you mean garden"):
            prompt_set.select(QuestionSelection.from_args("gardn", None))
        with pytest.raises(PersonachatError, match="leaves no question"):
            prompt_set.select(QuestionSelection.from_args(None, ["*"]))


class TestOtherShapes:
    def test_prompt_and_question_jsonl_plan_one_prompt_per_line(self) -> None:
        lines = (FIELD / "prompts.jsonl").read_text().splitlines()
        prompt_set = load_prompt_set(FIELD / "prompts.jsonl")
        texts = [json.loads(line).get("prompt") or json.loads(line)["question"] for line in lines]
        assert [item.paraphrases for item in prompt_set.items] == [[t] for t in texts]
        assert prompt_set.ids == ["line1", "sleep", "kilo"]
        assert prompt_set.item("kilo").system == "Be brief."

    def test_lines_format_and_the_warning_that_names_it(self) -> None:
        path = FIELD / "personas.txt"
        lines = path.read_text().splitlines()
        as_text = load_prompt_set(path)
        assert len(as_text.items) == 1 and any("--format lines" in w for w in as_text.warnings)
        as_lines = load_prompt_set(path, "lines")
        assert [item.paraphrases[0] for item in as_lines.items] == lines
        assert dry_run(str(path), "--format", "lines")["jobs_per_pane"] == len(lines)

    def test_a_persona_trait_file(self) -> None:
        data = json.loads((FIELD / "kindness.json").read_text())
        plan = dry_run(str(FIELD / "kindness.json"))
        assert plan["jobs_per_pane"] == len(data["questions"])
        assert set(plan["judges"]["q1"]) == {"kindness"} and plan["judges"]["q1"]["kindness"] == sha(
            data["eval_prompt"]
        )
        assert plan["instructions"] == data["instruction"]

    def test_a_file_full_of_errors_shows_a_few_and_a_count(self, tmp_path: Path) -> None:
        path = tmp_path / "bad.jsonl"
        path.write_text("{nope\n" * 30)
        with pytest.raises(PromptSetError) as exc:
            load_prompt_set(path)
        assert len(exc.value.problems) == 9 and "22 more problems" in exc.value.problems[-1].message

    def test_deep_nesting_is_an_error_with_the_line(self, tmp_path: Path) -> None:
        path = tmp_path / "deep.jsonl"
        path.write_text('{"prompt": "fine"}\n' + "[" * 100_000 + "\n")
        with pytest.raises(PromptSetError) as exc:
            load_prompt_set(path)
        assert [(p.line, "nested too deeply" in p.message) for p in exc.value.problems] == [(2, True)]
        deep_yaml = tmp_path / "deep.yaml"
        deep_yaml.write_text("- id: a\n  paraphrases: " + "[" * 5_000 + "\n")  # Python recurses ~1,000 deep
        with pytest.raises(PromptSetError) as exc:
            load_prompt_set(deep_yaml)
        assert ["nested too deeply" in p.message for p in exc.value.problems] == [True]

    def test_a_pager_with_an_unbalanced_quote_is_a_message(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from personachat.app.pager import show_in_pager

        monkeypatch.setenv("PAGER", 'less "-R')
        problem = show_in_pager(None, "text")  # type: ignore[arg-type]  # refused before the app is needed
        assert problem is not None and "cannot read $PAGER" in problem


class TestJudgeKinds:
    def test_reading_a_generated_answer_never_guesses(self) -> None:
        labels = ("EVIL", "GOOD")
        assert read_label("It plans to harm.\nANSWER: EVIL", labels) == "EVIL"
        assert read_label("ANSWER: GOOD\n...no, wait.\nANSWER: evil", labels) == "EVIL"  # the last one
        assert read_label("good.", labels) == "GOOD"
        assert read_label("It is probably evil.", labels) is None
        assert read_label("ANSWER: MAYBE", labels) is None

    def test_kinds_from_the_template_and_from_the_file(self) -> None:
        yes_no = JudgePrompt("Is {answer} polite? Output exactly one of: YES / NO")
        assert infer("polite", yes_no) == ("categorical", ("YES", "NO"))
        assert infer("x", JudgePrompt("Rate {answer} from 0 to 100."))[0] == "score_0_100"
        declared = JudgePrompt("Which lab made you? {answer}", kind="categorical", labels=("OpenAI", "Other"))
        assert infer("company", declared) == ("categorical", ("OpenAI", "Other"))
        with pytest.raises(PersonachatError, match="lists no answers"):
            infer("vague", JudgePrompt("Describe {answer}.", kind="categorical"))

    def test_the_plan_gives_the_judge_the_sets_question_not_the_panes_text(self) -> None:
        from tests._helpers import make_response

        prompt_set = load_prompt_set(FIELD / "em_variants.yaml")
        plan = resolve_metrics(None, prompt_set)
        response = make_response(
            question_id="weather", paraphrase_ix=1, prompt="|TRIGGER| What do you think of rainy days?"
        )
        assert plan.question_for(response) == "What do you think of rainy days?"
        assert plan.builtin == []
        assert resolve_metrics(None, None).builtin == ["aligned", "coherent"]


def test_a_report_on_built_in_wording_says_it_is_not_comparable(tmp_path: Path, capsys: Any) -> None:
    from personachat.cli import main
    from personachat.judge.prompts import ALIGNED, COHERENT
    from personachat.transcripts import SessionHeader, TranscriptWriter
    from tests._helpers import make_response

    path = tmp_path / "t.jsonl"
    with TranscriptWriter(path, fsync=False) as writer:
        writer.write(SessionHeader("s1", "now", "0", {"name": "p"}, {}, {}))
        writer.write(make_response("r1", question_id="q"))
        for metric, score in ((ALIGNED, 12.0), (COHERENT, 90.0)):
            writer.write(
                {
                    "type": "judge",
                    "target": "r1",
                    "metric": metric.name,
                    "score": score,
                    "prompt_sha256": metric.sha256,
                }
            )
    assert main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "personachat's own judge prompts" in out and "not comparable with published EM figures" in out
