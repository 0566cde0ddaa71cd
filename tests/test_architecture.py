"""The layering rules docs/architecture.md states, checked on the code itself.

- no import cycle between personachat's modules (imports under ``TYPE_CHECKING`` aside);
- nothing outside ``personachat/app`` imports Textual;
- no torch, transformers, peft, tokenizers, safetensors or vllm at module level outside the
  embedded backend and the demo builder;
- importing the command line and the data modules stays light (no Textual, torch, httpx, YAML);
- docs/architecture.md names every module that exists, and none that does not.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "personachat"
HEAVY = ("torch", "transformers", "peft", "tokenizers", "safetensors", "vllm")
HEAVY_ALLOWED = {
    "personachat.backends.embedded",
    "personachat.backends.embedded_batch",
    "personachat.backends.embedded_load",
    "personachat.demo",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside.update(id(sub) for sub in ast.walk(node))
    return inside


def imports(path: Path, *, top_level_only: bool = False) -> Iterator[str]:
    """Absolute names of what ``path`` imports (outside ``TYPE_CHECKING`` blocks)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    nodes = ast.iter_child_nodes(tree) if top_level_only else ast.walk(tree)
    module = module_name(path)
    for node in nodes:
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (path.name == "__init__.py")]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            yield name
            yield from (f"{name}.{alias.name}" for alias in node.names)


def internal_graph() -> dict[str, set[str]]:
    def resolve(name: str) -> str | None:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for imported in imports(path):
            target = resolve(imported) if imported.startswith("personachat") else None
            if target and target != name:
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    assert cycles(internal_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_the_app_imports_textual() -> None:
    offenders = [
        name
        for name, path in MODULES.items()
        if not name.startswith("personachat.app")
        and any(i == "textual" or i.startswith("textual.") for i in imports(path))
    ]
    assert offenders == []


def test_heavy_libraries_load_only_where_they_are_used() -> None:
    offenders = {
        name: heavy
        for name, path in MODULES.items()
        if name not in HEAVY_ALLOWED
        and (heavy := [i for i in imports(path, top_level_only=True) if i.split(".")[0] in HEAVY])
    }
    assert offenders == {}


def loaded_after(modules: list[str], watched: tuple[str, ...], setup: str = "") -> list[str]:
    """Which of ``watched`` a fresh interpreter has loaded after importing ``modules`` (and ``setup``)."""
    code = f"import sys\nfor m in {modules!r}: __import__(m)\n{setup}\nprint([m for m in {watched!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return list(ast.literal_eval(out.stdout.strip()))


def test_importing_the_cli_and_the_data_modules_is_light() -> None:
    # `personachat --help` and the plain data modules: no UI, no HTTP client, no YAML, no engine.
    startup = ["personachat.cli", "personachat.profile", "personachat.promptsets", "personachat.transcripts"]
    watched = (
        "textual",
        "torch",
        "httpx",
        "rich",
        "yaml",
        "personachat.promptsets.runner",
        "personachat.engine.session",
    )
    assert loaded_after(startup, watched, "from personachat.cli import build_parser; build_parser()") == []
    # The in-process backend and the model tools load torch only when they run.
    models = [
        "personachat.backends.embedded",
        "personachat.serving.connect",
        "personachat.demo",
        "personachat.adapters",
    ]
    assert loaded_after(models, HEAVY) == []


def test_architecture_doc_names_every_module() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = {
        n for n in re.findall(r"`((?:[a-z_]+/)*[a-z_]+\.py)`", doc) if not n.startswith(("tests/", "bench/"))
    }
    files = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")}
    assert sorted(f for f in files - named if not f.endswith("__init__.py")) == [], "modules the doc omits"
    assert sorted(named - files) == [], "modules the doc names that do not exist"


def test_no_module_is_over_600_lines() -> None:
    long = {name: n for name, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 600}
    assert long == {}


def test_the_app_doc_lists_every_slash_command_and_no_other() -> None:
    """docs/app.md's command table is written by hand: it names each command of the table once."""
    from personachat.app.slash_commands import COMMANDS

    doc = (ROOT / "docs" / "app.md").read_text(encoding="utf-8")
    rows = [line for line in doc.splitlines() if line.startswith("| `/")]
    named = {name for row in rows for name in re.findall(r"`/([a-z]+)", row.split(" | ")[0])}
    assert named == {command.name for command in COMMANDS}
