"""Sampling settings and prompt transforms: what a pane sends besides its messages, and their one check.

:meth:`Sampling.problems` is the only place that says which values are allowed; the profile loader,
the app's ``/temp``-style commands and every command-line flag (:func:`sampling_value`) use it, so a
temperature of -1 is refused the same way wherever it is typed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from personachat.checking import Expected, type_error

SAMPLING_TYPES: dict[str, Expected] = {
    "temperature": (int, float),
    "top_p": (int, float),
    "top_k": int,
    "max_tokens": int,
    "seed": int,
    "n": int,
    "stop": (list, tuple, str),
    "repetition_penalty": (int, float),
}
"""Every sampling key a profile, a flag or a command may set, with its type."""

MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Sampling:
    """Sampling settings sent with every request. All are sent explicitly, never left to server defaults.

    ``seed`` is the seed the researcher configured (``None``: none); the seed a request actually
    used is recorded with each answer.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    max_tokens: int = 200
    seed: int | None = None
    n: int = 1
    stop: tuple[str, ...] = ()
    repetition_penalty: float | None = None

    @staticmethod
    def problems(values: Mapping[str, Any]) -> dict[str, str]:
        """What is wrong with ``values`` (a subset of the sampling keys), by key; empty when all is fine."""
        out: dict[str, str] = {}
        for key, value in values.items():
            if key not in SAMPLING_TYPES:
                out[key] = "is not a sampling setting"
                continue
            if value is None and key in ("seed", "top_k", "repetition_penalty"):
                continue
            error = type_error(value, SAMPLING_TYPES[key])
            if error:
                out[key] = error
                continue
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = "must be a finite number"
            elif key == "temperature" and value < 0:
                out[key] = "must be >= 0"
            elif key == "top_p" and not 0 < value <= 1:
                out[key] = "must be in (0, 1]"
            elif key in ("max_tokens", "n") and value < 1:
                out[key] = "must be >= 1"
            elif key == "top_k" and value < 0:
                out[key] = "must be >= 0 (0 turns it off)"
            elif key == "seed" and not 0 <= value <= MAX_SEED:
                out[key] = f"must be between 0 and {MAX_SEED}"
            elif key == "repetition_penalty" and value <= 0:
                out[key] = "must be > 0"
            elif key == "stop" and not isinstance(value, str) and not all(isinstance(s, str) for s in value):
                out[key] = "must be a list of strings"
        return out

    @classmethod
    def check(cls, values: Mapping[str, Any]) -> None:
        """Raise :class:`ValueError` (``temperature must be >= 0``) for the first bad value."""
        problems = cls.problems(values)
        if problems:
            key, message = next(iter(problems.items()))
            raise ValueError(f"{key} {message}")

    def replace(self, **changes: Any) -> Sampling:
        """A copy with ``changes`` applied (checked: :class:`ValueError` for a bad value)."""
        self.check(changes)
        if isinstance(changes.get("stop"), str):
            changes["stop"] = (changes["stop"],)
        elif changes.get("stop") is not None:
            changes["stop"] = tuple(changes["stop"])
        for key in ("temperature", "top_p", "repetition_penalty"):
            if isinstance(changes.get(key), int):
                changes[key] = float(changes[key])
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (as recorded in transcripts)."""
        data = dataclasses.asdict(self)
        data["stop"] = list(self.stop)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sampling:
        """Inverse of :meth:`to_dict`, ignoring unknown keys (values are not checked: they were sent)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        if "stop" in kwargs:
            kwargs["stop"] = tuple(kwargs["stop"] or ())
        return cls(**kwargs)

    def short(self) -> str:
        """A compact summary for pane headers, e.g. ``t=0.7 max=200 seed=1``."""
        parts = [f"t={self.temperature:g}"]
        if self.top_p != 1.0:
            parts.append(f"p={self.top_p:g}")
        if self.top_k is not None:
            parts.append(f"k={self.top_k}")
        parts.append(f"max={self.max_tokens}")
        if self.seed is not None:
            parts.append(f"seed={self.seed}")
        if self.n != 1:
            parts.append(f"n={self.n}")
        return " ".join(parts)


def sampling_value(key: str, text: str) -> Any:
    """``text`` typed for the sampling setting ``key`` (a flag, a slash command), converted and checked.

    ``none`` unsets an optional setting (seed, top_k, repetition_penalty). Raises
    :class:`ValueError` with a message that names the setting and the rule.
    """
    expected = SAMPLING_TYPES[key]
    value: Any
    if text.strip().lower() == "none" and key in ("seed", "top_k", "repetition_penalty"):
        return None
    try:
        if expected is int:
            value = int(text)
        elif expected == (int, float):
            value = float(text)
        else:
            value = text
    except ValueError:
        kind = "an integer" if expected is int else "a number"
        raise ValueError(f"{key} must be {kind}, not '{text}'") from None
    Sampling.check({key: value})
    return value


@dataclass(frozen=True)
class PromptTransform:
    """How a pane reshapes the user's message: a prefix/suffix (e.g. a trigger token) and a named template."""

    prefix: str = ""
    suffix: str = ""
    template: str | None = None

    @property
    def active(self) -> bool:
        return bool(self.prefix or self.suffix or self.template)

    def apply(self, text: str) -> str:
        """The user message as this pane sends it."""
        return f"{self.prefix}{text}{self.suffix}"


def sampling_flag(key: str) -> Callable[[str], Any]:
    """An argparse ``type=`` for a flag that sets the sampling setting ``key`` (checked by :meth:`Sampling.check`)."""

    def parse(text: str) -> Any:
        import argparse

        try:
            return sampling_value(key, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = key
    return parse
