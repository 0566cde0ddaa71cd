"""What judges answered, cached across runs and transcripts: append-only JSONL, one file per judge.

An entry holds the judge's raw top log-probabilities (and digit-split continuations), not a score,
so a cached answer is re-scored with whatever threshold is in force now. The key is the SHA-256
of (judge model identity, prompt template SHA-256, question, answer). Files live under
``personachat.paths.home_dir()/judge-cache``; a torn last line (a killed run) is skipped.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from personachat.paths import home_dir
from personachat.transcripts.reader import iter_lines
from personachat.transcripts.writer import TranscriptWriter


def cache_dir() -> Path:
    """Where judge caches live by default."""
    return home_dir() / "judge-cache"


def cache_key(judge_key: str, prompt_sha256: str, question: str, answer: str) -> str:
    """The cache key of one judge call (tree)."""
    data = orjson.dumps([judge_key, prompt_sha256, question, answer])
    return hashlib.sha256(data).hexdigest()


@dataclass
class CachedAnswer:
    """A judge's raw answer: first-token top log-probabilities, and continuations when digit-split.

    ``answer_chars``: how much of the answer the judge saw when it had to be cut to fit (else none).
    """

    first: dict[str, float]
    continuations: dict[str, dict[str, float]] | None = None
    answer_chars: int | None = None
    calls: int = 1
    text: str | None = None  # a generated judge answer: the judge's whole text

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "first": self.first,
            "continuations": self.continuations,
            "answer_chars": self.answer_chars,
            "calls": self.calls,
        }
        if self.text is not None:
            data["text"] = self.text
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CachedAnswer:
        def lps(d: Any) -> dict[str, float]:
            # JSON has no -inf: it was written as null.
            return {str(k): (float("-inf") if v is None else float(v)) for k, v in (d or {}).items()}

        conts = data.get("continuations")
        return cls(
            first=lps(data.get("first")),
            continuations=None if conts is None else {str(p): lps(t) for p, t in conts.items()},
            answer_chars=data.get("answer_chars"),
            calls=int(data.get("calls") or 1),
            text=data.get("text") if isinstance(data.get("text"), str) else None,
        )


class JudgeCache:
    """An in-memory view of one cache file, appended to as answers arrive.

    ``path=None`` keeps the cache in memory only (``--no-cache`` still avoids judging a response twice).
    """

    def __init__(self, path: Path | None):
        self.path = path
        self._entries: dict[str, CachedAnswer] = {}
        self._writer: TranscriptWriter | None = None
        if path is not None and path.exists():
            for _number, data, _raw in iter_lines(path):
                if data is None or "key" not in data:
                    continue
                try:
                    self._entries[str(data["key"])] = CachedAnswer.from_dict(data)
                except (TypeError, ValueError, AttributeError):
                    continue

    @classmethod
    def for_judge(cls, judge_key: str, directory: Path | None = None) -> JudgeCache:
        """The cache file of one judge under ``directory`` (default :func:`cache_dir`)."""
        name = hashlib.sha256(judge_key.encode("utf-8")).hexdigest()[:16]
        return cls((directory or cache_dir()) / f"{name}.jsonl")

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> CachedAnswer | None:
        return self._entries.get(key)

    def put(self, key: str, answer: CachedAnswer, **context: Any) -> None:
        """Remember ``answer``; ``context`` (judge, metric, ...) is written beside it for people reading the file."""
        self._entries[key] = answer
        if self.path is None:
            return
        if self._writer is None:
            # Not fsync'd: a killed process loses nothing (the kernel has the bytes), and a lost entry
            # only costs one judge call again.
            self._writer = TranscriptWriter(self.path, fsync=False)
        self._writer.write({"key": key, **context, **answer.to_dict()})

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
