"""Which judge metrics apply to a response, with which wording, asked about which question.

A prompt set's own judge prompts come first, per question (the authors' wording: the thresholds of
the field were calibrated on it); personachat's built-in prompts only where the set has none, and
:attr:`MetricPlan.builtin` then says so, so that every judge and report output can warn that the
rates are not comparable with published figures. The judge's ``{question}`` is the question as
the set wrote it (the paraphrase or scripted turn), not the text a pane sent (a trigger prefix is
not the judge's business).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from personachat.errors import PersonachatError
from personachat.judge.kinds import infer
from personachat.judge.prompts import EXAMPLE_METRICS, JudgeMetric
from personachat.promptsets.model import JudgePrompt, PromptSet
from personachat.transcripts.schema import ResponseRecord

BUILTIN_WARNING = (
    "judged with personachat's own judge prompts (the prompt set has none): the 30/50 thresholds were "
    "calibrated on the EM authors' wording, so these rates are not comparable with published EM figures"
)


def metric_from_prompt(name: str, prompt: JudgePrompt) -> JudgeMetric:
    """The judge metric a prompt set defines (its kind and labels inferred where the file is silent).

    A set's own wording of a built-in categorical metric (``era``) keeps the built-in's labels.
    """
    builtin = EXAMPLE_METRICS.get(name)
    if prompt.kind is None and not prompt.labels and builtin is not None and builtin.kind != "score_0_100":
        prompt = dataclasses.replace(prompt, kind=builtin.kind, labels=builtin.labels)
    kind, labels = infer(name, prompt)
    try:
        return JudgeMetric(name, prompt.template, kind=kind, labels=labels)
    except ValueError as exc:
        raise PersonachatError(f"{prompt.source or 'prompt set'}: {exc}") from None


@dataclass
class MetricPlan:
    """The metrics to judge: ``per_question`` for a prompt set's questions, ``default`` for the rest.

    ``builtin`` names the metrics judged with personachat's own wording. ``prompt_set`` (when
    known) gives the judge the question as the set wrote it.
    """

    default: list[JudgeMetric]
    per_question: dict[str, list[JudgeMetric]] = field(default_factory=dict)
    builtin: list[str] = field(default_factory=list)
    prompt_set: PromptSet | None = None

    @property
    def names(self) -> list[str]:
        names = [m.name for m in self.default]
        for metrics in self.per_question.values():
            names += [m.name for m in metrics if m.name not in names]
        return names

    def for_question(self, question_id: str | None) -> list[JudgeMetric]:
        if question_id is not None and question_id in self.per_question:
            return self.per_question[question_id]
        return self.default

    def question_for(self, response: ResponseRecord) -> str:
        """The ``{question}`` the judge sees: the set's text for a replayed answer, else the prompt sent."""
        ref = response.replay
        if ref is not None and self.prompt_set is not None:
            text = self.prompt_set.question_text(ref.question_id, ref.paraphrase_ix, ref.turn_ix)
            if text is not None:
                return text
        return response.prompt

    def all_metrics(self) -> dict[str, JudgeMetric]:
        """Every distinct metric (by template hash) of the plan, for listing."""
        out: dict[str, JudgeMetric] = {}
        for metric in [*self.default, *(m for ms in self.per_question.values() for m in ms)]:
            out.setdefault(metric.sha256, metric)
        return out


def _builtin(name: str, known: list[str]) -> JudgeMetric:
    if name in EXAMPLE_METRICS:
        return EXAMPLE_METRICS[name]
    raise PersonachatError(
        f"no judge prompt for metric '{name}' (known: {', '.join(sorted({*EXAMPLE_METRICS, *known}))}); "
        "give a prompt set that defines it (--prompts)"
    )


def resolve_metrics(names: list[str] | None, prompt_set: PromptSet | None = None) -> MetricPlan:
    """The plan for ``names`` (None: every metric the set defines, else the built-in aligned/coherent).

    Templates: a question's own > the set's > the built-in one. Raises :class:`PersonachatError`
    for a name nobody defines, a malformed template, or a categorical judge without labels.
    """
    if names is not None and not names:
        raise PersonachatError("no judge metrics given")
    if names is not None and len(set(names)) != len(names):
        raise PersonachatError(f"judge metrics listed twice: {', '.join(names)}")
    shared = prompt_set.judge_prompts if prompt_set else {}
    wanted = list(names) if names is not None else (list(shared) or ["aligned", "coherent"])
    default: list[JudgeMetric] = []
    builtin: list[str] = []
    for name in wanted:
        if name in shared:
            default.append(metric_from_prompt(name, shared[name]))
        else:
            default.append(_builtin(name, list(shared)))
            builtin.append(name)
    plan = MetricPlan(default, builtin=builtin, prompt_set=prompt_set)
    for item in prompt_set.items if prompt_set else []:
        if not item.judge_prompts:
            continue
        own = [
            n for n in (names if names is not None else list(item.judge_prompts)) if n in item.judge_prompts
        ]
        metrics = [metric_from_prompt(n, item.judge_prompts[n]) for n in own]
        if names is not None:  # asked-for metrics the item lacks: the set-wide (or built-in) ones
            metrics += [m for m in default if m.name not in own]
        if [(m.name, m.sha256, m.kind) for m in metrics] != [(m.name, m.sha256, m.kind) for m in default]:
            plan.per_question[item.id] = metrics
    return plan
