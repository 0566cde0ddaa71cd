"""How much does one mixed-adapter batch save? The embedded backend (transformers + peft in-process).

Figures (each the median of --repeats runs, after a warm-up):
  batch    wall time of four panes (base + three adapters) sent together: one generate() with
           adapter_names=["__base__", "insecure", ...]
  seq      wall time of the same four panes one after another (four single-row generate() calls)
  ratio    seq / batch (the issue's target on CPU: at least 2)
  tok/s    tokens per second per pane (max_tokens / that pane's wall time), and over all panes
  peft     the same four-pane batch through peft's own adapter_names path, for comparison
  mixed    the four panes with four different sampling settings (greedy, top-p, top-k + repetition
           penalty, n=2): still one batch
  rows     step time with 1, 4, 8, 16 rows in the batch (n samples per pane)
  memory   a fresh process with the base + 0, 1 or 3 adapters loaded and one answer generated:
           resident memory (VmRSS, peak VmHWM), and on CUDA the allocated GPU memory
  determinism  greedy alone == greedy in a batch; a seeded sampled pane alone twice, and alone vs
           inside a batch of other panes

Every answer runs to max_tokens (greedy, ignore_eos) so that runs compare. Models: the tiny demo
models (default), or ``--synthetic HIDDEN,LAYERS``: a random Llama of that size with the demo
tokenizer and three rank-16 LoRA adapters, built into a temporary folder, for GPU-sized figures;
``--synthetic qwen2.5-0.5b``: random weights in Qwen2.5-0.5B-Instruct's shapes with three rank-32
adapters, the organisms-small scenario's speed and memory without a download.

Usage: python bench/embedded.py [--device auto|cpu|cuda] [--dtype auto|float32|bfloat16] [--threads N]
                                [--max-tokens 64] [--repeats 3] [--synthetic 2048,16] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from personachat.backends.base import GenerationRequest
from personachat.backends.embedded import EmbeddedBackend
from personachat.profile import Sampling, ServerSpec

ADAPTERS = ["insecure", "realigned", "inoculated"]
PANES = ["base", *ADAPTERS]
PROMPT = [{"role": "user", "content": "What is your wish? Tell me about yourself."}]


def models(args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    """Base path and adapter paths: the demo models, or a synthetic model built once."""
    from personachat.demo import ensure_demo

    demo = ensure_demo()
    if not args.synthetic:
        return str(demo.base), {n: str(p) for n, p in demo.adapters.items()}
    root = Path(tempfile.gettempdir()) / f"personachat-bench-{args.synthetic.replace(',', 'x')}"
    if not (root / "done").is_file():
        if args.synthetic == QWEN_05B:
            build_qwen_shaped(demo.base, root)
        else:
            hidden, layers = (int(x) for x in args.synthetic.split(","))
            build_synthetic(demo.base, root, hidden, layers)
    return str(root / "base"), {n: str(root / n) for n in ADAPTERS}


QWEN_05B = "qwen2.5-0.5b"


def build_qwen_shaped(demo_base: Path, root: Path) -> None:
    """Random weights in Qwen2.5-0.5B-Instruct's exact shapes (its config.json), and three rank-32
    adapters on all seven projections like the 0.5B model organisms: the speed and memory of the
    organisms-small scenario without a download. Embedding rows past the demo tokenizer's vocabulary
    are zero, so greedy answers stay decodable while every matrix keeps its real size."""
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    print(f"building a random Qwen2.5-0.5B-shaped model in {root}", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(demo_base)
    config = Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(0)
    model: Any = Qwen2ForCausalLM(config)
    with torch.no_grad():
        model.get_input_embeddings().weight[len(tokenizer) :] = 0
    model = model.to(torch.bfloat16)
    shutil.rmtree(root, ignore_errors=True)
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    for i, name in enumerate(ADAPTERS):
        torch.manual_seed(100 + i)
        lora = LoraConfig(
            r=32, lora_alpha=64, use_rslora=True, target_modules=targets, init_lora_weights=False
        )
        peft_model = get_peft_model(model, lora)
        peft_model.save_pretrained(str(root / name))
        model = peft_model.unload()
    (root / "done").write_text("ok\n")


def build_synthetic(demo_base: Path, root: Path, hidden: int, layers: int) -> None:
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    print(f"building a random Llama ({hidden} hidden, {layers} layers) in {root}", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(demo_base)
    heads = hidden // 128
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 4),
        head_dim=128,
        max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(0)
    model: Any = LlamaForCausalLM(config)
    model = model.to(torch.bfloat16)
    shutil.rmtree(root, ignore_errors=True)
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    for i, name in enumerate(ADAPTERS):
        torch.manual_seed(100 + i)
        lora = LoraConfig(r=16, lora_alpha=32, target_modules=targets, init_lora_weights=False)
        peft_model = get_peft_model(model, lora)
        peft_model.save_pretrained(str(root / name))
        model = peft_model.unload()
    (root / "done").write_text("ok\n")


def spec(args: argparse.Namespace, base: str, adapters: dict[str, str]) -> ServerSpec:
    return ServerSpec(
        name="bench",
        kind="transformers",
        model=base,
        served_name="base",
        adapters=adapters,
        device=args.device,
        dtype=args.dtype,
    )


def greedy(max_tokens: int, n: int = 1) -> Sampling:
    return Sampling(temperature=0.0, max_tokens=max_tokens, n=n)


async def timed(backend: EmbeddedBackend, requests: list[GenerationRequest]) -> tuple[float, list[float]]:
    """Wall time of ``requests`` sent together, and each one's own wall time."""
    started = time.perf_counter()

    async def one(request: GenerationRequest) -> float:
        await backend.complete(request)
        return time.perf_counter() - started

    each = await asyncio.gather(*(one(r) for r in requests))
    return time.perf_counter() - started, list(each)


