"""User-facing error types: each says where the problem is and what to do about it.

They are raised anywhere below the CLI and the app, and caught at those edges, which print
the message without a traceback. Programming errors are never wrapped in these.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


class PersonachatError(Exception):
    """Base of every error a user can cause and fix."""


@dataclass
class Problem:
    """One precise problem in a file: where it is and what is wrong."""

    file: Path | str
    message: str
    key: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = str(self.file)
        if self.line is not None:
            where += f":{self.line}"
        if self.key:
            where += f": {self.key}"
        return f"{where}: {self.message}"


class ProblemsError(PersonachatError):
    """One or more problems found in a file; all are reported together."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class ProfileError(ProblemsError):
    """A profile (TOML) is malformed or inconsistent."""


class PromptSetError(ProblemsError):
    """A prompt set file is malformed."""


class TranscriptError(PersonachatError):
    """A transcript cannot be read or written."""


class ServerError(PersonachatError):
    """A model server could not be started, reached or used."""


MODEL_MISSING = "model-missing"  # a 404 for the model: not loaded yet, or not served at all
RETRY_STATUSES = frozenset({408, 409, 425, 429})  # and every 5xx


class BackendError(PersonachatError):
    """A request to a model failed; the message is shown in the pane."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        kind: str | None = None,
        attempts: list[dict[str, Any]] | None = None,
    ):
        self.status = status
        self.kind = kind
        self.attempts = attempts or []  # the failed attempts before giving up (see RetryBudget)
        super().__init__(message)

    @property
    def transient(self) -> bool:
        """Whether the same request may succeed later: the server was unreachable or lost the
        connection, is overloaded (5xx, 408, 409, 425, 429), or does not serve the model yet."""
        if self.status is None:
            return self.kind in ("unreachable", "lost")
        return self.status >= 500 or self.status in RETRY_STATUSES or self.kind == MODEL_MISSING
