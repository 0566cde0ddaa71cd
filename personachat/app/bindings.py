"""The app's key bindings (each with an id, rebindable in a keymap file) and the label keys."""

from __future__ import annotations

from textual.binding import Binding, BindingType

RESERVED_PANE_KEYS = set("123456789chpzud")
"""Keys a focused pane uses for itself; label keys never take them."""

ESC_DIGIT_KEYS: dict[str, int] = {
    "inverted_exclamation_mark": 1,
    "trade_mark_sign": 2,
    "pound_sign": 3,
    "cent_sign": 4,
    "infinity": 5,
    "section_sign": 6,
    "pilcrow_sign": 7,
    "bullet": 8,
    "ª": 9,
}
"""What Alt+1…9 arrives as in terminals that send Alt as ESC (tmux, xterm, Windows Terminal, iTerm2
with Esc+): Textual reads ESC 1 as ``¡`` and so on (the macOS Option+digit characters). They are
bound to the pane keys and never typed into the prompt."""

APP_BINDINGS: list[BindingType] = [
    Binding(
        "escape",
        "cancel",
        "Cancel",
        id="app.cancel",
        tooltip="Cancel every running answer (what arrived is recorded as cancelled)",
    ),
    Binding(
        "ctrl+r",
        "regenerate",
        "Regenerate",
        id="app.regenerate",
        tooltip="Ask the last turn again in every visible pane",
    ),
    Binding(
        "ctrl+n",
        "replay_next",
        "Next prompt",
        id="app.replay_next",
        show=False,
        tooltip="Replay: send the prompt set's next prompt (or turn) to every visible pane",
    ),
    Binding(
        "ctrl+b",
        "replay_previous",
        "Previous prompt",
        id="app.replay_previous",
        show=False,
        tooltip="Replay: send the prompt set's previous prompt again (a new turn, recorded as such)",
    ),
    Binding("f1", "help", "Help", id="app.help", tooltip="Every key and command"),
    Binding(
        "f2",
        "toggle_markdown",
        "Markdown",
        id="app.markdown",
        tooltip="Plain text → Markdown (finished answers) → Markdown in the focused pane only",
    ),
    Binding(
        "f3",
        "copy_answer",
        "Copy",
        id="app.copy",
        tooltip="Copy the focused pane's last answer to the clipboard (OSC 52)",
    ),
    Binding("f4", "pager", "Pager", id="app.pager", tooltip="Open the focused pane's last answer in $PAGER"),
    Binding("f11", "zoom", "Zoom", id="app.zoom", tooltip="Show the focused pane alone, and back"),
    Binding(
        "ctrl+s",
        "save_screenshot",
        "Screenshot",
        id="app.screenshot",
        tooltip="Save an SVG screenshot next to the transcript",
    ),
    *(
        Binding(
            f"alt+{n},{glyph}",
            f"focus_pane({n})",
            f"Pane {n}",
            id=f"app.pane{n}",
            show=False,
            priority=True,
            tooltip="Focus pane 1-9 (in screen order); Enter goes back to the prompt",
        )
        for glyph, n in ESC_DIGIT_KEYS.items()
    ),
    Binding(
        "ctrl+q",
        "quit",
        "Quit",
        id="app.quit",
        priority=True,
        tooltip="Cancel what streams (it is recorded) and quit",
    ),
]


def label_keys(labels: list[str]) -> dict[str, str]:
    """A one-letter key for each label: its first letter not already taken (nor used by a pane key)."""
    keys: dict[str, str] = {}
    for label in labels:
        for char in label.lower():
            if char.isalpha() and char not in keys and char not in RESERVED_PANE_KEYS:
                keys[char] = label
                break
    return keys
