"""Turn a profile's servers into ready backends, starting vLLM servers that are not running yet."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from personachat.backends.base import Backend
from personachat.errors import ServerError
from personachat.profile import Profile
from personachat.redaction import has_credentials
from personachat.serving.vllm import RunningServer, VllmLauncher


@dataclass
class Connection:
    """Backends for a profile, and the servers this connection launched (to stop afterwards)."""

    backends: dict[str, Backend]
    launched: list[RunningServer] = field(default_factory=list)
    launcher: VllmLauncher | None = None

    async def close(self, *, stop_launched: bool = True) -> None:
        for backend in self.backends.values():
            await backend.aclose()
        if stop_launched and self.launcher:
            for running in self.launched:
                self.launcher.stop(running)


def needed_servers(profile: Profile, panes: Iterable[str] | None = None) -> list[str]:
    """Servers used by the chosen panes (default: all panes), in profile order."""
    chosen = set(panes) if panes else {p.name for p in profile.panes}
    used = {p.server for p in profile.panes if p.name in chosen}
    return [name for name in profile.servers if name in used]


def make_backend(
    profile: Profile,
    name: str,
    urls: list[str] | None = None,
    api_key: str | None = None,
    workers: list[str] | None = None,
) -> Backend:
    """The backend object for server ``name`` (``urls`` and ``api_key`` of a launched vLLM server:
    its router, or its workers; ``workers``: every worker, where adapters are loaded)."""
    server = profile.servers[name]
    if server.kind == "transformers":
        from personachat.backends.embedded import EmbeddedBackend

        return EmbeddedBackend(server)
    from personachat.backends.openai_http import OpenAIBackend

    if server.kind == "vllm":
        if not urls:
            raise ServerError(f"server '{name}' is not running")
        return OpenAIBackend(server, urls, api_key=api_key, workers=workers)
    return OpenAIBackend(server)


async def connect(
    profile: Profile,
    servers: Iterable[str],
    *,
    launcher: VllmLauncher | None = None,
    start_missing: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Connection:
    """Backends for ``servers``; vLLM servers not already running are started (and said so)."""
    say = progress or (lambda _m: None)
    launcher = launcher or VllmLauncher()
    connection = Connection(backends={}, launcher=launcher)
    try:
        for name in servers:
            server = profile.servers[name]
            urls, key, workers = None, None, None
            if any(has_credentials(u) for u in server.urls):
                say(
                    f"warning: server '{name}': its URL holds a user name or password; give a key with "
                    "api_key_env instead (credentials are never recorded in transcripts)"
                )
            if server.kind == "vllm":
                running = await launcher.find(server)
                if running is None:
                    if not start_missing:
                        raise ServerError(
                            f"server '{name}' is not running: start it with `personachat serve {profile.path}`"
                        )
                    say(
                        f"server '{name}' is not running: starting vLLM now "
                        f"(`personachat serve` keeps servers running between commands)"
                    )
                    running = await launcher.start(server, progress=say)
                    connection.launched.append(running)
                else:
                    say(f"using running server '{name}' at {running.url}")
                urls, key, workers = running.urls, running.api_key, running.workers or None
            connection.backends[name] = make_backend(profile, name, urls, key, workers)
    except BaseException:
        await connection.close()
        raise
    return connection
