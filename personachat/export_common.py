"""What several exports share: judge verdicts by answer, the system prompt sent, the pane order."""

from __future__ import annotations

from typing import Any


def judge_records(transcript: Any) -> tuple[list[str], dict[str, dict[str, dict[str, Any]]]]:
    """Metric names in first-seen order, and response id -> metric -> its last judge record (a dict)."""
    metrics: dict[str, None] = {}
    records: dict[str, dict[str, dict[str, Any]]] = {}
    for record in transcript.judgements:
        target, metric = record.get("target"), record.get("metric")
        if not isinstance(target, str) or not isinstance(metric, str):
            continue
        metrics.setdefault(metric, None)
        records.setdefault(target, {})[metric] = record
    return list(metrics), records


def judge_value(record: dict[str, Any] | None) -> Any:
    """A judge record's value: the 0-100 ``score`` (None when the judge gave none), or the ``label``
    of a categorical (or generated) verdict."""
    if record is None:
        return None
    return record.get("label") if record.get("kind") in ("categorical", "generated") else record.get("score")


def judge_scores(transcript: Any) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Metric names in first-seen order, and response id -> metric -> :func:`judge_value` of the last record."""
    metrics, records = judge_records(transcript)
    return metrics, {t: {m: judge_value(r) for m, r in own.items()} for t, own in records.items()}


def judge_probabilities(record: dict[str, Any] | None) -> str:
    """The judge's top-token probabilities as a JSON object (empty without a record)."""
    import orjson

    top = (record or {}).get("top")
    return "" if record is None else orjson.dumps(top if isinstance(top, dict) else {}).decode()


def system_prompt(record: Any) -> str:
    """The system message sent with a response, or ``""`` when none was."""
    return next((m.get("content") or "" for m in record.messages if m.get("role") == "system"), "")


def pane_order(transcript: Any) -> list[str]:
    """Panes in the profile's order (from the header), then any others in the order they appear."""
    order: dict[str, None] = {}
    if transcript.header is not None:
        for pane in transcript.header.profile.get("panes") or []:
            if isinstance(pane, dict) and isinstance(pane.get("name"), str):
                order.setdefault(pane["name"], None)
    present = {r.pane for r in transcript.responses}
    for name in [r.pane for r in transcript.responses]:
        order.setdefault(name, None)
    return [name for name in order if name in present]
