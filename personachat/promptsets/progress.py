"""What a running replay reports: counts per pane (with rate and ETA) and one event per job attempt."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from personachat.promptsets.model import PromptJob
from personachat.transcripts.schema import ResponseRecord


@dataclass
class PaneProgress:
    """Job counts of one pane. ``failed`` counts jobs that gave up after every retry."""

    total: int = 0
    finished: int = 0
    failed: int = 0
    skipped: int = 0  # already finished in the transcript being resumed
    retries: int = 0

    @property
    def done(self) -> int:
        return self.finished + self.failed + self.skipped


@dataclass
class ReplayProgress:
    """Live counts for a progress display; ``panes`` keeps the profile's pane order."""

    panes: dict[str, PaneProgress]
    started_at: float = field(default_factory=time.monotonic)
    ended_at: float | None = None
    output_tokens: int = 0
    cpu_seconds: float = 0.0  # this process's CPU time during the run (client cost, see docs/replay.md)

    @property
    def total(self) -> int:
        return sum(p.total for p in self.panes.values())

    @property
    def finished(self) -> int:
        return sum(p.finished for p in self.panes.values())

    @property
    def failed(self) -> int:
        return sum(p.failed for p in self.panes.values())

    @property
    def skipped(self) -> int:
        return sum(p.skipped for p in self.panes.values())

    @property
    def done(self) -> int:
        return sum(p.done for p in self.panes.values())

    @property
    def elapsed(self) -> float:
        return (self.ended_at or time.monotonic()) - self.started_at

    def rate(self) -> float:
        """Jobs ended per second in this run (resumed jobs not counted)."""
        elapsed = self.elapsed
        return (self.finished + self.failed) / elapsed if elapsed > 0 else 0.0

    def token_rate(self) -> float:
        """Output tokens per second in this run (where the server reported them)."""
        elapsed = self.elapsed
        return self.output_tokens / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        """Seconds until every job has ended, at the rate so far; None before the first one."""
        rate = self.rate()
        return (self.total - self.done) / rate if rate > 0 else None


@dataclass(frozen=True, slots=True)
class JobFinished:
    """A job finished on a pane; ``records`` holds one record per turn."""

    pane: str
    job: PromptJob
    records: tuple[ResponseRecord, ...]
    attempt: int


@dataclass(frozen=True, slots=True)
class JobFailed:
    """An attempt of a job failed (recorded in ``record``); ``will_retry`` says whether it goes again."""

    pane: str
    job: PromptJob
    error: str
    attempt: int
    will_retry: bool
    record: ResponseRecord


ReplayEvent = JobFinished | JobFailed
UpdateCallback = Callable[[ReplayEvent, ReplayProgress], Awaitable[None] | None]
