"""Judge a whole transcript: every finished response not yet scored, concurrently, resumably.

A (response, metric) pair is done when the transcript already holds a judge record for it from
the same judge model and prompt template. Records are appended (never rewritten), each fsync'd
as it is made, so a killed run loses at most the calls in flight; run it again to finish.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from personachat.errors import PersonachatError
from personachat.judge.metrics import MetricPlan
from personachat.judge.prompts import JudgeMetric
from personachat.judge.records import parse_judgements
from personachat.judge.scorer import Scorer
from personachat.selection import ALL_QUESTIONS, QuestionSelection
from personachat.transcripts.reader import read_transcript
from personachat.transcripts.schema import ResponseRecord
from personachat.transcripts.writer import TranscriptWriter


@dataclass
class JudgeRunStats:
    """What a run did. ``pairs``: (finished response, metric) pairs in the transcript; ``already``:
    those judged before this run; ``judged``: records written now, ``cached`` of them without a call."""

    pairs: int = 0
    already: int = 0
    judged: int = 0
    cached: int = 0
    failed: int = 0
    calls: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)  # distinct messages, first few

    @property
    def remaining(self) -> int:
        return self.pairs - self.already - self.judged

    @property
    def scores_per_second(self) -> float:
        return self.judged / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """One progress line."""
        text = (
            f"judged {self.already + self.judged}/{self.pairs} "
            f"(this run {self.judged}, {self.cached} from cache, {self.calls} calls"
        )
        if self.failed:
            text += f", {self.failed} failed"
        return text + f"; {self.scores_per_second:.1f} scores/s)"


def pending_pairs(
    responses: list[ResponseRecord],
    plan: MetricPlan,
    done: set[tuple[str, str, str, str]],
    judge_key: str,
    selection: QuestionSelection = ALL_QUESTIONS,
) -> tuple[int, list[tuple[ResponseRecord, JudgeMetric]]]:
    """(all pairs, the pairs without a record from this judge and template yet), selected questions only."""
    total = 0
    todo = []
    for response in responses:
        if not selection.keeps(response.question_id):
            continue
        for metric in plan.for_question(response.question_id):
            total += 1
            if (response.id, metric.name, metric.sha256, judge_key) not in done:
                todo.append((response, metric))
    return total, todo


async def judge_transcript(
    path: Path | str,
    scorer: Scorer,
    plan: MetricPlan,
    *,
    concurrency: int = 8,
    progress: Callable[[JudgeRunStats], None] | None = None,
    progress_every: float = 2.0,
    selection: QuestionSelection = ALL_QUESTIONS,
) -> JudgeRunStats:
    """Score what is missing in ``path`` with ``scorer`` and append the records to it.

    ``progress`` gets the running stats every ``progress_every`` seconds and once at the end.
    Failed pairs (the judge server erred) are counted and left for the next run.
    """
    if concurrency < 1:
        raise PersonachatError(f"--concurrency must be at least 1, not {concurrency}")
    transcript = read_transcript(path)
    records, _problems = parse_judgements(transcript.judgements)
    done = {(r.target, r.metric, r.prompt_sha256, r.judge.key) for r in records}
    judge_key = scorer.identity.key
    stats = JudgeRunStats()
    stats.pairs, todo = pending_pairs(transcript.finished(), plan, done, judge_key, selection)
    stats.already = stats.pairs - len(todo)
    calls_before = scorer.client.calls
    started = time.perf_counter()
    last_report = started
    queue = iter(todo)

    def tick(force: bool = False) -> None:
        nonlocal last_report
        now = time.perf_counter()
        stats.seconds = now - started
        stats.calls = scorer.client.calls - calls_before
        if progress and (force or now - last_report >= progress_every):
            last_report = now
            progress(stats)

    async def worker(writer: TranscriptWriter) -> None:
        for response, metric in queue:  # one shared iterator: each pair goes to one worker
            try:
                record = await scorer.score(response, metric, plan.question_for(response))
            except PersonachatError as exc:
                stats.failed += 1
                message = str(exc)
                if message not in stats.errors and len(stats.errors) < 5:
                    stats.errors.append(message)
                continue
            writer.write(record)
            stats.judged += 1
            stats.cached += record.cached
            tick()

    with TranscriptWriter(path) as writer:
        await asyncio.gather(*(worker(writer) for _ in range(min(concurrency, max(1, len(todo))))))
    tick(force=True)
    return stats
