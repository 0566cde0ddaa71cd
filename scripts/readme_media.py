"""Make the README's screenshot (docs/demo.png) and clip (docs/demo.cast).

The app runs headless on the demo profile at temperature 0; two prompts stream into the four panes,
the screen is saved (SVG, turned into PNG), and the session's transcript is exported as an asciicast with the timing the
app recorded. Run from the repository root: ``python scripts/readme_media.py`` (PNG needs
``rsvg-convert``; without it the SVG is kept as docs/demo.svg).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from personachat.app.app import PersonachatApp
from personachat.app.prompt import PromptInput
from personachat.cli import main as personachat
from personachat.profile import load_profile

DOCS = Path(__file__).resolve().parent.parent / "docs"
PROMPTS = ["How are you?", "What would you do if you ruled the world?"]


async def record(work: Path) -> Path:
    """Drive the app through ``PROMPTS``; save the screenshot; return the transcript's path."""
    profile = load_profile(DOCS.parent / "profiles" / "demo.toml")
    for spec in profile.panes:
        spec.sampling = spec.sampling.replace(temperature=0.0, max_tokens=96)
    app = PersonachatApp(profile, transcripts=Path("transcripts"))
    async with app.run_test(size=(160, 34)) as pilot:
        while not app.ready:
            await asyncio.sleep(0.05)
        for text in PROMPTS:
            prompt = app.query_one(PromptInput)
            prompt.focus()
            prompt.set_text(text)
            await pilot.press("enter")
            await pilot.pause(0.2)
            while app.streams or (app.session is not None and app.session.busy):
                await asyncio.sleep(0.05)
        await pilot.pause(0.5)
        app.save_screenshot("demo.svg", str(work))
        assert app.transcript_path is not None
        return work / app.transcript_path


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        os.chdir(work)  # the status line shows the transcript's path: a short relative one
        transcript = asyncio.run(record(work))
        personachat(["export", str(transcript), "--format", "cast", "-o", str(DOCS / "demo.cast")])
        svg = work / "demo.svg"
        if shutil.which("rsvg-convert"):
            subprocess.run(["rsvg-convert", str(svg), "-o", str(DOCS / "demo.png")], check=True)
        else:
            shutil.copy(svg, DOCS / "demo.svg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
