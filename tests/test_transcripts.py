"""Transcript writing and reading: durable appends, torn lines, annotations merged."""

from __future__ import annotations

import subprocess
import sys

import orjson

from personachat.transcripts import AnnotationRecord, ResponseRecord, TranscriptWriter, read_transcript
from personachat.transcripts.schema import JobRef, SessionHeader, new_id


def response(i: int, **kw) -> ResponseRecord:
    data = dict(
        id=f"r{i}",
        session_id="s",
        conversation=1,
        turn=i,
        pane="base",
        sample=0,
        server="local",
        model="base",
        adapter=None,
        adapter_sha256=None,
        base_model="/m",
        model_sha256="0" * 64,
        engine={"engine": "vllm", "version": "0.32.0"},
        messages=[{"role": "user", "content": f"q{i}"}],
        sampling={"temperature": 1.0, "seed": 3},
        status="finished",
        text=f"answer {i} [bold]x[/]",
    )
    data.update(kw)
    return ResponseRecord(**data)


def header() -> SessionHeader:
    return SessionHeader(
        session_id="s", created_at="now", personachat_version="0", profile={}, servers={}, host={}
    )


def test_round_trip_with_annotations_and_replay_fields(tmp_path):
    path = tmp_path / "t.jsonl"
    with TranscriptWriter(path) as writer:
        writer.write(header())
        writer.write(response(1, replay=JobRef("q", 0, 2)))
        writer.write(
            AnnotationRecord(
                id=new_id(),
                session_id="s",
                kind="label",
                value="misaligned",
                target="r1",
                pane="base",
                blind=True,
            )
        )
        writer.write(
            AnnotationRecord(id=new_id(), session_id="s", kind="tag", value="villain", turn=1, conversation=1)
        )
    t = read_transcript(path)
    assert t.problems == []
    [r] = t.responses
    assert r.text == "answer 1 [bold]x[/]" and r.replay.question_id == "q" and r.replay.sample_ix == 2
    assert r.labels == ["misaligned"] and r.annotations[0].blind
    assert [a.value for a in t.turn_annotations(1, 1)] == ["villain"]
    # Replay fields are top-level keys in the file (readable by pandas/duckdb as columns).
    assert orjson.loads(path.read_bytes().splitlines()[1])["question_id"] == "q"


def test_torn_last_line_is_reported_and_everything_else_kept(tmp_path):
    path = tmp_path / "t.jsonl"
    with TranscriptWriter(path) as writer:
        writer.write(header())
        for i in range(1, 4):
            writer.write(response(i))
    with open(path, "ab") as f:
        f.write(orjson.dumps(response(4).to_dict())[:57])  # a crash mid-write
    t = read_transcript(path)
    assert [r.id for r in t.responses] == ["r1", "r2", "r3"]
    assert len(t.problems) == 1 and ":5: torn last line" in t.problems[0]
    # Appending after a torn line starts on a fresh line, so the new record is readable.
    with TranscriptWriter(path) as writer:
        writer.write(response(5))
    t = read_transcript(path)
    assert [r.id for r in t.responses] == ["r1", "r2", "r3", "r5"]
    assert "unreadable line" in t.problems[0]


def test_records_survive_a_killed_writer(tmp_path):
    """Each write is durable when it returns: SIGKILL right after loses nothing written."""
    path = tmp_path / "t.jsonl"
    code = f"""
import os, signal
from personachat.transcripts import TranscriptWriter
w = TranscriptWriter({str(path)!r})
for i in range(50):
    w.write({{"type": "other", "i": i}})
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", code], check=False)
    assert proc.returncode == -9
    t = read_transcript(path)
    assert [d["i"] for d in t.other] == list(range(50))
