"""Results CSVs of the field (emergent-misalignment, model-organisms-for-EM) as report rows.

Two layouts are read (docs/judge.md, "Results CSVs"):

- EM: ``question_id, question, answer, aligned, coherent``, optionally ``model`` and ``group``
  (the released results also have ``judge_aligned``, ``judge_coherent``, ``coherent_binary``);
- model-organisms: one CSV per model with ``response`` instead of ``answer``, and maybe more metric
  columns (``bad_stuff``, ``medical``, ...).

Each distinct ``model`` value is a group (as a pane is); a file without a ``model`` column is one
group named after its file stem. Score cells are coerced to numbers as ``pd.to_numeric(...,
errors="coerce")`` does: an empty or non-numeric cell is no score. :func:`source_kind` tells such
a file from a transcript, or says in one line why the file is neither.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from personachat.errors import PersonachatError
from personachat.judge.aggregate import ScoredRow
from personachat.text import sanitize

SourceKind = Literal["transcript", "results-csv"]
NEITHER = "not a transcript (JSONL) nor a results CSV (needs question_id and aligned/coherent columns)"
SCORE_COLUMNS = ("aligned", "coherent")
TEXT_COLUMNS = frozenset(
    {
        "model",
        "group",
        "question",
        "question_text",
        "question_id",
        "answer",
        "response",
        "prompt",
        "system_prompt",
        "messages",
        "paraphrase_ix",
        "sample_ix",
        "coherent_binary",
        "stop_reason",
        "score_info",
    }
)
"""Columns that are never metrics, besides ``judge_*``, ``*_question`` and ``*_raw_answer``."""


@dataclass
class ResultsCsv:
    """One results CSV read as report rows.

    ``layout``: ``"em"`` (an ``answer`` column) or ``"model-organisms"`` (``response``);
    ``questions``: question key -> its text, in order of first appearance; ``question_ids``: each
    row's own id (none where the cell is empty), aligned with ``rows``.
    """

    path: Path
    layout: str
    rows: list[ScoredRow]
    question_ids: list[str | None]
    groups: list[str]
    questions: dict[str, str]
    metrics: list[str]
    warnings: list[str] = field(default_factory=list)


def _neither(path: Path, why: str = "") -> PersonachatError:
    return PersonachatError(f"{path}: {NEITHER}" + (f"; {why}" if why else ""))


def _one_line(text: str, width: int = 80) -> str:
    line = sanitize(" ".join(text.split()))
    return line if len(line) <= width else line[: width - 1] + "…"


def source_kind(path: Path) -> SourceKind:
    """``"transcript"`` when the first non-blank line is a JSON object, ``"results-csv"`` when the
    file is a CSV with a ``question_id`` and an ``aligned`` or ``coherent`` column; otherwise
    :class:`PersonachatError` with one line saying so (also for a missing file or a folder)."""
    if path.is_dir():
        raise PersonachatError(f"{path} is a folder: give transcripts or results CSVs")
    if not path.exists():
        raise PersonachatError(f"not found: {path}")
    try:
        with open(path, "rb") as handle:
            first = next((line for line in handle if line.strip()), b"")
    except OSError as exc:
        raise PersonachatError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not first:
        raise _neither(path, "the file is empty")
    if first.lstrip().startswith(b"{"):
        return "transcript"
    _check_header(path, _read(path, first_line_only=True)[0])
    return "results-csv"


def _read(path: Path, *, first_line_only: bool = False) -> tuple[list[str], list[dict[str, str]]]:
    """The header (names stripped) and the rows as dicts; raises for a file that is not CSV text."""
    header: list[str] = []
    rows: list[dict[str, str]] = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = [name.strip() for name in next(reader, [])]
            if first_line_only:
                return header, rows
            for cells in reader:
                if any(cell.strip() for cell in cells):
                    rows.append(dict(zip(header, cells, strict=False)))
    except UnicodeDecodeError:
        raise _neither(path, "it is not UTF-8 text") from None
    except OSError as exc:
        raise PersonachatError(f"cannot read {path}: {exc.strerror or exc}") from None
    except csv.Error as exc:
        if not header:
            raise _neither(path, str(exc)) from None
        raise PersonachatError(f"{path}: line {reader.line_num}: {exc}") from None
    return header, rows


def _check_header(path: Path, header: list[str]) -> None:
    if "question_id" in header and any(c in header for c in SCORE_COLUMNS):
        return
    what = "no question_id column" if "question_id" not in header else "no aligned or coherent column"
    raise _neither(path, f"{what} in its first line ({_one_line(','.join(header))})")


def number(cell: str | None) -> float | None:
    """A score cell as a number: none when empty or not a number (as ``pd.to_numeric(errors="coerce")``)."""
    text = (cell or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) else value


def _is_metric(name: str) -> bool:
    return bool(name) and not (
        name in TEXT_COLUMNS
        or name in SCORE_COLUMNS
        or name.startswith("judge_")
        or name.endswith(("_question", "_raw_answer"))
    )


def read_results_csv(path: Path) -> ResultsCsv:
    """Read a results CSV (see the module doc); raises :class:`PersonachatError` for a file that is not one."""
    path = Path(path)
    header, table = _read(path)
    _check_header(path, header)
    layout = "model-organisms" if "response" in header and "answer" not in header else "em"
    # Other columns are metrics when every non-empty cell is a number (so text columns are not).
    not_numbers = {
        name: [c for c in (line.get(name, "").strip() for line in table) if c and number(c) is None]
        for name in header
        if name in SCORE_COLUMNS or _is_metric(name)
    }
    metrics = [
        name
        for name in header
        if _is_metric(name)
        and not not_numbers[name]
        and any(number(line.get(name)) is not None for line in table)
    ]
    result = ResultsCsv(path, layout, [], [], [], {}, metrics)
    for name in SCORE_COLUMNS:
        bad = not_numbers.get(name)
        if bad:
            result.warnings.append(
                f"{path}: {len(bad)} {name} cell(s) are not numbers (e.g. {_one_line(bad[0], 20)!r}): no score"
            )
    for line in table:
        group = line.get("model", "").strip() or path.stem
        question_id = line.get("question_id", "").strip() or None
        question = line.get("question") or line.get("question_text") or ""
        key = question_id if question_id is not None else question
        if group not in result.groups:
            result.groups.append(group)
        result.questions.setdefault(key, question)
        result.question_ids.append(question_id)
        result.rows.append(
            ScoredRow(
                group=group,
                question_id=key,
                aligned=number(line.get("aligned")),
                coherent=number(line.get("coherent")),
                scores={m: number(line.get(m)) for m in metrics},
                question=question,
            )
        )
    return result
