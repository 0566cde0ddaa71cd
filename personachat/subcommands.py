"""Subcommands that live with their feature (replay, judge, report, export, scenarios) register here.

Each entry is a function ``register(subparsers)`` that adds its parser and sets ``handler``.
Opening the app is here too, so that ``cli.py`` never imports Textual.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

# Modules with a ``register(subparsers)`` function. They must import only argparse-level things at
# module level: they are imported for every ``personachat --help``.
COMMAND_MODULES = [
    "personachat.promptsets.cli",
    "personachat.judge.cli",
    "personachat.judge.report_cli",
    "personachat.scenarios",
    "personachat.export",
    "personachat.cast_cli",  # after export: adds --speed and writes --format cast
    "personachat.runtime_adapters",
    "personachat.web",
    "personachat.lens.diverge_cli",
    "personachat.lens.persona_cli",
]


def register_all(subparsers: Any) -> None:
    """Let every feature module add its subcommands."""
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # feature not present in this build
        module.register(subparsers)


def run_app_command(args: argparse.Namespace, profile_name: str | None, transcripts: Path | None) -> int:
    """``personachat [--profile P]``: open the app."""
    from personachat.app import run_app
    from personachat.attach import source_profile
    from personachat.profile import only_panes

    profile = source_profile(args, profile_name)
    if args.panes:
        profile = only_panes(profile, args.panes.split(","))
    return run_app(profile, transcripts=transcripts, rater=args.rater)


def run_scenario_command(args: argparse.Namespace, transcripts: Path | None) -> int:
    """``personachat --scenario NAME [--demo]``: open the app on a ready-made scenario's profile."""
    from personachat.app import run_app
    from personachat.scenarios import open_scenario

    if args.demo:
        from personachat.demo import ensure_demo

        ensure_demo(progress=print)
    from personachat.scenarios import get_scenario

    profile = open_scenario(args.scenario, demo=args.demo)
    prompt_set = get_scenario(args.scenario).prompt_set
    return run_app(profile, transcripts=transcripts, prompt_set=prompt_set, rater=args.rater)


def run_open_command(args: argparse.Namespace) -> int:
    """``personachat open TRANSCRIPT``: reopen a saved session."""
    from personachat.app import run_app

    return run_app(None, reopen=args.transcript, rater=args.rater)
