"""The human-readable exports: Markdown and a self-contained HTML page, prompts as rows and panes as
columns. Every answer is escaped (model output is untrusted); the HTML page colours answer tokens by
divergence when the transcript has divergence records (docs/lens.md).
"""

from __future__ import annotations

from typing import Any

from personachat.export_common import judge_scores, pane_order


def _grid(transcript: Any) -> tuple[list[str], list[tuple[tuple[int, int], list[Any]]]]:
    """Panes, and the rows: ((conversation, turn), records of that turn in transcript order)."""
    rows: dict[tuple[int, int], list[Any]] = {}
    for r in transcript.responses:
        rows.setdefault((r.conversation, r.turn), []).append(r)
    return pane_order(transcript), list(rows.items())


def _row_title(records: list[Any]) -> tuple[str, str]:
    """(the prompt shown for a row, a short description such as ``wish · paraphrase 2 · turn 1``)."""
    first = records[0]
    parts = []
    if first.replay is not None:
        parts.append(first.replay.question_id)
        if first.replay.paraphrase_ix:
            parts.append(f"paraphrase {first.replay.paraphrase_ix + 1}")
        if first.replay.sample_ix:
            parts.append(f"sample {first.replay.sample_ix + 1}")
    parts.append(f"turn {first.turn}")
    return first.prompt, " · ".join(parts)


def _cell_records(records: list[Any], pane: str) -> list[Any]:
    """A pane's records in one row; of retried attempts, only the finished one (or the last)."""
    mine = [r for r in records if r.pane == pane]
    return [r for r in mine if r.status == "finished"] or mine[-1:]


def _header_lines(transcript: Any) -> list[tuple[str, str]]:
    lines: list[tuple[str, str]] = [("transcript", str(transcript.path))]
    header = transcript.header
    if header is not None:
        lines.append(("session", header.session_id))
        lines.append(("profile", str(header.profile.get("name") or "")))
        lines.append(("created", header.created_at))
    for record in transcript.other:
        if record.get("type") == "replay" and record.get("event") == "start":
            promptset = record.get("promptset") or {}
            lines.append(
                ("prompt set", f"{promptset.get('name')} (sha256 {str(promptset.get('sha256'))[:12]})")
            )
            break
    return lines


def _markdown_escape(text: str) -> str:
    """Untrusted text made inert inside a Markdown table cell: no HTML, links, emphasis or pipes."""
    import html
    import re

    from personachat.text import sanitize

    text = html.escape(sanitize(text), quote=False)
    text = re.sub(r"([\\`*_\[\]{}|~#!])", r"\\\1", text)
    return text.replace("\r", "").replace("\t", " ").replace("\n", "<br>")


def markdown_page(transcript: Any) -> str:
    metrics, scores = judge_scores(transcript)
    panes, rows = _grid(transcript)
    out = ["# Transcript", ""]
    out += [f"- **{key}**: {_markdown_escape(value)}" for key, value in _header_lines(transcript)]
    out.append("")
    out.append("| prompt | " + " | ".join(_markdown_escape(p) for p in panes) + " |")
    out.append("|---" * (len(panes) + 1) + "|")
    for _, records in rows:
        prompt, what = _row_title(records)
        turn_notes = _turn_notes(transcript, records)
        cells = [
            f"*{_markdown_escape(what)}*<br>{_markdown_escape(prompt)}"
            + (f"<br>*{_markdown_escape(turn_notes)}*" if turn_notes else "")
        ]
        for pane in panes:
            parts = []
            mine = _cell_records(records, pane)
            for r in mine:
                piece = ""
                if r.prompt != prompt:
                    piece += f"*prompt:* {_markdown_escape(r.prompt)}<br>"
                if len(mine) > 1:
                    piece += f"**sample {r.sample + 1}** "
                piece += _markdown_escape(r.text) if r.text else ""
                notes = _status_notes(r, metrics, scores)
                if notes:
                    piece += "<br>*" + _markdown_escape(notes) + "*"
                parts.append(piece)
            cells.append("<br><br>".join(parts))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _label_text(annotation: Any) -> str:
    """``misaligned (blind, alice)``: a label with who gave it and whether it was given blind."""
    detail = [d for d in ("blind" if annotation.blind else "", annotation.rater or "") if d]
    return annotation.value + (f" ({', '.join(detail)})" if detail else "")


