"""The terminal app (Textual). Importing this package is cheap: Textual loads when the app runs.

``run_app`` is what the CLI calls: ``personachat [--profile P]`` and ``personachat open TRANSCRIPT``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from personachat.profile import Profile

__all__ = ["run_app"]


def run_app(
    profile: Profile | None,
    *,
    transcripts: Path | None = None,
    reopen: Path | None = None,
    prompt_set: Path | None = None,
    rater: str | None = None,
) -> int:
    """Open the app on ``profile``, or on the saved session ``reopen`` (a transcript) to continue it.

    ``prompt_set`` is what a bare ``/replay`` loads (a scenario's own set); ``rater`` names whoever
    labels (default: the profile's ``rater``, else the user name).

    Raises :class:`personachat.errors.PersonachatError` for what a user can fix (no such transcript,
    no profile recorded in it); the CLI prints those.
    """
    from personachat.app.app import PersonachatApp
    from personachat.app.history import PromptHistory
    from personachat.app.keymap import binding_ids, load_keymap
    from personachat.paths import history_file, keymap_file

    saved = None
    if reopen is not None:
        from personachat.transcripts.reader import read_transcript
        from personachat.transcripts.turns import profile_of

        saved = read_transcript(reopen)
        profile = profile_of(saved)
    if profile is None:
        raise ValueError("run_app needs a profile or a transcript to reopen")
    keymap, problems = load_keymap(keymap_file(), binding_ids())
    app = PersonachatApp(
        profile,
        transcripts=transcripts,
        reopen=saved,
        history=PromptHistory(history_file()),
        keymap=keymap,
        notices=problems,
        prompt_set=prompt_set,
        rater=rater,
    )
    result = app.run()
    return 0 if result is None else result
