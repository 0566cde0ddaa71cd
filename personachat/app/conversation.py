"""The conversation of one pane, drawn with Textual's line API so that streaming stays cheap.

A :class:`ConversationView` holds a list of :class:`Block` (a user message, an answer, a note).
Text written to a live block is buffered and applied at most once per frame; appending re-wraps
only the last row of that block (see :mod:`personachat.app.wrap`) and repaints only the rows that
changed. Finished blocks are frozen: their rows stay cached per width, so a long history costs
nothing while another answer streams.

While following a stream, the view scrolls in steps of half its height ("jump scroll"), leaving
blank rows below the text to fill: repainting a whole pane on every new row is what costs most when
eight panes stream at once.

All text is untrusted: it is sanitized (:mod:`personachat.text`) and drawn as plain segments,
never parsed as markup.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar, Literal

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual.cache import LRUCache
from textual.geometry import Size
from textual.reactive import var
from textual.scroll_view import ScrollView
from textual.selection import Selection
from textual.strip import Strip
from textual.timer import Timer

from personachat.app.wrap import WrappedText
from personachat.text import CONTROL_STAND_INS, StreamSanitizer

BlockKind = Literal["user", "answer", "note", "error"]


class Block:
    """A run of rows in a :class:`ConversationView`: one message, answer or note."""

    __slots__ = ("_rich_strips", "_sanitizer", "colours", "index", "kind", "margin", "markdown", "wrapped")

    def __init__(self, kind: BlockKind, text: str = "", *, margin: int = 0) -> None:
        self.kind: BlockKind = kind
        self.margin = margin
        self.index = -1  # position in the view
        self.markdown = False  # drawn as rendered Markdown once frozen
        self.colours: list[tuple[int, int, Style]] | None = None  # (start, end, style) over ``text``
        self._sanitizer: StreamSanitizer | None = StreamSanitizer()
        self.wrapped = WrappedText(self._sanitizer.feed(text) if text else "")
        self._rich_strips: list[Strip] | None = None  # Markdown or coloured text, rendered by Rich

    @property
    def text(self) -> str:
        """The sanitized text shown (control characters appear as visible stand-ins)."""
        return self.wrapped.text

    @property
    def frozen(self) -> bool:
        """True once no more text can come."""
        return self._sanitizer is None

    @property
    def rich(self) -> bool:
        """Drawn by Rich once frozen: as Markdown, or with coloured spans (colours win)."""
        return self.markdown or self.colours is not None

    @property
    def shows_rich(self) -> bool:
        return self.rich and self._rich_strips is not None

    @property
    def row_count(self) -> int:
        """Rows taken, margin included."""
        if self._rich_strips is not None and self.rich:
            return self.margin + len(self._rich_strips)
        return self.margin + len(self.wrapped.rows)

    def append(self, text: str) -> int:
        """Add raw text; return the first changed row (margin included)."""
        assert self._sanitizer is not None, "append to a frozen block"
        return self.margin + self.wrapped.append(self._sanitizer.feed(text))

    def freeze(self) -> int:
        """No more text will come; return the first changed row (``row_count`` if none)."""
        first = self.row_count
        if self._sanitizer is not None:
            rest = self._sanitizer.flush()
            if rest:
                first = self.margin + self.wrapped.append(rest)
            self._sanitizer = None
            self.wrapped.text  # noqa: B018 - joins the chunks once
        return first

    def set_width(self, width: int) -> None:
        if self.wrapped.set_width(width):
            self._rich_strips = None


class ConversationView(ScrollView, can_focus=True):
    """Scrollable, append-only view of a conversation made of blocks; see the module docstring."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "conversation--user",
        "conversation--answer",
        "conversation--note",
        "conversation--error",
        "conversation--control",
    }

    FLUSH_INTERVAL: ClassVar[float] = 1 / 30
    """Buffered text is applied at most this often (seconds)."""

    FOLLOW_STEP: ClassVar[float] = 1 / 2
    """While following a stream, scroll by this fraction of the height at once."""

    SETTLE_DELAY: ClassVar[float] = 0.3
    """Seconds after the last live block ends before blank rows left by jumps are dropped."""

    auto_scroll: var[bool] = var(True)
    """Follow new text while the end of the text is in view."""

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.blocks: list[Block] = []
        self._starts: list[int] = []  # first row of each block
        self._rows = 0
        self._width = 0
        self._live = 0  # blocks not frozen
        self._batch_first: int | None = None  # inside batch_blocks(): first block added
        self._pending: dict[Block, list[str]] = {}
        self._flush_timer: Timer | None = None
        self._styles: dict[str, Style] = {}
        # (block index, row) -> strip; kept small: every Strip holds several caches the GC must traverse
        self._strips: LRUCache[tuple[int, int], Strip] = LRUCache(96)

    # -- building the conversation -------------------------------------------------------------

    def add_block(
        self, kind: BlockKind, text: str = "", *, live: bool = False, margin: int | None = None
    ) -> Block:
        """Add a block at the end and return it; ``text`` is raw (sanitized here). Only a live block grows."""
        self._flush()
        block = Block(kind, text, margin=(1 if self.blocks else 0) if margin is None else margin)
        block.index = len(self.blocks)
        if live:
            self._live += 1
        else:
            block.freeze()
        if self._width:
            block.set_width(self._width)
        self.blocks.append(block)
        self._starts.append(self._rows)
        if self._batch_first is None:
            self._relayout(block.index)
        return block

    @contextmanager
    def batch_blocks(self) -> Iterator[None]:
        """Add many blocks with a single relayout at the end (reopening a saved session)."""
        if self._batch_first is not None:
            yield
            return
        self._batch_first = len(self.blocks)
        try:
            yield
        finally:
            first, self._batch_first = self._batch_first, None
            self._relayout(first)

    def write(self, block: Block, text: str) -> None:
        """Queue raw ``text`` for a live ``block``; it appears with the next frame."""
        if not text:
            return
        pending = self._pending.get(block)
        if pending is None:
            self._pending[block] = [text]
            if self._flush_timer is not None:
                self._flush_timer.resume()
        else:
            pending.append(text)

    def freeze(self, block: Block) -> None:
        """Mark ``block`` finished: apply what is queued; from now on it may be drawn as Markdown."""
        self._flush()
        if block.frozen:
            return
        self._live -= 1
        first = block.freeze()
        self._forget_strips(block, first)
        if block.rich:
            self._relayout(block.index)
        elif first < block.row_count:
            self._relayout(block.index, self._starts[block.index] + first)
        if not self._live:
            # Bring the end of the text to the bottom a moment later, not in the frame that shows
            # the last words (with eight panes ending together that frame is busy enough).
            self.set_timer(self.SETTLE_DELAY, self._settle)

    def _settle(self) -> None:
        if not self._live and self.blocks:
            self._relayout(len(self.blocks) - 1, self._rows)

    def set_markdown(self, block: Block, markdown: bool) -> None:
        """Draw a frozen ``block`` as rendered Markdown (or back as plain text)."""
        if block.markdown == markdown:
            return
        block.markdown = markdown
        block._rich_strips = None
        self._forget_strips(block, 0)
        if block.frozen:
            self._relayout(block.index)

    def set_colours(self, block: Block, colours: list[tuple[int, int, Style]] | None) -> None:
        """Draw a frozen ``block`` with these styled character spans of its text (None: plain again)."""
        block.colours = colours
        block._rich_strips = None
        self._forget_strips(block, 0)
        if block.frozen:
            self._relayout(block.index)

    def clear(self) -> None:
        """Remove every block."""
        self._pending.clear()
        self._strips.clear()
        self.blocks.clear()
        self._starts.clear()
        self._rows = 0
        self._live = 0
        self._set_virtual_size(Size(self._width, 0))
        self.scroll_to(y=0, animate=False, immediate=True)
        self.refresh()

    def show_end(self) -> None:
        """Scroll so that the last rows are in view; from there new text is followed again."""
        self._flush()
        height = self.scrollable_content_region.height
        top = max(self._rows - height, 0)
        self._set_virtual_size(Size(self._width, max(self._rows, top + height)))
        self.scroll_to(y=top, animate=False, immediate=True)

    @property
    def row_count(self) -> int:
        """Rows of text (after the last flush)."""
        return self._rows

    def rows_text(self) -> list[str]:
        """The rows as plain text, as drawn (for tests and selection); margins are empty rows."""
        self._flush()
        lines: list[str] = []
        for block in self.blocks:
            lines.extend([""] * block.margin)
            if block.shows_rich:
                assert block._rich_strips is not None
                lines.extend(strip.text.rstrip() for strip in block._rich_strips)
            else:
                lines.extend(block.wrapped.rows)
        return lines

    # -- Textual hooks ---------------------------------------------------------------------------

    def on_mount(self) -> None:
        self._flush_timer = self.set_interval(
            self.FLUSH_INTERVAL, self._flush, name="flush", pause=not self._pending
        )

    def on_resize(self) -> None:
        width = self.scrollable_content_region.width
        if width != self._width and width > 0:
            self._width = width
            self._strips.clear()
            for block in self.blocks:
                block.set_width(width)
        self._relayout(0)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._styles.clear()
        self._strips.clear()
        for block in self.blocks:
            block._rich_strips = None
        if self.blocks and self._width:
            self._relayout(0)

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        row = scroll_y + y
        width = self._width
        if not 0 <= row < self._rows:
            return Strip.blank(width, self._style(""))
        index = bisect_right(self._starts, row) - 1
        block = self.blocks[index]
        local = row - self._starts[index] - block.margin
        if local < 0:
            return Strip.blank(width, self._style(""))
        strip = self._block_strip(block, local, width)
        selection = self.text_selection
        if selection is not None:
            strip = self._select(strip, selection, row, width)
        return strip.apply_offsets(scroll_x, row)

    def get_selection(self, selection: Selection) -> tuple[str, str] | None:
        return selection.extract("\n".join(self.rows_text())), "\n"

    def selection_updated(self, selection: Selection | None) -> None:
        self.refresh()

    # -- drawing ---------------------------------------------------------------------------------

    def _style(self, name: str) -> Style:
        """The widget's style, plus component ``conversation--NAME`` when ``name`` is given (cached)."""
        style = self._styles.get(name)
        if style is None:
            style = self.rich_style
            if name:
                style += self.get_component_rich_style(f"conversation--{name}", partial=True)
            self._styles[name] = style
        return style

    def _block_strip(self, block: Block, local: int, width: int) -> Strip:
        if block.shows_rich:
            assert block._rich_strips is not None
            strips = block._rich_strips
            return strips[local] if local < len(strips) else Strip.blank(width, self._style(""))
        key = (block.index, local)
        strip = self._strips.get(key)
        if strip is None:
            rows = block.wrapped.rows
            text = rows[local] if local < len(rows) else ""
            strip = self._text_strip(text, self._style(block.kind), width)
            self._strips[key] = strip
        return strip

    def _text_strip(self, text: str, style: Style, width: int) -> Strip:
        cells = cell_len(text)
        if cells != width:  # pad, or crop spaces that overflow the row
            text = set_cell_size(text, width)
            cells = width
        if CONTROL_STAND_INS.search(text):
            control = style + self._style("control")
            segments: list[Segment] = []
            position = 0
            for match in CONTROL_STAND_INS.finditer(text):
                if match.start() > position:
                    segments.append(Segment(text[position : match.start()], style))
                segments.append(Segment(match.group(), control))
                position = match.end()
            if position < len(text):
                segments.append(Segment(text[position:], style))
        else:
            segments = [Segment(text, style)]
        return Strip(segments, cells)

    def _render_rich(self, block: Block) -> None:
        """Render a frozen Markdown or coloured block at the current width (rows must be known for
        layout). The text is the sanitized text: never parsed as markup."""
        from rich.console import RenderableType
        from rich.markdown import Markdown
        from rich.text import Text

        console = self.app.console
        options = console.options.update_width(max(self._width, 1))
        renderable: RenderableType
        if block.colours is not None:
            text = Text(block.text, style=self._style(block.kind))
            for start, end, style in block.colours:
                text.stylize(style, start, end)
            renderable = text
        else:
            renderable = Markdown(block.text, hyperlinks=False)
        lines = console.render_lines(renderable, options, style=self._style(block.kind), pad=True)
        block._rich_strips = [Strip(line).adjust_cell_length(self._width, self._style("")) for line in lines]

    def _select(self, strip: Strip, selection: Selection, row: int, width: int) -> Strip:
        span = selection.get_span(row)
        if span is None:
            return strip
        start, end = span
        text = strip.text
        if end == -1:
            end = len(text.rstrip()) or len(text)
        before = cell_len(text[:start])
        selected = cell_len(text[start:end])
        parts = strip.divide([before, before + selected, width])
        if len(parts) < 2:
            return strip
        style = self.screen.get_component_rich_style("screen--selection")
        return Strip.join([parts[0], parts[1].apply_style(style), *parts[2:]])

    # -- applying changes ------------------------------------------------------------------------

    def _flush(self) -> None:
        """Apply queued text (called once per frame by a timer, paused while nothing is queued)."""
        if not self._pending:
            if self._flush_timer is not None:
                self._flush_timer.pause()
            return
        pending, self._pending = self._pending, {}
        first_block = len(self.blocks)
        first_row = self._rows
        for block, parts in pending.items():
            if block.frozen or block.index >= len(self.blocks) or self.blocks[block.index] is not block:
                continue  # cleared meanwhile
            before = block.row_count
            changed = block.append("".join(parts))
            self._forget_strips(block, changed)
            if block.row_count != before:
                first_block = min(first_block, block.index)
            first_row = min(first_row, self._starts[block.index] + changed)
        self._relayout(first_block, first_row)

    def _forget_strips(self, block: Block, first: int) -> None:
        """Drop cached strips of ``block`` from its row ``first`` (margin included) on."""
        for row in range(max(first - block.margin, 0), len(block.wrapped.rows) + 1):
            self._strips.discard((block.index, row))

    def _relayout(self, first_block: int, first_row: int | None = None) -> None:
        """Recompute block positions from ``first_block`` on, then scroll or repaint what changed."""
        old_rows = self._rows
        starts = self._starts
        row = starts[first_block] if first_block < len(starts) else self._rows
        if first_row is None:
            first_row = row
        for index in range(first_block, len(self.blocks)):
            block = self.blocks[index]
            starts[index] = row
            if block.rich and block.frozen and block._rich_strips is None and self._width:
                self._render_rich(block)
            row += block.row_count
        self._rows = row
        self._show_changes(first_row, old_rows)

    def _show_changes(self, first_row: int, old_rows: int) -> None:
        rows = self._rows
        height = self.scrollable_content_region.height
        top = self.scroll_offset.y
        follow = self.auto_scroll and top + height >= old_rows and not self.is_vertical_scrollbar_grabbed
        if follow and (rows > top + height or not self._live):
            # Streaming: jump a third of a page at a time. Done: end of the text at the bottom.
            step = max(1, int(height * self.FOLLOW_STEP)) if self._live else 0
            top = max(rows - height + step, 0)
            self._set_virtual_size(Size(self._width, max(rows, top + height)))
            if top != self.scroll_offset.y:
                self.scroll_to(y=top, animate=False, immediate=True)
                return
        else:
            # Keep blank rows left by a jump while they are on screen, so the text does not move.
            self._set_virtual_size(Size(self._width, max(rows, min(self.virtual_size.height, top + height))))
        if first_row < top + height:
            start = max(first_row, top)
            self.refresh_lines(start, top + height - start)

    def _set_virtual_size(self, size: Size) -> None:
        """Set the scrollable size without a layout pass (which would repaint the whole screen)."""
        if size == self.virtual_size:
            return
        if self.styles.height is not None and self.styles.height.is_auto:
            self.virtual_size = size  # our height depends on it: the parent must lay out again
            return
        self.set_reactive(ConversationView.virtual_size, size)
        self._scroll_update(size)  # scrollbars, and the scroll offset clamped
