"""The panes in a grid that fits the terminal: columns by width, wrapping to rows."""

from __future__ import annotations

import math

from textual.containers import Grid

from personachat.app.pane import Pane

MIN_PANE_WIDTH = 20


def grid_score(columns: int, panes: int, width: int, height: int) -> float:
    """How readable each pane is with ``columns`` columns: text width^1.5 x text height, both capped."""
    pane_width = width / columns
    pane_height = height / math.ceil(panes / columns)
    if pane_width < MIN_PANE_WIDTH and columns > 1:
        return -1.0 / columns
    text_width = min(pane_width - 4, 60)  # border, padding and scrollbar take 4 columns
    text_height = max(min(pane_height - 5, 30), 0.5)  # border, header and footer take 5 rows
    return text_width**1.5 * text_height


class PaneGrid(Grid):
    """The panes, laid out by :meth:`fit`.

    Of the possible column counts, the one that gives each pane the most readable text area wins;
    width counts more than height (narrow columns are hard to read) and neither counts past a point.
    """

    def on_resize(self) -> None:
        self.fit()

    def panes(self) -> list[Pane]:
        """Visible panes, in screen order."""
        return [
            child for child in self.children if isinstance(child, Pane) and not child.has_class("-hidden")
        ]

    def fit(self) -> None:
        visible = len(self.panes()) or 1
        width = self.size.width or self.app.size.width  # before the first layout, the screen's size
        height = self.size.height or max(self.app.size.height - 6, 1)
        columns = max(range(1, visible + 1), key=lambda c: grid_score(c, visible, width, height))
        rows = math.ceil(visible / columns)
        columns = math.ceil(visible / rows)
        if (self.styles.grid_size_columns, self.styles.grid_size_rows) != (columns, rows):
            self.styles.grid_size_columns = columns
            self.styles.grid_size_rows = rows
            self.refresh(layout=True)
