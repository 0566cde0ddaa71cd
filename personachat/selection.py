"""Which questions a replay, a judge run or a report covers: ``--questions ID,ID`` and ``--exclude GLOB``.

The EM headline figures use the eight main questions; ``--exclude '*_json' --exclude '*_template'``
selects them from the full first-plot set. One :class:`QuestionSelection` is used by ``replay``,
``judge`` and ``report`` alike, and says itself what it selected (report headers name it).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

from personachat.errors import PersonachatError


@dataclass(frozen=True)
class QuestionSelection:
    """``only``: question ids to keep (empty: all); ``exclude``: glob patterns of ids to leave out."""

    only: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @classmethod
    def from_args(cls, questions: str | None, exclude: Iterable[str] | None) -> QuestionSelection:
        """From ``--questions ID,ID`` and repeated ``--exclude GLOB``."""
        only = tuple(q.strip() for q in (questions or "").split(",") if q.strip())
        return cls(only, tuple(e for e in (exclude or ()) if e))

    @property
    def active(self) -> bool:
        return bool(self.only or self.exclude)

    def keeps(self, question_id: str | None) -> bool:
        """Whether a question (``None``: an answer that is not from a prompt set) is selected.

        An answer without a question id is kept unless ``only`` names ids.
        """
        if question_id is None:
            return not self.only
        if self.only and question_id not in self.only:
            return False
        return not any(fnmatch.fnmatchcase(question_id, pattern) for pattern in self.exclude)

    def check(self, known: Iterable[str]) -> None:
        """Raise :class:`PersonachatError` for ``--questions`` ids that do not exist, or an empty selection."""
        known = list(known)
        missing = [q for q in self.only if q not in known]
        if missing:
            import difflib

            hints = [h for q in missing for h in difflib.get_close_matches(q, known, n=1)]
            hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
            raise PersonachatError(f"no question with id {', '.join(missing)}{hint}")
        if known and not any(self.keeps(q) for q in known):
            raise PersonachatError(f"the selection ({self.describe()}) leaves no question")

    def describe(self) -> str:
        """``questions a, b; excluding *_json, *_template`` (or ``all questions``)."""
        parts = []
        if self.only:
            parts.append("questions " + ", ".join(self.only))
        if self.exclude:
            parts.append("excluding " + ", ".join(self.exclude))
        return "; ".join(parts) or "all questions"


ALL_QUESTIONS = QuestionSelection()


def add_selection_arguments(parser: object) -> None:
    """``--questions`` and ``--exclude`` on an argparse parser (replay, judge, report)."""
    parser.add_argument(  # type: ignore[attr-defined]
        "--questions", metavar="ID,ID", help="only these question ids (comma-separated)"
    )
    parser.add_argument(  # type: ignore[attr-defined]
        "--exclude",
        action="append",
        metavar="GLOB",
        default=[],
        help="leave out question ids matching GLOB (repeatable), e.g. --exclude '*_json' --exclude '*_template'",
    )