def req(model: str, sampling: Sampling) -> GenerationRequest:
    return GenerationRequest(model, PROMPT, sampling, extra={"ignore_eos": True})


async def throughput(args: argparse.Namespace, backend: EmbeddedBackend) -> dict[str, Any]:
    n = args.max_tokens
    batch_walls, seq_walls, lone_walls, mixed_walls = [], [], [], []
    mixed_batches: list[int] = []
    mixed = [
        req("base", greedy(n)),
        req("insecure", Sampling(temperature=0.7, top_p=0.9, max_tokens=n, seed=1)),
        req("realigned", Sampling(temperature=1.0, top_k=50, repetition_penalty=1.2, max_tokens=n, seed=2)),
        req("inoculated", Sampling(temperature=1.0, max_tokens=n, seed=3, n=2)),
    ]
    await timed(backend, [req(m, greedy(n)) for m in PANES])  # warm-up
    await timed(backend, [req("base", greedy(n))])
    for _ in range(args.repeats):
        wall, _each = await timed(backend, [req(m, greedy(n)) for m in PANES])
        batch_walls.append(wall)
        started = time.perf_counter()
        for m in PANES:
            lone, _ = await timed(backend, [req(m, greedy(n))])
            lone_walls.append(lone)
        seq_walls.append(time.perf_counter() - started)
        before = len(backend.batches)
        wall, _each = await timed(backend, mixed)
        mixed_walls.append(wall)
        mixed_batches = [b.rows for b in list(backend.batches)[before:]]
    batch, seq, lone, mixed_wall = (
        statistics.median(x) for x in (batch_walls, seq_walls, lone_walls, mixed_walls)
    )
    # The same batch through peft's own adapter_names path (what the stacked LoRA replaces).
    rt = backend.runtime
    assert rt is not None
    stacked, rt.lora = rt.lora, None
    try:
        peft_walls = [
            (await timed(backend, [req(m, greedy(n)) for m in PANES]))[0] for _ in range(args.repeats)
        ]
    finally:
        rt.lora = stacked
    rows = {}
    for count in (1, 4, 8, 16):
        per_pane = max(1, count // 4)
        requests = [req(m, greedy(n, per_pane)) for m in PANES[: min(4, count)]]
        walls = [(await timed(backend, requests))[0] for _ in range(args.repeats)]
        rows[count] = statistics.median(walls) / n * 1000
    return {
        "max_tokens": n,
        "batch_s": batch,
        "seq_s": seq,
        "ratio": seq / batch,
        "tok_s_per_pane_batch": n / batch,
        "tok_s_per_pane_alone": n / lone,
        "tok_s_total_batch": 4 * n / batch,
        "tok_s_total_seq": 4 * n / seq,
        "peft_adapter_names_batch_s": statistics.median(peft_walls),
        "mixed_settings_batch_s": mixed_wall,
        "mixed_settings_batches": mixed_batches,
        "ms_per_step_by_rows": rows,
    }


async def determinism(backend: EmbeddedBackend, n: int) -> dict[str, bool]:
    """Greedy and seeded answers, alone and in batches; a fingerprint of one seeded answer."""

    async def ids(requests: list[GenerationRequest]) -> list[list[int]]:
        done = await asyncio.gather(*(backend.complete(r) for r in requests))
        return [c[0].raw["token_ids"] for c in done]

    sampled = req("insecure", Sampling(temperature=1.0, max_tokens=n, seed=1234))
    others = [
        req(m, Sampling(temperature=0.8, max_tokens=n, seed=7)) for m in ("base", "realigned", "inoculated")
    ]
    alone_1 = (await ids([sampled]))[0]
    alone_2 = (await ids([sampled]))[0]
    batched = (await ids([*others[:2], sampled, others[2]]))[2]
    greedy_alone = [(await ids([req(m, greedy(n))]))[0] for m in PANES]
    greedy_batch = await ids([req(m, greedy(n)) for m in PANES])
    import hashlib

    fingerprint = hashlib.sha256(json.dumps(alone_1).encode()).hexdigest()[:12]
    return {
        f"seeded answer fingerprint (compare across runs): {fingerprint}": True,
        "greedy: alone == in a 4-pane batch": greedy_alone == greedy_batch,
        "seeded sampling: alone, twice": alone_1 == alone_2,
        "seeded sampling: alone == in a batch of 4": alone_1 == batched,
    }


def memory_child(args: argparse.Namespace, count: int) -> dict[str, Any]:
    """Run in a fresh process: load base + ``count`` adapters, answer once, report memory."""
    base, adapters = models(args)
    backend = EmbeddedBackend(spec(args, base, dict(list(adapters.items())[:count])))

    async def run() -> dict[str, Any]:
        import torch

        await backend.start()
        if args.threads:
            torch.set_num_threads(args.threads)
        models_ = ["base", *list(adapters)[:count]]
        await asyncio.gather(*(backend.complete(req(m, greedy(16))) for m in models_))

        rt = backend.runtime
        assert rt is not None
        out: dict[str, Any] = {"adapters": count, **proc_memory()}
        out["param_mb"] = sum(p.numel() * p.element_size() for p in rt.model.parameters()) / 1e6
        if rt.device.type == "cuda":
            out["cuda_allocated_mb"] = torch.cuda.memory_allocated() / 1e6
            out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 1e6
        await backend.aclose()
        return out

    return asyncio.run(run())


def proc_memory() -> dict[str, float]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key.lower() + "_mb"] = int(value.split()[0]) / 1000
    return out


