"""Every slash command of the app: what it takes, what it does, in one place each.

To add a command, write a function here and decorate it with ``@COMMANDS.command(name, help,
args=...)``: the parser, the completion hint, the help screen (F1) and the command palette
(Ctrl+P) all read this table. A handler gets the app and the parsed :class:`Command`; it uses the
app's public methods and raises :class:`CommandError` for anything the researcher should fix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from personachat.app.slash import Arg, Command, CommandError, CommandTable

if TYPE_CHECKING:
    from personachat.app.app import PersonachatApp

COMMANDS = CommandTable()
command = COMMANDS.command


def _has_judge(app: PersonachatApp) -> bool:
    return app.profile.judge is not None


def _replay_loaded(app: PersonachatApp) -> bool:
    return app.replay.loaded is not None


# -- what panes send -----------------------------------------------------------------------------


@command(
    "system",
    "set the system prompt (for the next turns)",
    target=True,
    target_required=True,
    args=(Arg("TEXT", "text"),),
    forms=("/system PANE|all --none   send no system message at all",),
)
def system(app: PersonachatApp, cmd: Command) -> None:
    text = None if cmd.values[0] == "--none" else cmd.values[0]
    if text is not None and text.startswith("--none"):
        raise CommandError("--none stands alone after the pane: /system PANE|all --none")
    app.require_session().set_system(app.pane_name(cmd.pane), text)
    app.settings_changed()
    where = cmd.pane or "every pane"
    app.say(f"system prompt for {where}: " + ("none (no system message)" if text is None else repr(text)))


def _sampling(app: PersonachatApp, cmd: Command, setting: str) -> None:
    value = cmd.values[0]
    app.require_session().set_sampling(app.pane_name(cmd.pane), **{setting: value})
    app.settings_changed()
    app.say(f"{setting}={value} for {cmd.pane or 'every pane'} (from the next turn)")


@command("temp", "set the temperature", target=True, args=(Arg("T", "sampling", setting="temperature"),))
def temp(app: PersonachatApp, cmd: Command) -> None:
    _sampling(app, cmd, "temperature")


@command("max", "set max_tokens", target=True, args=(Arg("N", "sampling", setting="max_tokens"),))
def max_tokens(app: PersonachatApp, cmd: Command) -> None:
    _sampling(app, cmd, "max_tokens")


@command(
    "seed", "set or unset the sampling seed", target=True, args=(Arg("N|none", "sampling", setting="seed"),)
)
def seed(app: PersonachatApp, cmd: Command) -> None:
    _sampling(app, cmd, "seed")


@command("n", "ask for N samples per turn", target=True, args=(Arg("N", "sampling", setting="n"),))
def samples(app: PersonachatApp, cmd: Command) -> None:
    _sampling(app, cmd, "n")


def _number(value: str, kind: type[int] | type[float], what: str) -> float:
    try:
        return kind(value)
    except ValueError:
        raise CommandError(f"{what} must be a number, not {value!r}") from None


@command(
    "steer",
    "add ALPHA × a persona vector to a pane's residual stream at LAYER (in-process; off: stop)",
    target=True,
    target_required=True,
    args=(Arg("FILE|off", "word"), Arg("LAYER", "word", optional=True), Arg("ALPHA", "word", optional=True)),
    forms=("/steer PANE FILE ALPHA   at the layer the file names",),
)
def steer(app: PersonachatApp, cmd: Command) -> None:
    from personachat.steering import SteerSpec

    file, *numbers = cmd.values
    spec = None
    if file != "off":
        if len(numbers) not in (1, 2):
            raise CommandError("usage: /steer PANE FILE [LAYER] ALPHA, or /steer PANE off")
        layer = int(_number(numbers[0], int, "LAYER")) if len(numbers) == 2 else None
        spec = SteerSpec.load(file, alpha=_number(numbers[-1], float, "ALPHA"), layer=layer)
    app.require_session().set_steer(app.pane_name(cmd.pane), spec)
    app.settings_changed()
    what = "no steering" if spec is None else f"steered by {file} × {spec.alpha:g} at layer {spec.layer}"
    app.say(f"{cmd.pane}: {what} (from the next turn)")


@command(
    "scale",
    "multiply an adapter pane's LoRA update by S (0: the base model, 1: as trained; off: as trained)",
    target=True,
    target_required=True,
    args=(Arg("S|off", "word"),),
)
def scale(app: PersonachatApp, cmd: Command) -> None:
    value = None if cmd.values[0] == "off" else _number(cmd.values[0], float, "S")
    app.require_session().set_adapter_scale(app.pane_name(cmd.pane), value)
    app.settings_changed()
    app.say(
        f"{cmd.pane}: adapter scale {'as trained' if value is None else f'{value:g}'} (from the next turn)"
    )


@command(
    "settings",
    "show what a pane sends: its system prompt, sampling and transform",
    args=(Arg("PANE", "pane", optional=True),),
    per_pane="Settings of {pane}",
)
def settings(app: PersonachatApp, cmd: Command) -> None:
    pane = app.resolve(cmd.values[0]) if cmd.values else app.focused_pane()
    if pane is None:
        raise CommandError("no pane is visible")
    spec = app.require_session().panes[pane.spec.name].spec
    system = "none (no system message)" if spec.system is None else repr(spec.system)
    transform = spec.transform
    shown = f"prefix={transform.prefix!r} suffix={transform.suffix!r}" if transform.active else "none"
    model = "" if app.blind else f"{spec.model} · "
    app.say(f"pane {pane.shown_name}: {model}system {system} · {spec.sampling.short()} · transform {shown}")


@command("clear", "start a new conversation (same transcript)")
def clear(app: PersonachatApp, cmd: Command) -> None:
    app.clear_conversation()


# -- annotations ---------------------------------------------------------------------------------


@command("tag", "tag the current turn", args=(Arg("TAG", "word", repeat=True),))
def tag(app: PersonachatApp, cmd: Command) -> None:
    app.annotator.tag(cmd.values[0])


@command("note", "attach a note to the current turn", args=(Arg("TEXT", "text"),))
def note(app: PersonachatApp, cmd: Command) -> None:
    app.annotator.note(cmd.values[0])


def _sample(target: str) -> int:
    """The 0-based sample of ``PANE#N`` (N counts from 1; 0 when there is no ``#``)."""
    if "#" not in target:
        return 0
    try:
        return int(target.split("#", 1)[1]) - 1
    except ValueError:
        raise CommandError(
            f"'{target}': the sample after # must be a number (samples count from 1)"
        ) from None


