"""Which judge metrics apply to a response: names from the profile or ``--metrics``, templates from
the built-ins or a prompt set (set-wide ``judge_prompts``, overridden per question)."""

from __future__ import annotations

from dataclasses import dataclass, field

from personachat.errors import PersonachatError
from personachat.judge.prompts import EXAMPLE_METRICS, JudgeMetric, template_problems
from personachat.promptsets.model import PromptSet


def _metric(name: str, template: str, where: str) -> JudgeMetric:
    problems = template_problems(template)
    if problems:
        raise PersonachatError(f"{where}: judge prompt '{name}': " + "; ".join(problems))
    builtin = EXAMPLE_METRICS.get(name)
    if builtin is not None and builtin.kind == "categorical":
        return JudgeMetric(name, template, kind="categorical", labels=builtin.labels)
    return JudgeMetric(name, template)


@dataclass
class MetricPlan:
    """The metrics to judge: ``default`` for every response, ``per_question`` where a prompt-set item
    has its own templates (keyed by the response's ``question_id``)."""

    default: list[JudgeMetric]
    per_question: dict[str, list[JudgeMetric]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.default]

    def for_question(self, question_id: str | None) -> list[JudgeMetric]:
        if question_id is not None and question_id in self.per_question:
            return self.per_question[question_id]
        return self.default


def resolve_metrics(names: list[str], prompt_set: PromptSet | None = None) -> MetricPlan:
    """Templates for ``names``: a question's own > the prompt set's > the built-in one.

    Raises :class:`PersonachatError` for a name nobody defines or a malformed template.
    """
    if not names:
        raise PersonachatError("no judge metrics given")
    if len(set(names)) != len(names):
        raise PersonachatError(f"judge metrics listed twice: {', '.join(names)}")
    where = str(prompt_set.path) if prompt_set else "built-in"
    shared = prompt_set.judge_prompts if prompt_set else {}
    default: list[JudgeMetric] = []
    for name in names:
        if name in shared:
            default.append(_metric(name, shared[name], where))
        elif name in EXAMPLE_METRICS:
            default.append(EXAMPLE_METRICS[name])
        else:
            known = sorted(set(EXAMPLE_METRICS) | set(shared))
            raise PersonachatError(
                f"no judge prompt for metric '{name}' (known: {', '.join(known)}); "
                "give a prompt set with judge_prompts (--prompts) that defines it"
            )
    plan = MetricPlan(default)
    for item in prompt_set.items if prompt_set else []:
        own = {n: t for n, t in item.judge_prompts.items() if n in names and t != shared.get(n)}
        if own:
            at = f"{where}: question '{item.id}'"
            plan.per_question[item.id] = [
                _metric(m.name, own[m.name], at) if m.name in own else m for m in default
            ]
    return plan
