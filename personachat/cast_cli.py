"""``personachat export --format cast``: the command side of casts (``--speed``, the file).

export.py lists ``cast`` among its formats; this module, registered after it (subcommands.py),
adds ``--speed`` to ``personachat export`` and writes casts itself (personachat/cast_render.py),
handing every other format back to export.py's handler. Only argparse-level imports at module
level: it loads for every ``personachat --help``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any


def _speed(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"'{text}' is not a speed: give a number above 0 (2: twice as fast)")
    return value


def register(subparsers: Any) -> None:
    """Add ``--speed`` to the ``export`` command and take over ``--format cast``."""
    export = subparsers.choices.get("export")
    if export is None:
        return
    export.add_argument(
        "--speed",
        type=_speed,
        default=1.0,
        metavar="X",
        help="cast: replay the answers X times as fast as they were recorded (0.5: half as fast)",
    )
    others = export.get_default("handler")

    def handler(args: argparse.Namespace) -> int:
        if args.fmt == "cast":
            return run_cast_export(args)
        if args.speed != 1.0:
            from personachat.errors import PersonachatError

            raise PersonachatError("--speed goes with --format cast")
        result: int = others(args)
        return result

    export.set_defaults(handler=handler)


def run_cast_export(args: argparse.Namespace) -> int:
    """``personachat export TRANSCRIPT --format cast [--speed X] [-o FILE]``."""
    from personachat.cast_render import render_cast
    from personachat.errors import PersonachatError
    from personachat.export import default_output
    from personachat.files import write_atomically
    from personachat.text import sanitize
    from personachat.transcripts.reader import read_transcript

    if args.per_pane:
        raise PersonachatError("--per-pane goes with --format em-csv")
    if args.output == "-" and sys.stdout.isatty():
        raise PersonachatError("not writing a cast to the terminal: write it to a file (-o FILE) or pipe it")
    transcript = read_transcript(args.transcript)
    for problem in transcript.problems:
        print(sanitize(f"note: {problem}"), file=sys.stderr)
    text = render_cast(transcript, speed=args.speed)
    if args.output == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return 0
    out = Path(args.output) if args.output else default_output(transcript.path, "cast")
    written = write_atomically(out, text)
    seconds = json.loads(text.rstrip("\n").rsplit("\n", 1)[-1])[0]  # the last event's time
    print(sanitize(f"wrote {written} ({seconds:.1f} s; play it with asciinema)"), file=sys.stderr)
    return 0
