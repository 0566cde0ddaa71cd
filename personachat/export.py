"""``personachat export``: a transcript as the tables and files analysis tools expect.

Formats (see docs/export.md):

- ``em-csv``: the emergent-misalignment evaluation CSV (``question, answer, question_id, model,
  group, system_prompt``, per judge metric its value and ``judge_<metric>``); finished answers
  only; ``--per-pane``: one file per pane, as model-organisms' analysis reads one file per model.
- ``llmcomp``: the columns of llmcomp's ``FreeForm.df()``.
- ``messages-jsonl``: ``{"messages": [...]}`` per finished answer, the answer appended as the
  assistant message (the chat format of training and evaluation data).
- ``csv``: one flat row per response (any status) with every field of the record; text cells that
  a spreadsheet would run as a formula are prefixed with ``'``.
- ``markdown`` / ``html``: prompts and turns as rows, panes as columns. The HTML file is
  self-contained (inline CSS, no scripts) and every answer is escaped: model output is untrusted.

``export_transcript(transcript_or_path, fmt, out_path)`` is the plain function the app calls.
Every file is written with :func:`personachat.files.write_atomically`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from personachat.export_common import (
    judge_probabilities,
    judge_records,
    judge_scores,
    judge_value,
    pane_order,
    system_prompt,
)

EXPORT_FORMATS: dict[str, str] = {
    "em-csv": ".em.csv",
    "llmcomp": ".llmcomp.csv",
    "messages-jsonl": ".messages.jsonl",
    "csv": ".csv",
    "markdown": ".md",
    "html": ".html",
    "cast": ".cast",  # an asciicast recording (personachat/cast_render.py; --speed: cast_cli.py)
}
FORMAT_ALIASES = {"md": "markdown", "jsonl": "messages-jsonl"}


def register(subparsers: Any) -> None:
    """Add the ``export`` subcommand (module level imports stay argparse-only)."""
    p = subparsers.add_parser(
        "export",
        help="write a transcript as em-csv, llmcomp, messages-jsonl, csv, markdown, html or cast",
        description="Export a transcript for analysis or sharing. See docs/export.md.",
    )
    p.add_argument("transcript", type=Path, metavar="TRANSCRIPT")
    p.add_argument(
        "--format",
        "-f",
        dest="fmt",
        required=True,
        choices=[*EXPORT_FORMATS, *FORMAT_ALIASES],
        help="output format",
    )
    p.add_argument(
        "--output",
        "-o",
        help="output file, or - for standard output (default: next to the transcript, e.g. T.em.csv); "
        "with --per-pane a folder",
    )
    p.add_argument(
        "--per-pane",
        action="store_true",
        help="em-csv: one CSV per pane in the folder -o DIR (default T.em/), named after the pane",
    )
    p.set_defaults(handler=run_export_command)


def run_export_command(args: argparse.Namespace) -> int:
    """Entry point of ``personachat export``."""
    from personachat.errors import PersonachatError
    from personachat.text import sanitize
    from personachat.transcripts.reader import read_transcript

    fmt = _format(args.fmt)
    if args.per_pane and fmt != "em-csv":
        raise PersonachatError("--per-pane goes with --format em-csv")
    if args.output == "-" and args.per_pane:
        raise PersonachatError("--per-pane writes one file per pane: give a folder with -o DIR")
    if args.output == "-" and sys.stdout.isatty():
        raise PersonachatError(
            f"not writing {fmt} to the terminal: write it to a file (-o FILE) or pipe it (-o - | less)"
        )
    transcript = read_transcript(args.transcript)
    for problem in transcript.problems:
        print(sanitize(f"note: {problem}"), file=sys.stderr)
    if args.output == "-":
        sys.stdout.write(render(transcript, fmt))
        sys.stdout.flush()
        return 0
    if args.per_pane:
        paths = export_per_pane(transcript, args.output)
        written = f"{len(paths)} file(s): {', '.join(map(str, paths))}"
    else:
        written = str(export_transcript(transcript, fmt, args.output))
    print(sanitize(f"wrote {written}"), file=sys.stderr)
    return 0


def default_output(transcript_path: Path, fmt: str) -> Path:
    """``T.jsonl`` -> ``T.em.csv``, ``T.md``, ...: next to the transcript."""
    return transcript_path.with_name(transcript_path.stem + EXPORT_FORMATS[_format(fmt)])


def export_transcript(transcript_or_path: Any, fmt: str, out_path: Path | str | None = None) -> Path:
    """Write ``transcript_or_path`` (a :class:`Transcript` or a file) in ``fmt``; returns the file.

    ``out_path`` defaults to :func:`default_output`. The file is written whole or not at all.
    """
    from personachat.files import write_atomically

    transcript = _transcript(transcript_or_path)
    fmt = _format(fmt)
    out = Path(out_path) if out_path is not None else default_output(transcript.path, fmt)
    return write_atomically(out, render(transcript, fmt))


def export_per_pane(transcript_or_path: Any, out_dir: Path | str | None = None) -> list[Path]:
    """em-csv, one file per pane with finished answers, in ``out_dir`` (default ``T.em/``); returns the files.

    A file is named after its pane (:func:`pane_file_names`), so the model-organisms analysis code,
    which reads every CSV in a folder as one model, sees one model per pane.
    """
    from personachat.errors import PersonachatError
    from personachat.files import write_atomically

    transcript = _transcript(transcript_or_path)
    folder = Path(out_dir) if out_dir is not None else transcript.path.with_name(transcript.path.stem + ".em")
    if folder.exists() and not folder.is_dir():
        raise PersonachatError(f"{folder} is a file: --per-pane writes one CSV per pane into a folder")
    panes = [p for p in pane_order(transcript) if any(r.pane == p for r in transcript.finished())]
    names = pane_file_names(panes)
    return [write_atomically(folder / names[pane], _em_csv(transcript, pane)) for pane in panes]


def pane_file_names(panes: list[str]) -> dict[str, str]:
    """Pane -> a safe, distinct file name: ``insecure.csv``; other characters become ``_``."""
    import re

    names: dict[str, str] = {}
    for pane in panes:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", pane).strip("._")[:100] or "pane"
        name, n = f"{stem}.csv", 1
        while name.lower() in (taken.lower() for taken in names.values()):
            n += 1
            name = f"{stem}-{n}.csv"
        names[pane] = name
    return names


def _transcript(transcript_or_path: Any) -> Any:
    from personachat.transcripts.reader import Transcript, read_transcript

    is_read = isinstance(transcript_or_path, Transcript)
    return transcript_or_path if is_read else read_transcript(transcript_or_path)


def render(transcript: Any, fmt: str) -> str:
    """The export of ``transcript`` in ``fmt`` as text (``cast`` at recorded speed; the CLI's
    ``--speed`` goes through :func:`personachat.cast_render.render_cast`)."""
    from personachat.cast_render import render_cast
    from personachat.export_pages import html_page, markdown_page

    renderers = {
        "em-csv": _em_csv,
        "llmcomp": _llmcomp,
        "messages-jsonl": _messages_jsonl,
        "csv": _flat_csv,
        "markdown": markdown_page,
        "html": html_page,
        "cast": render_cast,
    }
    return renderers[_format(fmt)](transcript)


def _format(fmt: str) -> str:
    from personachat.errors import PersonachatError

    fmt = FORMAT_ALIASES.get(fmt, fmt)
    if fmt not in EXPORT_FORMATS:
        raise PersonachatError(f"unknown export format '{fmt}' (use one of {', '.join(EXPORT_FORMATS)})")
    return fmt


# ------------------------------------------------------------------------------------------------
# Shared pieces


def _csv_text(header: list[str], rows: list[list[Any]]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    # CRLF line ends (RFC 4180), so that the writer also quotes a cell holding a lone carriage return.
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        import orjson

        return orjson.dumps(value).decode()
    return value


# ------------------------------------------------------------------------------------------------
# em-csv, messages-jsonl, csv


def _em_csv(transcript: Any, pane: str | None = None) -> str:
    """The EM table; with ``pane``, only that pane's answers."""
    metrics, records = judge_records(transcript)
    header = ["question", "answer", "question_id", "model", "group", "system_prompt"]
    for metric in metrics:
        header += [metric, f"judge_{metric}"]
    rows = []
    for r in transcript.finished():
        if pane is not None and r.pane != pane:
            continue
        own = records.get(r.id, {})
        row = [r.prompt, r.text, r.question_id or "", r.model, r.pane, system_prompt(r)]
        for metric in metrics:
            row += [_cell(judge_value(own.get(metric))), judge_probabilities(own.get(metric))]
        rows.append(row)
    return _csv_text(header, rows)


