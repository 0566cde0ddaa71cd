"""``personachat persona extract``: a persona vector from a persona_vectors trait file, in-process.

Only argparse at module level: this module is imported for every ``personachat --help``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DEFAULT_MAX_TOKENS = 256


def register(subparsers: Any) -> None:
    """Add ``persona extract``."""
    persona = subparsers.add_parser("persona", help="persona vectors from persona_vectors trait files")
    actions = persona.add_subparsers(dest="persona_command", metavar="ACTION", required=True)
    p = actions.add_parser(
        "extract",
        help="answer a trait file's questions under its positive and negative instructions; write "
        "the difference of the mean hidden states at a layer",
        description="Generate greedy answers to every question under each positive and each negative "
        "instruction of a persona_vectors trait file (in-process), and write the mean answer-token "
        "output of decoder layer L (positive minus negative) as a safetensors file with tensor "
        "'vector' and metadata 'layer'. See docs/lens.md.",
    )
    p.add_argument(
        "--profile",
        "-p",
        dest="persona_profile",
        metavar="PROFILE",
        help="profile with the pane (default: demo)",
    )
    p.add_argument("--pane", required=True, help="the pane whose model answers and is read")
    p.add_argument(
        "--trait", required=True, type=Path, metavar="TRAIT.json", help="persona_vectors trait file"
    )
    p.add_argument(
        "--layer", required=True, type=int, metavar="L", help="decoder layer, 0-based (model.layers[L])"
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        metavar="N",
        help=f"tokens per answer (default {DEFAULT_MAX_TOKENS})",
    )
    p.add_argument("--limit", type=int, metavar="K", help="only the first K questions")
    p.add_argument(
        "--judge",
        action="store_true",
        help="keep only the pairs the profile's judge finds on-trait and coherent (as Chen et al.)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=50.0,
        metavar="T",
        help="with --judge: trait score >= T for positive, < 100-T for negative answers (default 50)",
    )
    p.add_argument(
        "--answers", type=Path, metavar="FILE", help="also write every answer, its scores and use, as JSONL"
    )
    p.add_argument(
        "--output", "-o", required=True, type=Path, metavar="FILE", help="the vector file to write"
    )
    p.set_defaults(handler=run_extract)


def run_extract(args: argparse.Namespace) -> int:
    """Entry point of ``personachat persona extract``."""
    import asyncio
    import sys

    from personachat.errors import PersonachatError
    from personachat.profile import open_profile
    from personachat.text import sanitize

    def say(message: str) -> None:
        print(sanitize(message), file=sys.stderr, flush=True)

    if args.max_tokens < 1 or (args.limit is not None and args.limit < 1) or args.layer < 0:
        raise PersonachatError("--max-tokens and --limit must be 1 or more, --layer 0 or more")
    if not 0 <= args.threshold <= 100:
        raise PersonachatError("--threshold is a score from 0 to 100")
    for path in (args.output, args.answers):
        if path is not None and path.is_dir():
            raise PersonachatError(f"{path} is a folder: give a file name")
    profile = open_profile(args.persona_profile or getattr(args, "profile", None))
    pane = profile.pane(args.pane)
    server = profile.servers[pane.server]
    if server.kind != "transformers":
        raise PersonachatError(
            f"persona extract runs in-process: pane '{pane.name}' is on server '{server.name}' "
            f'(kind = "{server.kind}"); use a profile whose server has kind = "transformers" with the '
            "same model (profiles/demo.toml is the demo models in-process)"
        )
    trait = _trait(args.trait, args.limit)
    metrics = _judge_metrics(profile, trait) if args.judge else None
    result = asyncio.run(_extract(args, profile, pane, trait, metrics, say))
    say(result)
    return 0


def _trait(path: Path, limit: int | None) -> Any:
    """The trait file as a prompt set (its questions cut to ``limit``), checked for what extraction needs."""
    from personachat.errors import PersonachatError
    from personachat.promptsets.load import load_prompt_set

    trait = load_prompt_set(path, format="persona-json")
    if not trait.meta.get("instructions"):
        raise PersonachatError(f'{path}: no instruction pairs ("instruction": [{{"pos": ..., "neg": ...}}])')
    if not trait.items:
        raise PersonachatError(f"{path}: no questions")
    trait.items = trait.items[:limit]
    return trait


def _judge_metrics(profile: Any, trait: Any) -> list[Any]:
    """The trait's own judge (its ``eval_prompt``) and the built-in coherence judge."""
    from personachat.errors import PersonachatError
    from personachat.judge.metrics import metric_from_prompt
    from personachat.judge.prompts import COHERENT

    if profile.judge is None:
        raise PersonachatError(
            f"--judge needs a [judge] table in profile '{profile.name}' (see docs/judge.md)"
        )
    prompt = trait.items[0].judge_prompts.get(trait.name)
    if prompt is None:
        raise PersonachatError(f'--judge needs the trait file\'s "eval_prompt"; {trait.path} has none')
    return [metric_from_prompt(trait.name, prompt), COHERENT]


