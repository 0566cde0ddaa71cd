"""An answer's tokens coloured by divergence, for the HTML export.

Each token of an answer with a divergence record gets the colour of ``logp - logp_against`` on a
diverging scale (red: the answer's own model finds the token likelier than the ``against`` pane's
model; blue: less likely; white: the same), in fixed steps of nats so that colours compare across
answers, with its numbers on hover. Every piece of model text is sanitised and escaped. Only
classes and one style block: the page stays self-contained under the export's strict CSP.
"""

from __future__ import annotations

import bisect
import html
from dataclasses import dataclass, field
from typing import Any

from personachat.lens.records import DivergenceRecord, divergence_records, latest_by_target
from personachat.text import sanitize

EDGES = (-4.0, -2.0, -1.0, -0.5, -0.1, 0.1, 0.5, 1.0, 2.0, 4.0)  # nats; 11 classes d0 .. d10
PALETTE = (  # ColorBrewer RdBu, blue (d0: much less likely) to red (d10: much likelier)
    "#053061", "#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7",
    "#fddbc7", "#f4a582", "#d6604d", "#b2182b", "#67001f",
)  # fmt: skip
DARK = {0, 1, 9, 10}  # classes that need light text
LABELS = ("≤ −4", "−4 … −2", "−2 … −1", "−1 … −0.5", "−0.5 … −0.1", "±0.1",
          "0.1 … 0.5", "0.5 … 1", "1 … 2", "2 … 4", "≥ 4")  # fmt: skip


def colour_class(diff: float) -> int:
    """The class (0-10) of a token whose ``logp - logp_against`` is ``diff``."""
    return bisect.bisect_left(EDGES, diff) if diff < 0 else bisect.bisect_right(EDGES, diff)


def esc(text: Any) -> str:
    """Untrusted text made safe inside HTML text or a quoted attribute."""
    return html.escape(sanitize(str(text)), quote=True)


@dataclass
class DivergenceColours:
    """The coloured answers of one transcript (none when it has no divergence records)."""

    records: dict[str, DivergenceRecord] = field(default_factory=dict)

    @property
    def css(self) -> str:
        """The style rules of the colour classes and the legend ("" without records)."""
        if not self.records:
            return ""
        rules = [
            f".d{i} {{ background: {colour};{' color: #fff;' if i in DARK else ''} }}"
            for i, colour in enumerate(PALETTE)
        ]
        rules.append(".lens-legend { margin: .5rem 0 1rem; font-size: .85rem; }")
        rules.append(".lens-legend span { padding: 0 .35rem; font-family: ui-monospace, monospace; }")
        return "\n" + "\n".join(rules) + "\n"

    @property
    def legend(self) -> str:
        """What the colours mean ("" without records)."""
        if not self.records:
            return ""
        against = sorted({r.against for r in self.records.values()})
        keys = "".join(f'<span class="d{i}">{esc(label)}</span>' for i, label in enumerate(LABELS))
        return (
            '<div class="lens-legend">Tokens coloured by log p(pane) − log p('
            + esc(", ".join(against))
            + "), in nats, teacher-forced: "
            + keys
            + " · hover a token for its numbers</div>"
        )

    def answer(self, response: Any) -> str | None:
        """``response``'s answer as coloured tokens, or None when it has no divergence record (or
        the record's tokens do not spell its text, e.g. scored before an edit)."""
        record = self.records.get(response.id)
        if record is None or "".join(record.tokens) != response.text:
            return None
        spans = []
        for token, own, other in zip(record.tokens, record.logp, record.logp_against, strict=True):
            if not token:
                continue  # part of a character the next token completes
            diff = own - other
            title = f"log p {own:.3f} · {record.against} {other:.3f} · diff {diff:+.3f}"
            spans.append(f'<span class="d{colour_class(diff)}" title="{esc(title)}">{esc(token)}</span>')
        return f'<pre class="answer lens">{"".join(spans)}</pre>'


def divergence_colours(transcript: Any) -> DivergenceColours:
    """The colouring of ``transcript``'s answers: the last divergence record of each answer."""
    return DivergenceColours(latest_by_target(divergence_records(transcript.other)))
