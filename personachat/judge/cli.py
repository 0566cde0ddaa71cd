"""``personachat judge`` (score a transcript) and ``personachat report`` (summarise judged transcripts).

Only argparse at module level: this module is imported for every ``personachat --help``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

READING = {
    True: "numbers read digit by digit",
    False: "whole-number tokens",
    None: "digit splitting guessed per answer",
}


def register(subparsers: Any) -> None:
    """Add the ``judge`` and ``report`` subcommands."""
    judge = subparsers.add_parser(
        "judge",
        help="score a transcript's answers with the profile's judge model (resumable)",
        description="Score every finished response not yet scored, with the [judge] of the profile. "
        "Records are appended to the transcript; run it again after an interruption to finish.",
    )
    judge.add_argument("transcript", type=Path, metavar="TRANSCRIPT")
    judge.add_argument(
        "--profile", "-p", dest="judge_profile", metavar="PROFILE", help="profile with a [judge] table"
    )
    judge.add_argument(
        "--concurrency", "-k", type=int, default=8, metavar="K", help="judge calls in flight (default 8)"
    )
    judge.add_argument(
        "--metrics", metavar="M,M", help="comma-separated metric names (default: the profile's)"
    )
    judge.add_argument("--prompts", type=Path, metavar="SET", help="prompt set whose judge_prompts to use")
    judge.add_argument(
        "--min-mass",
        type=float,
        metavar="X",
        help="score none below this probability mass (default: profile)",
    )
    judge.add_argument("--no-cache", action="store_true", help="neither read nor write the judge cache")
    judge.add_argument("--no-start", action="store_true", help="fail instead of starting a vLLM server")
    judge.set_defaults(handler=run_judge)

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


def _find_profile(args: argparse.Namespace) -> Any:
    from personachat.profile import open_profile

    return open_profile(args.judge_profile or getattr(args, "profile", None))


def run_judge(args: argparse.Namespace) -> int:
    import asyncio
    import sys

    from personachat.errors import PersonachatError
    from personachat.judge.metrics import resolve_metrics
    from personachat.judge.runner import JudgeRunStats, judge_transcript
    from personachat.judge.scorer import open_scorer

    if not args.transcript.is_file():
        raise PersonachatError(f"transcript not found: {args.transcript}")
    profile = _find_profile(args)
    if profile.judge is None:
        raise PersonachatError(
            f"profile '{profile.name}' has no [judge] table: add one (see docs/judge.md), e.g.\n"
            '[judge]\nserver = "local"\nmodel = "base"'
        )
    prompt_set = None
    if args.prompts:
        from personachat.promptsets.load import load_prompt_set

        prompt_set = load_prompt_set(args.prompts)
    names = (
        [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else profile.judge.metrics
    )
    plan = resolve_metrics(names, prompt_set)

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def progress(stats: JudgeRunStats) -> None:
        say(stats.line())

    async def main() -> JudgeRunStats:
        scorer = await open_scorer(
            profile,
            start_missing=not args.no_start,
            progress=say,
            cache=not args.no_cache,
            min_mass=args.min_mass,
        )
        try:
            reading = READING[scorer.client.digit_split]
            say(
                f"judge {scorer.identity.model} on server '{scorer.identity.server}' ({reading}); "
                f"metrics {', '.join(plan.names)}; score none below mass {scorer.min_mass:g}"
            )
            return await judge_transcript(
                args.transcript, scorer, plan, concurrency=args.concurrency, progress=progress
            )
        finally:
            await scorer.aclose()

    stats = asyncio.run(main())
    if stats.failed:
        say(f"{stats.failed} score(s) failed; run the same command again to retry them:")
        for message in stats.errors:
            say(f"  {message}")
        return 1
    return 0


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
