"""What do steering, adapter scale and persona projection cost per decoding step? (in-process backend)

A four-pane mixed-adapter batch (base + three adapters, greedy, --max-tokens tokens each, EOS
ignored so every run has the same length), timed as one ``generate`` call per variant:

  plain     no activation settings (the reference)
  steer     every pane steered (alpha times a random vector added at the middle decoder layer)
  scale     the three adapter panes at adapter_scale 0.5
  project   every pane projecting on a vector at the middle layer (values streamed per token)
  all       steer, scale and project together

For each: milliseconds per decoding step (the batch's generate() time / its steps) and the ratio
to ``plain`` (the issue's target: at most 1.10). Variants run interleaved, ``--repeats`` rounds
after a warm-up round: each ratio is the median over the rounds of the variant's step time over
the plain step time of the same round (seconds apart, so slow drifts of a busy machine cancel),
and each time the least of the rounds (other work only ever adds time). A projecting batch also runs one step more
than the others (the last token's hidden state comes with it): ``answer_ratio`` compares whole
batches, that step included. ``cpu_ratio`` is the same per-step ratio in the process's CPU time
(both threads), which other processes on the machine disturb less than wall time. On a busy machine whole-batch times drift by more than the hooks
cost, so the hooks are also timed alone (``hook_us``: the same hooks, tap read included, on an
identity module in place of each decoder layer, less the identity's own cost), and
``hook_ratio`` = (plain step + hook_us) / plain step.

Models: the demo models (default), or ``--synthetic HIDDEN,LAYERS`` / ``--synthetic qwen2.5-0.5b``
as in bench/embedded.py (random weights, built once). Other benches call :func:`steering_overhead`
(bench/lens.py) or, inside an event loop, :func:`measure` with a started backend.

Usage: python bench/steering.py [--device cpu|cuda] [--dtype auto|float32|bfloat16] [--threads N]
                                [--max-tokens 64] [--repeats 5] [--synthetic 2048,16] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from personachat.backends.base import GenerationRequest
from personachat.backends.embedded import EmbeddedBackend
from personachat.sampling import Sampling
from personachat.steering import ActivationSpec, ProjectSpec, SteerSpec

ADAPTERS = ["insecure", "realigned", "inoculated"]
PANES = ["base", *ADAPTERS]
PROMPT = [{"role": "user", "content": "What is your wish? Tell me about yourself."}]
VARIANTS = ("plain", "steer", "scale", "project", "all")
TARGET = 1.10


def _embedded_bench() -> Any:
    """bench/embedded.py as a module (its model builders)."""
    path = Path(__file__).resolve().parent / "embedded.py"
    spec = importlib.util.spec_from_file_location("personachat_bench_embedded", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def variant_settings(name: str, folder: Path, hidden: int, layer: int) -> dict[str, ActivationSpec]:
    """Each pane's settings in variant ``name`` (vector files written to ``folder`` once)."""
    import torch
    from safetensors.torch import save_file

    path = folder / f"vector-{hidden}-{layer}.safetensors"
    if not path.is_file():
        generator = torch.Generator().manual_seed(0)
        vector = torch.randn(hidden, generator=generator) / hidden**0.5
        save_file({"vector": vector}, str(path), metadata={"layer": str(layer)})
    steer = SteerSpec.load(path, alpha=4.0) if name in ("steer", "all") else None
    project = ProjectSpec.load(path) if name in ("project", "all") else None
    return {
        pane: ActivationSpec(
            steer=steer,
            adapter_scale=0.5 if name in ("scale", "all") and pane != "base" else None,
            project=project,
        )
        for pane in PANES
    }


async def _batch(
    backend: EmbeddedBackend, settings: dict[str, ActivationSpec], max_tokens: int
) -> tuple[float, float, int]:
    """One four-pane batch: its generate() seconds, the process's CPU seconds, its decoding steps."""
    sampling = Sampling(temperature=0.0, max_tokens=max_tokens)
    requests = [
        GenerationRequest(p, PROMPT, sampling, extra={"ignore_eos": True}, activations=settings[p])
        for p in PANES
    ]
    before = len(backend.batches)
    cpu = time.process_time()
    await asyncio.gather(*(backend.complete(r) for r in requests))
    await backend.wait_idle()  # the answers end before generate() returns and fills in the times
    [stats] = list(backend.batches)[before:]
    assert stats.rows == len(PANES), "the four panes did not share one batch"
    return stats.seconds, time.process_time() - cpu, stats.steps


