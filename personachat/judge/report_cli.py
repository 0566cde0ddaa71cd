"""``personachat report``: summarise judged transcripts (and old results CSVs) per pane and question.

Only argparse-level imports at module level: this module is imported for every ``personachat --help``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

RULE_NAMES = ("betley", "tan", "mo")
"""The names of :data:`personachat.judge.aggregate.RULES` (not imported here: ``--help`` stays light)."""
PLOTS_HINT = "pip install 'personachat[plots]'"


def register(subparsers: Any) -> None:
    """Add the ``report`` subcommand."""
    from personachat.judge.stats import STATS_HINT
    from personachat.selection import add_selection_arguments

    report = subparsers.add_parser(
        "report",
        help="per pane and per question: misaligned share with intervals, scores, tags, labels",
        description="Summarise judged transcripts and results CSVs of the field (EM, model-organisms). "
        "The rule, its thresholds and the question selection head every output.",
    )
    report.add_argument("transcripts", type=Path, nargs="+", metavar="FILE", help="transcript or results CSV")
    report.add_argument("--rule", choices=(*RULE_NAMES, "custom"), help="how misaligned is counted")
    report.add_argument(
        "--aligned-below", type=float, metavar="X", help="custom: misaligned when aligned < X"
    )
    report.add_argument("--coherent-above", type=float, metavar="Y", help="custom: ... and coherent > Y")
    report.add_argument(
        "--drop-coherent-below", type=float, metavar="Z", help="custom: leave out rows with coherent < Z"
    )
    add_selection_arguments(report)
    report.add_argument("--base", metavar="PANE", help="pane to compare the others with (default: 'base')")
    report.add_argument("--html", type=Path, metavar="OUT", help="write a self-contained HTML page")
    report.add_argument(
        "--plots", type=Path, metavar="DIR", help="write PNG plots into DIR (needs matplotlib)"
    )
    report.add_argument(
        "--terminal-plots", action="store_true", help="print the plots in the terminal (needs plotext)"
    )
    report.add_argument("--json", type=Path, metavar="OUT", help="write the summaries as JSON")
    compare = report.add_argument_group(f"comparisons (need the stats extra: {STATS_HINT})")
    compare.add_argument(
        "--paired",
        action="store_true",
        help="two transcripts: compare their answers to the same jobs, pane by pane",
    )
    compare.add_argument(
        "--paired-panes",
        action="append",
        default=[],
        metavar="A,B",
        help="compare pane B's answers with pane A's to the same jobs (repeatable)",
    )
    compare.add_argument(
        "--agreement",
        action="store_true",
        help="raters' labels against the judge (kappa) and each other (alpha)",
    )
    compare.add_argument(
        "--ranking", action="store_true", help="Bradley-Terry ranking of the panes from preferences"
    )
    compare.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="bootstrap resamples of the ranking (default 1000)",
    )
    compare.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    report.set_defaults(handler=run_report)


def _rule(args: argparse.Namespace) -> Any:
    from personachat.errors import PersonachatError
    from personachat.judge.aggregate import custom_rule, get_rule

    thresholds = (args.aligned_below, args.coherent_above, args.drop_coherent_below)
    given = any(t is not None for t in thresholds)
    if args.rule in RULE_NAMES:
        if given:
            raise PersonachatError("threshold options go with --rule custom (or no --rule)")
        return get_rule(args.rule)
    if args.rule == "custom" or given:
        if args.aligned_below is None:
            raise PersonachatError("a custom rule needs --aligned-below X")
        return custom_rule(args.aligned_below, args.coherent_above, args.drop_coherent_below)
    return None


def _installed(module: str) -> bool:
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def run_report(args: argparse.Namespace) -> int:
    import json
    import sys

    from personachat.errors import PersonachatError
    from personachat.files import write_atomically
    from personachat.judge.report import Comparisons, build_report, render_html, render_text, report_json
    from personachat.selection import QuestionSelection
    from personachat.text import sanitize

    def say(message: str) -> None:
        print(sanitize(message), file=sys.stderr)

    if args.plots and not _installed("matplotlib"):
        raise PersonachatError(f"--plots needs matplotlib, which is not installed: {PLOTS_HINT}")
    if args.terminal_plots and not _installed("plotext"):
        raise PersonachatError(f"--terminal-plots needs plotext, which is not installed: {PLOTS_HINT}")
    if args.bootstrap < 1:
        raise PersonachatError("--bootstrap wants at least 1 resample")
    selection = QuestionSelection.from_args(args.questions, args.exclude)
    compare = Comparisons(
        paired=args.paired,
        paired_panes=tuple(args.paired_panes),
        agreement=args.agreement,
        ranking=args.ranking,
        resamples=args.bootstrap,
        seed=args.seed,
    )
    report = build_report(args.transcripts, _rule(args), args.base, selection, compare)
    sys.stdout.write(render_text(report))
    if args.terminal_plots:
        from personachat.judge.plots import scatter_terminal, shares_terminal

        color = sys.stdout.isatty()
        sys.stdout.write("\n" + scatter_terminal(report, color=color))
        sys.stdout.write("\n" + shares_terminal(report, color=color))
    pngs: dict[str, bytes] = {}
    png_ok = bool(args.plots or args.html) and _installed("matplotlib")
    captions: dict[str, str] = {}
    if png_ok:
        from personachat.judge.plots import PNG_CAPTIONS, report_pngs

        pngs = report_pngs(report)
        captions = PNG_CAPTIONS
    if args.plots:
        for stem, png in pngs.items():
            write_atomically(args.plots / f"{stem}-{report.rule.name}.png", png)
        say(f"plots written to {args.plots}")
    if args.html:
        images = {captions[stem]: png for stem, png in pngs.items()}
        note = None if png_ok else f"The plots are not included: matplotlib is not installed ({PLOTS_HINT})."
        write_atomically(args.html, render_html(report, images, plots_note=note))
        say(f"report page written to {args.html}" + ("" if png_ok else f" without plots ({PLOTS_HINT})"))
    if args.json:
        write_atomically(args.json, json.dumps(report_json(report), indent=1) + "\n")
    return 0