@command(
    "label",
    "label one pane's last answer",
    args=(Arg("PANE[#SAMPLE]", "pane", sample=True), Arg("LABEL", "label")),
    per_pane="Label {pane} as {label}",
    pane_values=lambda pane, label: [pane, label],
)
def label(app: PersonachatApp, cmd: Command) -> None:
    target, value = cmd.values
    app.annotator.label(app.resolve(target), value, _sample(target))


@command(
    "unlabel",
    "take back your label on one pane's last answer",
    args=(Arg("PANE[#SAMPLE]", "pane", sample=True),),
)
def unlabel(app: PersonachatApp, cmd: Command) -> None:
    app.annotator.unlabel(app.resolve(cmd.values[0]), _sample(cmd.values[0]))


@command(
    "prefer",
    "blind: the first pane's last answer is better than the second's",
    args=(Arg("PANE", "pane"), Arg("PANE", "pane")),
    applies=lambda app: app.blind,
)
def prefer(app: PersonachatApp, cmd: Command) -> None:
    better, worse = (app.resolve(v) for v in cmd.values)
    app.annotator.prefer(better, worse, better)


@command(
    "tie",
    "blind: two panes' last answers are equally good",
    args=(Arg("PANE", "pane"), Arg("PANE", "pane")),
    applies=lambda app: app.blind,
)
def tie(app: PersonachatApp, cmd: Command) -> None:
    first, second = (app.resolve(v) for v in cmd.values)
    app.annotator.prefer(first, second, None)


# -- what the screen shows -----------------------------------------------------------------------


