"""One streaming pass over a transcript, keeping only what a report needs of it.

:func:`~personachat.transcripts.reader.read_transcript` builds every record as a typed object; a
report over a million judged answers needs a few fields of each, so this pass keeps, per finished
answer the selection keeps, its id, pane, question, job, prompt and tags (in columns), the latest
judge verdict per metric, and the annotations whole (they are few). It reports what the reader
reports, with the same messages: unreadable and torn lines, and records of the wrong types, which
are skipped. Response records are checked against the schema's own field types, and anything
unusual (a job key that disagrees with its fields, a question id that is a number) goes through
:meth:`ResponseRecord.from_dict` itself. Judge records as :meth:`JudgeRecord.to_dict` writes them
(``type`` first, every field a report reads before ``top``, a closing brace at the end) are parsed
only up to ``top``; any other judge line is read whole by :meth:`JudgeRecord.from_dict`.

A large file is read in byte ranges by several processes (one per core, up to four), each range
from the start of a line; their results are joined in file order, so the latest judge record
still wins and line numbers are the file's.
"""

from __future__ import annotations

import dataclasses
import gc
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from personachat.judge.records import JudgeRecord
from personachat.transcripts.reader import transcript_file
from personachat.transcripts.schema import (
    RESPONSE_TYPES,  # the schema's own field types: one place for them
    AnnotationRecord,
    ResponseRecord,
    SessionHeader,
)

JUDGE_LINE = b'{"type":"judge",'
TOP_FIELD = b',"top":'
PARALLEL_BYTES = 64 << 20
"""Files at least this large are read by several processes."""
MAX_WORKERS = 4
_EXACT_TYPES = {key: frozenset(allowed) for key, allowed in RESPONSE_TYPES.items()}
_REQUIRED = frozenset(
    f.name
    for f in dataclasses.fields(ResponseRecord)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
)


Judged = tuple[float | None, Any, str, tuple[str, str, str]]
"""The latest judge verdict on one answer for one metric, as a report reads it: (score, label, kind,
(judge model, prompt sha256, method)). A plain tuple: millions are made, and pickled between processes."""
SCORE: Final = 0
LABEL: Final = 1
KIND: Final = 2
SOURCE: Final = 3
_MISSING = object()


def keep_all(_question_id: str | None) -> bool:
    return True