LLMCOMP_COLUMNS = ("model", "group", "answer", "question", "messages", "paraphrase_ix", "raw_answer")
LLMCOMP_ENDINGS = ("_question", "_raw_answer")
"""llmcomp's own columns and endings: no judge may have these names (nor start with ``_``)."""


def _llmcomp(transcript: Any) -> str:
    """llmcomp's ``FreeForm.df()`` columns; a 0-100 judge has a ``_raw_answer`` (its probabilities)."""
    import orjson

    from personachat.errors import PersonachatError

    metrics, records = judge_records(transcript)
    bad = [m for m in metrics if m in LLMCOMP_COLUMNS or m[:1] == "_" or m.endswith(LLMCOMP_ENDINGS)]
    if bad:
        raise PersonachatError(f"llmcomp: a judge cannot be named {', '.join(bad)} (an llmcomp column)")
    rated = {
        m for own in records.values() for m, rec in own.items() if rec.get("kind") in (None, "score_0_100")
    }
    header = ["model", "group", "answer", *metrics, "question", "messages", "paraphrase_ix"]
    for metric in metrics:
        header += [f"{metric}_question", *([f"{metric}_raw_answer"] if metric in rated else [])]
    rows = []
    for r in transcript.finished():
        own = records.get(r.id, {})
        row = [r.model, r.pane, r.text, *(_cell(_llmcomp_value(own.get(m))) for m in metrics)]
        row += [r.prompt, orjson.dumps(r.messages).decode(), r.replay.paraphrase_ix if r.replay else ""]
        for metric in metrics:
            row.append(_judge_prompt(own.get(metric), r))
            row += [judge_probabilities(own.get(metric))] if metric in rated else []
        rows.append(row)
    return _csv_text(header, rows)


