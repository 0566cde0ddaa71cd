"""``personachat ask``: the scriptable twin of the app. One prompt, every pane, answers on stdout."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from personachat.engine.events import Cancelled, Delta, Event, Failed, Finished, Started
from personachat.text import sanitize, sanitize_json
from personachat.transcripts.schema import ResponseRecord


def _say(message: str) -> None:
    print(sanitize(message), file=sys.stderr, flush=True)


def transcripts_dir(profile_dir: Path | None, override: Path | None) -> Path:
    return override or profile_dir or Path("transcripts")


async def run_ask(args: argparse.Namespace, profile_name: str | None, transcripts: Path | None) -> int:
    from personachat.attach import source_profile
    from personachat.engine.session import Session
    from personachat.profile import only_panes
    from personachat.serving.connect import connect, needed_servers
    from personachat.transcripts.writer import TranscriptWriter, new_transcript_path

    profile = source_profile(args, profile_name)
    panes = None
    if args.panes:
        profile = only_panes(profile, args.panes.split(","))
        panes = [p.name for p in profile.panes]
    connection = await connect(
        profile, needed_servers(profile, panes), start_missing=not args.no_start, progress=_say
    )
    path = new_transcript_path(transcripts_dir(profile.transcripts, transcripts), profile.name)
    session = Session(profile, connection.backends, TranscriptWriter(path))
    failed: dict[str, str] = {}
    answers = 0
    try:
        await session.start(_say)
        changes = {
            k: v
            for k, v in (
                ("temperature", args.temperature),
                ("max_tokens", args.max_tokens),
                ("seed", args.seed),
            )
            if v is not None
        }
        if changes:
            session.set_sampling(None, **changes)
        if args.json:
            session.record_listeners.append(print_json_record)
        printer = None if args.json else TextPrinter(sys.stdout.isatty())
        async for event in session.broadcast(args.prompt, panes):
            if isinstance(event, Failed):
                failed.setdefault(event.pane, event.reason)
            if isinstance(event, Started):
                answers += 1
            if printer:
                printer.handle(event)
        if printer:
            printer.close()
    finally:
        await session.aclose()
        await connection.close()
        if connection.launched:
            _say("stopped the vLLM servers this command started")
    _say(f"transcript: {path}")
    if failed:
        which = "; ".join(f"{pane}: {sanitize(reason)}" for pane, reason in failed.items())
        everything = len(failed) == answers
        _say(f"{'every pane' if everything else f'{len(failed)} of {answers} panes'} failed ({which})")
        return 1
    return 0


def print_json_record(record: ResponseRecord) -> None:
    """One record as a JSON line; nothing a terminal acts on is written raw (see :func:`sanitize_json`)."""
    print(sanitize_json(record.to_dict()), flush=True)


class TextPrinter:
    """Print each pane's answer, clearly separated; live side-by-side panels on a terminal."""

    def __init__(self, live: bool):
        from rich.console import Console

        self.console = Console(highlight=False)
        self.texts: dict[tuple[str, int], list[str]] = {}
        self.states: dict[tuple[str, int], str] = {}
        self._live = None
        if live:
            from rich.live import Live

            self._live = Live(self._render(), console=self.console, refresh_per_second=8)
            self._live.start()

    def handle(self, event: Event) -> None:
        if isinstance(event, Started):
            for i in range(len(event.response_ids)):
                self.texts[(event.pane, i)] = []
                self.states[(event.pane, i)] = "streaming"
        elif isinstance(event, Delta):
            self.texts[(event.pane, event.sample)].append(event.text)
        elif isinstance(event, Finished):
            self.states[(event.pane, event.sample)] = f"done ({event.finish_reason})"
            self._print_done(event.pane, event.sample)
        elif isinstance(event, Cancelled):
            self.states[(event.pane, event.sample)] = "cancelled"
            self._print_done(event.pane, event.sample)
        elif isinstance(event, Failed):
            self.states[(event.pane, event.sample)] = f"failed: {event.reason}"
            self._print_done(event.pane, event.sample)
        if self._live:
            self._live.update(self._render())

    def _render(self) -> Any:
        from rich.columns import Columns
        from rich.panel import Panel
        from rich.text import Text

        panels = [
            Panel(
                Text(sanitize("".join(t)[-1500:])),
                title=Text(sanitize(f"{p} sample {s + 1}" if s else p)),
                subtitle=Text(sanitize(self.states[(p, s)])),
                width=48,
            )
            for (p, s), t in self.texts.items()
        ]
        return Columns(panels)

    def _print_done(self, pane: str, sample: int) -> None:
        if self._live:
            return
        from rich.rule import Rule
        from rich.text import Text

        title = (
            f"{pane}" + (f" (sample {sample + 1})" if sample else "") + f" · {self.states[(pane, sample)]}"
        )
        self.console.print(Rule(Text(sanitize(title)), align="left"))
        self.console.print(Text(sanitize("".join(self.texts[(pane, sample)]))))

    def close(self) -> None:
        if self._live:
            self._live.update(self._render())
            self._live.stop()