@dataclass
class ScannedTranscript:
    """What :func:`scan_transcript` kept of one file (or of one byte range of it).

    Answers are in columns, one entry per finished answer the selection keeps, in file order.
    ``judged``: metric -> response id -> the latest verdict (of any response, kept or not), either
    a :data:`Judged` tuple or, when its (label, kind, source) are the metric's ``shared`` ones (as
    nearly all are), just its score: a million floats take less room, and pickle faster between
    processes, than a million tuples. :meth:`verdicts` lines them up with the answers, whole.
    """

    path: Path
    header: SessionHeader | None = None
    problems: list[tuple[int, str]] = field(default_factory=list)  # (line, what), as the reader says it
    judge_problems: list[str] = field(default_factory=list)  # malformed judge records
    ids: list[str] = field(default_factory=list)
    panes: list[str] = field(default_factory=list)
    question_ids: list[str | None] = field(default_factory=list)
    paraphrases: list[int] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)
    turn_ixs: list[int] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    conversations: list[int] = field(default_factory=list)
    turns: list[int] = field(default_factory=list)
    tags: list[tuple[str, ...]] = field(default_factory=list)
    judged: dict[str, dict[str, Any]] = field(default_factory=dict)  # metric -> response id -> verdict
    shared: dict[str, tuple[Any, str, tuple[str, str, str]]] = field(default_factory=dict)
    annotations: list[AnnotationRecord] = field(default_factory=list)
    seen_question_ids: set[str] = field(default_factory=set)  # of finished answers, selected or not
    left_out: int = 0  # finished answers the selection leaves out
    responses: int = 0  # response records of any status that were read
    lines: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def messages(self) -> list[str]:
        """The problems as the reader words them: ``FILE:LINE: what; skipped``."""
        return [f"{self.path}:{line}: {what}" for line, what in self.problems]

    def verdicts(self, metric: str) -> list[Judged | None]:
        """Each answer's latest verdict for ``metric``, in answer order (none where it has none)."""
        get = self.judged.get(metric, {}).get
        rest = self.shared.get(metric, (None, "", ("", "", "")))
        return [
            None if (e := get(rid, _MISSING)) is _MISSING else e if type(e) is tuple else (e, *rest)
            for rid in self.ids
        ]

    def add_verdict(self, metric: str, target: str, entry: Judged) -> None:
        """``entry`` is now the latest verdict on ``target`` for ``metric``."""
        by_id = self.judged.get(metric)
        if by_id is None:
            by_id = self.judged[metric] = {}
            self.shared[metric] = entry[1:]
        by_id[target] = entry[SCORE] if entry[1:] == self.shared[metric] else entry

    def index(self) -> dict[str, int]:
        """Response id -> its answer's position (the last, for an id written twice)."""
        return {rid: i for i, rid in enumerate(self.ids)}

    def join(self, later: ScannedTranscript) -> None:
        """Append the scan of the byte range that follows this one."""
        for problem in later.problems:
            self.problems.append((problem[0] + self.lines, problem[1]))
        self.lines += later.lines
        self.judge_problems += later.judge_problems
        if self.header is None:
            self.header = later.header
        for name in ("ids", "panes", "question_ids", "paraphrases", "samples", "turn_ixs", "prompts",
                     "conversations", "turns", "tags", "annotations"):  # fmt: skip
            getattr(self, name).extend(getattr(later, name))
        for metric, by_id in later.judged.items():  # later in the file wins
            rest = later.shared[metric]
            if metric not in self.judged:
                self.judged[metric], self.shared[metric] = by_id, rest
            elif rest == self.shared[metric]:
                self.judged[metric].update(by_id)
            else:
                self.judged[metric].update(
                    (rid, e if type(e) is tuple else (e, *rest)) for rid, e in by_id.items()
                )
        self.seen_question_ids |= later.seen_question_ids
        self.left_out += later.left_out
        self.responses += later.responses


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while millions of acyclic objects are made (it would scan them
    over and over); collection resumes afterwards."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class _Scan:
    def __init__(self, path: Path, keeps: Callable[[str | None], bool]):
        self.out = ScannedTranscript(path)
        self.keeps = keeps
        self.strings: dict[str, str] = {}  # one object per pane name, question id, prompt
        self.sources: dict[tuple[str, str, str], tuple[str, str, str]] = {}
        self.good: set[tuple[tuple[str, ...], tuple[type, ...]]] = set()  # response signatures that pass

    def response(self, data: dict[str, Any]) -> None:
        # Whether keys and value types pass the schema depends on nothing else: a million records of
        # one writer have a handful of (keys, types) signatures, each checked once.
        signature = (tuple(data), tuple(map(type, data.values())))
        fields = self._plain(data) if signature in self.good or self._passes(data, signature) else None
        if fields is None:  # anything unusual: the schema's own reading (and its error message)
            record = ResponseRecord.from_dict(data)
            ref = record.replay
            job = None if ref is None else (ref.question_id, ref.paraphrase_ix, ref.sample_ix, ref.turn_ix)
            fields = (record.id, record.pane, record.status, record.prompt, job, record.tags)
            fields += (record.conversation, record.turn)
        rid, pane, status, prompt, job, tags, conversation, turn = fields
        out = self.out
        out.responses += 1
        if status != "finished":
            return
        qid = job[0] if job else None
        if qid is not None:
            out.seen_question_ids.add(qid)
        if not self.keeps(qid):
            out.left_out += 1
            return
        share = self.strings.setdefault
        out.ids.append(rid)
        out.panes.append(share(pane, pane))
        out.prompts.append(share(prompt, prompt))
        out.conversations.append(conversation)
        out.turns.append(turn)
        out.tags.append(tuple(tags) if tags else ())
        if job is None or qid is None:
            out.question_ids.append(None)
            out.paraphrases.append(0)
            out.samples.append(0)
            out.turn_ixs.append(0)
        else:
            out.question_ids.append(share(qid, qid))
            out.paraphrases.append(job[1])
            out.samples.append(job[2])
            out.turn_ixs.append(job[3])

    def _passes(self, data: dict[str, Any], signature: Any) -> bool:
        if not data.keys() >= _REQUIRED:
            return False
        for key, value in data.items():
            allowed = _EXACT_TYPES.get(key)
            if allowed is not None and type(value) not in allowed:
                return False
        if len(self.good) < 10_000:
            self.good.add(signature)
        return True

    @staticmethod
    def _plain(data: dict[str, Any]) -> tuple[Any, ...] | None:
        """The fields a report reads of a record whose types pass, unless something is unusual."""
        prompt = ""
        for message in data["messages"]:
            if type(message) is not dict:
                return None
            content = message.get("content", "")
            if type(content) is not str:
                return None
            if message.get("role") == "user":
                prompt = content
        qid = data.get("question_id")
        job_key = data.get("job")
        if qid is None:
            if type(job_key) is str:
                return None
            job = None
        else:
            if type(qid) is not str:
                return None
            paraphrase, sample = data.get("paraphrase_ix") or 0, data.get("sample_ix") or 0
            if job_key is not None and job_key != f"{qid}/{paraphrase}/{sample}":
                return None
            job = (qid, paraphrase, sample, data.get("turn_ix") or 0)
        return (
            data["id"], data["pane"], data["status"], prompt, job, data.get("tags"),
            data["conversation"], data["turn"],
        )  # fmt: skip

    def judge_prefix(self, raw: bytes) -> bool:
        """A judge line as the writer writes it, read up to ``top``; false when it must be read whole."""
        cut = raw.find(TOP_FIELD)
        if cut < 0 or not raw.endswith(b"}\n"):  # a torn line is read whole, and reported
            return False
        try:
            data = orjson.loads(raw[:cut] + b"}")
            judge = data.get("judge") or {}
            score = data.get("score")
            source = (
                str(judge.get("model", "")),
                str(data.get("prompt_sha256", "")),
                str(data.get("method", "")),
            )
            entry = (
                None if score is None else float(score),
                data.get("label"),
                str(data.get("kind", "score_0_100")),
                self.sources.setdefault(source, source),
            )
            target, metric = str(data["target"]), str(data["metric"])
            float(data.get("mass") or 0.0), int(data.get("schema", 1))  # as from_dict checks them
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return False
        self.out.add_verdict(metric, target, entry)
        return True

    def judge_whole(self, data: dict[str, Any]) -> None:
        try:
            record = JudgeRecord.from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self.out.judge_problems.append(f"malformed judge record {data.get('id', '?')!s}: {exc}")
            return
        source = (record.judge.model, record.prompt_sha256, record.method)
        entry = (record.score, record.label, record.kind, self.sources.setdefault(source, source))
        self.out.add_verdict(record.metric, record.target, entry)

    def run(self, start: int = 0, end: int | None = None) -> ScannedTranscript:
        """Scan the lines that start in [start, end) (``start`` at the start of a line)."""
        out = self.out
        problems = out.problems
        number = 0
        with open(out.path, "rb") as handle:
            handle.seek(start)
            at = start
            for raw in handle:
                if end is not None and at >= end:
                    break
                at += len(raw)
                number += 1
                if raw.startswith(JUDGE_LINE) and self.judge_prefix(raw):
                    continue
                if raw[:1] != b"{" and not raw.strip():
                    continue
                try:
                    data = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    data = None
                if not isinstance(data, dict):
                    torn = not raw.endswith(b"\n")  # only the last line can lack its newline
                    what = "torn last line (a write was interrupted)" if torn else "unreadable line"
                    problems.append((number, f"{what}; skipped"))
                    continue
                kind = data.get("type")
                try:
                    if kind == "response":
                        self.response(data)
                    elif kind == "judge":
                        self.judge_whole(data)
                    elif kind == "annotation":
                        out.annotations.append(AnnotationRecord.from_dict(data))
                    elif kind == "session" and out.header is None:
                        out.header = SessionHeader.from_dict(data)
                except (KeyError, TypeError, ValueError) as exc:
                    problems.append((number, f"malformed {kind} record ({exc}); skipped"))
        out.lines = number
        return out