async def _extract(
    args: argparse.Namespace, profile: Any, pane: Any, trait: Any, metrics: Any, say: Any
) -> str:
    """Generate, judge (if asked), read the layer, and write the files; returns what was written."""
    import asyncio
    import datetime

    import orjson

    from personachat import __version__
    from personachat.backends.base import GenerationRequest
    from personachat.files import write_atomically
    from personachat.lens.persona import (
        answer_means,
        check_layer,
        extraction_answers,
        judge_filter,
        persona_vector,
        write_vector,
    )
    from personachat.lens.render import tokenizer_identity
    from personachat.lens.score import model_ref
    from personachat.sampling import Sampling
    from personachat.serving.connect import make_backend

    ref = model_ref(profile, pane.server, pane.model)
    questions = [item.paraphrases[0] for item in trait.items]
    answers = extraction_answers(trait.meta["instructions"], questions)
    backend: Any = make_backend(profile, pane.server)
    await backend.start(say)
    try:
        runtime = backend.runtime
        check_layer(runtime.model, args.layer)
        say(
            f"answering {len(questions)} question(s) x {len(trait.meta['instructions'])} instruction pair(s) "
            f"x pos/neg: {len(answers)} greedy answers of at most {args.max_tokens} tokens"
        )
        sampling = Sampling(temperature=0.0, max_tokens=args.max_tokens)
        done = await asyncio.gather(
            *(backend.complete(GenerationRequest(pane.model, a.messages, sampling)) for a in answers)
        )
        for answer, [completion] in zip(answers, done, strict=True):
            answer.text, answer.finish_reason = completion.text, completion.finish_reason
        kept = None
        if metrics is not None:
            await judge_answers(profile, pane, answers, metrics, say)
            kept = judge_filter(answers, metrics[0].name, metrics[1].name, args.threshold)
            say(f"the judge kept {kept} of {len(answers) // 2} pair(s)")
        if args.answers is not None:  # before the vector: what was made and judged is kept either way
            write_atomically(args.answers, b"".join(orjson.dumps(a.to_dict()) + b"\n" for a in answers))
        say(f"reading decoder layer {args.layer} over every answer's tokens")
        means = await asyncio.to_thread(answer_means, runtime, ref.adapter, answers, args.layer)
        vector, n_pos, n_neg = persona_vector(answers, means)
        tokenizer = tokenizer_identity(runtime.tokenizer)
    finally:
        await backend.aclose()
    metadata = {
        "layer": args.layer,
        "trait": trait.name,
        "trait_sha256": trait.sha256,
        "pane": pane.name,
        "server": ref.server,
        "model": ref.model,
        "base_model": ref.path or "",
        "adapter_path": ref.adapter_path or "",
        "instruction_pairs": len(trait.meta["instructions"]),
        "questions": len(questions),
        "pos_answers": n_pos,
        "neg_answers": n_neg,
        "max_tokens": args.max_tokens,
        "judge": f"{profile.judge.model} on {profile.judge.server}" if metrics is not None else "none",
        "judge_threshold": args.threshold if metrics is not None else "",
        "pairs_kept": "" if kept is None else kept,
        "method": "mean over answer tokens of decoder layer output, positive minus negative (docs/lens.md)",
        "tokenizer_sha256": tokenizer["sha256"],
        "hidden_size": int(vector.shape[0]),
        "norm": f"{float(vector.norm()):.6g}",
        "personachat_version": __version__,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    written = write_vector(args.output, vector, metadata)
    if args.answers is not None:  # again, with the token counts
        write_atomically(args.answers, b"".join(orjson.dumps(a.to_dict()) + b"\n" for a in answers))
    return (
        f"wrote {written}: vector of size {vector.shape[0]} at layer {args.layer} (norm {metadata['norm']}) "
        f"from {n_pos} positive and {n_neg} negative answers"
    )


async def judge_answers(profile: Any, pane: Any, answers: list[Any], metrics: list[Any], say: Any) -> None:
    """Score every answer with each metric through the profile's judge (cached as every judge call)."""
    import asyncio

    from personachat.judge.scorer import open_scorer
    from personachat.transcripts.schema import ResponseRecord, new_id

    scorer = await open_scorer(profile, progress=say)
    slots = asyncio.Semaphore(8)
    say(
        f"judging {len(answers)} answers for {', '.join(m.name for m in metrics)} with {scorer.identity.model}"
    )

    async def one(answer: Any, metric: Any) -> None:
        record = ResponseRecord(
            id=new_id(),
            session_id="persona-extract",
            conversation=0,
            turn=0,
            pane=pane.name,
            sample=0,
            server=pane.server,
            model=pane.model,
            adapter=None,
            adapter_sha256=None,
            base_model=None,
            model_sha256=None,
            engine={},
            messages=answer.messages,
            sampling={},
            status="finished",
            text=answer.text,
        )
        async with slots:
            judged = await scorer.score(record, metric)
        answer.scores[metric.name] = judged.score

    try:
        await asyncio.gather(*(one(a, m) for a in answers for m in metrics))
    finally:
        await scorer.aclose()