def _turn_notes(transcript: Any, records: list[Any]) -> str:
    """``tags: villain · note: …`` given on a turn (not on one answer), blind ones marked."""
    first = records[0]
    parts = []
    for annotation in transcript.turn_annotations(first.conversation, first.turn):
        if annotation.kind not in ("tag", "note"):
            continue
        blind = " (blind)" if annotation.blind else ""
        parts.append(f"{annotation.kind}: {annotation.value}{blind}")
    return " · ".join(parts)


def _status_notes(record: Any, metrics: list[str], scores: dict[str, dict[str, Any]]) -> str:
    """``failed: ... · aligned 87 · labels: refusal`` for under an answer."""
    parts = []
    if record.status != "finished":
        parts.append(record.status + (f": {record.error}" if record.error else ""))
    own = scores.get(record.id, {})
    for metric in metrics:
        if metric in own:
            value = own[metric]
            shown = "none" if value is None else f"{value:.0f}" if isinstance(value, float) else str(value)
            parts.append(f"{metric} {shown}")
    labels = record.label_annotations
    if labels:
        parts.append("labels: " + ", ".join(_label_text(a) for a in labels))
    tags = record.all_tags
    if tags:
        parts.append("tags: " + ", ".join(tags))
    return " · ".join(parts)


HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1d1d1f; background: #fff; }
h1 { font-size: 1.3rem; } dl { display: grid; grid-template-columns: max-content auto; gap: .2rem 1rem; }
dt { font-weight: 600; } dd { margin: 0; }
table { border-collapse: collapse; width: 100%; table-layout: fixed; }
th, td { border: 1px solid #d0d0d7; padding: .5rem; vertical-align: top; text-align: left; }
thead th { position: sticky; top: 0; background: #f3f3f6; }
th.prompt { width: 22%; font-weight: normal; background: #fafafc; }
.what { color: #666; font-size: .8rem; display: block; margin-bottom: .3rem; }
.answer, .text { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; font-family: ui-monospace, monospace; font-size: .85rem; }
.own-prompt { color: #555; font-size: .8rem; }
.notes { color: #666; font-size: .8rem; margin-top: .3rem; }
.failed, .cancelled { background: #fff4f4; }
.sample { font-weight: 600; font-size: .8rem; }
"""


def html_page(transcript: Any) -> str:
    import html

    from personachat.lens.colour import divergence_colours
    from personachat.text import sanitize

    def esc(text: Any) -> str:
        return html.escape(sanitize(str(text)), quote=True)

    metrics, scores, colours = *judge_scores(transcript), divergence_colours(transcript)
    panes, rows = _grid(transcript)
    title = "Transcript"
    if transcript.header is not None:
        title = f"Transcript {transcript.header.session_id} · {transcript.header.profile.get('name') or ''}"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{HTML_STYLE}{colours.css}</style></head><body>",
        f"<h1>{esc(title)}</h1>{colours.legend}<dl>",
    ]
    out += [f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in _header_lines(transcript)]
    out.append('</dl><table><thead><tr><th class="prompt">prompt</th>')
    out += [f"<th>{esc(p)}</th>" for p in panes]
    out.append("</tr></thead><tbody>")
    for _, records in rows:
        prompt, what = _row_title(records)
        turn_notes = _turn_notes(transcript, records)
        out.append(
            f'<tr><th class="prompt" scope="row"><span class="what">{esc(what)}</span>'
            f'<pre class="text">{esc(prompt)}</pre>'
            + (f'<div class="notes">{esc(turn_notes)}</div>' if turn_notes else "")
            + "</th>"
        )
        for pane in panes:
            mine = _cell_records(records, pane)
            status = mine[0].status if mine else ""
            out.append(f'<td class="{esc(status)}">')
            for r in mine:
                if r.prompt != prompt:
                    out.append(f'<div class="own-prompt">prompt: {esc(r.prompt)}</div>')
                if len(mine) > 1:
                    out.append(f'<span class="sample">sample {r.sample + 1}</span>')
                out.append(colours.answer(r) or f'<pre class="answer">{esc(r.text)}</pre>')
                notes = _status_notes(r, metrics, scores)
                if notes:
                    out.append(f'<div class="notes">{esc(notes)}</div>')
            out.append("</td>")
        out.append("</tr>")
    out.append("</tbody></table></body></html>")
    return "\n".join(out) + "\n"
