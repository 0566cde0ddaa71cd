"""Planning a replay: which requests to send, with which seeds, and what a resume may skip.

Every (question, paraphrase, sample, pane) is a job. Repeated samples of one paraphrase share one
request with the API's ``n`` (a :class:`Unit`); seeds are ``stem(question, paraphrase, pane) +
sample_ix``, and vLLM seeds the ``i``-th of ``n`` samples with ``seed + i``, so a sample comes out
the same whether it was asked alone or in a group: a rerun (or a resume) reproduces a run. The
runner (:mod:`personachat.promptsets.runner`) sends the units.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from personachat.engine.requests import Overrides
from personachat.errors import PersonachatError
from personachat.profile import PaneSpec
from personachat.promptsets.model import PromptJob, PromptSet
from personachat.transcripts.reader import Transcript
from personachat.transcripts.schema import JobRef

SEED_STEMS = 2**31 - 2**20  # seeds stay below 2**31 for up to 2**20 samples per paraphrase


class ReplayError(PersonachatError):
    """A replay cannot start or resume as asked."""


def seed_stem(base_seed: int, set_sha256: str, pane: str, question_id: str, paraphrase_ix: int) -> int:
    """The seed of sample 0 of one paraphrase on one pane; sample ``i`` uses ``stem + i``."""
    digest = hashlib.sha256(
        f"{base_seed}/{set_sha256}/{pane}/{question_id}/{paraphrase_ix}".encode()
    ).digest()
    return int.from_bytes(digest[:8], "big") % SEED_STEMS


def job_seed(base_seed: int, set_sha256: str, pane: str, job: PromptJob) -> int:
    """The seed that reproduces ``job`` on ``pane`` when asked alone (``n=1``)."""
    return seed_stem(base_seed, set_sha256, pane, job.question_id, job.paraphrase_ix) + job.sample_ix


def job_overrides(job: PromptJob) -> Overrides:
    """What a job changes for its sends: the item's system prompt (``""`` included) and temperature.

    The pane's prompt transform still applies to every user turn it sends; a prefilled history is
    sent as written.
    """
    sampling = {"temperature": job.temperature} if job.temperature is not None else {}
    return Overrides(system=job.system, sampling=sampling)


def job_ref(prompt_set: PromptSet, job: PromptJob, turn_ix: int = 0, attempt: int = 0) -> JobRef:
    """The record fields that say which job of ``prompt_set`` a response answers."""
    return JobRef(
        question_id=job.question_id,
        paraphrase_ix=job.paraphrase_ix,
        sample_ix=job.sample_ix,
        turn_ix=turn_ix,
        attempt=attempt,
        promptset={"name": prompt_set.name, "sha256": prompt_set.sha256, "path": str(prompt_set.path)},
    )


@dataclass(frozen=True, slots=True)
class Unit:
    """What one request carries: samples ``jobs`` (consecutive, one paraphrase) of one pane."""

    pane: PaneSpec
    jobs: tuple[PromptJob, ...]
    conversations: tuple[int, ...]  # 1-based position of each job in the prompt set

    @property
    def size(self) -> int:
        return len(self.jobs)


def plan_units(
    panes: list[PaneSpec], jobs: list[PromptJob], done: set[tuple[str, str]], group_samples: int
) -> list[Unit]:
    """The requests still to send, panes interleaved job by job, in prompt-set order.

    Consecutive samples of one paraphrase on one pane go in one request, at most ``group_samples``
    at a time; scripted multi-turn jobs always go alone. ``done`` holds ``(pane, job key)`` pairs
    already finished (a resume).
    """
    runs: dict[tuple[str, str, int], list[tuple[PromptJob, int]]] = {}
    units: list[tuple[int, int, Unit]] = []
    pane_index = {p.name: i for i, p in enumerate(panes)}

    def unit(pane: PaneSpec, run: list[tuple[PromptJob, int]]) -> tuple[int, int, Unit]:
        made = Unit(pane, tuple(j for j, _ in run), tuple(o for _, o in run))
        return (run[0][1], pane_index[pane.name], made)

    for ordinal, job in enumerate(jobs, start=1):
        for pane in panes:
            if (pane.name, job.key()) in done:
                continue
            if job.turns or group_samples == 1:
                units.append(unit(pane, [(job, ordinal)]))
                continue
            run = runs.setdefault((pane.name, job.question_id, job.paraphrase_ix), [])
            if run and (len(run) >= group_samples or run[-1][0].sample_ix + 1 != job.sample_ix):
                units.append(unit(pane, list(run)))
                run.clear()
            run.append((job, ordinal))
    for (name, _, _), run in runs.items():
        if run:
            pane = next(p for p in panes if p.name == name)
            units.append(unit(pane, run))
    units.sort(key=lambda u: (u[0], u[1]))
    return [u for _, _, u in units]


@dataclass
class ReplaySettings:
    """Everything that decides what a replay sends; recorded in its ``replay`` start record."""

    promptset: dict[str, Any]  # name, sha256, path, format
    panes: list[dict[str, Any]]  # pane_settings() of each replayed pane
    samples: int | None
    base_seed: int
    max_tokens: int | None
    extra: dict[str, Any]
    selection: dict[str, list[str]] | None = None  # --questions / --exclude: {"only", "exclude"}

    def to_dict(self) -> dict[str, Any]:
        data = {
            "promptset": self.promptset,
            "panes": self.panes,
            "samples": self.samples,
            "base_seed": self.base_seed,
            "max_tokens": self.max_tokens,
            "extra": self.extra,
        }
        if self.selection is not None:
            data["selection"] = self.selection
        return data

    def differences(self, recorded: dict[str, Any]) -> list[str]:
        """How these settings differ from a recorded start record (empty when a resume may go on)."""
        out = []
        if recorded.get("promptset", {}).get("sha256") != self.promptset["sha256"]:
            out.append(
                f"the prompt set changed (recorded sha256 {str(recorded.get('promptset', {}).get('sha256'))[:12]}, "
                f"now {self.promptset['sha256'][:12]})"
            )
        for key in ("samples", "base_seed", "max_tokens", "extra", "selection"):
            if recorded.get(key) != getattr(self, key):
                out.append(f"{key} was {recorded.get(key)!r}, now {getattr(self, key)!r}")
        was = {p["name"]: p for p in recorded.get("panes", [])}
        now = {p["name"]: p for p in self.panes}
        if list(was) != list(now):
            out.append(f"panes were {', '.join(was)}, now {', '.join(now)}")
        else:
            for name, pane in now.items():
                changed = [k for k in pane if k != "server" and pane[k] != was[name].get(k)]
                if changed:
                    out.append(f"pane '{name}' changed its {', '.join(changed)}")
        return out


def replay_start(transcript: Transcript) -> dict[str, Any]:
    """The ``replay`` start record of a transcript written by replay; ReplayError if there is none."""
    for record in transcript.other:
        if record.get("type") == "replay" and record.get("event") == "start":
            return record
    raise ReplayError(f"{transcript.path} was not written by `personachat replay` (no replay record)")


def finished_jobs(transcript: Transcript, turns: dict[str, int] | None = None) -> set[tuple[str, str]]:
    """``(pane, job key)`` of every job with a finished record for each of its turns.

    ``turns`` maps a job key to its number of turns (default: 1 for every job).
    """
    seen: dict[tuple[str, str], set[int]] = {}
    for record in transcript.responses:
        if record.status == "finished" and record.replay is not None:
            seen.setdefault((record.pane, record.replay.job), set()).add(record.replay.turn_ix)
    return {k for k, ixs in seen.items() if len(ixs) >= (turns or {}).get(k[1], 1)}


def check_panes(names: Iterable[str], known: Iterable[str]) -> list[str]:
    """``names`` as a list, each a known pane, none twice; :class:`ReplayError` otherwise."""
    names, known = list(names), list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ReplayError(f"no pane named {', '.join(unknown)} (panes: {', '.join(known)})")
    if len(set(names)) != len(names):
        raise ReplayError("a pane is named twice in --panes")
    return names