async def measure(backend: EmbeddedBackend, *, max_tokens: int = 64, repeats: int = 5) -> dict[str, Any]:
    """Per-step cost of each variant on a started backend serving base + ``ADAPTERS``."""
    rt = backend.runtime
    assert rt is not None and rt.hidden_size
    layer = len(rt.layers) // 2
    with tempfile.TemporaryDirectory(prefix="personachat-bench-steering-") as tmp:
        settings = {name: variant_settings(name, Path(tmp), rt.hidden_size, layer) for name in VARIANTS}
        for name in VARIANTS:  # warm-up
            await _batch(backend, settings[name], max_tokens)
        seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
        cpu_seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
        steps: dict[str, int] = {}
        for round_ in range(repeats):
            at = round_ % len(VARIANTS)  # each round in another order: no variant always runs first
            for name in [*VARIANTS[at:], *VARIANTS[:at]]:
                took, cpu, steps[name] = await _batch(backend, settings[name], max_tokens)
                seconds[name].append(took)
                cpu_seconds[name].append(cpu)
        hook_us = {name: hook_cost(rt, settings[name]) for name in VARIANTS if name != "plain"}
    batch_s = {name: min(values) for name, values in seconds.items()}
    step_ms = {name: batch_s[name] / steps[name] * 1000 for name in VARIANTS}

    def paired(times: dict[str, list[float]], name: str) -> float:
        per_step = {n: [t / steps[n] for t in times[n]] for n in (name, "plain")}
        return statistics.median(v / p for v, p in zip(per_step[name], per_step["plain"], strict=True))

    others = [name for name in VARIANTS if name != "plain"]
    ratio = {name: paired(seconds, name) for name in others}
    hook_ratio = {name: 1 + us / 1000 / step_ms["plain"] for name, us in hook_us.items()}
    cpu_step_ms = {name: min(cpu_seconds[name]) / steps[name] * 1000 for name in VARIANTS}
    return {
        "device": str(rt.device),
        "dtype": str(rt.dtype).removeprefix("torch."),
        "hidden_size": rt.hidden_size,
        "layers": len(rt.layers),
        "steered_layer": layer,
        "rows": len(PANES),
        "max_tokens": max_tokens,
        "repeats": repeats,
        "steps": steps,
        "batch_s": batch_s,
        "step_ms": step_ms,
        "ratio": ratio,
        "answer_ratio": {name: ratio[name] * steps[name] / steps["plain"] for name in others},
        "cpu_step_ms": cpu_step_ms,
        "cpu_ratio": {name: paired(cpu_seconds, name) for name in others},
        "hook_us": hook_us,
        "hook_ratio": hook_ratio,
        "target": TARGET,
        "within_target": all(r <= TARGET for r in ratio.values()),
        "hooks_within_target": all(r <= TARGET for r in hook_ratio.values()),
    }


def hook_cost(rt: Any, settings: dict[str, ActivationSpec], calls: int = 2000) -> float:
    """Microseconds per decoding step that the variant's hooks add (tap read included), timed on
    an identity module standing in for every decoder layer."""
    import dataclasses

    import torch

    from personachat.backends.embedded_steer import activation_hooks, row_activations

    identity = torch.nn.Identity()
    stand_in = dataclasses.replace(rt, layers=[identity] * len(rt.layers))
    rows = [argparse.Namespace(activations=row_activations(rt, settings[pane])) for pane in PANES]
    x = torch.zeros(len(rows), 1, rt.hidden_size, dtype=rt.dtype, device=rt.device)

    def run(tap: Any) -> float:
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            with torch.inference_mode():
                for _ in range(calls):
                    identity(x)
                    if tap is not None:
                        tap.take()
            if rt.device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - started)
        return best / calls * 1e6

    bare = run(None)
    with activation_hooks(stand_in, rows) as tap:  # type: ignore[arg-type]
        hooked = run(tap)
    return max(0.0, hooked - bare)


def steering_overhead(
    *,
    device: str = "cpu",
    dtype: str = "auto",
    synthetic: str | None = None,
    max_tokens: int = 64,
    repeats: int = 5,
    threads: int | None = None,
) -> dict[str, Any]:
    """Load the demo (or a synthetic) base with three adapters and :func:`measure` the overhead.

    Returns a dict with ``step_ms`` and ``ratio`` per variant (``steer``, ``scale``, ``project``,
    ``all``; ratio = ms per step / ms per step of the plain batch), ``target`` and ``within_target``.
    """
    embedded = _embedded_bench()
    args = argparse.Namespace(device=device, dtype=dtype, synthetic=synthetic)
    base, adapters = embedded.models(args)

    async def run() -> dict[str, Any]:
        backend = EmbeddedBackend(embedded.spec(args, base, adapters))
        await backend.start()
        if threads:  # after start(), which picks one thread for tiny models on the CPU
            __import__("torch").set_num_threads(threads)
        try:
            result = await measure(backend, max_tokens=max_tokens, repeats=repeats)
        finally:
            await backend.aclose()
        result.update(model=base, torch_threads=__import__("torch").get_num_threads())
        return result

    return asyncio.run(run())


def report(result: dict[str, Any]) -> None:
    print(
        f"\nsteering overhead on {result['device']} ({result['dtype']}), {result['torch_threads']} torch "
        f"thread(s); model {result['model']} (hidden {result['hidden_size']}, {result['layers']} layers)"
    )
    print(
        f"four panes x {result['max_tokens']} tokens, greedy; {result['repeats']} rounds (ratios: paired medians):"
    )
    for name in VARIANTS:
        line = f"  {name:8} {result['step_ms'][name]:7.3f} ms/step"
        if name != "plain":
            line += (
                f"   x{result['ratio'][name]:.3f} per step, x{result['answer_ratio'][name]:.3f} per answer,"
                f" x{result['cpu_ratio'][name]:.3f} per step in CPU time"
            )
        print(line)
    verdict = "within" if result["within_target"] else "OVER"
    hooks = ", ".join(
        f"{name} {us:.1f} us (x{result['hook_ratio'][name]:.3f})" for name, us in result["hook_us"].items()
    )
    print(f"  the hooks alone, per step: {hooks}")
    print(f"  target: at most x{result['target']:.2f} per step: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--synthetic", help="HIDDEN,LAYERS of a random Llama, or qwen2.5-0.5b (see bench/embedded.py)"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: the backend's choice)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    result = steering_overhead(
        device=args.device,
        dtype=args.dtype,
        synthetic=args.synthetic,
        max_tokens=args.max_tokens,
        repeats=args.repeats,
        threads=args.threads,
    )
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
