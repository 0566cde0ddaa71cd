"""Append records to a transcript file, fsync'd before a write returns, so a crash loses nothing.

:class:`RecordSink` batches records that finish together into one write and one fsync (replay).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from personachat.errors import TranscriptError
from personachat.transcripts.schema import new_id


def new_transcript_path(directory: Path, profile_name: str, session_id: str | None = None) -> Path:
    """``DIR/YYYYmmdd-HHMMSS-<profile>-<id>.jsonl``: sortable by time, unique."""
    import time

    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in profile_name) or "session"
    return directory / f"{stamp}-{safe}-{(session_id or new_id())[:8]}.jsonl"


class TranscriptWriter:
    """An append-only JSONL file. Each :meth:`write` is durable when it returns.

    Opening an existing file appends to it (used by resume and by reopening a session); if its
    last line was torn by a crash, a newline is written first so the next record starts clean.
    """

    def __init__(self, path: Path | str, *, fsync: bool = True):
        self.path = Path(path)
        self._fsync = fsync
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # 0o666 less the umask, as every research file (a collaborator's group can read it).
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as exc:
            raise TranscriptError(f"cannot open transcript {self.path}: {exc.strerror}") from None
        size = os.fstat(self._fd).st_size
        if size:
            with open(self.path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    os.write(self._fd, b"\n")

    def write(self, record: Any) -> None:
        """Append one record (a dict or anything with ``to_dict``) as a single line."""
        data = record.to_dict() if hasattr(record, "to_dict") else record
        line = orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS) + b"\n"
        with self._lock:
            if self._fd < 0:
                raise TranscriptError(f"transcript {self.path} is closed")
            # One write() call per line: O_APPEND keeps concurrent writers from interleaving.
            os.write(self._fd, line)
            if self._fsync:
                os.fsync(self._fd)

    def write_many(self, records: Iterable[Any]) -> None:
        """Append several records with one write and one fsync: all are durable when it returns.

        Replay collects the records that finish together and writes them here, so a busy run
        pays one fsync per batch instead of one per record.
        """
        data = b"".join(
            orjson.dumps(r.to_dict() if hasattr(r, "to_dict") else r, option=orjson.OPT_NON_STR_KEYS) + b"\n"
            for r in records
        )
        if not data:
            return
        with self._lock:
            if self._fd < 0:
                raise TranscriptError(f"transcript {self.path} is closed")
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self._fd, view) :]
                if self._fsync:
                    os.fsync(self._fd)
            except OSError as exc:
                raise TranscriptError(f"cannot write transcript {self.path}: {exc.strerror}") from None

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> TranscriptWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RecordSink:
    """Group commit: records handed in while a write+fsync runs go out together in the next one.

    The write runs in a thread so a slow disk never stalls the event loop; ``write`` returns once
    its records are durable.
    """

    def __init__(self, writer: TranscriptWriter):
        self.writer = writer
        self._pending: list[tuple[list[Any], asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._loop())

    async def write(self, records: list[Any]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((records, future))
        self._wakeup.set()
        await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            records = [r for rs, _ in batch for r in rs]
            try:
                await loop.run_in_executor(None, self.writer.write_many, records)
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)

    async def aclose(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
