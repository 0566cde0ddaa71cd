"""``personachat export --format cast``: a transcript replayed as the app showed it, at the pace it
was recorded.

The screen is drawn here, not by the app run headlessly: the app's widgets time what they show by
the wall clock (the live footer figures, text batched per frame), so a replay through them would
show the exporting machine's timing. Here the clock is the transcript's, and the same transcript
always gives the same file. The layout is the app's: the top bar; one bordered pane per model with
its header (number, name, model, sampling), the prompt and the answer as they stream, and a footer
(state, tokens, TTFT, tokens/s, finish reason); the status line and the prompt box; in the app's
default theme. Panes sit side by side (two rows from five panes on).

Timing (docs/export.md): a turn's prompt stands in the prompt box for :data:`TYPING` seconds and is
sent; a pane's text then arrives in as many pieces as its stream had chunks, the first at
``timings.ttft``, each next one ``timings.itl[i]`` later, and the pane ends at ``timings.e2el``
(recorded seconds divided by ``speed``); the answers stay :data:`HOLD` seconds before the next
prompt, and after the last. A transcript keeps each chunk's time but not its text, so the text is
cut into that many pieces of nearly equal length. The footers show the recorded figures whatever
the speed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from personachat.cast import CastWriter, Row, fit, sgr, text_cells, wrap
from personachat.errors import PersonachatError
from personachat.transcripts.reader import Transcript
from personachat.transcripts.schema import ResponseRecord
from personachat.transcripts.turns import saved_turns

TYPING = 1.0
"""Seconds a turn's prompt stands in the prompt box before it is sent (not scaled by ``speed``)."""
HOLD = 2.0
"""Seconds the answers stay after a turn's last pane ends (not scaled by ``speed``)."""
FPS = 30
"""Frames per second at most: what arrives closer together is drawn in one frame."""
PLACEHOLDER = "Ask every pane… (/help for commands, Ctrl+J newline, ↑ history)"

# The app's default theme (textual-dark) as personachat.tcss uses it, as SGR parameters.
SURFACE, PANEL, BACKGROUND = "#1e1e1e", "#242f38", "#121212"
TEXT, MUTED, ACCENT, ERROR = "#e0e0e0", "#a0a3a6", "#fea62b", "#d17e92"
BORDER = sgr("#45505a", SURFACE)
ON_SURFACE, ON_PANEL, ON_BACKGROUND = sgr(bg=SURFACE), sgr(TEXT, PANEL), sgr(bg=BACKGROUND)
DIM_ON_PANEL, ERROR_ON_PANEL = sgr(MUTED, PANEL), sgr(ERROR, PANEL)
NUMBER, NAME = sgr(ACCENT, PANEL, bold=True), sgr(TEXT, PANEL, bold=True)
SYSTEM_MARK, EMPTY_SYSTEM_MARK, TRANSFORM_MARK = (
    sgr(ACCENT, reverse=True),
    sgr(PANEL, reverse=True),
    sgr("#004578", reverse=True),
)
BLOCK_STYLES = {
    "user": sgr("#ffc473", SURFACE, bold=True),
    "answer": sgr(TEXT, SURFACE),
    "note": sgr(MUTED, SURFACE, italic=True),
    "error": sgr(ERROR, SURFACE),
}
STATE_STYLES = {
    state: sgr(colour, PANEL, bold=True, reverse=True)
    for state, colour in (
        ("idle", MUTED),
        ("waiting", "#004578"),
        ("streaming", "#0178d4"),
        ("done", "#4ebf71"),
        ("cancelled", ACCENT),
        ("failed", "#b93c5b"),
    )
}
TOP_BAR, STATUS, PROMPT_RULE = sgr(ACCENT, PANEL, bold=True), sgr(MUTED, BACKGROUND), sgr(ACCENT, SURFACE)
TYPED, PLACEHOLDER_STYLE = sgr(TEXT, SURFACE), sgr("#787878", SURFACE)

# -- the timeline ----------------------------------------------------------------------------------


@dataclass
class PlayedAnswer:
    """One response record as it streamed: when each piece arrived, in recorded seconds after the send."""

    record: ResponseRecord
    arrivals: list[tuple[float, int]]  # (seconds after the send, characters shown from then on)
    end: float  # seconds after the send when it ended (e2el)


