"""The app's key bindings (each with an id, rebindable in a keymap file) and the label keys."""

from __future__ import annotations

from textual.binding import Binding, BindingType

RESERVED_PANE_KEYS = set("123456789chpz")
"""Keys a focused pane uses for itself; label keys never take them."""

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
            f"alt+{n}",
            f"focus_pane({n})",
            f"Pane {n}",
            id=f"app.pane{n}",
            show=False,
            tooltip="Focus pane 1-9 (in screen order)",
        )
        for n in range(1, 10)
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


def binding_ids() -> list[str]:
    """Every binding id a keymap may rebind (the app's, the prompt box's and a pane's)."""
    from textual.binding import Binding

    from personachat.app.pane import Pane
    from personachat.app.prompt import PromptInput

    every = [*APP_BINDINGS, *PromptInput.BINDINGS, *Pane.BINDINGS]
    return [b.id for b in every if isinstance(b, Binding) and b.id]
