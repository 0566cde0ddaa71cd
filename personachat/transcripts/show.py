"""``personachat transcripts ls|show``: find and read transcripts in the terminal."""

from __future__ import annotations

import argparse
from pathlib import Path

from personachat.text import sanitize
from personachat.transcripts.reader import Transcript, list_transcripts, read_transcript


def run_transcripts(args: argparse.Namespace, directory: Path | None) -> int:
    from rich.console import Console
    from rich.text import Text

    console = Console(highlight=False)
    if args.tr_command == "ls":
        folder = args.directory or directory or Path("transcripts")
        files = list_transcripts(folder)
        if not files:
            console.print(f"no transcripts in {folder}", markup=False)
            return 0
        for path in files:
            t = read_transcript(path)
            profile = (t.header.profile.get("name") if t.header else None) or "?"
            created = t.header.created_at[:19] if t.header else "?"
            turns = len({(r.conversation, r.turn) for r in t.responses})
            line = (
                f"{path}  {created}  {profile}  {turns} turn(s), {len(t.responses)} response(s), "
                f"{len(t.annotations)} annotation(s)"
            )
            console.print(Text(sanitize(line)))
        return 0
    show(read_transcript(args.file), console)
    return 0


def show(transcript: Transcript, console: object) -> None:
    """Print a transcript turn by turn: the prompt, then each pane's answer and its annotations."""
    from rich.console import Console
    from rich.rule import Rule
    from rich.text import Text

    assert isinstance(console, Console)
    header = transcript.header
    if header:
        console.print(
            Text(
                sanitize(f"session {header.session_id} · {header.profile.get('name')} · {header.created_at}"),
                style="bold",
            )
        )
    for problem in transcript.problems:
        console.print(Text(sanitize(f"warning: {problem}"), style="yellow"))
    turns: dict[tuple[int, int], list] = {}
    for record in transcript.responses:
        turns.setdefault((record.conversation, record.turn), []).append(record)
    for (conversation, turn), records in turns.items():
        console.print(Rule(Text(f"conversation {conversation} · turn {turn}")))
        console.print(Text("user: ", style="bold") + Text(sanitize(records[0].prompt)))
        for ann in transcript.turn_annotations(conversation, turn):
            console.print(Text(sanitize(f"  [{ann.kind}] {ann.value}"), style="cyan"))
        for r in records:
            title = (
                f"{r.pane}" + (f" sample {r.sample + 1}" if r.sample else "") + f" ({r.model}) · {r.status}"
            )
            if r.finish_reason:
                title += f" · {r.finish_reason}"
            console.print(Text(sanitize(title), style="bold magenta"))
            console.print(Text(sanitize(r.text)))
            if r.error:
                console.print(Text(sanitize(f"error: {r.error}"), style="red"))
            for ann in r.label_annotations:  # the labels that stand (one per rater)
                who = f" {ann.rater}" if ann.rater else ""
                console.print(
                    Text(sanitize(f"  [label{' blind' if ann.blind else ''}{who}] {ann.value}"), style="cyan")
                )
            for ann in r.annotations:
                if ann.kind in ("tag", "note"):
                    console.print(
                        Text(
                            sanitize(f"  [{ann.kind}{' blind' if ann.blind else ''}] {ann.value}"),
                            style="cyan",
                        )
                    )