@command(
    "diverge",
    "colour a pane's last answer by log p(pane) − log p(against) per token (again: plain)",
    args=(Arg("PANE", "pane", optional=True), Arg("AGAINST", "pane", optional=True)),
    per_pane="Colour pane {pane} by divergence",
)
def diverge(app: PersonachatApp, cmd: Command) -> None:
    pane = app.resolve(cmd.values[0]) if cmd.values else app.focused_pane()
    app.lens.toggle(pane, cmd.values[1] if len(cmd.values) > 1 else None)


def _panes_check(cmd: Command) -> str | None:
    if len(cmd.values) == 1:
        return f"/panes {cmd.values[0]} needs pane names"
    return None


@command(
    "panes",
    "list, hide or show panes",
    args=(
        Arg("hide|show|only", "choice", optional=True, choices=("hide", "show", "only")),
        Arg("PANE", "pane", optional=True, repeat=True, all=True),
    ),
    check=_panes_check,
    per_pane="Hide pane {pane}",
    pane_values=lambda pane, label: ["hide", [pane]],
)
def panes(app: PersonachatApp, cmd: Command) -> None:
    if not cmd.values:
        listing = ", ".join(f"{i}:{p.shown_name}" for i, p in enumerate(app.visible_panes(), 1))
        shown_hidden = ", ".join(sorted(app.aliases_of(app.hidden))) or "none"
        app.say(f"visible {listing} · hidden {shown_hidden} · /panes hide|show|only PANE…")
        return
    action: str = cmd.values[0]
    names: list[str] = cmd.values[1]
    chosen = set(app.panes) if "all" in names else {app.resolve(n).spec.name for n in names}
    hidden: set[str]
    if action == "hide":
        hidden = app.hidden | chosen
    elif action == "show":
        hidden = app.hidden - chosen
    else:
        hidden = set(app.panes) - chosen
    if hidden >= set(app.panes):
        raise CommandError("that would hide every pane")
    app.set_hidden(hidden)
    shown_hidden = ", ".join(sorted(app.aliases_of(hidden))) or "none"
    app.say(f"{len(app.panes) - len(hidden)} panes shown · hidden: {shown_hidden}")


@command(
    "zoom",
    "show one pane full screen (again: back)",
    args=(Arg("PANE", "pane", optional=True),),
    per_pane="Zoom pane {pane}",
)
def zoom(app: PersonachatApp, cmd: Command) -> None:
    app.action_zoom(cmd.values[0] if cmd.values else None)


@command(
    "markdown",
    "render finished answers as Markdown",
    args=(Arg("off|on|focused", "choice", optional=True, choices=("off", "on", "focused")),),
)
def markdown(app: PersonachatApp, cmd: Command) -> None:
    if cmd.values:
        app.markdown_mode = cmd.values[0]
    else:
        app.action_toggle_markdown()


@command("blind", "shuffle panes and hide their names until /reveal", applies=lambda app: not app.blind)
def blind(app: PersonachatApp, cmd: Command) -> None:
    if app.blind:
        app.say("already blind: /reveal shows the names")
        return
    app.blind = True
    app.say("blind: panes shuffled and named A, B, …; labels are recorded blind=true; /reveal ends it")


@command("reveal", "show pane names again", applies=lambda app: app.blind)
def reveal(app: PersonachatApp, cmd: Command) -> None:
    if not app.blind:
        app.say("not in blind mode")
        return
    mapping = ", ".join(f"{alias}={name}" for alias, name in app.aliases.items())
    app.blind = False
    app.say(f"revealed: {mapping}")


@command(
    "diff",
    "word-level diff of two panes' last answers",
    args=(Arg("PANE", "pane"), Arg("PANE", "pane")),
    applies=lambda app: len(app.visible_panes()) > 1,
)
def diff(app: PersonachatApp, cmd: Command) -> None:
    from personachat.app.screens.diff import DiffScreen

    first, second = (app.resolve(name) for name in cmd.values)
    for pane in (first, second):
        problem = pane.answer_problem()
        if problem:
            raise CommandError(problem)
    old, new = first.last_answers(), second.last_answers()
    app.push_screen(DiffScreen(first.shown_name, old[0], second.shown_name, new[0]))


