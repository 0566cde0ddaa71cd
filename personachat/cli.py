"""Command line: argument parsing and dispatch only. User errors are printed without tracebacks.

Every subcommand imports what it needs when it runs, so ``personachat --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from personachat import __version__
from personachat.attach import add_source_arguments
from personachat.errors import PersonachatError
from personachat.sampling import sampling_flag


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="personachat",
        description="Send one prompt to several models and LoRA adapters at once, side by side; "
        "tag what you see; keep tagged transcripts.",
    )
    parser.add_argument("--version", action="version", version=f"personachat {__version__}")
    parser.add_argument("--profile", "-p", help="profile path or name (default: demo)")
    parser.add_argument("--scenario", help="open a ready-made scenario (see `personachat scenarios`)")
    parser.add_argument(
        "--demo", action="store_true", help="with --scenario: run it on the tiny demo models instead"
    )
    parser.add_argument("--transcripts", type=Path, help="folder for transcripts (overrides the profile)")
    parser.add_argument(
        "--rater", help="who labels in the app (recorded with each label; default: your user name)"
    )
    parser.add_argument("--panes", help="comma-separated pane names to open (default: all)")
    add_source_arguments(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    ask = sub.add_parser("ask", help="send one prompt to every pane and print the answers (headless)")
    ask.add_argument("prompt")
    ask.add_argument("--profile", "-p", dest="profile_sub")
    ask.add_argument("--panes", help="comma-separated pane names (default: all)")
    ask.add_argument("--json", action="store_true", help="print one JSON record per response")
    ask.add_argument("--transcripts", type=Path, dest="transcripts_sub")
    ask.add_argument("--temperature", type=sampling_flag("temperature"))
    ask.add_argument("--max-tokens", type=sampling_flag("max_tokens"))
    ask.add_argument(
        "--seed", type=sampling_flag("seed"), help="sampling seed (reproduces a recorded answer)"
    )
    ask.add_argument("--no-start", action="store_true", help="fail instead of starting missing vLLM servers")
    add_source_arguments(ask, sub=True)

    check = sub.add_parser("check", help="validate a profile, its adapters, and running servers")
    check.add_argument("profile_pos", metavar="PROFILE", nargs="?")
    check.add_argument("--offline", action="store_true", help="validate files only; contact no server")

    serve = sub.add_parser("serve", help="start the profile's vLLM servers (they keep running)")
    serve.add_argument("profile_pos", metavar="PROFILE", nargs="?")
    serve.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C stops the servers")
    serve.add_argument("--stop", action="store_true", help="stop the profile's running servers")

    tr = sub.add_parser("transcripts", help="list or show transcripts")
    tr_sub = tr.add_subparsers(dest="tr_command", metavar="ACTION", required=True)
    tr_ls = tr_sub.add_parser("ls", help="list transcripts, newest first")
    tr_ls.add_argument("directory", nargs="?", type=Path)
    tr_show = tr_sub.add_parser("show", help="print a transcript as readable text")
    tr_show.add_argument("file", type=Path)

    demo = sub.add_parser("demo", help="the tiny offline demo models")
    demo_sub = demo.add_subparsers(dest="demo_command", metavar="ACTION", required=True)
    demo_build = demo_sub.add_parser("build", help="build the demo base model and adapters")
    demo_build.add_argument("directory", nargs="?", type=Path)
    demo_build.add_argument("--force", action="store_true")

    sub.add_parser("locate", help="print where personachat keeps its files")

    opener = sub.add_parser("open", help="reopen a saved session in the app and continue it")
    opener.add_argument("transcript", type=Path)
    opener.add_argument("--rater", default=argparse.SUPPRESS, help="who labels (default: your user name)")

    _add_later_commands(sub)
    return parser


def _add_later_commands(sub: Any) -> None:
    """Commands whose modules register their own arguments (replay, judge, report, export, scenarios)."""
    from personachat import subcommands

    subcommands.register_all(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return dispatch(args)
    except PersonachatError as exc:
        from personachat.text import sanitize

        # A message may quote a server, a model or a file: never raw to the terminal.
        print(f"personachat: {sanitize(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; everything already streamed is in the transcript", file=sys.stderr)
        return 130


def _profile_arg(args: argparse.Namespace) -> str | None:
    for name in ("profile_pos", "profile_sub"):
        value = getattr(args, name, None)
        if value:
            return value
    return args.profile


def _transcripts_arg(args: argparse.Namespace) -> Path | None:
    return getattr(args, "transcripts_sub", None) or args.transcripts


def dispatch(args: argparse.Namespace) -> int:
    from personachat import subcommands

    command = args.command
    if args.scenario or args.demo:
        if not args.scenario:
            raise PersonachatError("--demo goes with --scenario NAME (see `personachat scenarios`)")
        if command is not None or args.profile:
            raise PersonachatError(
                "--scenario opens the app on the scenario's own profile; for other commands give its "
                "profile with --profile (`personachat scenarios NAME` shows the files)"
            )
        return subcommands.run_scenario_command(args, _transcripts_arg(args))
    if command is None:
        return subcommands.run_app_command(args, _profile_arg(args), _transcripts_arg(args))
    if command in ("ask", "check", "serve"):
        import asyncio  # not at import time: it costs a third of `personachat --help`
    if command == "ask":
        from personachat.ask import run_ask

        return asyncio.run(run_ask(args, _profile_arg(args), _transcripts_arg(args)))
    if command == "check":
        from personachat.check import run_check

        return asyncio.run(run_check(_profile_arg(args), offline=args.offline))
    if command == "serve":
        from personachat.serve import run_serve

        return asyncio.run(run_serve(_profile_arg(args), foreground=args.foreground, stop=args.stop))
    if command == "transcripts":
        from personachat.transcripts.show import run_transcripts

        return run_transcripts(args, _transcripts_arg(args))
    if command == "demo":
        from personachat.demo import build_demo

        models = build_demo(args.directory, force=args.force, progress=print)
        print(f"demo models in {models.root}: base + {', '.join(models.adapters)}")
        return 0
    if command == "locate":
        from personachat import paths

        print(f"home        {paths.home_dir()}")
        print(f"demo models {paths.demo_dir()}")
        print(f"servers     {paths.servers_dir()}")
        print(f"history     {paths.history_file()}")
        return 0
    if command == "open":
        return subcommands.run_open_command(args)
    handler = getattr(args, "handler", None)
    if handler is None:  # pragma: no cover - argparse guarantees a known command
        raise PersonachatError(f"unknown command {command}")
    result: int = handler(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
