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

import os
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


def replica_cores(server: ServerSpec, index: int) -> list[int]:
    """The CPU cores worker ``index`` of a CPU build may use: an equal share of this process's
    (vLLM's CPU build binds every worker's threads to the same cores otherwise). Empty when there
    are fewer cores than workers."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    share = len(cores) // server.replicas
    return cores[index * share : (index + 1) * share] if share else []


def replica_env(server: ServerSpec, index: int) -> dict[str, str]:
    """Environment for worker ``index`` of several: its own GPUs (``CUDA_VISIBLE_DEVICES``), its own
    CPU cores (``VLLM_CPU_OMP_THREADS_BIND``; each build ignores the other's), and OpenMP threads
    that sleep when idle (``OMP_WAIT_POLICY=PASSIVE``): workers whose threads spin-wait starve each
    other's API servers, and two CPU workers behind the router gave 0.08x one worker's throughput on
    2 cores, 1.0x with passive waiting (bench/router.py). A profile's own ``env`` setting wins."""
    env: dict[str, str] = {}
    if (server.replicas > 1 or server.gpus) and "CUDA_VISIBLE_DEVICES" not in server.env:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in replica_devices(server, index))
    if server.replicas > 1:
        cores = replica_cores(server, index)
        if cores and "VLLM_CPU_OMP_THREADS_BIND" not in server.env:
            env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in cores)
        if "OMP_WAIT_POLICY" not in server.env:
            env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


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