@dataclass
class Step:
    """One prompt sent to the panes: a turn, or a regeneration of one."""

    conversation: int
    turn: int
    prompt: str
    regenerated: bool
    answers: list[PlayedAnswer]
    start: float = 0.0  # when the prompt appears in the prompt box (seconds into the recording)
    length: float = 0.0  # the longest answer, in seconds of the recording

    @property
    def sent(self) -> float:
        return self.start + TYPING

    @property
    def done(self) -> float:
        return self.sent + self.length


def _seconds(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return max(float(value), 0.0)
    return None


def played(record: ResponseRecord) -> PlayedAnswer:
    """When ``record``'s text arrived: chunk ``i`` at ``ttft + sum(itl[:i])``; the end at ``e2el``.

    Without a TTFT (nothing arrived while streaming, or a record that was not streamed) the whole
    text shows at the end.
    """
    timings = record.timings if isinstance(record.timings, dict) else {}
    ttft, e2el = _seconds(timings.get("ttft")), _seconds(timings.get("e2el"))
    itl = timings.get("itl")
    gaps = itl if isinstance(itl, list) else []
    times = [ttft if ttft is not None else (e2el or 0.0)]
    if ttft is not None:
        for gap in gaps:
            times.append(times[-1] + (_seconds(gap) or 0.0))
    length = len(record.text)
    arrivals = [(at, round(length * (i + 1) / len(times))) for i, at in enumerate(times)]
    return PlayedAnswer(record, arrivals, max(e2el or 0.0, times[-1]))


def plan(transcript: Transcript, speed: float = 1.0) -> tuple[list[Step], float]:
    """The steps of the replay with their start times, and the recording's length in seconds."""
    steps: list[Step] = []
    for turn in saved_turns(transcript):
        rounds: dict[int, list[Any]] = {}
        seen: dict[str, int] = {}
        for answer in turn.answers:
            number = seen.get(answer.pane, 0)
            seen[answer.pane] = number + 1
            rounds.setdefault(number, []).append(answer)
        for number, answers in sorted(rounds.items()):
            steps.append(
                Step(
                    turn.conversation,
                    turn.turn,
                    answers[0].prompt,
                    number > 0 or answers[0].regenerated,
                    [played(record) for answer in answers for record in answer.responses],
                )
            )
    clock = 0.0
    for step in steps:
        step.start = clock
        step.length = max((answer.end for answer in step.answers), default=0.0) / speed
        clock = step.done + HOLD
    return steps, clock


# -- what the screen shows -------------------------------------------------------------------------


@dataclass
class _Block:
    kind: str
    text: str
    margin: int
    _rows: tuple[int, str, list[Row]] | None = None

    def rows(self, width: int) -> list[Row]:
        if self._rows is None or self._rows[:2] != (width, self.text):
            style = BLOCK_STYLES[self.kind]
            lines = self.text.replace("\r\n", "\n").split("\n")
            rows = [row for line in lines for row in wrap(text_cells(line, style), width)]
            self._rows = (width, self.text, rows)
        return [[] for _ in range(self.margin)] + self._rows[2]


@dataclass
class _Sample:
    answer: PlayedAnswer
    block: _Block
    shown: int = 0  # pieces shown
    first_at: float | None = None  # recorded seconds after the send
    ended: bool = False


@dataclass
class _Pane:
    number: int
    name: str
    info: dict[str, Any]  # model, system, sampling, transform, label: as the session header has them
    blocks: list[_Block] = field(default_factory=list)
    samples: list[_Sample] = field(default_factory=list)
    state: str = "idle"
    _changes: int = 0  # bumped by every change to what the pane shows above its footer
    _drawn: tuple[tuple[int, int, int], list[Row]] | None = None

    def add(self, kind: str, text: str, margin: int | None = None) -> _Block:
        block = _Block(kind, text, (1 if self.blocks else 0) if margin is None else margin)
        self.blocks.append(block)
        self._changes += 1
        return block

    def clear(self, note: str) -> None:
        """A new conversation: nothing of the old one, and a divider."""
        self.blocks = []
        self.add("note", note)

    def start(self, prompt: str, answers: list[PlayedAnswer], regenerated: bool) -> None:
        """The prompt was sent: show it, and open one answer per sample."""
        self.add("note", "↻ regenerated") if regenerated else self.add("user", prompt)
        self.samples = []
        for index, answer in enumerate(answers):
            if len(answers) > 1:
                self.add("note", f"── sample {index + 1}/{len(answers)} ──")
            self.samples.append(_Sample(answer, self.add("answer", "", 0 if len(answers) > 1 else 1)))
        self.state = "waiting"

    def arrive(self, number: int, index: int) -> None:
        """Piece ``index`` of sample ``number`` has arrived."""
        sample = self.samples[number]
        at, chars = sample.answer.arrivals[index]
        sample.shown = index + 1
        sample.block.text = sample.answer.record.text[:chars]
        if sample.first_at is None:
            sample.first_at = at
        self.state = "streaming"
        self._changes += 1

    def end(self, number: int) -> None:
        """Sample ``number`` has ended (finished, cancelled or failed)."""
        sample = self.samples[number]
        record = sample.answer.record
        sample.ended = True
        sample.block.text = record.text
        self._changes += 1
        if record.status == "cancelled":
            self.add("note", "⊘ cancelled", 0)
        elif record.status == "failed":
            self.add("error", f"✗ failed: {record.error or 'unknown error'}", 0)
        if all(s.ended for s in self.samples):
            statuses = {s.answer.record.status for s in self.samples}
            self.state = next((s for s in ("failed", "cancelled") if s in statuses), "done")

    def header(self, width: int, compact: bool) -> list[Row]:
        """As the app's pane header: number, name and marks; model and sampling."""
        first = text_cells(f" {self.number} ", NUMBER) + text_cells(
            str(self.info.get("label") or self.name), NAME
        )
        system, transform = self.info.get("system"), self.info.get("transform")
        if system is not None:
            first += text_cells(" ", ON_PANEL) + text_cells(
                "sys", SYSTEM_MARK if system else EMPTY_SYSTEM_MARK
            )
        if isinstance(transform, dict) and any(transform.values()):
            first += text_cells(" ", ON_PANEL) + text_cells("tx", TRANSFORM_MARK)
        second = text_cells(f" {self.info.get('model') or ''}", ON_PANEL)
        second += text_cells(f" {_sampling_short(self.info.get('sampling'))}", DIM_ON_PANEL)
        if compact:
            return [fit(first + text_cells(" ·", ON_PANEL) + second, width, ON_PANEL)]
        return [fit(first, width, ON_PANEL), fit(second, width, ON_PANEL)]

    def footer(self, now: float, width: int) -> Row:
        """As the app's pane footer: the state, then live or final figures (recorded seconds)."""
        parts = text_cells(f" {self.state} ", STATE_STYLES[self.state])
        samples = self.samples
        if samples and self.state in ("waiting", "streaming"):
            deltas = sum(s.shown for s in samples)
            firsts = [s.first_at for s in samples if s.first_at is not None]
            text = f" ~{deltas} tok · ttft {_secs(min(firsts) if firsts else None)}"
            if firsts and deltas > 1 and now > min(firsts):
                text += f" · {deltas / (now - min(firsts)):.0f} t/s"
            parts += text_cells(text, ON_PANEL)
        elif samples:
            records = [s.answer.record for s in samples]
            counted = [n for r in records if isinstance(n := r.usage.get("completion_tokens"), int)]
            total = (
                (max(counted) if len(samples) > 1 else counted[0])
                if counted
                else sum(s.shown for s in samples)
            )
            ttfts = [t for r in records if (t := _seconds(r.timings.get("ttft"))) is not None]
            e2els = [t for r in records if (t := _seconds(r.timings.get("e2el")))]
            text = f" {total} tok" if counted else f" ~{total} tok"
            text += f" · ttft {_secs(min(ttfts) if ttfts else None)}"
            if e2els and total:
                text += f" · {total / max(e2els):.0f} t/s"
            parts += text_cells(text, ON_PANEL)
            reasons = sorted({r.finish_reason for r in records if r.finish_reason})
            if reasons:
                parts += text_cells(f" · {','.join(reasons)}", DIM_ON_PANEL)
            failures = [r.error for r in records if r.status == "failed" and r.error]
            if failures:
                parts += text_cells(f" · {failures[0]}", ERROR_ON_PANEL)
        return fit(parts, width, ON_PANEL)

    def rows(self, now: float, width: int, height: int) -> list[Row]:
        """The pane, ``width`` x ``height`` cells with its border; the conversation follows its end."""
        if height < 3 or width < 3:
            return [fit([], width)] * height
        key = (width, height, self._changes)
        if self._drawn is None or self._drawn[0] != key:
            self._drawn = (key, self._draw(width, height))
        rows = self._drawn[1]
        side = ("│", BORDER)
        return [*rows[:-1], [side, *self.footer(now, width - 2), side], rows[-1]][-height:]

    def _draw(self, width: int, height: int) -> list[Row]:
        """Every row but the footer: border, header, the end of the conversation, border."""
        inner = width - 2
        header = self.header(inner, height < 14)
        room = max(height - 3 - len(header), 0)
        text_width = max(inner - 3, 1)  # padding on both sides, and the scrollbar's column
        lines: list[Row] = []
        for block in reversed(self.blocks):
            if len(lines) >= room:
                break
            lines[:0] = block.rows(text_width)
        lines = lines[len(lines) - room :] if room else []
        lines += [[]] * (room - len(lines))
        side, pad = ("│", BORDER), (" ", ON_SURFACE)
        out = [[("╭", BORDER), *[("─", BORDER)] * inner, ("╮", BORDER)]]
        out += [[side, *row, side] for row in header]
        out += [[side, pad, *fit(line, text_width, ON_SURFACE), pad, pad, side] for line in lines]
        out.append([("╰", BORDER), *[("─", BORDER)] * inner, ("╯", BORDER)])
        return out


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _sampling_short(data: Any) -> str:
    from personachat.sampling import Sampling

    try:
        return Sampling.from_dict(data if isinstance(data, dict) else {}).short()
    except (TypeError, ValueError):
        return ""


# -- the screen ------------------------------------------------------------------------------------


def pane_grid(panes: int) -> tuple[int, int]:
    """(columns, rows): side by side up to four panes, then two rows."""
    columns = panes if panes <= 4 else math.ceil(panes / 2)
    return max(columns, 1), math.ceil(max(panes, 1) / max(columns, 1))


def default_size(panes: int) -> tuple[int, int]:
    """The size in cells: 40 columns a pane (100 to 200 in all); 32 rows, 44 with two rows of panes."""
    columns, rows = pane_grid(panes)
    return min(max(40 * columns, 100), 200), 32 if rows == 1 else 44


def _spans(total: int, parts: int) -> list[tuple[int, int]]:
    """``total`` cells cut into ``parts`` (start, size) spans as even as can be."""
    edges = [round(total * i / parts) for i in range(parts + 1)]
    return [(edges[i], edges[i + 1] - edges[i]) for i in range(parts)]


class CastScreen:
    """The app's screen as the replay stands at one moment."""

    def __init__(
        self, transcript: Transcript, panes: list[str], width: int, height: int, speed: float
    ) -> None:
        self.width, self.height, self.speed = width, height, speed
        header = transcript.header
        infos: dict[str, dict[str, Any]] = {}
        for entry in (header.profile.get("panes") or []) if header is not None else []:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                infos[entry["name"]] = entry
        first = {r.pane: r for r in reversed(transcript.responses)}
        self.panes = [
            _Pane(
                n, name, {"model": first[name].model, "sampling": first[name].sampling, **infos.get(name, {})}
            )
            for n, name in enumerate(panes, 1)
        ]
        profile = str(header.profile.get("name") or "") if header is not None else ""
        session = f" · session {header.session_id[:8]}" if header is not None else ""
        self.session = f" · {profile}{session}"
        self.title = f"personachat{self.session}"
        self.status = f"ready · transcript {transcript.path.name}"
        self.prompt = ""
        self.sent_at = 0.0  # when the current step was sent (seconds into the recording)

    def rows(self, now: float) -> list[Row]:
        """Every row of the screen at ``now`` (seconds into the recording)."""
        width, height = self.width, self.height
        bar = ON_PANEL
        out = [fit(text_cells(" personachat", TOP_BAR) + text_cells(self.session, bar), width, bar)]
        grid_height = max(height - 4, 0)
        columns, rows = pane_grid(len(self.panes))
        elapsed = (now - self.sent_at) * self.speed
        for r, (_, pane_height) in enumerate(_spans(grid_height, rows)):
            drawn = [
                pane.rows(elapsed, pane_width, pane_height)
                for pane, (_, pane_width) in zip(
                    self.panes[r * columns : (r + 1) * columns], _spans(width, columns), strict=False
                )
            ]
            out += [[cell for pane in drawn for cell in pane[y]] for y in range(pane_height)]
        out.append(fit(text_cells(f" {self.status}", STATUS), width, ON_BACKGROUND))
        out.append([("▔", PROMPT_RULE)] * width)
        typed = self.prompt.replace("\r\n", "\n").split("\n")
        shown = typed[0] + (" …" if len(typed) > 1 else "")
        prompt = (
            text_cells(f" {shown}", TYPED)
            if self.prompt
            else text_cells(f" {PLACEHOLDER}", PLACEHOLDER_STYLE)
        )
        out.append(fit(prompt, width, ON_SURFACE))
        return [fit(row, width) for row in out[:height]]


# -- the recording ---------------------------------------------------------------------------------


def render_cast(transcript: Transcript, *, speed: float = 1.0, size: tuple[int, int] | None = None) -> str:
    """``transcript`` replayed as an asciicast v2 recording (the whole file as text).

    ``speed`` divides the recorded answer timings (2: twice as fast); the prompt and reading pauses
    (:data:`TYPING`, :data:`HOLD`) stay as they are. ``size``: (columns, rows), by default
    :func:`default_size`.
    """
    if not (isinstance(speed, (int, float)) and math.isfinite(speed) and speed > 0):
        raise PersonachatError(f"--speed must be a number above 0 (got {speed})")
    steps, duration = plan(transcript, speed)
    if not steps:
        raise PersonachatError(f"{transcript.path}: no answers to replay")
    names = _pane_names(transcript)
    width, height = size or default_size(len(names))
    screen = CastScreen(transcript, names, width, height, speed)
    panes = {pane.name: pane for pane in screen.panes}
    actions: list[tuple[float, int, Any]] = []

    def at(when: float, action: Any) -> None:
        actions.append((when, len(actions), action))

    conversation = steps[0].conversation
    for number, step in enumerate(steps, 1):
        at(
            step.start,
            partial(
                _prompt, screen, step, f"prompt {number}/{len(steps)}", step.conversation != conversation
            ),
        )
        conversation = step.conversation
        by_pane: dict[str, list[PlayedAnswer]] = {}
        for answer in step.answers:
            by_pane.setdefault(answer.record.pane, []).append(answer)
        at(step.sent, partial(_send, screen, step, by_pane))
        for name, answers in by_pane.items():
            for sample, answer in enumerate(answers):
                for piece, (when, _) in enumerate(answer.arrivals):
                    at(step.sent + when / speed, partial(panes[name].arrive, sample, piece))
                at(step.sent + answer.end / speed, partial(panes[name].end, sample))
    end = f"end of {transcript.path.name} · {len(steps)} prompts"
    at(steps[-1].done, partial(setattr, screen, "status", end))
    actions.sort(key=lambda a: (a[0], a[1]))

    out: list[str] = []
    stamp = _timestamp(transcript)
    writer = CastWriter(out.append, width, height, title=screen.title, timestamp=stamp)
    index, earliest = 0, 0.0
    while index < len(actions):
        now = max(actions[index][0], earliest)
        while index < len(actions) and actions[index][0] <= now:
            actions[index][2]()
            index += 1
        writer.frame(now, screen.rows(now))
        earliest = now + 1 / FPS
    writer.end(duration)
    return "".join(out)


def _prompt(screen: CastScreen, step: Step, status: str, new_conversation: bool) -> None:
    if new_conversation:
        for pane in screen.panes:
            pane.clear(f"── conversation {step.conversation} ──")
    screen.prompt = "" if step.regenerated else step.prompt
    screen.status = status + (" · regenerated" if step.regenerated else "")


def _send(screen: CastScreen, step: Step, by_pane: dict[str, list[PlayedAnswer]]) -> None:
    screen.prompt = ""
    screen.sent_at = step.sent
    for pane in screen.panes:
        if pane.name in by_pane:
            pane.start(by_pane[pane.name][0].record.prompt, by_pane[pane.name], step.regenerated)


def _pane_names(transcript: Transcript) -> list[str]:
    """Panes that answered, in the profile's order, then any others in the order they appear."""
    order: dict[str, None] = {}
    header = transcript.header
    for entry in (header.profile.get("panes") or []) if header is not None else []:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            order.setdefault(entry["name"], None)
    present = {r.pane for r in transcript.responses}
    for record in transcript.responses:
        order.setdefault(record.pane, None)
    return [name for name in order if name in present]


def _timestamp(transcript: Transcript) -> int | None:
    header = transcript.header
    if header is None:
        return None
    try:
        return int(datetime.fromisoformat(header.created_at.replace("Z", "+00:00")).timestamp())
    except (TypeError, ValueError):
        return None
