"""``personachat web``: the app in a browser, served by textual-serve (``pip install 'personachat[web]'``).

Every browser tab that opens the page starts its own ``personachat --profile P`` process: its own
session and transcript, on this machine, with this machine's models. The server listens on
127.0.0.1 unless ``--host`` says otherwise, and says loudly when it does: anyone who can reach the
address can send prompts to the models and read the answers. personachat/web_server.py holds the
server and the checks it makes on every connection. Only argparse-level imports at module level:
this module loads for every ``personachat --help``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

LOOPBACK_NAMES = ("localhost",)
INSTALL_HINT = "pip install 'personachat[web]'"


def register(subparsers: Any) -> None:
    """Add the ``web`` subcommand."""
    p = subparsers.add_parser(
        "web",
        help="serve the app in a browser (textual-serve; one session per tab)",
        description="Serve the app to a web browser. Each tab is its own session. See docs/web.md.",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; anything else exposes your models)",
    )
    p.add_argument("--port", type=int, default=8000, metavar="P", help="port (default 8000)")
    p.add_argument(
        "--profile", "-p", dest="profile_sub", metavar="P", help="profile path or name (default: demo)"
    )
    p.add_argument(
        "--transcripts", type=Path, dest="transcripts_sub", metavar="DIR", help="folder for transcripts"
    )
    p.set_defaults(handler=run_web)


def is_loopback(host: str) -> bool:
    """True when ``host`` (an address or name) reaches this machine only."""
    import ipaddress

    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, port: int) -> str | None:
    """What to say when the server listens on more than this machine (None on loopback)."""
    if is_loopback(host):
        return None
    return (
        f"WARNING: personachat web listens on {host}:{port}, not only on this machine. Anyone who can "
        "reach that address can open the app, send prompts to your models and read the answers, "
        "with nothing to log in. Serve on 127.0.0.1 (the default) unless that is what you want."
    )


def app_command(profile: Path, transcripts: Path | None, rater: str | None) -> str:
    """The shell command textual-serve runs for each tab: this Python, this profile."""
    import shlex

    argv = [sys.executable, "-m", "personachat", "--profile", str(profile)]
    if transcripts is not None:
        argv += ["--transcripts", str(transcripts)]
    if rater:
        argv += ["--rater", rater]
    return shlex.join(argv)


def run_web(args: argparse.Namespace) -> int:
    """Entry point of ``personachat web``."""
    from personachat.errors import PersonachatError
    from personachat.profile import find_profile, load_profile

    try:
        from personachat.web_server import serve
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("textual_serve", "aiohttp", "aiohttp_jinja2", "jinja2"):
            raise PersonachatError(f"personachat web needs textual-serve: {INSTALL_HINT}") from None
        raise
    if not 0 < args.port < 65536:
        raise PersonachatError(f"--port {args.port}: give a port from 1 to 65535")
    path = find_profile(getattr(args, "profile_sub", None) or args.profile).resolve()
    profile = load_profile(path)  # a broken profile is reported here, not in every browser tab
    transcripts = getattr(args, "transcripts_sub", None) or args.transcripts
    command = app_command(path, transcripts.resolve() if transcripts else None, args.rater)
    warning = exposure_warning(args.host, args.port)
    if warning:
        print(warning, file=sys.stderr)
    print(f"personachat web: profile {profile.name}; each browser tab is its own session", file=sys.stderr)
    try:
        serve(command, args.host, args.port, title=f"personachat · {profile.name}", loopback=not warning)
    except OSError as exc:
        raise PersonachatError(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return 0