@command(
    "copy",
    "copy a pane's last answer to the clipboard",
    args=(Arg("PANE", "pane", optional=True),),
    per_pane="Copy last answer of {pane}",
)
def copy(app: PersonachatApp, cmd: Command) -> None:
    app.action_copy_answer(cmd.values[0] if cmd.values else None)


@command("pager", "open a pane's last answer in $PAGER", args=(Arg("PANE", "pane", optional=True),))
def pager(app: PersonachatApp, cmd: Command) -> None:
    app.action_pager(cmd.values[0] if cmd.values else None)


@command("save", "save an SVG screenshot next to the transcript")
def save(app: PersonachatApp, cmd: Command) -> None:
    app.action_save_screenshot()


@command("record", "record the screen (asciicast) next to the transcript; again: stop")
def record(app: PersonachatApp, cmd: Command) -> None:
    from personachat.app.recording import toggle_recording

    toggle_recording(app)


@command("export", "write the session as Markdown and HTML next to the transcript")
def export(app: PersonachatApp, cmd: Command) -> None:
    from personachat.export import export_transcript
    from personachat.transcripts.reader import read_transcript

    path = app.transcript_path
    if path is None or not path.exists():
        raise CommandError("nothing to export yet")
    transcript = read_transcript(path)
    written = export_transcript(transcript, "markdown")
    page = export_transcript(transcript, "html")
    app.say(f"exported {written.name} and {page.name} in {written.parent}")


def _can_load(app: PersonachatApp) -> bool:
    from personachat.app.adapter_panes import can_load

    return can_load(app)


@command(
    "load",
    "load a LoRA adapter into the running vLLM server and open a pane for it",
    args=(Arg("NAME", "word"), Arg("PATH", "path")),
    applies=_can_load,
)
def load(app: PersonachatApp, cmd: Command) -> None:
    from personachat.app.adapter_panes import open_adapter_pane

    name, path = cmd.values
    app.run_worker(open_adapter_pane(app, name, path), group="load-adapter", exit_on_error=False)


# -- prompt sets and the judge -------------------------------------------------------------------


@command(
    "replay",
    "load a prompt set to step through (.toml/.jsonl/.txt/.yaml); all: send the rest; off: unload",
    args=(Arg("SET|all|off", "path", optional=True, choices=("all", "off")),),
)
def replay(app: PersonachatApp, cmd: Command) -> None:
    driver = app.replay
    if not cmd.values:
        if driver.loaded is None and driver.default_set is not None:
            driver.load(str(driver.default_set))
            return
        if driver.loaded is None:
            raise CommandError("no prompt set loaded; usage: /replay SET")
        app.say(f"replay {driver.loaded.position()} · /next, /prev, /replay all, /replay off")
    elif cmd.values[0] == "all":
        driver.send_all()
    elif cmd.values[0] == "off":
        driver.unload()
    else:
        driver.load(cmd.values[0])


@command("next", "send the set's next prompt or turn (ctrl+n)", applies=_replay_loaded)
def next_prompt(app: PersonachatApp, cmd: Command) -> None:
    app.replay.send_next()


@command("prev", "send the set's previous prompt again (ctrl+b)", applies=_replay_loaded)
def previous_prompt(app: PersonachatApp, cmd: Command) -> None:
    app.replay.send_previous()


@command(
    "judge",
    "score new answers with the profile's judge, or stop",
    args=(Arg("on|off", "choice", optional=True, choices=("on", "off")),),
    applies=_has_judge,
)
def judge(app: PersonachatApp, cmd: Command) -> None:
    app.judging.switch(cmd.values[0] == "on" if cmd.values else None)


# -- the app -------------------------------------------------------------------------------------


@command("help", "every key and command")
def show_help(app: PersonachatApp, cmd: Command) -> None:
    app.action_help()


@command("quit", "cancel what streams (it is recorded) and quit")
def quit_app(app: PersonachatApp, cmd: Command) -> None:
    app.call_next(app.action_quit)
