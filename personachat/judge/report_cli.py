"""``personachat report``: summarise judged transcripts (and old results CSVs) per pane and question.

Only argparse-level imports at module level: this module is imported for every ``personachat --help``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``report`` subcommand."""
    report = subparsers.add_parser(
        "report",
        help="per pane and per question: misaligned share with intervals, scores, tags, labels",
        description="Summarise judged transcripts. The rule and thresholds head every output.",
    )
    report.add_argument("transcripts", type=Path, nargs="+", metavar="TRANSCRIPT")
    report.add_argument("--rule", choices=("betley", "tan", "custom"), help="how misaligned is counted")
    report.add_argument(
        "--aligned-below", type=float, metavar="X", help="custom: misaligned when aligned < X"
    )
    report.add_argument("--coherent-above", type=float, metavar="Y", help="custom: ... and coherent > Y")
    report.add_argument(
        "--drop-coherent-below", type=float, metavar="Z", help="custom: leave out rows with coherent < Z"
    )
    report.add_argument("--base", metavar="PANE", help="pane to compare the others with (default: 'base')")
    report.add_argument("--html", type=Path, metavar="OUT", help="write a self-contained HTML page")
    report.add_argument("--plots", type=Path, metavar="DIR", help="write PNG plots into DIR")
    report.add_argument("--terminal-plots", action="store_true", help="print the plots in the terminal")
    report.add_argument("--json", type=Path, metavar="OUT", help="write the summaries as JSON")
    report.set_defaults(handler=run_report)


def _rule(args: argparse.Namespace) -> Any:
    from personachat.errors import PersonachatError
    from personachat.judge.aggregate import custom_rule, get_rule

    thresholds = (args.aligned_below, args.coherent_above, args.drop_coherent_below)
    given = any(t is not None for t in thresholds)
    if args.rule in ("betley", "tan"):
        if given:
            raise PersonachatError("threshold options go with --rule custom (or no --rule)")
        return get_rule(args.rule)
    if args.rule == "custom" or given:
        if args.aligned_below is None:
            raise PersonachatError("a custom rule needs --aligned-below X")
        return custom_rule(args.aligned_below, args.coherent_above, args.drop_coherent_below)
    return None


def run_report(args: argparse.Namespace) -> int:
    import json
    import sys

    from personachat.judge.report import build_report, render_html, render_text, report_json

    report = build_report(args.transcripts, _rule(args), args.base)
    sys.stdout.write(render_text(report))
    if args.terminal_plots:
        from personachat.judge.plots import scatter_terminal, shares_terminal

        color = sys.stdout.isatty()
        sys.stdout.write("\n" + scatter_terminal(report, color=color))
        sys.stdout.write("\n" + shares_terminal(report, color=color))
    pngs: dict[str, bytes] = {}
    if args.plots or args.html:
        from personachat.judge.plots import report_pngs

        pngs = report_pngs(report)
    if args.plots:
        args.plots.mkdir(parents=True, exist_ok=True)
        for stem, png in pngs.items():
            (args.plots / f"{stem}-{report.rule.name}.png").write_bytes(png)
        print(f"plots written to {args.plots}", file=sys.stderr)
    if args.html:
        args.html.parent.mkdir(parents=True, exist_ok=True)
        captions = {
            "Aligned vs coherent per pane": pngs["aligned-vs-coherent"],
            "Misaligned share per question and pane": pngs["misaligned-share"],
        }
        args.html.write_text(render_html(report, captions), encoding="utf-8")
        print(f"report page written to {args.html}", file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report_json(report), indent=1), encoding="utf-8")
    return 0
