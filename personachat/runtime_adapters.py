"""Adapters loaded into a running vLLM server at run time: ``/load NAME PATH`` in the app and
``personachat load NAME PATH``.

Only a launched ``vllm`` server whose profile says ``runtime_lora = true`` takes them (vLLM's
``/v1/load_lora_adapter``, with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``; off by default because any
client of the server could then load files from the server's disk). Behind a router the adapter
is loaded on every worker. The adapter is checked first (name, folder, rank) and its content hash
kept, so that the pane opened for it records what it is like any other adapter pane.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from personachat.errors import PersonachatError

if TYPE_CHECKING:
    from personachat.backends.base import Backend
    from personachat.profile import PaneSpec, Profile, ServerSpec


def runtime_server(profile: Profile) -> ServerSpec:
    """The profile's one vLLM server that loads adapters at run time."""
    servers = [s for s in profile.servers.values() if s.kind == "vllm" and s.runtime_lora]
    if not servers:
        raise PersonachatError(
            "no server here loads adapters at run time: give a vllm server runtime_lora = true "
            "in the profile (then restart it)"
        )
    if len(servers) > 1:
        names = ", ".join(s.name for s in servers)
        raise PersonachatError(f"several servers load adapters at run time ({names}); keep one")
    return servers[0]


def check_new_adapter(profile: Profile, server: ServerSpec, name: str, path: str) -> dict[str, Any]:
    """Refuse a name or folder that cannot work; the adapter's identity (``path``, ``sha256``)."""
    from personachat.adapters import content_sha256, inspect_adapter
    from personachat.profile import is_hub_id, valid_adapter_name

    if not valid_adapter_name(name):
        raise PersonachatError(f"'{name}': an adapter name is letters, digits, '.', '_' or '-'")
    if name in {p.name for p in profile.panes} or name in server.models():
        raise PersonachatError(f"'{name}' is taken (a pane or served model has that name)")
    folder = Path(path).expanduser()
    if not folder.exists():
        if is_hub_id(path):
            return {"path": path, "sha256": None}  # vLLM fetches it; its content is known only there
        raise PersonachatError(f"no adapter folder at {path}")
    inspect_adapter(folder, name)  # a folder with a config and weights (vLLM judges the rank)
    return {"path": str(folder.resolve()), "sha256": content_sha256(folder)}


async def load_adapter(
    profile: Profile, backend: Backend, name: str, path: str
) -> tuple[PaneSpec, dict[str, Any]]:
    """Load adapter ``name`` from ``path`` into the runtime-LoRA server behind ``backend``; the pane
    to open for it and its identity."""
    server = runtime_server(profile)
    identity = check_new_adapter(profile, server, name, path)
    loader = getattr(backend, "load_adapter", None)
    if loader is None:
        raise PersonachatError(f"server '{server.name}' cannot load adapters at run time")
    await loader(name, identity["path"])
    return profile.new_pane(name, server.name, name), identity


def register(subparsers: Any) -> None:
    """Add the ``load`` subcommand (module level imports stay argparse-only)."""
    p = subparsers.add_parser(
        "load",
        help="load a LoRA adapter into a running vLLM server (runtime_lora = true)",
        description="Load an adapter into the profile's running vLLM server without restarting it. "
        "The app's /load NAME PATH does the same and opens a pane for it.",
    )
    p.add_argument("name", metavar="NAME", help="the served name (becomes a model name)")
    p.add_argument("path", metavar="PATH", help="the adapter folder (or a hub id)")
    p.add_argument("--profile", "-p", dest="profile_sub", metavar="PROFILE")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import asyncio

    return asyncio.run(_load(args))


async def _load(args: argparse.Namespace) -> int:
    from personachat.profile import open_profile
    from personachat.serving.connect import connect
    from personachat.text import sanitize

    profile = open_profile(args.profile_sub or getattr(args, "profile", None))
    server = runtime_server(profile)
    connection = await connect(profile, [server.name], start_missing=False)
    try:
        backend = connection.backends[server.name]
        _, identity = await load_adapter(profile, backend, args.name, args.path)
        urls = ", ".join(getattr(backend, "urls", []))
    finally:
        await connection.close(stop_launched=False)
    print(
        sanitize(
            f"loaded adapter '{args.name}' ({identity['path']}) on server '{server.name}' at {urls}; "
            f"`personachat --url {urls.split(', ')[0]}` opens a pane for every served model"
        ),
        file=sys.stdout,
    )
    return 0
