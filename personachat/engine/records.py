"""Build response records: the one place that turns an answer plus its pane into a ResponseRecord.

Shared by :class:`~personachat.engine.session.Session` (interactive turns) and the replay runner
(prompt sets), so both write the same fields with the same meaning.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from personachat.chat import Message
from personachat.engine.identity import PaneIdentity
from personachat.steering import NO_ACTIVATIONS, ActivationSpec
from personachat.transcripts.schema import JobRef, ResponseRecord


def build_response_record(
    identity: PaneIdentity,
    *,
    record_id: str,
    session_id: str,
    conversation: int,
    turn: int,
    pane: str,
    sample: int,
    messages: list[Message],
    sampling: dict[str, Any],
    status: str,
    text: str,
    finish_reason: str | None = None,
    error: str | None = None,
    usage: dict[str, Any] | None = None,
    timings: dict[str, Any] | None = None,
    tags: list[str] | None = None,
    parent_id: str | None = None,
    regenerated_from: list[str] | None = None,
    replay: JobRef | None = None,
    served_by: str | None = None,
    failed_attempts: list[dict[str, Any]] | None = None,
    activations: ActivationSpec = NO_ACTIVATIONS,
    projection: Sequence[float] | None = None,
) -> ResponseRecord:
    """One response record of the pane whose identity is ``identity``.

    ``activations`` are the request's steering, adapter scale and projection settings;
    ``projection`` the answer's per-token projections (with ``project``), whose mean is recorded.
    """
    settings = activations.to_dict()
    tokens = [float(v) for v in projection or ()] if activations.project is not None else None
    return ResponseRecord(
        id=record_id,
        session_id=session_id,
        conversation=conversation,
        turn=turn,
        pane=pane,
        sample=sample,
        server=identity.server,
        model=identity.model,
        adapter=identity.adapter,
        adapter_sha256=identity.adapter_sha256,
        base_model=identity.base_model,
        model_sha256=identity.model_sha256,
        engine=dict(identity.engine),
        messages=messages,
        sampling=sampling,
        status=status,
        text=text,
        finish_reason=finish_reason,
        error=error if status == "failed" else None,
        usage=usage or {},
        timings=timings or {},
        tags=list(tags or []),
        parent_id=parent_id,
        regenerated_from=regenerated_from,
        replay=replay,
        served_by=served_by,
        failed_attempts=list(failed_attempts or []),
        steer=settings.get("steer"),
        adapter_scale=settings.get("adapter_scale"),
        project=settings.get("project"),
        projection=sum(tokens) / len(tokens) if tokens else None,
        projection_tokens=tokens,
    )