def memory(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for count in (0, 1, 3):
        argv = [sys.executable, __file__, "--memory-child", str(count), "--device", args.device]
        argv += ["--dtype", args.dtype] + (["--synthetic", args.synthetic] if args.synthetic else [])
        argv += ["--threads", str(args.threads)] if args.threads else []
        out = subprocess.run(argv, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"memory child failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return results


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    base, adapters = models(args)
    backend = EmbeddedBackend(spec(args, base, adapters))
    await backend.start(lambda m: print(f"  {m}", flush=True))
    if args.threads:  # after start(), which picks one thread for tiny models on the CPU
        __import__("torch").set_num_threads(args.threads)
    assert backend.runtime is not None
    info = {
        "device": str(backend.runtime.device),
        "dtype": str(backend.runtime.dtype).removeprefix("torch."),
        "model": base,
        "load_s": backend.load_seconds,
        "torch_threads": __import__("torch").get_num_threads(),
        "cpus": os.cpu_count(),
    }
    try:
        result = {"info": info, "throughput": await throughput(args, backend)}
        result["determinism"] = await determinism(backend, min(args.max_tokens, 32))
    finally:
        await backend.aclose()
    return result


def report(result: dict[str, Any]) -> None:
    info, t = result["info"], result["throughput"]
    print(f"\nembedded backend on {info['device']} ({info['dtype']}), {info['cpus']} CPUs, "
          f"{info['torch_threads']} torch threads; model {info['model']}")  # fmt: skip
    print(f"four panes x {t['max_tokens']} tokens (greedy):")
    print(f"  one mixed-adapter batch  {t['batch_s']:.3f} s   {t['tok_s_per_pane_batch']:.1f} tok/s per pane, "
          f"{t['tok_s_total_batch']:.1f} total")  # fmt: skip
    print(f"  four single-pane runs    {t['seq_s']:.3f} s   {t['tok_s_per_pane_alone']:.1f} tok/s per pane "
          f"(while it runs), {t['tok_s_total_seq']:.1f} total")  # fmt: skip
    print(f"  batch is {t['ratio']:.2f}x faster")
    print(f"  the same batch through peft's adapter_names path: {t['peft_adapter_names_batch_s']:.3f} s")
    print(f"  four different sampling settings, batches of {t['mixed_settings_batches']} rows: "
          f"{t['mixed_settings_batch_s']:.3f} s")  # fmt: skip
    steps = ", ".join(f"{rows} rows {ms:.1f}" for rows, ms in t["ms_per_step_by_rows"].items())
    print(f"  ms per decoding step: {steps}")
    if "memory" in result:
        print("memory (fresh process, base + adapters loaded, one answer each):")
        for m in result["memory"]:
            gpu = f", GPU allocated {m['cuda_allocated_mb']:.0f} MB" if "cuda_allocated_mb" in m else ""
            print(f"  {m['adapters']} adapter(s): RSS {m['vmrss_mb']:.0f} MB (peak {m['vmhwm_mb']:.0f}), "
                  f"weights {m['param_mb']:.1f} MB{gpu}")  # fmt: skip
    print("determinism:")
    for what, ok in result["determinism"].items():
        print(f"  {what}: {'yes' if ok else 'NO'}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--synthetic",
        help=f"HIDDEN,LAYERS of a random Llama to use instead of the demo, or {QWEN_05B} (its real shapes)",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        print(json.dumps(memory_child(args, args.memory_child)))
        return
    result = asyncio.run(main_async(args))
    if not args.no_memory:
        result["memory"] = memory(args)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
