"""One pane: a header (who answers, with what settings), the conversation, and a footer (live figures).

A :class:`Pane` is driven by engine events (:meth:`Pane.handle`); it never talks to the engine.
Each sample of a turn is its own block in the conversation (with a separator when ``n > 1``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, ClassVar

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.content import Content
from textual.message import Message
from textual.reactive import reactive
from textual.timer import Timer
from textual.widgets import Static

from personachat.app.conversation import Block, ConversationView
from personachat.app.pane_status import (
    STATE_STYLES,
    PaneStatus,
    SampleProgress,
    TurnProgress,
    format_scores,
    seconds,
    sparkline,
)
from personachat.engine.events import Cancelled, Delta, Event, Failed, Finished, Projected, Started
from personachat.profile import PaneSpec

if TYPE_CHECKING:
    from rich.style import Style

    from personachat.judge.records import JudgeRecord


class Pane(Vertical):
    """The column of one pane; see the module docstring."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "c", "app.copy_answer", "Copy", id="pane.copy", tooltip="Copy this pane's last answer (OSC 52)"
        ),
        Binding("p", "app.pager", "Pager", id="pane.pager", tooltip="Open this pane's last answer in $PAGER"),
        Binding("z", "app.zoom", "Zoom", id="pane.zoom", tooltip="Show this pane alone, and back"),
        Binding("h", "app.hide_pane", "Hide", id="pane.hide", tooltip="Hide this pane (/panes show all)"),
        Binding(
            "u", "app.undo_label", "Undo label", id="pane.undo", tooltip="Take back the label just given"
        ),
        Binding("enter", "app.focus_prompt", "Prompt", id="pane.prompt", tooltip="Back to the prompt box"),
        Binding(
            "d",
            "app.diverge",
            "Diverge",
            id="pane.diverge",
            tooltip="Colour the last answer by divergence from the base pane (again: plain)",
        ),
        Binding(
            "left_square_bracket",
            "prefer('this')",
            "This better",
            id="pane.prefer_this",
            tooltip="Blind: this pane's answer is better than the next pane's",
        ),
        Binding(
            "right_square_bracket",
            "prefer('next')",
            "Next better",
            id="pane.prefer_next",
            tooltip="Blind: the next pane's answer is better than this one's",
        ),
        Binding(
            "equals_sign",
            "prefer('tie')",
            "Tie",
            id="pane.prefer_tie",
            tooltip="Blind: this and the next pane tie",
        ),
        *(
            Binding(
                str(n),
                f"app.focus_pane({n})",
                show=False,
                id=f"pane.focus{n}",
                tooltip="Focus pane 1-9 (in screen order)",
            )
            for n in range(1, 10)
        ),
    ]

    class PreferenceRequested(Message):
        """A preference key was pressed in this pane (``which``: this, next or tie)."""

        def __init__(self, pane: Pane, which: str) -> None:
            super().__init__()
            self.pane = pane
            self.which = which

    def action_prefer(self, which: str) -> None:
        self.post_message(self.PreferenceRequested(self, which))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Preference keys only in blind mode (the footer shows them then)."""
        return self.blind if action == "prefer" else True

    class LabelRequested(Message):
        """A label key was pressed in this pane."""

        def __init__(self, pane: Pane, label: str) -> None:
            super().__init__()
            self.pane = pane
            self.label = label

    COMPACT_HEIGHT: ClassVar[int] = 14
    """Below this height the header takes one line instead of two."""

    FOOTER_INTERVAL: ClassVar[float] = 0.25
    """How often the footer's live figures refresh while streaming (seconds)."""

    state: reactive[PaneStatus] = reactive("idle")

    def __init__(self, spec: PaneSpec, number: int, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="pane")
        self.spec = spec
        self.number = number
        self.blind = False
        self.markdown = False
        self.turn: TurnProgress | None = None
        self.label_keys: dict[str, str] = {}  # key -> label, set by the app
        self.last_ids: list[str] = []  # response ids of the last answer (for labels)
        self.last_turn: int | None = None
        self._footer_timer: Timer | None = None
        self._alias: str | None = None
        self.judge_scores = ""  # the last judged answer's scores, shown above the footer
        self.judge_summary = ""  # the running summary of this pane's judged answers
        self.divergence = ""  # /diverge: the coloured answer's legend and top tokens
        self.projection: list[float] = []  # a pane with `project`: sample 1's values per answer token
        self.projection_mean: float | None = None
        self._projection_shown = 0
        self._restored_failure: str | None = None

    def compose(self) -> ComposeResult:
        yield Static(self._header(), classes="pane--header", markup=False)
        yield ConversationView(classes="pane--conversation")
        yield Static(classes="pane--judge", markup=False)
        yield Static(self._footer(), classes="pane--footer", markup=False)

    def on_mount(self) -> None:
        self._footer_timer = self.set_interval(self.FOOTER_INTERVAL, self._refresh_footer, pause=True)
        self._refresh_header()

    def on_resize(self) -> None:
        compact = self.size.height < self.COMPACT_HEIGHT
        if compact != self.has_class("-compact"):
            self.set_class(compact, "-compact")
            self._refresh_header()

    @property
    def conversation(self) -> ConversationView:
        return self.query_one(ConversationView)

    @property
    def alias(self) -> str | None:
        """The letter shown instead of the name in blind mode."""
        return self._alias if self.blind else None

    @property
    def shown_name(self) -> str:
        """What the researcher calls this pane now: its blind letter, else its name."""
        return self.alias or self.spec.name

    def on_key(self, event: events.Key) -> None:
        label = self.label_keys.get(event.key)
        if label is not None:
            event.stop()
            self.post_message(self.LabelRequested(self, label))

    # -- header and footer ----------------------------------------------------------------------

    def set_spec(self, spec: PaneSpec) -> None:
        """Show changed settings (system prompt, sampling)."""
        self.spec = spec
        self._refresh_header()

    def set_blind(self, blind: bool, alias: str | None = None) -> None:
        """Hide (or show again) which model this pane is."""
        self.blind = blind
        self._alias = alias
        self._refresh_header()
        self._refresh_footer()

    def _header(self) -> Content:
        spec = self.spec
        if self.blind:
            title = self._alias or "?"
            return Content.assemble(
                (f"{self.number} ", "bold $accent"), (title, "bold"), "\n", ("hidden", "dim")
            )
        markers = []
        if spec.system is not None:
            markers.append(("sys", "reverse $warning" if spec.system else "reverse $panel"))
        if spec.transform.active:
            markers.append(("tx", "reverse $secondary"))
        act = spec.activations
        if act.steer is not None:
            markers.append((f"steer {act.steer.alpha:g}@{act.steer.layer}", "reverse $error"))
        if act.adapter_scale is not None:
            markers.append((f"×{act.adapter_scale:g}", "reverse $error"))
        if act.project is not None:
            markers.append(("proj", "reverse $secondary"))
        parts: list[str | tuple[str, str]] = [(f"{self.number} ", "bold $accent"), (spec.title, "bold")]
        for marker in markers:
            parts.extend([" ", marker])
        parts.extend([" · " if self.has_class("-compact") else "\n", (spec.model, "$text-muted")])
        parts.extend([" ", (spec.sampling.short(), "dim")])
        return Content.assemble(*parts)

    def _refresh_header(self) -> None:
        if not self.is_mounted:
            return
        header = self.query_one(".pane--header", Static)
        header.update(self._header())
        spec = self.spec
        if self.blind:
            header.tooltip = None
        else:
            tip = [f"{spec.name}: {spec.model} on {spec.server}", f"sampling: {spec.sampling.short()}"]
            if spec.system is not None:
                tip.append(f"system: {spec.system!r}")
            if spec.transform.active:
                tip.append(f"transform: prefix={spec.transform.prefix!r} suffix={spec.transform.suffix!r}")
            header.tooltip = Content("\n".join(tip))

    def _footer(self) -> Content:
        turn = self.turn
        state = self.state
        parts: list[str | tuple[str, str]] = [(f" {state} ", f"bold reverse {STATE_STYLES[state]}")]
        if turn is None or not turn.samples:
            return Content.assemble(*parts)
        now = time.monotonic()
        samples = turn.samples
        streaming = [s for s in samples if s.state in ("waiting", "streaming")]
        if streaming:
            deltas = sum(s.deltas for s in samples)
            firsts = [s.first_delta_at for s in samples if s.first_delta_at is not None]
            ttft = min(firsts) - turn.sent_at if firsts else None
            rate = deltas / (now - min(firsts)) if firsts and now > min(firsts) and deltas > 1 else None
            parts.append(f" ~{deltas} tok · ttft {seconds(ttft)}")
            if rate:
                parts.append(f" · {rate:.0f} t/s")
        else:
            tokens = [s.tokens for s in samples if s.tokens is not None]
            # With n > 1 the usage is the request's, repeated on every sample.
            total = (
                (max(tokens) if len(samples) > 1 else tokens[0]) if tokens else sum(s.deltas for s in samples)
            )
            ttfts = [s.ttft for s in samples if s.ttft is not None]
            e2els = [s.e2el for s in samples if s.e2el]
            parts.append(f" {total} tok" if tokens else f" ~{total} tok")
            parts.append(f" · ttft {seconds(min(ttfts) if ttfts else None)}")
            if e2els and total:
                parts.append(f" · {total / max(e2els):.0f} t/s")
            reasons = sorted({s.finish_reason for s in samples if s.finish_reason})
            if reasons:
                parts.append((f" · {','.join(reasons)}", "dim"))
            failures = [s.reason for s in samples if s.reason]
            if failures:
                parts.append((f" · {failures[0]}", "$error"))
        return Content.assemble(*parts)

    def _refresh_footer(self) -> None:
        if self.is_mounted:
            self.query_one(".pane--footer", Static).update(self._footer(), layout=False)
        if len(self.projection) != self._projection_shown:  # at the footer's pace, not per token
            self._projection_shown = len(self.projection)
            self._refresh_judge()
        if self._footer_timer is not None and self.state not in ("waiting", "streaming"):
            self._footer_timer.pause()

    def watch_state(self, new: PaneStatus) -> None:
        # No CSS class per state: restyling eight panes as their answers end costs a screen layout
        # at exactly the wrong moment. The footer shows the state, in the state's colour.
        if new in ("waiting", "streaming") and self._footer_timer is not None:
            self._footer_timer.resume()
        self._refresh_footer()

    # -- the live judge ---------------------------------------------------------------------------

    def show_judgement(self, response_id: str, records: list[JudgeRecord], error: str | None = None) -> None:
        """Show the scores of one judged answer (and a note under it while it is the last answer)."""
        sample = self.last_ids.index(response_id) if response_id in self.last_ids else None
        prefix = f"s{sample + 1} " if sample is not None and len(self.last_ids) > 1 else ""
        text = format_scores(records)
        if error:
            text = f"{text} · {error}" if text else error
        self.judge_scores = f"{prefix}{text}"
        if sample is not None and self.state not in ("waiting", "streaming"):
            self.conversation.add_block("error" if error else "note", f"judge: {prefix}{text}", margin=0)
        self._refresh_judge()

    def show_judge_summary(self, summary: str) -> None:
        self.judge_summary = summary
        self._refresh_judge()

    def _refresh_judge(self) -> None:
        if not self.is_mounted:
            return
        line = self.query_one(".pane--judge", Static)
        line.display = bool(self.judge_scores or self.judge_summary or self.divergence or self.projection)
        parts: list[str | tuple[str, str]] = []
        if self.judge_scores:
            parts.append((self.judge_scores, "$text-accent"))
        if self.judge_summary:
            parts += ["\n" if parts else "", (self.judge_summary, "$text-muted")]
        if self.divergence:
            parts += ["\n" if parts else "", (self.divergence, "$text-muted")]
        if self.projection and self.projection_mean is not None:
            shown = f"projection {self.projection_mean:+.2f} {sparkline(self.projection)}"
            parts += ["\n" if parts else "", (shown, "$text-accent")]
        line.update(Content.assemble(*parts))

    def judge_text(self) -> str:
        """What the line above the footer shows (judge, divergence; for tests and screen readers)."""
        projection = f"projection {self.projection_mean:+.2f}" if self.projection_mean is not None else ""
        return "\n".join(t for t in (self.judge_scores, self.judge_summary, self.divergence, projection) if t)

    # -- events -----------------------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        """Show one engine event for this pane."""
        if isinstance(event, Delta):
            self.append(event.sample, event.text)
        elif isinstance(event, Started):
            prompt = event.messages[-1].get("content", "") if event.messages else ""
            self.start_turn(event.turn, prompt, samples=len(event.response_ids) or 1)
            self.last_ids = list(event.response_ids)
        elif isinstance(event, Finished):
            self._end(
                event.sample,
                "done",
                event.text,
                finish_reason=event.finish_reason,
                tokens=event.usage.completion_tokens,
                ttft=event.timings.ttft,
                e2el=event.timings.e2el,
            )
        elif isinstance(event, Projected) and event.sample == 0:
            self.projection[event.start :] = event.values
            self.projection_mean = event.mean
        elif isinstance(event, Cancelled):
            self._end(event.sample, "cancelled", event.text, ttft=event.timings.ttft, e2el=event.timings.e2el)
        elif isinstance(event, Failed):
            self._end(
                event.sample,
                "failed",
                event.text,
                reason=event.reason,
                ttft=event.timings.ttft,
                e2el=event.timings.e2el,
            )

    def start_turn(self, turn: int, prompt: str, samples: int = 1) -> None:
        """Show the user's message and open one answer block per sample."""
        view = self.conversation
        regenerating = self.turn is not None and self.turn.turn == turn
        if regenerating:
            view.add_block("note", "↻ regenerated")
        else:
            view.add_block("user", prompt)
        progress = TurnProgress(turn, prompt)
        self.last_turn = turn
        if self.divergence or self.projection:  # they described the answer before this one
            self.divergence, self.projection, self.projection_mean = "", [], None
            self._refresh_judge()
        for index in range(samples):
            if samples > 1:
                view.add_block("note", f"── sample {index + 1}/{samples} ──")
            block = view.add_block("answer", live=True, margin=0 if samples > 1 else 1)
            progress.samples.append(SampleProgress(block))
        self.turn = progress
        self.state = "waiting"

    def append(self, sample: int, text: str) -> None:
        """Stream more text into ``sample``'s answer."""
        progress = self._sample(sample)
        if progress is None:
            return
        if progress.first_delta_at is None:
            progress.first_delta_at = time.monotonic()
            progress.state = "streaming"
            self.state = "streaming"
        progress.deltas += 1
        progress.chunks.append(text)
        self.conversation.write(progress.block, text)

    def _end(self, sample: int, state: PaneStatus, text: str, **figures: object) -> None:
        progress = self._sample(sample)
        if progress is None:
            return
        view = self.conversation
        received = "".join(progress.chunks)
        if len(text) > len(received) and text.startswith(received):
            # Text the deltas did not carry (a backend that only reports the whole answer).
            view.write(progress.block, text[len(received) :])
        progress.chunks = [text or received]
        progress.state = state
        for name, value in figures.items():
            setattr(progress, name, value)
        if state == "cancelled":
            view.add_block("note", "⊘ cancelled", margin=0)
        elif state == "failed":
            view.add_block("error", f"✗ failed: {figures.get('reason') or 'unknown error'}", margin=0)
        progress.block.markdown = self.markdown
        view.freeze(progress.block)
        if state == "failed":
            view.show_end()  # a failure is never left below the fold
        assert self.turn is not None
        self.state = self.turn.state
        self._refresh_footer()

    def answer_problem(self, sample: int = 0) -> str | None:
        """Why sample ``sample`` of the last answer cannot be labelled or compared now (None: it can)."""
        if self.turn is None or not self.last_ids:
            return f"pane {self.shown_name} has no answer yet"
        if not self.turn.samples and self._restored_failure:
            return f"pane {self.shown_name}'s last answer failed ({self._restored_failure}): there is nothing to judge"
        if self.turn.samples:
            progress = self._sample(sample)
            if progress is not None and progress.state in ("waiting", "streaming"):
                return f"pane {self.shown_name} is still answering: wait for the end (or Esc)"
            if progress is not None and progress.state == "failed":
                return f"pane {self.shown_name}'s last answer failed ({progress.reason}): there is nothing to judge"
        return None

    def failure(self) -> str | None:
        """Why the last answer failed, when it did."""
        if self.turn is None:
            return None
        reasons = [s.reason for s in self.turn.samples if s.state == "failed"]
        return (reasons[0] or "unknown error") if reasons else None

    def _sample(self, sample: int) -> SampleProgress | None:
        if self.turn is None or not 0 <= sample < len(self.turn.samples):
            return None
        return self.turn.samples[sample]

    # -- whole turns (reopened sessions) ------------------------------------------------------

    def show_turns(self, turns: list[tuple[str | None, list[str], str | None]]) -> None:
        """Add finished turns at once: (prompt, or None for a regenerated answer; answers; note)."""
        view = self.conversation
        with view.batch_blocks():
            for prompt, answers, note in turns:
                self.show_turn(prompt, answers, note=note)
        self.call_after_refresh(view.show_end)  # the latest turn in view, new answers followed

    def show_turn(self, prompt: str | None, answers: list[str], *, note: str | None = None) -> None:
        """Add a finished turn (a saved session reopened)."""
        view = self.conversation
        if prompt is not None:
            view.add_block("user", prompt)
        elif answers:
            view.add_block("note", "↻ regenerated")
        for index, answer in enumerate(answers):
            if len(answers) > 1:
                view.add_block("note", f"── sample {index + 1}/{len(answers)} ──")
            block = view.add_block("answer", answer, margin=0 if len(answers) > 1 or prompt is None else 1)
            view.set_markdown(block, self.markdown)
        if note:
            view.add_block("note", note, margin=0 if answers else 1)

    def restore_last(self, turn: int, ids: list[str], failed: str | None = None) -> None:
        """Remember the last saved answer (so labels and regenerate work after reopening).

        ``failed`` is why it failed, when it did (a failed answer cannot be labelled).
        """
        self.last_turn = turn
        self.last_ids = ids
        self.turn = TurnProgress(turn, "")
        self._restored_failure = failed

    def _last_answer_block(self) -> Block | None:
        if self.turn is not None and self.turn.samples:
            return self.turn.samples[0].block
        return next((b for b in reversed(self.conversation.blocks) if b.kind == "answer"), None)

    def last_answer_shown(self) -> str:
        """The last answer (sample 1) as shown: sanitized."""
        block = self._last_answer_block()
        return block.text if block is not None else ""

    def show_divergence(self, colours: list[tuple[int, int, Style]] | None, line: str = "") -> None:
        """Draw the last answer (sample 1) with ``colours`` (character spans) and ``line`` (legend,
        top tokens) in the footer; None: plain text again."""
        block = self._last_answer_block()
        if block is not None:
            self.conversation.set_colours(block, colours)
        self.divergence = line if colours is not None else ""
        self._refresh_judge()

    def show_note(self, text: str) -> None:
        """A line of the app's own (a label given, a new conversation)."""
        self.conversation.add_block("note", text, margin=0)

    def last_answers(self) -> list[str]:
        """The raw text of each sample of the last answer, as received (not sanitized)."""
        if self.turn is None:
            return []
        if not self.turn.samples:  # reopened: the last answer blocks shown
            answers = [b for b in self.conversation.blocks if b.kind == "answer"]
            return [answers[-1].text] if answers else []
        return ["".join(sample.chunks) for sample in self.turn.samples]

    def clear(self) -> None:
        """Forget the conversation shown."""
        self.conversation.clear()
        self.turn = None
        self.last_ids = []
        self.last_turn = None
        self.state = "idle"
        self.judge_scores = ""
        self.divergence, self.projection, self.projection_mean = "", [], None
        self._refresh_judge()

    def set_markdown(self, markdown: bool) -> None:
        """Draw finished answers as rendered Markdown (or plain text)."""
        self.markdown = markdown
        view = self.conversation
        for block in view.blocks:
            if block.kind == "answer":
                view.set_markdown(block, markdown)
