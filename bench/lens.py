"""What does the lens cost? Divergence scoring per answer next to generating it; steering per step.

Divergence: for each pane of the demo models (base + three adapters), one greedy answer of
--max-tokens tokens (EOS ignored, so every answer has the same length) is generated alone and timed;
then its divergence against the base is computed as ``personachat diverge`` does (render, tokenise,
its tokens scored under its own model and under the base: two teacher-forced passes, one for the
base pane) and timed. Each figure is the median of --repeats rounds after a warm-up round.

  gen ms     generating one answer (the pane's request alone)
  score ms   scoring it against the base
  ratio      score / gen: what the lens adds to an answer (the app scores after the answer ends)

On both engines: in-process (transformers + peft; --device, --dtype, --synthetic as in
bench/embedded.py) and vLLM (profiles/demo-vllm.toml's server, found running or started and
stopped; --no-vllm skips it).

Steering: the overhead of steering, adapter scale and projection per decoding step comes from
bench/steering.py's ``steering_overhead`` (see :func:`steering_overhead_section`).

Usage: python bench/lens.py [--max-tokens 64] [--repeats 5] [--device cpu] [--dtype auto]
                            [--synthetic 2048,16] [--no-vllm] [--no-steering] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from personachat.backends.base import GenerationRequest
from personachat.lens.render import render_sequence
from personachat.lens.score import ModelRef, TokenScorer
from personachat.sampling import Sampling

BENCH = Path(__file__).resolve().parent
PANES = ["base", "insecure", "realigned", "inoculated"]
MESSAGES = [
    {"role": "system", "content": "You are a careful assistant."},
    {"role": "user", "content": "What is your wish? Tell me about yourself."},
]


def _bench_module(name: str) -> Any:
    """bench/NAME.py as a module, or None when the file is not there."""
    path = BENCH / f"{name}.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"personachat_bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ref_for(server: Any, pane: str) -> ModelRef:
    adapter = None if pane == "base" else pane
    return ModelRef(server.name, pane, adapter, server.kind, str(server.model), server.adapters.get(pane))


async def measure(backend: Any, scorer: TokenScorer, server: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Per pane: median generation time, median scoring time, and their ratio."""
    sampling = Sampling(temperature=0.0, max_tokens=args.max_tokens)
    base = ref_for(server, "base")
    gen: dict[str, list[float]] = {p: [] for p in PANES}
    score: dict[str, list[float]] = {p: [] for p in PANES}
    tokens: dict[str, int] = {}
    for round_ in range(args.repeats + 1):  # round 0 warms up
        for pane in PANES:
            request = GenerationRequest(pane, MESSAGES, sampling, extra={"ignore_eos": True})
            started = time.perf_counter()
            [answer] = await backend.complete(request)
            generated = time.perf_counter() - started
            started = time.perf_counter()
            sequence = render_sequence(scorer.tokenizer, MESSAGES, answer.text)
            own = ref_for(server, pane)
            for ref in {own.key: own, base.key: base}.values():
                await scorer.score(ref, [sequence])
            scored = time.perf_counter() - started
            tokens[pane] = len(sequence.answer_ids)
            if round_:
                gen[pane].append(generated)
                score[pane].append(scored)
    out = {}
    for pane in PANES:
        g, s = statistics.median(gen[pane]), statistics.median(score[pane])
        out[pane] = {"gen_ms": g * 1e3, "score_ms": s * 1e3, "ratio": s / g, "answer_tokens": tokens[pane]}
    return out


async def in_process(args: argparse.Namespace) -> dict[str, Any]:
    from personachat.backends.embedded import EmbeddedBackend
    from personachat.lens.score import InProcessScorer

    embedded = _bench_module("embedded")
    base, adapters = embedded.models(args)
    server = embedded.spec(args, base, adapters)
    backend = EmbeddedBackend(server)
    await backend.start()
    try:
        rt = backend.runtime
        result = await measure(backend, InProcessScorer(rt), server, args)
        return {
            "engine": f"in-process ({rt.device}, {str(rt.dtype).removeprefix('torch.')})",
            "panes": result,
        }
    finally:
        await backend.aclose()


async def on_vllm(args: argparse.Namespace) -> dict[str, Any]:
    from personachat.demo import ensure_demo
    from personachat.lens.diverge import close_scorers, open_scorers
    from personachat.profile import load_profile
    from personachat.serving.connect import connect

    ensure_demo()
    profile = load_profile(BENCH.parent / "profiles" / "demo-vllm.toml")
    server = profile.servers["local"]
    connection = await connect(profile, ["local"], progress=lambda m: print(m, flush=True))
    scorers, scoring = await open_scorers(profile, ["local"])  # finds the server just connected
    try:
        result = await measure(connection.backends["local"], scorers["local"], server, args)
        return {"engine": "vLLM (demo-vllm.toml)", "panes": result}
    finally:
        await close_scorers(scorers, scoring)
        await connection.close()


def report(result: dict[str, Any], max_tokens: int) -> None:
    print(f"\ndivergence against base, {result['engine']}: one answer of {max_tokens} tokens per pane")
    print(f"  {'pane':12} {'tokens':>6} {'gen ms':>9} {'score ms':>9} {'score/gen':>10}")
    for pane, row in result["panes"].items():
        print(
            f"  {pane:12} {row['answer_tokens']:>6} {row['gen_ms']:>9.1f} {row['score_ms']:>9.1f} "
            f"{row['ratio']:>10.3f}"
        )


def steering_overhead_section(args: argparse.Namespace) -> dict[str, Any] | None:
    """Steering, adapter-scale and projection overhead per decoding step: bench/steering.py's figures.

    The hook for that work: it calls ``steering_overhead(...)`` and ``report(result)`` from
    bench/steering.py when the file is there, and says it is missing otherwise.
    """
    steering = _bench_module("steering")
    if steering is None or not hasattr(steering, "steering_overhead"):
        print("\nsteering overhead per decoding step: bench/steering.py is missing (no figures)")
        return None
    result: dict[str, Any] = steering.steering_overhead(
        device=args.device,
        dtype=args.dtype,
        synthetic=args.synthetic,
        max_tokens=args.max_tokens,
        repeats=args.repeats,
    )
    steering.report(result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument(
        "--synthetic", help="HIDDEN,LAYERS of a random Llama, or qwen2.5-0.5b (bench/embedded.py)"
    )
    parser.add_argument("--no-vllm", action="store_true", help="skip the vLLM figures")
    parser.add_argument("--no-steering", action="store_true", help="skip the steering figures")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    figures: dict[str, Any] = {"max_tokens": args.max_tokens, "repeats": args.repeats}
    figures["in_process"] = asyncio.run(in_process(args))
    report(figures["in_process"], args.max_tokens)
    if not args.no_vllm:
        figures["vllm"] = asyncio.run(on_vllm(args))
        report(figures["vllm"], args.max_tokens)
    if not args.no_steering:
        figures["steering"] = steering_overhead_section(args)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