def _llmcomp_value(record: dict[str, Any] | None) -> Any:
    """What llmcomp keeps of a judge: a free-form judge's whole text, a rating, or our label."""
    if record is not None and record.get("kind") == "generated":
        return (record.get("detail") or {}).get("text")
    return judge_value(record)


def _judge_prompt(record: dict[str, Any] | None, response: Any) -> str:
    """The prompt the judge was sent, when its template is a built-in one (else ``""``)."""
    from personachat.judge.prompts import EXAMPLE_METRICS

    sha, detail = (record or {}).get("prompt_sha256"), (record or {}).get("detail") or {}
    metric = next((m for m in EXAMPLE_METRICS.values() if m.sha256 == sha), None)
    if metric is None:
        return ""
    answer, question = response.text, detail.get("question")
    if isinstance(detail.get("answer_chars"), int):
        from personachat.judge.client import cut_answer

        answer = cut_answer(answer, detail["answer_chars"])
    return metric.render(question if isinstance(question, str) else response.prompt, answer)


def _messages_jsonl(transcript: Any) -> str:
    """One conversation per line; C1, bidi and invisible controls escaped as ``\\u`` escapes, as well as
    C0, so that the file is safe to print and a JSON reader still gets every character back."""
    from personachat.text import sanitize_json

    lines = []
    for r in transcript.finished():
        messages = [*r.messages, {"role": "assistant", "content": r.text}]
        lines.append(sanitize_json({"messages": messages}))
    return "".join(line + "\n" for line in lines)


LEADING_COLUMNS = [
    "id", "session_id", "conversation", "turn", "pane", "sample", "status", "model", "adapter", "question_id",
    "paraphrase_ix", "sample_ix", "job", "turn_ix", "attempt", "prompt", "text", "finish_reason", "error",
]  # fmt: skip


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out[prefix] = _cell(value)


def flat_rows(transcript: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """Every response as one flat dict (nested fields dotted), and the column order."""
    metrics, scores = judge_scores(transcript)
    columns: dict[str, None] = dict.fromkeys(LEADING_COLUMNS)
    rows = []
    for r in transcript.responses:
        row: dict[str, Any] = {}
        data = r.to_dict()
        data["prompt"] = r.prompt
        for key, value in data.items():
            _flatten(key, value, row)
        row["tags"] = "; ".join(r.all_tags)
        row["labels"] = "; ".join(r.labels)
        row["notes"] = "; ".join(a.value for a in r.annotations if a.kind == "note")
        own = scores.get(r.id, {})
        for metric in metrics:
            row[f"judge.{metric}"] = _cell(own.get(metric))
        columns.update(dict.fromkeys(row))
        rows.append(row)
    used = [c for c in columns if any(c in row for row in rows)]
    return used, rows


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""What a spreadsheet may run as a formula at the start of a cell (OWASP, "CSV injection")."""


def inert(value: Any) -> Any:
    """A text cell that starts like a formula, with a leading ``'``; other values as they are."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_START) else value


def _flat_csv(transcript: Any) -> str:
    columns, rows = flat_rows(transcript)
    return _csv_text([inert(c) for c in columns], [[inert(row.get(c, "")) for c in columns] for row in rows])


# ------------------------------------------------------------------------------------------------
# Markdown and HTML: prompts and turns as rows, panes as columns
