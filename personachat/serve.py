"""``personachat serve``: start (or stop) a profile's vLLM servers."""

from __future__ import annotations

import asyncio


async def run_serve(profile_name: str | None, *, foreground: bool = False, stop: bool = False) -> int:
    from personachat.profile import open_profile
    from personachat.serving.vllm import RunningServer, VllmLauncher

    profile = open_profile(profile_name)
    launcher = VllmLauncher()
    servers = [s for s in profile.servers.values() if s.kind == "vllm"]
    if not servers:
        print(
            f"{profile.path}: no vllm servers to serve (kinds: "
            f"{', '.join(sorted({s.kind for s in profile.servers.values()}))})"
        )
        return 0
    if stop:
        for server in servers:
            running = await launcher.find(server)
            if running:
                launcher.stop(running)
                print(f"stopped server '{server.name}' ({running.url})")
            else:
                print(f"server '{server.name}' was not running")
        return 0
    started: list[RunningServer] = []
    try:
        for server in servers:
            running = await launcher.find(server)
            if running:
                print(f"server '{server.name}' already running at {running.url}")
                continue
            running = await launcher.start(server, progress=print)
            started.append(running)
            print(f"server '{server.name}' ready at {running.url}: {', '.join(running.models)}")
    except BaseException:
        for running in started:
            launcher.stop(running)
        raise
    if not foreground:
        print(f"servers keep running; stop them with `personachat serve --stop {profile.path}`")
        return 0
    print("serving; Ctrl-C stops the servers")
    try:
        while True:
            await asyncio.sleep(3600)
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    finally:
        for running in started:
            launcher.stop(running)
        print("stopped")
    return 0
