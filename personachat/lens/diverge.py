"""Score a transcript's answers under their own model and another pane's, resumably.

For each finished answer of the chosen panes, :func:`diverge_transcript` scores its tokens under
the model that wrote it (the record's ``server`` and ``model``) and under the ``against`` pane's
model, and appends one divergence record per answer (a chunk of answers per write and fsync).
What the transcript already holds is not scored again: run it again after Ctrl-C and it goes on
where it stopped. Which server scores a model comes from the profile (the transcript's recorded
one, or another with the same server names). An answer whose own model is the ``against`` model
is scored once: its difference is exactly 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personachat.errors import PersonachatError
from personachat.lens.records import DivergenceCache, DivergenceRecord, divergence_records, new_record
from personachat.lens.render import ScoredSequence, render_sequence, token_pieces
from personachat.lens.score import InProcessScorer, ModelRef, TokenScorer, VllmScorer, model_ref
from personachat.profile import Profile
from personachat.transcripts.schema import ResponseRecord

CHUNK = 16  # answers scored between two writes
Say = Callable[[str], None]
OnResult = Callable[[DivergenceRecord, bool], None]  # (record, taken from the transcript)


@dataclass
class DivergeStats:
    """How a run went: answers chosen, scored now, found already scored."""

    answers: int = 0
    scored: int = 0
    cached: int = 0


def default_against(profile: Profile) -> str:
    """The base pane: the first pane on a server's base model (not an adapter)."""
    for pane in profile.panes:
        server = profile.servers.get(pane.server)
        if server is not None and pane.model not in server.adapters:
            return pane.name
    raise PersonachatError(f"profile '{profile.name}' has no pane on a base model: give --against PANE")


def choose_answers(
    responses: list[ResponseRecord], against: str, panes: list[str] | None
) -> list[ResponseRecord]:
    """Finished answers of ``panes`` (default: every pane but ``against``), in transcript order."""
    present = {r.pane for r in responses}
    for pane in panes or []:
        if pane not in present:
            raise PersonachatError(
                f"no answers of pane '{pane}' in this transcript (panes: {', '.join(sorted(present))})"
            )
    chosen = [r for r in responses if r.status == "finished"]
    if panes:
        return [r for r in chosen if r.pane in panes]
    return [r for r in chosen if r.pane != against]


async def scorers_for(
    profile: Profile, backends: dict[str, Any], *, progress: Say | None = None, concurrency: int = 8
) -> dict[str, TokenScorer]:
    """A scorer per connected backend: the in-process model (loaded if it is not yet), or the vLLM
    server's first URL with its key (the tokenizer loaded here). The app passes its session's."""
    from personachat.backends.openai_http import OpenAIBackend
    from personachat.lens.render import load_tokenizer

    scorers: dict[str, TokenScorer] = {}
    try:
        for name, backend in backends.items():
            server = profile.servers[name]
            if server.kind == "transformers":
                await backend.start(progress)
                if getattr(backend, "runtime", None) is None:
                    raise PersonachatError(f"server '{name}' did not load")
                scorers[name] = InProcessScorer(backend.runtime)
            elif isinstance(backend, OpenAIBackend):
                tokenizer = await asyncio.to_thread(load_tokenizer, server)
                scorers[name] = VllmScorer(
                    server, backend.urls[0], dict(backend.headers), tokenizer, concurrency=concurrency
                )
            else:  # pragma: no cover - every server kind is one of the two
                raise PersonachatError(f"server '{name}' cannot score tokens")
    except BaseException:
        for scorer in scorers.values():
            await scorer.aclose()
        raise
    return scorers


async def open_scorers(
    profile: Profile,
    servers: list[str],
    *,
    start_missing: bool = True,
    progress: Say | None = None,
    concurrency: int = 8,
) -> tuple[dict[str, TokenScorer], Any]:
    """A scorer per server (starting vLLM servers that are not running), and the connection to close."""
    from personachat.serving.connect import connect

    connection = await connect(profile, servers, start_missing=start_missing, progress=progress)
    try:
        scorers = await scorers_for(profile, connection.backends, progress=progress, concurrency=concurrency)
    except BaseException:
        await connection.close()
        raise
    return scorers, connection


async def close_scorers(scorers: dict[str, TokenScorer], connection: Any) -> None:
    for scorer in scorers.values():
        await scorer.aclose()
    await connection.close()


