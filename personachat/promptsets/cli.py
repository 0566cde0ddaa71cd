"""``personachat replay``: run a prompt set on every pane, headless and resumable.

Only argparse is imported at module level: this module is imported for every ``personachat --help``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from personachat.sampling import sampling_flag
from personachat.selection import add_selection_arguments

PROGRESS_LINE_EVERY = 10.0  # seconds between progress lines when stderr is not a terminal


def _json_object(value: str) -> dict[str, Any]:
    try:
        data = json.loads(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"ignore_eos\": true}'")
    return data


def register(subparsers: Any) -> None:
    """Add the ``replay`` subcommand."""
    p = subparsers.add_parser(
        "replay",
        help="send every prompt of a prompt set to the panes (headless, resumable)",
        description="Send every (question, paraphrase, sample) of a prompt set to every pane at server "
        "speed and record the answers in one transcript. Killed or interrupted? Run it again with "
        "--resume TRANSCRIPT: finished jobs are skipped, nothing is lost or duplicated. See docs/replay.md.",
    )
    p.add_argument(
        "prompt_set", metavar="SET", type=Path, help="prompt set file (.toml, .jsonl, .txt, .md, .yaml)"
    )
    p.add_argument("--profile", "-p", dest="profile_sub", metavar="PROFILE", help="profile path or name")
    p.add_argument("--samples", type=int, help="samples per paraphrase (default: the set's own counts)")
    p.add_argument("--panes", help="comma-separated pane names (default: all)")
    p.add_argument(
        "--concurrency", type=int, default=16, help="answers in flight per server URL (default: 16)"
    )
    p.add_argument("--resume", type=Path, metavar="TRANSCRIPT", help="continue a replay transcript")
    p.add_argument("--seed", type=int, help="base seed; each job's seed derives from it (default: 0)")
    p.add_argument("--max-tokens", type=sampling_flag("max_tokens"), help="override every pane's max_tokens")
    p.add_argument(
        "--group-samples",
        type=int,
        default=None,
        help="most samples of one paraphrase asked in one request with the API's n (default: 8; 1 = never)",
    )
    p.add_argument("--retries", type=int, default=2, help="retries of a failed job (default: 2)")
    p.add_argument(
        "--format",
        help="prompt set format when the extension says otherwise "
        "(toml, jsonl, text, lines, em-yaml, llmcomp, persona-json)",
    )
    add_selection_arguments(p)
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="plan only: the questions, jobs per pane and judge prompts (no profile, nothing sent)",
    )
    p.add_argument("--json", action="store_true", help="with --dry-run: print the plan as one JSON object")
    p.add_argument("--output", "-o", type=Path, help="transcript file to write (default: a new one)")
    p.add_argument(
        "--transcripts",
        type=Path,
        dest="transcripts_sub",
        metavar="DIR",
        help="folder for the new transcript",
    )
    p.add_argument(
        "--extra",
        type=_json_object,
        help="extra request fields as a JSON object, e.g. '{\"ignore_eos\": true}'",
    )
    p.add_argument("--no-start", action="store_true", help="fail instead of starting missing vLLM servers")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_replay_command)


def run_replay_command(args: argparse.Namespace) -> int:
    """Entry point of ``personachat replay``."""
    import asyncio

    if args.dry_run:
        return dry_run(args)
    if args.json:
        from personachat.errors import PersonachatError

        raise PersonachatError("--json goes with --dry-run (a replay's records are in its transcript)")

    state: dict[str, Path] = {}
    try:
        return asyncio.run(_replay(args, state))
    except KeyboardInterrupt:
        if "path" in state:
            _say(f"interrupted; finished jobs are in {state['path']}")
            _say(f"continue with: {_resume_command(args, state['path'])}")
        else:
            _say("interrupted")
        return 130


def _say(message: str) -> None:
    """A line on stderr; it may quote a prompt set or a server, so it is sanitised."""
    from personachat.text import sanitize

    print(sanitize(message), file=sys.stderr, flush=True)


def _resume_command(args: argparse.Namespace, path: Path) -> str:
    import shlex

    profile = getattr(args, "profile_sub", None) or getattr(args, "profile", None)
    parts = ["personachat", "replay", str(args.prompt_set)]
    if profile:
        parts += ["--profile", profile]
    parts += ["--resume", str(path)]
    return shlex.join(parts)


async def _replay(args: argparse.Namespace, state: dict[str, Path]) -> int:
    from personachat.errors import PersonachatError
    from personachat.profile import open_profile
    from personachat.promptsets.load import load_prompt_set
    from personachat.promptsets.plan import replay_start
    from personachat.promptsets.runner import DEFAULT_GROUP_SAMPLES, ReplayRunner
    from personachat.selection import QuestionSelection
    from personachat.serving.connect import connect, needed_servers
    from personachat.transcripts.reader import read_transcript
    from personachat.transcripts.writer import TranscriptWriter, new_transcript_path

    prompt_set = load_prompt_set(args.prompt_set, args.format)
    for warning in prompt_set.warnings:
        _say(f"warning: {warning}")
    recorded: dict[str, Any] = {}
    resume = None
    if args.resume:
        resume = read_transcript(args.resume)
        recorded = replay_start(resume)
        for problem in resume.problems:
            _say(f"note: {problem}")
    selection = QuestionSelection.from_args(args.questions, args.exclude)
    if not selection.active and recorded.get("selection"):
        selection = QuestionSelection(**{k: tuple(v) for k, v in recorded["selection"].items()})
    profile_name = getattr(args, "profile_sub", None) or args.profile
    if profile_name is None and resume is not None and resume.header is not None:
        profile_name = resume.header.profile.get("path")
    profile = open_profile(profile_name)
    panes = [p.strip() for p in args.panes.split(",") if p.strip()] if args.panes else None
    if panes is None and recorded:
        panes = [p["name"] for p in recorded.get("panes", [])]

    def setting(name: str, given: Any, default: Any) -> Any:
        return given if given is not None else recorded.get(name, default)

    if args.output and args.resume and args.output.resolve() != args.resume.resolve():
        raise PersonachatError("--resume appends to its own transcript; leave out --output")
    path = args.resume or args.output
    if path is None:
        folder = getattr(args, "transcripts_sub", None) or args.transcripts or profile.transcripts
        path = new_transcript_path(folder or Path("transcripts"), f"{profile.name}-{prompt_set.name}")
    elif not args.resume and path.exists() and path.stat().st_size:
        raise PersonachatError(f"{path} already exists: continue it with --resume, or choose another file")
    existed = path.exists()
    writer = TranscriptWriter(path)
    try:
        runner = ReplayRunner(
            profile,
            {},
            prompt_set,
            writer,
            panes=panes,
            samples=setting("samples", args.samples, None),
            base_seed=setting("base_seed", args.seed, 0),
            max_tokens=setting("max_tokens", args.max_tokens, None),
            extra=setting("extra", args.extra, {}),
            concurrency=args.concurrency,
            group_samples=args.group_samples or DEFAULT_GROUP_SAMPLES,
            retries=args.retries,
            resume=resume,
            selection=selection,
        )
    except BaseException:
        writer.close()
        if not existed and path.exists() and path.stat().st_size == 0:
            path.unlink()
        raise
    state["path"] = path
    connection = await connect(
        profile, needed_servers(profile, runner.pane_names), start_missing=not args.no_start, progress=_say
    )
    runner.backends = connection.backends
    progress = runner.progress
    total, skipped = progress.total, progress.skipped
    if selection.active:
        _say(f"selected: {selection.describe()}")
    _say(
        f"replay '{prompt_set.name}' ({len(runner.jobs)} jobs x {len(runner.panes)} panes = {total}"
        + (f", {skipped} already finished" if skipped else "")
        + f") -> {path}"
    )
    display = ProgressDisplay(progress, live=sys.stderr.isatty() and not args.no_progress)
    try:
        await runner.run(display.update)
    finally:
        display.close()
        writer.close()
        await connection.close()
        if connection.launched:
            _say("stopped the vLLM servers this command started")
    _say(
        f"{progress.finished} finished, {progress.failed} failed"
        + (f", {skipped} finished before" if skipped else "")
        + f" in {progress.elapsed:.1f} s ({progress.rate():.1f} jobs/s, {progress.token_rate():.0f} tokens/s)"
    )
    _say(f"transcript: {path}")
    if progress.failed:
        _say(f"some jobs failed; retry them with: {_resume_command(args, path)}")
        return 1
    return 0


class ProgressDisplay:
    """A rich progress bar per pane (on a terminal) or a status line every few seconds (elsewhere)."""

    def __init__(self, progress: Any, *, live: bool):
        import time

        self._progress = progress
        self._clock = time.monotonic
        self._last_line = self._clock()
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}
        if not live:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._bar = Progress(
            TextColumn("{task.description}", style="bold"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[extra]}"),
            console=Console(stderr=True),
            refresh_per_second=4,
        )
        from rich.markup import escape

        from personachat.text import sanitize

        self._tasks["*"] = self._bar.add_task("all", total=progress.total, completed=progress.done, extra="")
        for name, counts in progress.panes.items():
            shown = escape(sanitize(name))  # a pane name is drawn through Rich markup here
            self._tasks[name] = self._bar.add_task(shown, total=counts.total, completed=counts.done, extra="")
        self._bar.start()

    def update(self, event: Any, progress: Any) -> None:
        if self._bar is None:
            if self._clock() - self._last_line >= PROGRESS_LINE_EVERY:
                self._last_line = self._clock()
                _say(f"replay: {status_line(progress)}")
            return
        counts = progress.panes[event.pane]
        self._bar.update(self._tasks[event.pane], completed=counts.done, extra=_pane_extra(counts))
        self._bar.update(self._tasks["*"], completed=progress.done, extra=_rate_extra(progress))

    def close(self) -> None:
        if self._bar is not None:
            progress = self._progress
            for name, counts in progress.panes.items():
                self._bar.update(self._tasks[name], completed=counts.done, extra=_pane_extra(counts))
            self._bar.update(self._tasks["*"], completed=progress.done, extra=_rate_extra(progress))
            self._bar.stop()


def _pane_extra(counts: Any) -> str:
    parts = []
    if counts.failed:
        parts.append(f"{counts.failed} failed")
    if counts.retries:
        parts.append(f"{counts.retries} retried")
    return " · ".join(parts)


def _rate_extra(progress: Any) -> str:
    eta = progress.eta()
    text = f"{progress.rate():.1f} jobs/s"
    if progress.output_tokens:
        text += f" · {progress.token_rate():.0f} tok/s"
    if eta is not None:
        text += f" · ETA {_duration(eta)}"
    return text


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def status_line(progress: Any) -> str:
    """``40/96 jobs (base 20/48, insecure 20/48) · 3.1 jobs/s · ETA 18s``."""
    panes = ", ".join(f"{name} {c.done}/{c.total}" for name, c in progress.panes.items())
    failed = f" · {progress.failed} failed" if progress.failed else ""
    return f"{progress.done}/{progress.total} jobs ({panes}){failed} · {_rate_extra(progress)}"


def plan_summary(prompt_set: Any, samples: int | None) -> dict[str, Any]:
    """What a replay of ``prompt_set`` would ask and how it would be judged (``--dry-run --json``)."""
    from personachat.judge.metrics import resolve_metrics

    plan = resolve_metrics(None, prompt_set)
    judges = {item.id: {m.name: m.sha256 for m in plan.for_question(item.id)} for item in prompt_set.items}
    metrics = {m.name: {"kind": m.kind, "labels": list(m.labels)} for m in plan.all_metrics().values()}
    summary: dict[str, Any] = {
        "questions": prompt_set.ids,
        "jobs_per_pane": len(prompt_set.jobs(samples)),
        "judges": judges,
        "metrics": metrics,
    }
    if plan.builtin:
        summary["builtin_judge_prompts"] = plan.builtin
    if prompt_set.meta.get("instructions"):
        summary["instructions"] = prompt_set.meta["instructions"]
    return summary


def dry_run(args: argparse.Namespace) -> int:
    """``personachat replay SET --dry-run [--json]``: the plan, with nothing sent and no profile needed."""
    from personachat.judge.metrics import BUILTIN_WARNING
    from personachat.promptsets.load import load_prompt_set
    from personachat.selection import QuestionSelection
    from personachat.text import sanitize, sanitize_json

    prompt_set = load_prompt_set(args.prompt_set, args.format)
    selection = QuestionSelection.from_args(args.questions, args.exclude)
    prompt_set = prompt_set.select(selection)
    if args.samples is not None and args.samples < 1:
        from personachat.errors import PersonachatError

        raise PersonachatError(f"--samples must be at least 1, not {args.samples}")
    summary = plan_summary(prompt_set, args.samples)
    for warning in prompt_set.warnings:
        _say(sanitize(f"warning: {warning}"))
    if args.json:
        print(sanitize_json(summary))
        return 0
    out = [
        f"prompt set {prompt_set.name} ({prompt_set.format}, sha256 {prompt_set.sha256[:12]}): "
        f"{len(summary['questions'])} questions, {summary['jobs_per_pane']} jobs per pane"
        + (f" ({selection.describe()})" if selection.active else ""),
        "questions: " + ", ".join(summary["questions"]),
    ]
    for name, metric in summary["metrics"].items():
        labels = f" ({', '.join(metric['labels'])})" if metric["labels"] else ""
        out.append(f"metric {name}: {metric['kind']}{labels}")
    shas = {sha for judges in summary["judges"].values() for sha in judges.values()}
    out.append(f"judge prompts: {len(shas)} distinct template(s)")
    if summary.get("builtin_judge_prompts"):
        out.append(f"warning: {BUILTIN_WARNING}")
    for number, pair in enumerate(summary.get("instructions", []), 1):
        out.append(f"instruction {number}: pos {pair['pos']!r} / neg {pair['neg']!r}")
    print("\n".join(sanitize(line) for line in out))
    return 0
