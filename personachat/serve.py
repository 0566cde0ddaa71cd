"""``personachat serve``: start (or stop) a profile's vLLM servers."""

from __future__ import annotations

import asyncio

from personachat.text import sanitize


def say(message: str) -> None:
    """A line on stdout; server answers (model names) are sanitised like everything else."""
    print(sanitize(message), flush=True)


async def run_serve(profile_name: str | None, *, foreground: bool = False, stop: bool = False) -> int:
    from personachat.profile import open_profile
    from personachat.serving.vllm import RunningServer, VllmLauncher

    profile = open_profile(profile_name)
    launcher = VllmLauncher()
    servers = [s for s in profile.servers.values() if s.kind == "vllm"]
    if not servers:
        say(
            f"{profile.path}: no vllm servers to serve (kinds: "
            f"{', '.join(sorted({s.kind for s in profile.servers.values()}))})"
        )
        return 0
    if stop:
        for server in servers:
            running = await launcher.find(server, answering=False)
            if running:
                launcher.stop(running)
                say(f"stopped server '{server.name}' ({running.url})")
            else:
                say(f"server '{server.name}' was not running")
        return 0
    started: list[RunningServer] = []
    try:
        for server in servers:
            running = await launcher.find(server)
            if running:
                say(f"server '{server.name}' already running at {running.url}")
                continue
            running = await launcher.start(server, progress=say)
            started.append(running)
            behind = f" ({running.router} over {', '.join(running.workers)})" if running.router else ""
            say(f"server '{server.name}' ready at {running.url}{behind}: {', '.join(running.models)}")
    except BaseException:
        for running in started:
            launcher.stop(running)
        raise
    if not foreground:
        say(f"servers keep running; stop them with `personachat serve --stop {profile.path}`")
        return 0
    say("serving; Ctrl-C stops the servers")
    try:
        while True:
            await asyncio.sleep(3600)
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    finally:
        for running in started:
            launcher.stop(running)
        say("stopped")
    return 0