async def diverge_transcript(
    path: Path,
    profile: Profile,
    against: str,
    *,
    panes: list[str] | None = None,
    start_missing: bool = True,
    concurrency: int = 8,
    progress: Say | None = None,
    on_result: OnResult | None = None,
) -> DivergeStats:
    """Score ``path``'s answers against pane ``against`` and append the records (see the module)."""
    from personachat.transcripts.reader import read_transcript
    from personachat.transcripts.writer import TranscriptWriter

    say = progress or (lambda _m: None)
    transcript = read_transcript(path)
    problems = list(transcript.problems)
    cache = DivergenceCache(divergence_records(transcript.other, problems))
    for problem in problems:
        say(f"note: {problem}")
    pane = profile.pane(against)
    against_ref = model_ref(profile, pane.server, pane.model)
    answers = choose_answers(transcript.responses, against, panes)
    refs = {r.id: model_ref(profile, r.server, r.model) for r in answers}
    stats = DivergeStats(answers=len(answers))
    todo = [r for r in answers if cache.done(r.id, against_ref.key) is None]
    emit = on_result or (lambda _r, _c: None)
    if not todo:
        for r in answers:
            record = cache.done(r.id, against_ref.key)
            assert record is not None
            stats.cached += 1
            emit(record, True)
        return stats
    servers = list(dict.fromkeys([*(refs[r.id].server for r in todo), against_ref.server]))
    scorers, connection = await open_scorers(
        profile, servers, start_missing=start_missing, progress=say, concurrency=concurrency
    )
    try:
        with TranscriptWriter(path) as writer:
            for at in range(0, len(answers), CHUNK):
                chunk = answers[at : at + CHUNK]
                need = [r for r in chunk if cache.done(r.id, against_ref.key) is None]
                made = await score_answers(need, refs, pane.name, against_ref, scorers, cache)
                writer.write_many(made)
                for record in made:
                    cache.add(record)
                for r in chunk:
                    record = cache.done(r.id, against_ref.key)
                    assert record is not None
                    fresh = any(record is m for m in made)
                    stats.scored += fresh
                    stats.cached += not fresh
                    emit(record, not fresh)
                say(f"scored {stats.scored + stats.cached}/{stats.answers} answers")
    finally:
        await close_scorers(scorers, connection)
    return stats


async def diverge_answers(
    profile: Profile,
    answers: list[ResponseRecord],
    against: str,
    scorers: dict[str, TokenScorer],
    cache: DivergenceCache | None = None,
) -> list[DivergenceRecord]:
    """Divergence records of ``answers`` against pane ``against``, written nowhere (the caller appends
    them to its transcript). ``scorers``: :func:`scorers_for` over the servers the answers and the
    pane use."""
    pane = profile.pane(against)
    against_ref = model_ref(profile, pane.server, pane.model)
    refs = {r.id: model_ref(profile, r.server, r.model) for r in answers}
    missing = {ref.server for ref in [*refs.values(), against_ref]} - set(scorers)
    if missing:
        raise PersonachatError(f"no scorer for server(s) {', '.join(sorted(missing))}")
    return await score_answers(answers, refs, pane.name, against_ref, scorers, cache or DivergenceCache())


async def score_answers(
    answers: list[ResponseRecord],
    refs: dict[str, ModelRef],
    against: str,
    against_ref: ModelRef,
    scorers: dict[str, TokenScorer],
    cache: DivergenceCache,
) -> list[DivergenceRecord]:
    """One divergence record per answer: each model's scores asked for together, per model."""
    sequences: dict[str, ScoredSequence] = {}
    for r in answers:
        own = render_sequence(scorers[refs[r.id].server].tokenizer, r.messages, r.text)
        if against_ref.server != refs[r.id].server:
            other = render_sequence(scorers[against_ref.server].tokenizer, r.messages, r.text)
            if other.token_ids != own.token_ids:
                raise PersonachatError(
                    f"answer {r.id} of pane '{r.pane}': servers '{refs[r.id].server}' and "
                    f"'{against_ref.server}' tokenise it differently; divergence needs one tokenizer"
                )
        sequences[r.id] = own
    scores: dict[tuple[str, str], list[float]] = {}  # (response id, model key) -> logp
    jobs: dict[str, tuple[ModelRef, list[str]]] = {}
    for r in answers:
        for ref in (refs[r.id], against_ref):
            known = cache.scores(r.id, ref.key, sequences[r.id].answer_ids)
            if known is not None:
                scores[(r.id, ref.key)] = known
            elif r.id not in jobs.setdefault(ref.key, (ref, []))[1]:
                jobs[ref.key][1].append(r.id)

    async def run(ref: ModelRef, ids: list[str]) -> None:
        found = await scorers[ref.server].score(ref, [sequences[i] for i in ids])
        for i, logp in zip(ids, found, strict=True):
            scores[(i, ref.key)] = logp

    await asyncio.gather(*(run(ref, ids) for ref, ids in jobs.values() if ids))
    out = []
    for r in answers:
        own_ref, sequence = refs[r.id], sequences[r.id]
        tokenizer = scorers[own_ref.server].tokenizer
        out.append(
            new_record(
                session_id=r.session_id,
                target=r.id,
                pane=r.pane,
                against=against,
                model={**own_ref.to_dict(), "key": own_ref.key},
                against_model={**against_ref.to_dict(), "key": against_ref.key},
                tokenizer=scorers[own_ref.server].tokenizer_identity,
                token_ids=list(sequence.answer_ids),
                tokens=token_pieces(tokenizer, sequence),
                logp=scores[(r.id, own_ref.key)],
                logp_against=scores[(r.id, against_ref.key)],
                prefix_matches=sequence.prefix_matches,
                answer_start=sequence.answer_start,
            )
        )
    return out
