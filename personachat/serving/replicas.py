"""Several identical vLLM workers for one profile server, and the router in front of them.

A ``vllm`` server with ``replicas = N`` runs N workers; with ``router = "vllm-router"`` the
``vllm-router`` package (PyPI; the ``scale`` extra) listens in front of them and panes talk to it,
otherwise the panes' client balances over the workers itself. On a GPU machine each worker gets its
own devices (``gpus``, or ``tensor_parallel_size`` GPUs each, in order).

The router forwards each chat request's ``Authorization`` header to the worker it picks, so the
workers share one key and the router is started without one (a key on its command line would be
readable by every local user).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from personachat.errors import ServerError
from personachat.profile import ServerSpec

ROUTER_POLICY = "round_robin"


def replica_devices(server: ServerSpec, index: int) -> list[int]:
    """The GPUs worker ``index`` may use: the profile's ``gpus``, else the next block in order."""
    if server.gpus:
        return list(server.gpus[index])
    per = server.tensor_parallel_size or 1
    return list(range(index * per, (index + 1) * per))


def replica_env(server: ServerSpec, index: int) -> dict[str, str]:
    """Environment for worker ``index``: its own GPUs when there are several workers (CPU builds
    ignore ``CUDA_VISIBLE_DEVICES``). A profile's own ``env`` setting wins."""
    if server.replicas == 1 and not server.gpus:
        return {}
    if "CUDA_VISIBLE_DEVICES" in server.env:
        return {}
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(d) for d in replica_devices(server, index))}


def router_binary(server: ServerSpec) -> str:
    """The ``vllm-router`` executable: beside the server's Python, beside ours, or on PATH."""
    for python in (server.python, sys.executable):
        if python:
            candidate = Path(python).parent / "vllm-router"
            if candidate.is_file():
                return str(candidate)
    found = shutil.which("vllm-router")
    if found:
        return found
    raise ServerError(
        f"server '{server.name}': router = \"vllm-router\" needs the vllm-router package "
        "(pip install 'personachat[scale]', or pip install vllm-router)"
    )


def router_args(binary: str, worker_urls: list[str], host: str, port: int, metrics_port: int) -> list[str]:
    """The command line of a ``vllm-router`` over ``worker_urls`` (already ready)."""
    return [
        binary,
        "--worker-urls",
        *worker_urls,
        "--policy",
        ROUTER_POLICY,
        "--host",
        host,
        "--port",
        str(port),
        # The workers answer before the router starts: check them at once, not every 30 s.
        "--worker-startup-check-interval",
        "1",
        # Its Prometheus exporter takes a fixed port by default: two routers would collide.
        "--prometheus-host",
        host,
        "--prometheus-port",
        str(metrics_port),
    ]