def _scan_range(
    path: Path, start: int, end: int | None, keeps: Callable[[str | None], bool]
) -> ScannedTranscript:
    with gc_paused():
        return _Scan(path, keeps).run(start, end)


def _line_starts(path: Path, parts: int) -> list[int]:
    """``parts`` byte offsets, each at the start of a line, splitting the file about evenly."""
    size = path.stat().st_size
    starts = [0]
    with open(path, "rb") as handle:
        for k in range(1, parts):
            handle.seek(max(size * k // parts - 1, starts[-1]))
            handle.readline()  # to the end of the line the cut falls in
            if handle.tell() < size and handle.tell() > starts[-1]:
                starts.append(handle.tell())
    return starts


def scan_transcript(
    path: Path | str,
    keeps: Callable[[str | None], bool] = keep_all,
    workers: int | None = None,
) -> ScannedTranscript:
    """Read ``path`` (see the module doc); ``keeps`` says which question ids to keep (``None``: an
    answer to a typed prompt) and must be picklable; ``workers`` processes read it (default: one
    per core up to four for a file of 64 MB or more, else one). Raises :class:`TranscriptError`
    for a missing file or a folder, as the reader does."""
    path = transcript_file(path)
    if workers is None:
        workers = min(os.cpu_count() or 1, MAX_WORKERS) if path.stat().st_size >= PARALLEL_BYTES else 1
    starts = _line_starts(path, workers) if workers > 1 else [0]
    if len(starts) == 1:
        return _scan_range(path, 0, None, keeps)
    ends: list[int | None] = [*starts[1:], None]
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    with ProcessPoolExecutor(len(starts) - 1, mp_context=context) as pool:
        others = [
            pool.submit(_scan_range, path, s, e, keeps) for s, e in zip(starts[1:], ends[1:], strict=True)
        ]
        first = _scan_range(path, starts[0], ends[0], keeps)  # this process reads the first range
        with gc_paused():
            for other in others:
                first.join(other.result())
    return first
