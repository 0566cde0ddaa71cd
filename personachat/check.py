"""``personachat check``: validate a profile, inspect its adapters, and probe running servers.

Problems are collected, not raised one at a time, so one run shows everything to fix.
"""

from __future__ import annotations

import sys
from typing import Any

from personachat.errors import Problem, ProfileError
from personachat.text import sanitize

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


async def probe_panes(profile: Any) -> tuple[list[str], list[str]]:
    """One real 1-token request per pane on servers that are running; returns (errors, notes)."""
    from personachat.backends.base import GenerationRequest
    from personachat.errors import BackendError, PersonachatError
    from personachat.serving.connect import make_backend
    from personachat.serving.vllm import VllmLauncher

    errors: list[str] = []
    notes: list[str] = []
    launcher = VllmLauncher()
    for name, server in profile.servers.items():
        if server.kind == "transformers":
            notes.append(f"server '{name}': in-process (loaded when the app or a command starts)")
            continue
        urls, key = None, None
        if server.kind == "vllm":
            running = await launcher.find(server)
            if running is None:
                notes.append(f"server '{name}': not running (`personachat serve {profile.path}` starts it)")
                continue
            urls, key = running.urls, running.api_key
        try:
            backend = make_backend(profile, name, urls, key)
        except PersonachatError as exc:
            errors.append(f"server '{name}': {exc}")
            continue
        backend.retry_budget = 0.0  # a check reports what it finds now, without waiting
        try:
            for pane in (p for p in profile.panes if p.server == name):
                request = GenerationRequest(
                    pane.model,
                    [{"role": "user", "content": "hi"}],
                    pane.sampling.replace(max_tokens=1, n=1, temperature=0.0),
                )
                try:
                    await backend.complete(request)
                    notes.append(f"pane '{pane.name}': {pane.model} on '{name}' answered")
                except PersonachatError as exc:
                    if (
                        isinstance(exc, BackendError)
                        and exc.kind == "unreachable"
                        and server.kind == "openai"
                    ):
                        notes.append(f"server '{name}': not reachable ({', '.join(server.urls)}); skipped")
                        break
                    errors.append(f"pane '{pane.name}': {exc}")
        finally:
            await backend.aclose()
    return errors, notes


async def run_check(profile_name: str | None, *, offline: bool = False) -> int:
    from personachat.adapters import check_adapters
    from personachat.profile import find_profile, parse_profile

    path = find_profile(profile_name)
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        from personachat.profile import load_profile

        load_profile(path)  # raises a ProfileError naming the line
        raise
    problems: list[Problem] = []
    profile = None
    try:
        profile = parse_profile(data, path, text)
    except ProfileError as exc:
        problems.extend(exc.problems)
    adapter_errors, notes = check_adapters(path, data, text)
    problems.extend(adapter_errors)
    problems.sort(key=lambda p: p.line or 0)
    probe_errors: list[str] = []
    if profile is not None and not adapter_errors and not offline:
        probe_errors, probe_notes = await probe_panes(profile)
        notes.extend(probe_notes)
    for note in notes:
        print(sanitize(f"  note: {note}"))
    for problem in problems:
        print(sanitize(f"error: {problem}"))
    for error in probe_errors:  # a server's own words: never raw to the terminal
        print(sanitize(f"error: {error}"))
    count = len(problems) + len(probe_errors)
    if count:
        print(f"{path}: {count} error{'s' if count != 1 else ''}")
        return 1
    assert profile is not None
    print(f"{path}: ok ({len(profile.servers)} server(s), {len(profile.panes)} pane(s))")
    return 0
