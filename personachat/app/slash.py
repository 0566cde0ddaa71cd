"""Slash commands as data: how a command is described, parsed and completed (no Textual here).

A :class:`SlashCommand` says everything about one command: its name, its arguments, its help
line, when it applies and the function that runs it. The commands themselves are declared in
:mod:`personachat.app.slash_commands`; the parser, the completion hint, the help screen and the
command palette all read that one table. Parsing raises nothing but :class:`CommandError`, whose
message (with the usage) is shown in the app.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from personachat.errors import PersonachatError
from personachat.sampling import sampling_value

if TYPE_CHECKING:
    from personachat.app.app import PersonachatApp


class CommandError(PersonachatError):
    """A slash command the app cannot run as typed; the message says how to write it."""


ArgKind = Literal["pane", "word", "choice", "label", "sampling", "text", "path"]


@dataclass(frozen=True)
class Arg:
    """One argument of a command.

    ``pane``: a pane name (or blind letter); with ``sample`` also ``PANE#N``; with ``all`` also
    ``all``. ``choice``: one of ``choices``. ``label``: one of the profile's labels. ``sampling``:
    a value for the sampling setting ``setting``, checked as everywhere. ``text``: the rest of the
    line, spacing kept. ``path``: the rest of the line as a path (``choices`` are completed too).
    """

    name: str
    kind: ArgKind
    optional: bool = False
    repeat: bool = False
    choices: tuple[str, ...] = ()
    setting: str = ""
    sample: bool = False
    all: bool = False

    def usage(self) -> str:
        shown = self.name + ("..." if self.repeat else "")
        return f"[{shown}]" if self.optional else shown


Handler = Callable[["PersonachatApp", "Command"], None]


@dataclass(frozen=True)
class SlashCommand:
    """One slash command: see the module docstring.

    ``target``: the command takes a leading ``PANE|all`` (``Command.pane``; ``None`` is every
    pane), optional unless ``target_required``. A first word that is neither a pane nor ``all`` is
    refused when the target is required, or when the words left would not fit the arguments. ``forms``: further usage lines for the help. ``check``: extra validation of a
    parsed command (returns an error or None). ``applies``: whether the palette offers it now.
    ``per_pane``: palette entries for each pane (``"Zoom pane {pane}"``; with ``{label}`` one per
    label too), which run the command with ``pane_values(pane, label)`` (default: ``[pane]``).
    """

    name: str
    help: str
    handler: Handler
    args: tuple[Arg, ...] = ()
    target: bool = False
    target_required: bool = False
    forms: tuple[str, ...] = ()
    check: Callable[[Command], str | None] | None = None
    applies: Callable[[PersonachatApp], bool] | None = None
    per_pane: str = ""
    pane_values: Callable[[str, str], list[Any]] = lambda pane, label: [pane]

    @property
    def usage(self) -> str:
        words = [f"/{self.name}"]
        if self.target:
            words.append("PANE|all" if self.target_required else "[PANE|all]")
        words += [arg.usage() for arg in self.args]
        return " ".join(words)

    @property
    def usages(self) -> list[str]:
        return [self.usage, *self.forms]

    @property
    def needs_arguments(self) -> bool:
        return any(not arg.optional for arg in self.args)


@dataclass
class Command:
    """A parsed slash command. ``pane`` is ``None`` for "all panes" (or when the command takes none).

    ``values`` holds one value per argument given, converted (a list for a repeated argument);
    ``text`` is everything after the command (and the pane), spacing kept.
    """

    name: str
    pane: str | None = None
    values: list[Any] = field(default_factory=list)
    text: str = ""


@dataclass(frozen=True)
class Context:
    """What parsing checks names against: the pane names in use and the profile's labels."""

    panes: Sequence[str]
    labels: Sequence[str] = ()


