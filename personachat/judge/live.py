"""Judge answers as they finish, for the app: scores per response and a running summary per pane.

UI-free: the app hands each finished :class:`ResponseRecord` to :meth:`LiveJudge.judge_response`
(e.g. from ``Session.record_listeners`` through a worker), shows the returned records in the pane,
and redraws :meth:`LiveJudge.summary`. Judge records go to the session's transcript writer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from personachat.backends.base import Backend
from personachat.errors import PersonachatError
from personachat.judge.aggregate import GroupSummary, Rule, ScoredRow, get_rule, summarise
from personachat.judge.metrics import MetricPlan, resolve_metrics
from personachat.judge.records import (
    JudgeRecord,
    latest_by_target,
    parse_judgements,
    question_key,
    to_scored_row,
)
from personachat.judge.scorer import Scorer, open_scorer
from personachat.profile import Profile
from personachat.promptsets.model import PromptSet
from personachat.transcripts.reader import Transcript
from personachat.transcripts.schema import ResponseRecord
from personachat.transcripts.writer import TranscriptWriter


class JudgeFailed(PersonachatError):
    """Some metrics of a response could not be judged; ``records`` holds those that were."""

    def __init__(self, message: str, records: list[JudgeRecord]):
        super().__init__(message)
        self.records = records


class LiveJudge:
    """Scores finished answers while a session runs and keeps per-pane summaries.

    ``concurrency`` bounds judge calls in flight across all panes. ``rule`` is the default for
    :meth:`summary`; ``base_pane`` the pane others are compared with (none: no difference shown);
    ``panes`` the order summaries come in (other panes follow in order of first judged answer).
    """

    def __init__(
        self,
        scorer: Scorer,
        writer: TranscriptWriter | None,
        plan: MetricPlan,
        *,
        rule: Rule | None = None,
        base_pane: str | None = None,
        concurrency: int = 4,
        panes: list[str] | None = None,
    ):
        self.scorer = scorer
        self.writer = writer
        self.plan = plan
        self.rule = rule or get_rule("betley")
        self.base_pane = base_pane
        self.panes = list(panes or [])
        self._limit = asyncio.Semaphore(concurrency)
        self._responses: dict[str, ResponseRecord] = {}
        self._records: dict[str, dict[str, JudgeRecord]] = {}
        self.listeners: list[Callable[[ResponseRecord, list[JudgeRecord]], None]] = []
        self.metric_names: list[str] | None = plan.names  # what the profile asks for (None: the set's own)

    @classmethod
    async def open(
        cls,
        profile: Profile,
        writer: TranscriptWriter | None,
        *,
        backends: dict[str, Backend] | None = None,
        prompt_set: PromptSet | None = None,
        base_pane: str | None = None,
        concurrency: int = 4,
        cache: bool | Path = True,
        progress: Callable[[str], None] | None = None,
    ) -> LiveJudge:
        """A live judge for ``profile``'s ``[judge]`` (raises :class:`PersonachatError` without one).

        Reuses the judge's server from ``backends`` when the app already connected it, else
        connects (starting a vLLM server if needed). The base pane defaults to a pane named
        ``base``, else the first pane.
        """
        if profile.judge is None:
            raise PersonachatError(f"profile '{profile.name}' has no [judge] table (see docs/judge.md)")
        plan = resolve_metrics(profile.judge.metrics, prompt_set)
        rule = get_rule(profile.judge.rule)
        scorer = await open_scorer(profile, backends=backends, progress=progress, cache=cache)
        names = [p.name for p in profile.panes]
        if base_pane is None and names:
            base_pane = "base" if "base" in names else names[0]
        live = cls(scorer, writer, plan, rule=rule, base_pane=base_pane, concurrency=concurrency, panes=names)
        live.metric_names = profile.judge.metrics
        return live

    def use_prompt_set(self, prompt_set: PromptSet | None) -> None:
        """Judge from now on with ``prompt_set``'s own judge prompts (the app loaded it with /replay)."""
        self.plan = resolve_metrics(self.metric_names, prompt_set)

    @property
    def metrics(self) -> list[str]:
        return self.plan.names

    async def judge_response(self, record: ResponseRecord) -> list[JudgeRecord]:
        """Judge one response on every metric (concurrently); write and return the records.

        Returns ``[]`` for responses that did not finish. Raises :class:`JudgeFailed` (after
        writing the metrics that worked) when the judge failed on some metric.
        """
        if record.status != "finished":
            return []
        self._responses[record.id] = record
        metrics = self.plan.for_question(record.question_id)

        async def one(metric_index: int) -> JudgeRecord:
            async with self._limit:
                return await self.scorer.score(record, metrics[metric_index], self.plan.question_for(record))

        results = await asyncio.gather(*(one(i) for i in range(len(metrics))), return_exceptions=True)
        done: list[JudgeRecord] = []
        errors: list[str] = []
        for metric, result in zip(metrics, results, strict=True):
            if isinstance(result, JudgeRecord):
                done.append(result)
            elif isinstance(result, PersonachatError):
                errors.append(f"{metric.name}: {result}")
            else:
                raise result
        for judged in done:
            if self.writer is not None:
                self.writer.write(judged)
            self._records.setdefault(record.id, {})[judged.metric] = judged
        for listener in self.listeners:
            listener(record, done)
        if errors:
            raise JudgeFailed("judge failed for " + "; ".join(errors), done)
        return done

    def load(self, transcript: Transcript) -> None:
        """Take in a reopened transcript's finished responses and the judge records it already has."""
        records, _problems = parse_judgements(transcript.judgements)
        latest = latest_by_target(records)
        for response in transcript.finished():
            if response.id in latest:
                self._responses[response.id] = response
                self._records[response.id] = dict(latest[response.id])

    def scores(self, response_id: str) -> dict[str, JudgeRecord]:
        """metric -> record for one response (empty while unjudged)."""
        return dict(self._records.get(response_id, {}))

    def rows(self) -> list[ScoredRow]:
        """One row per judged response, grouped by pane."""
        return [
            to_scored_row(
                self._responses[rid].pane,
                question_key(self._responses[rid]),
                records,
                tags=self._responses[rid].all_tags,
            )
            for rid, records in self._records.items()
        ]

    def summary(self, rule: Rule | None = None, base_pane: str | None = None) -> list[GroupSummary]:
        """One overall summary per judged pane (in ``panes`` order), under ``rule``.

        Each has n, n_judged, mean_aligned, coherent_share, misaligned / n_counted with
        misaligned_share and its Wilson interval, and diff_from_base against ``base_pane``
        (default: the judge's base pane, when it has judged answers).
        """
        rows = self.rows()
        base = base_pane or self.base_pane
        if base is not None and not any(r.group == base for r in rows):
            base = None
        overall = [s for s in summarise(rows, rule or self.rule, base) if s.question_id is None]
        order = {name: i for i, name in enumerate(self.panes)}
        return sorted(overall, key=lambda s: order.get(s.group, len(order)))

    async def aclose(self) -> None:
        """Close the judge's cache and any connection it opened (not the transcript writer)."""
        await self.scorer.aclose()
