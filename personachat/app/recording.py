"""``/record``: the app's screen as it is drawn, recorded into an asciicast v2 file next to the transcript.

Up to :attr:`ScreenRecorder.FPS` times a second the recorder takes what Textual has composed for
the whole screen (every row with its colours, the same thing ``save_screenshot`` turns into SVG)
and writes the rows that changed (personachat/cast.py); nothing is written while the screen stands
still. It records the same way in a terminal, in the browser (``personachat web``) and headless.
The recorder is a hidden widget on the app's first screen, so a recording ends, and its file is
closed, when the app does; every line of the file is complete as soon as it is written.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, ClassVar

from rich.color import ColorSystem
from rich.segment import Segment
from rich.style import Style
from textual._context import visible_screen_stack
from textual.timer import Timer
from textual.widget import Widget

from personachat.app.slash import CommandError
from personachat.cast import CastWriter, Row, text_cells
from personachat.paths import unique_path

if TYPE_CHECKING:
    from personachat.app.app import PersonachatApp


class ScreenRecorder(Widget):
    """A recording in progress: writes the screen to ``handle`` while it is mounted."""

    FPS: ClassVar[int] = 15
    """Captures per second at most (each costs a few milliseconds at 120x36)."""

    def __init__(self, path: Path, handle: IO[str], title: str) -> None:
        super().__init__()
        self.display = False
        self.path = path
        self._handle: IO[str] | None = handle
        self._title = title
        self._writer: CastWriter | None = None
        self._timer: Timer | None = None
        self._started = 0.0
        self._keys: list[tuple[Segment, ...]] = []  # the segments each row was last made from
        self._rows: list[Row] = []
        self._styles: dict[Style | None, str] = {}

    @property
    def duration(self) -> float:
        """Seconds recorded so far."""
        return self._writer.time if self._writer is not None else 0.0

    def on_mount(self) -> None:
        width, height = self.app.size
        assert self._handle is not None
        self._writer = CastWriter(
            self._handle.write, width, height, title=self._title, timestamp=int(time.time())
        )
        self._started = time.monotonic()
        self.capture()
        self._timer = self.app.set_interval(1 / self.FPS, self.capture, name="record")

    def on_unmount(self) -> None:
        self._close()

    def stop(self) -> None:
        """Take the last frame, close the file and leave the screen."""
        self.capture()
        self._close()
        self.remove()

    def capture(self) -> None:
        """Write what changed on the screen since the last capture."""
        writer, handle = self._writer, self._handle
        if writer is None or handle is None:
            return
        now = time.monotonic() - self._started
        width, height = self.app.size
        if (width, height) != (writer.width, writer.height):
            writer.resize(now, width, height)
            self._keys, self._rows = [], []
        try:
            if writer.frame(now, self._screen_rows()):
                handle.flush()
        except OSError as exc:  # a full disk, a folder gone: the app goes on, the recording ends
            self._close()
            self.remove()
            self.app.notify(f"recording stopped: {exc.strerror or exc}", severity="error", markup=False)

    def _screen_rows(self) -> list[Row]:
        # The screen as Textual composes it for a terminal: Screen._compositor is what
        # App.export_screenshot reads too, and render_strips leaves the app's own pending updates
        # alone; the screens a modal one lets show through are drawn as the app draws them.
        # A row is made again only when its segments changed.
        token = visible_screen_stack.set(self.app._background_screens)
        try:
            strips = self.app.screen._compositor.render_strips()
        finally:
            visible_screen_stack.reset(token)
        keys: list[tuple[Segment, ...]] = []
        rows: list[Row] = []
        for y, strip in enumerate(strips):
            segments = tuple(strip)
            if y < len(self._keys) and self._keys[y] == segments:
                rows.append(self._rows[y])
            else:
                rows.append(
                    [
                        cell
                        for s in segments
                        if not s.control
                        for cell in text_cells(s.text, self._sgr(s.style))
                    ]
                )
            keys.append(segments)
        self._keys, self._rows = keys, rows
        return rows

    def _sgr(self, style: Style | None) -> str:
        code = self._styles.get(style)
        if code is None:
            code = ""
            if style is not None:
                # legacy_windows leaves out hyperlinks: only the colours and attributes remain.
                ansi = style.render("x", color_system=ColorSystem.TRUECOLOR, legacy_windows=True)
                code = ansi[2 : ansi.index("m")] if ansi.startswith("\x1b[") else ""
            self._styles[style] = code
        return code

    def _close(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        handle, self._handle = self._handle, None
        if handle is not None:
            with contextlib.suppress(OSError):
                if self._writer is not None:
                    self._writer.end(time.monotonic() - self._started)
            with contextlib.suppress(OSError):
                handle.close()


def recorder(app: PersonachatApp) -> ScreenRecorder | None:
    """The recording in progress, if any."""
    found = [r for screen in app.screen_stack for r in screen.query(ScreenRecorder)]
    return found[0] if found else None


def toggle_recording(app: PersonachatApp) -> None:
    """``/record``: start recording the screen next to the transcript, or stop and say where it is."""
    running = recorder(app)
    if running is not None:
        running.stop()
        app.say(f"recording saved: {running.path} ({running.duration:.1f} s)")
        return
    transcript = app.transcript_path
    directory = transcript.parent if transcript else app.transcripts_dir
    stem = transcript.stem if transcript else app.profile.name
    try:
        directory.mkdir(parents=True, exist_ok=True)
        path = unique_path(directory, f"{stem}-{time.strftime('%H%M%S')}", ".cast")
        handle = path.open("x", encoding="utf-8")  # never overwrites
    except OSError as exc:
        raise CommandError(f"cannot record into {directory}: {exc.strerror or exc}") from None
    session = f" · session {app.session.session_id[:8]}" if app.session is not None else ""
    app.screen_stack[0].mount(ScreenRecorder(path, handle, f"personachat · {app.profile.name}{session}"))
    app.say(f"recording the screen to {path} · /record again stops")