class CommandTable:
    """Every slash command by name; built with :meth:`command` as a decorator."""

    def __init__(self) -> None:
        self.commands: dict[str, SlashCommand] = {}

    def command(self, name: str, help: str, **details: Any) -> Callable[[Handler], Handler]:
        """Register the decorated function as the handler of ``/name``."""

        def register(handler: Handler) -> Handler:
            self.commands[name] = SlashCommand(name, help, handler, **details)
            return handler

        return register

    def __iter__(self) -> Iterator[SlashCommand]:
        return iter(self.commands.values())

    def __contains__(self, name: object) -> bool:
        return name in self.commands

    def get(self, name: str) -> SlashCommand | None:
        return self.commands.get(name)

    def matching(self, prefix: str) -> list[SlashCommand]:
        """The command named ``prefix``, else every command whose name starts with it."""
        if prefix in self.commands:
            return [self.commands[prefix]]
        return [c for n, c in self.commands.items() if n.startswith(prefix)]

    # -- parsing ---------------------------------------------------------------------------------

    def parse(self, text: str, context: Context) -> Command:
        """Parse ``text`` (which starts with ``/``); raise :class:`CommandError` naming the problem."""
        body = text.strip()[1:]
        name, _, rest = body.partition(" ")
        name = name.lower()
        if not name:
            raise CommandError("type a command after '/', e.g. /help")
        spec = self.commands.get(name)
        if spec is None:
            close = [n for n in self.commands if n.startswith(name[:2])]
            hint = f" (did you mean {', '.join('/' + n for n in close)}?)" if close else ""
            raise CommandError(f"unknown command /{name}{hint}; /help lists every command")
        rest = rest.strip()
        command = Command(name, text=rest)
        if spec.target:
            first, _, remainder = rest.partition(" ")
            if first == "all":
                command.text = remainder.strip()
            elif first in context.panes:
                command.pane = first
                command.text = remainder.strip()
            elif first and (spec.target_required or len(rest.split()) > _word_slots(spec)):
                raise CommandError(
                    f"no pane named '{first}' (panes: {', '.join(context.panes)}; or 'all'); "
                    f"usage: {' or '.join(spec.usages)}"
                )
            elif spec.target_required:
                raise CommandError(f"/{name} needs a pane or 'all' first; usage: {' or '.join(spec.usages)}")
        command.values = _values(spec, command.text, context)
        if spec.check is not None:
            problem = spec.check(command)
            if problem:
                raise CommandError(f"{problem}; usage: {' or '.join(spec.usages)}")
        return command

    # -- completion ------------------------------------------------------------------------------

    def complete(self, text: str, context: Context) -> list[str]:
        """Completions for a partly typed command: names, then panes, choices and labels where they go."""
        if not is_command(text):
            return []
        body = text[1:]
        if " " not in body:
            return [f"/{name}" for name in self.commands if name.startswith(body)]
        name, _, rest = body.partition(" ")
        spec = self.commands.get(name)
        if spec is None:
            return []
        words = rest.split(" ")
        partial = words[-1]
        head = text[: len(text) - len(partial)]
        position = len(words) - 1
        options: list[str] = []
        if spec.target and position == 0:
            options += [*context.panes, "all"]
            if spec.args and spec.args[0].kind == "choice":
                options += list(spec.args[0].choices)
        else:
            if spec.target and words[0] in (*context.panes, "all"):
                position -= 1
            arg = _arg_at(spec.args, position)
            if arg is not None:
                options = _options(arg, context)
        return [head + option for option in dict.fromkeys(options) if option.startswith(partial)]


def is_command(text: str) -> bool:
    """Slash commands start with ``/``; ``//`` escapes a prompt that starts with a slash."""
    return text.startswith("/") and not text.startswith("//")


def _word_slots(spec: SlashCommand) -> int:
    """How many words the arguments can take (a large number when one takes the rest of the line)."""
    if any(arg.repeat or arg.kind in ("text", "path") for arg in spec.args):
        return 1_000_000
    return len(spec.args)


def _arg_at(args: Sequence[Arg], position: int) -> Arg | None:
    for index, arg in enumerate(args):
        if arg.kind in ("text", "path"):
            return arg if position >= index else None
        if index == position or (arg.repeat and position >= index):
            return arg
    return None


def _options(arg: Arg, context: Context) -> list[str]:
    if arg.kind == "pane":
        return [*context.panes, *(["all"] if arg.all else [])]
    if arg.kind == "label":
        return list(context.labels)
    return list(arg.choices)


def _values(spec: SlashCommand, text: str, context: Context) -> list[Any]:
    """Convert and check the arguments of ``spec`` in ``text``."""

    def bad(message: str) -> CommandError:
        return CommandError(f"{message}; usage: {' or '.join(spec.usages)}")

    words = text.split()
    values: list[Any] = []
    index = 0
    for arg in spec.args:
        if arg.kind in ("text", "path"):
            rest = text.strip()
            for _ in range(index):  # skip the words already used, keeping the rest's spacing
                rest = rest.split(None, 1)[1] if " " in rest else ""
            if not rest:
                if arg.optional:
                    return values
                raise bad(f"/{spec.name} needs {arg.usage()}")
            values.append(rest.strip("'\"") if arg.kind == "path" else rest)
            return values
        if index >= len(words):
            if arg.optional:
                break
            raise bad(f"/{spec.name} needs {' '.join(a.usage() for a in spec.args if not a.optional)}")
        taken = words[index:] if arg.repeat else [words[index]]
        converted = [_convert(arg, word, context, bad) for word in taken]
        values.append(converted if arg.repeat else converted[0])
        index += len(taken)
    if index < len(words):
        extra = " ".join(words[index:])
        raise bad(
            f"/{spec.name} does not take '{extra}'" if spec.args else f"/{spec.name} takes no arguments"
        )
    return values


def _convert(arg: Arg, word: str, context: Context, bad: Callable[[str], CommandError]) -> Any:
    if arg.kind == "pane":
        name = word.split("#", 1)[0] if arg.sample else word
        if name == "all" and arg.all:
            return word
        if name not in context.panes:
            raise bad(f"no pane named '{name}' (panes: {', '.join(context.panes)})")
        return word
    if arg.kind == "choice" and word not in arg.choices:
        raise bad(f"'{word}' is not one of {', '.join(arg.choices)}")
    if arg.kind == "label" and context.labels and word not in context.labels:
        raise bad(f"'{word}' is not one of this profile's labels ({', '.join(context.labels)})")
    if arg.kind == "sampling":
        try:
            return sampling_value(arg.setting, word)
        except ValueError as exc:
            raise bad(str(exc)) from None
    return word
