"""``personachat judge`` (score a transcript) and ``personachat report`` (summarise judged transcripts).

Only argparse at module level: this module is imported for every ``personachat --help``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from personachat.selection import add_selection_arguments

READING = {
    True: "numbers read digit by digit",
    False: "whole-number tokens",
    None: "digit splitting guessed per answer",
}


def register(subparsers: Any) -> None:
    """Add the ``judge`` subcommand."""
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
    judge.add_argument(
        "--prompts",
        type=Path,
        metavar="SET",
        help="prompt set whose judge prompts to use (default: the set the transcript was replayed from)",
    )
    judge.add_argument(
        "--min-mass",
        type=float,
        metavar="X",
        help="score none below this probability mass (default: profile)",
    )
    judge.add_argument("--no-cache", action="store_true", help="neither read nor write the judge cache")
    judge.add_argument("--no-start", action="store_true", help="fail instead of starting a vLLM server")
    add_selection_arguments(judge)
    judge.set_defaults(handler=run_judge)


def _find_profile(args: argparse.Namespace) -> Any:
    from personachat.profile import open_profile

    return open_profile(args.judge_profile or getattr(args, "profile", None))


def run_judge(args: argparse.Namespace) -> int:
    import asyncio
    import sys

    from personachat.errors import PersonachatError
    from personachat.judge.metrics import BUILTIN_WARNING, resolve_metrics
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
    from personachat.selection import QuestionSelection
    from personachat.text import sanitize
    from personachat.transcripts.reader import read_transcript

    def say(message: str) -> None:
        print(sanitize(message), file=sys.stderr, flush=True)

    transcript = read_transcript(args.transcript)
    prompt_set = judge_prompt_set(transcript, args.prompts, say)
    names = (
        [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else profile.judge.metrics
    )
    plan = resolve_metrics(names, prompt_set)
    selection = QuestionSelection.from_args(args.questions, args.exclude)
    if plan.builtin:
        say(f"warning: {BUILTIN_WARNING} (metrics {', '.join(plan.builtin)})")
    if selection.active:
        say(f"judging {selection.describe()}")

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
                args.transcript,
                scorer,
                plan,
                concurrency=args.concurrency,
                progress=progress,
                selection=selection,
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


def judge_prompt_set(transcript: Any, given: Path | None, say: Any) -> Any:
    """The prompt set whose judge prompts score ``transcript``: ``--prompts``, else the one it was
    replayed from (its recorded path, checked against its recorded sha256), else none.

    Raises :class:`PersonachatError` when the recorded set moved or changed: the judge must not
    silently fall back to other wording.
    """
    from personachat.errors import PersonachatError
    from personachat.paths import project_file
    from personachat.promptsets.load import load_prompt_set

    recorded: dict[str, dict[str, Any]] = {}
    for response in transcript.responses:
        if response.replay is not None and response.replay.promptset.get("sha256"):
            recorded.setdefault(response.replay.promptset["sha256"], response.replay.promptset)
    if given is not None:
        prompt_set = load_prompt_set(given)
        if recorded and prompt_set.sha256 not in recorded:
            say(
                f"warning: {given} is not the file the answers were replayed from (sha256 "
                f"{prompt_set.sha256[:12]}, recorded {', '.join(s[:12] for s in recorded)}): its judge "
                "prompts are used as given"
            )
        return prompt_set
    if not recorded:
        return None
    if len(recorded) > 1:
        raise PersonachatError(
            f"{transcript.path} holds answers to {len(recorded)} different prompt sets: judge with "
            "--prompts FILE (and --questions to pick that set's questions)"
        )
    [(sha, info)] = recorded.items()
    path = project_file(str(info.get("path") or ""))
    if not path.is_file():
        raise PersonachatError(
            f"the prompt set the answers were replayed from is not at {info.get('path')} any more: give "
            "it with --prompts FILE (its judge prompts are what the judge must use)"
        )
    prompt_set = load_prompt_set(path)
    if prompt_set.sha256 != sha:
        raise PersonachatError(
            f"{path} changed since the replay (sha256 {prompt_set.sha256[:12]}, recorded {sha[:12]}): "
            "give the original with --prompts FILE, or the changed one on purpose"
        )
    say(f"judge prompts: {prompt_set.name}'s own ({path})")
    return prompt_set
