"""``personachat diverge``: where an answer leaves another pane's path, token by token.

Only argparse at module level: this module is imported for every ``personachat --help``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

TOKEN_WIDTH = 24


def register(subparsers: Any) -> None:
    """Add the ``diverge`` subcommand."""
    p = subparsers.add_parser(
        "diverge",
        help="log p of every answer token under its own model and another pane's (resumable)",
        description="Score each finished answer's tokens under the model that wrote it and under the "
        "--against pane's model (teacher forcing, the answer's exact messages); print them and append "
        "divergence records to the transcript. Run it again after an interruption to finish. "
        "See docs/lens.md.",
    )
    p.add_argument("transcript", type=Path, metavar="TRANSCRIPT")
    p.add_argument(
        "--against", "-a", metavar="PANE", help="the pane to compare with (default: the base pane)"
    )
    p.add_argument(
        "--panes", metavar="P,P", help="comma-separated panes to score (default: every other pane)"
    )
    p.add_argument(
        "--profile",
        "-p",
        dest="lens_profile",
        metavar="PROFILE",
        help="profile whose servers score (default: the one the transcript recorded)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per answer")
    p.add_argument(
        "--top", type=int, default=5, metavar="K", help="tokens where the models part most (default 5)"
    )
    p.add_argument("--concurrency", "-k", type=int, default=8, metavar="K", help="vLLM requests in flight")
    p.add_argument("--no-start", action="store_true", help="fail instead of starting a vLLM server")
    p.set_defaults(handler=run_diverge)


def run_diverge(args: argparse.Namespace) -> int:
    """Entry point of ``personachat diverge``."""
    import asyncio
    import sys

    from personachat.errors import PersonachatError
    from personachat.lens.diverge import DivergeStats, default_against, diverge_transcript
    from personachat.lens.records import DivergenceRecord
    from personachat.text import sanitize, sanitize_json
    from personachat.transcripts.reader import read_transcript

    if args.top < 0 or args.concurrency < 1:
        raise PersonachatError("--top must be 0 or more and --concurrency at least 1")
    profile = _profile(args, read_transcript(args.transcript))
    against = args.against or default_against(profile)
    panes = [p.strip() for p in args.panes.split(",") if p.strip()] if args.panes else None

    def say(message: str) -> None:
        print(sanitize(message), file=sys.stderr, flush=True)

    def show(record: DivergenceRecord, cached: bool) -> None:
        if args.json:
            print(sanitize_json({**record.summary(args.top), "cached": cached}), flush=True)
        else:
            print(sanitize(format_record(record, args.top)), flush=True)

    stats: DivergeStats = asyncio.run(
        diverge_transcript(
            args.transcript,
            profile,
            against,
            panes=panes,
            start_missing=not args.no_start,
            concurrency=args.concurrency,
            progress=say,
            on_result=show,
        )
    )
    if not stats.answers:
        say(f"no finished answers to score against '{against}' in {args.transcript}")
    else:
        say(
            f"{stats.answers} answer(s) against '{against}': {stats.scored} scored now, "
            f"{stats.cached} already in {args.transcript}"
        )
    return 0


def _profile(args: argparse.Namespace, transcript: Any) -> Any:
    """``--profile`` (here or before the command), else the profile the transcript recorded."""
    from personachat.errors import PersonachatError
    from personachat.profile import open_profile
    from personachat.transcripts.turns import profile_of

    name = args.lens_profile or getattr(args, "profile", None)
    if name:
        return open_profile(name)
    if transcript.header is None:
        raise PersonachatError(
            f"{transcript.path}: no session header, so no recorded profile: give one with --profile"
        )
    return profile_of(transcript)


def format_record(record: Any, top: int) -> str:
    """An answer's divergence as a table: one row per token, the sums, the tokens that part most."""
    diffs = record.diffs
    against = f"logp {record.against}"[:14]
    lines = [
        f"── {record.pane} against {record.against} · response {record.target} · {len(diffs)} tokens ──",
        f"{'#':>5}  {'token':<{TOKEN_WIDTH}} {'logp':>10} {against:>14} {'diff':>9}",
    ]
    for i, (token, own, other) in enumerate(
        zip(record.tokens, record.logp, record.logp_against, strict=True)
    ):
        lines.append(
            f"{i:>5}  {shown_token(token):<{TOKEN_WIDTH}} {own:>10.3f} {other:>14.3f} {own - other:>+9.3f}"
        )
    total, total_against = record.sum_logp, record.sum_logp_against
    lines.append(
        f"{'sum':>5}  {'':<{TOKEN_WIDTH}} {total:>10.3f} {total_against:>14.3f} {total - total_against:>+9.3f}"
    )
    if diffs and not any(diffs):
        lines.append("  the same log p for every token under both models")
    elif top and diffs:
        parts = [f"{i} {shown_token(record.tokens[i])} {diffs[i]:+.3f}" for i in record.top(top)]
        lines.append("  part most: " + " · ".join(parts))
    return "\n".join(lines)


def shown_token(token: str) -> str:
    """A token as a quoted string with its spaces and newlines visible, cut to the table's width."""
    import json

    text = json.dumps(token, ensure_ascii=False)
    return text if len(text) <= TOKEN_WIDTH else text[: TOKEN_WIDTH - 2] + '…"'
