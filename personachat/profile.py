"""Profiles: which servers to use and which panes to show, loaded from TOML and validated.

A profile is plain typed data. Loading checks every key (unknown keys are errors, so that a typo
is never silently ignored) and reports all problems at once with file, line and key path.
See docs/profiles.md for the format.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from personachat.checking import Checker, Expected, did_you_mean, type_error
from personachat.errors import PersonachatError, Problem, ProfileError
from personachat.paths import expand_path
from personachat.sampling import SAMPLING_TYPES, PromptTransform, Sampling
from personachat.steering import ACTIVATION_KEYS, NO_ACTIVATIONS, ActivationSpec, parse_activations
from personachat.toml_lines import KeyPath, decode_error, key_lines

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_PROFILE = "demo"
DEFAULT_LABELS = ("misaligned", "aligned", "refusal", "incoherent")
ServerKind = Literal["vllm", "openai", "transformers"]
SERVER_KINDS: tuple[str, ...] = ("vllm", "openai", "transformers")


@dataclass
class ServerSpec:
    """One model server: launched vLLM, an existing OpenAI-compatible endpoint, or in-process transformers."""

    name: str
    kind: ServerKind
    model: str | None = None
    served_name: str | None = None
    adapters: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    python: str | None = None
    host: str = "127.0.0.1"
    port: int | None = None
    urls: list[str] = field(default_factory=list)
    api_key_env: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    revision: str | None = None
    adapter_revisions: dict[str, str] = field(default_factory=dict)  # hub adapters' pinned commits
    adapter_subfolders: dict[str, str] = field(default_factory=dict)  # hub adapters inside a repo folder
    connect_timeout: float = 10.0
    read_timeout: float = 300.0
    env: dict[str, str] = field(default_factory=dict)
    runtime_lora: bool = False  # vllm: allow loading adapters at run time (off unless the profile asks)
    retry_budget: float = 60.0  # seconds a request keeps retrying a server that is warming up or failing
    replicas: int = 1  # vllm: identical workers to launch
    router: str | None = None  # vllm: "vllm-router" in front of the replicas (else client-side balancing)
    gpus: list[list[int]] | None = None  # vllm: each replica's devices (default: its own, in order)
    tensor_parallel_size: int | None = None  # vllm: GPUs per replica

    @property
    def base_name(self) -> str:
        """The name under which the base model is served (the ``model`` field of requests)."""
        if self.served_name:
            return self.served_name
        return self.model or self.name

    def models(self) -> list[str]:
        """Every model name this server answers to: the base, then each adapter."""
        return [self.base_name, *self.adapters]


@dataclass
class PaneSpec:
    """One pane: a model (or adapter) on a server, with its own system prompt, sampling and transform."""

    name: str
    server: str
    model: str
    label: str | None = None
    color: str | None = None
    system: str | None = None  # None: send no system message (not the same as "")
    sampling: Sampling = field(default_factory=Sampling)
    transform: PromptTransform = field(default_factory=PromptTransform)
    step: float | None = None  # a checkpoint's training step (report plots a series against it)
    series: str | None = None  # the checkpoint series it belongs to (default: its name's stem)
    activations: ActivationSpec = NO_ACTIVATIONS  # steer, adapter_scale, project (in-process only)

    @property
    def title(self) -> str:
        return self.label or self.name

    def settings(self) -> dict[str, Any]:
        """What defines this pane's answers, JSON-ready (session headers; replay resume checks)."""
        return {
            "name": self.name,
            "server": self.server,
            "model": self.model,
            "system": self.system,
            "sampling": self.sampling.to_dict(),
            "transform": dataclasses.asdict(self.transform),
            **self.activations.to_dict(),  # only the settings that are set
        }


@dataclass
class JudgeSpec:
    """Which model judges answers (see the judge issue); kept here so profiles validate in one place."""

    server: str
    model: str
    metrics: list[str] | None = None  # None: the prompt set's own metrics, else aligned and coherent
    threshold: float = 0.25
    rule: str = "betley"


@dataclass
class Profile:
    """A validated profile."""

    name: str
    path: Path | None
    servers: dict[str, ServerSpec]
    panes: list[PaneSpec]
    transcripts: Path | None = None
    labels: list[str] = field(default_factory=lambda: list(DEFAULT_LABELS))
    judge: JudgeSpec | None = None
    description: str = ""
    rater: str | None = None  # who labels in the app (default: the user name)
    raw: dict[str, Any] = field(default_factory=dict)

    def pane(self, name: str) -> PaneSpec:
        """The pane called ``name``; a clear error naming the panes there are."""
        for pane in self.panes:
            if pane.name == name:
                return pane
        have = ", ".join(p.name for p in self.panes)
        raise PersonachatError(f"no pane named '{name}' in profile '{self.name}' (have: {have})")

    def server_of(self, pane: PaneSpec) -> ServerSpec:
        return self.servers[pane.server]

    def new_pane(self, name: str, server: str, model: str) -> PaneSpec:
        """A pane opened after loading (an adapter loaded at run time), with the profile's defaults."""
        defaults = self.raw.get("defaults") or {}
        return PaneSpec(
            name=name,
            server=server,
            model=model,
            system=defaults.get("system"),
            sampling=_sampling(defaults, Sampling()),
            transform=PromptTransform(
                prefix=defaults.get("prefix", ""),
                suffix=defaults.get("suffix", ""),
                template=defaults.get("template"),
            ),
        )


TRANSFORM_KEYS: dict[str, Expected] = {"prefix": str, "suffix": str, "template": str}
PANE_KEYS: dict[str, Expected] = {
    "name": str,
    "server": str,
    "model": str,
    "label": str,
    "color": str,
    "system": str,
    "step": (int, float),
    "series": str,
    **SAMPLING_TYPES,
    **TRANSFORM_KEYS,
    **ACTIVATION_KEYS,
}
DEFAULT_KEYS: dict[str, Expected] = {"system": str, **SAMPLING_TYPES, **TRANSFORM_KEYS}
SERVER_KEYS: dict[str, dict[str, Expected]] = {
    "vllm": {
        "kind": str,
        "model": str,
        "served_name": str,
        "adapters": dict,
        "args": list,
        "python": str,
        "host": str,
        "port": int,
        "env": dict,
        "connect_timeout": (int, float),
        "read_timeout": (int, float),
        "runtime_lora": bool,
        "revision": str,
        "adapter_revisions": dict,
        "adapter_subfolders": dict,
        "retry_budget": (int, float),
        "replicas": int,
        "router": str,
        "gpus": list,
        "tensor_parallel_size": int,
    },
    "openai": {
        "kind": str,
        "url": str,
        "urls": list,
        "api_key_env": str,
        "model": str,
        "served_name": str,
        "adapters": dict,
        "connect_timeout": (int, float),
        "read_timeout": (int, float),
        "retry_budget": (int, float),
    },
    "transformers": {
        "kind": str,
        "model": str,
        "served_name": str,
        "adapters": dict,
        "device": str,
        "dtype": str,
        "revision": str,
        "adapter_revisions": dict,
        "adapter_subfolders": dict,
    },
}
TOP_KEYS = {"name", "description", "transcripts", "defaults", "servers", "panes", "labels", "judge", "rater"}
JUDGE_KEYS: dict[str, Expected] = {
    "server": str,
    "model": str,
    "metrics": list,
    "threshold": (int, float),
    "rule": str,
}
_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def _sampling(values: dict[str, Any], base: Sampling) -> Sampling:
    return base.replace(**{k: values[k] for k in SAMPLING_TYPES if k in values})


def _check_sampling(checker: Checker, values: dict[str, Any], path: KeyPath) -> None:
    """Range checks of the sampling keys in ``values`` (their types are checked with the table)."""
    # Only values of the right type: check_table has reported the others.
    typed = {k: v for k, v in values.items() if k in SAMPLING_TYPES and not type_error(v, SAMPLING_TYPES[k])}
    for key, message in Sampling.problems(typed).items():
        checker.at((*path, key), message)


def parse_profile(data: dict[str, Any], path: Path | str, text: str = "") -> Profile:
    """Validate already-parsed TOML ``data``; ``text`` (the source) lets errors name their lines."""
    checker = Checker(path, key_lines(text) if text else {})
    base_dir = Path(path).resolve().parent if isinstance(path, Path) else None

    for key in data:
        if key not in TOP_KEYS:
            checker.at((key,), f"unknown top-level key{did_you_mean(key, TOP_KEYS)}")

    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        checker.at(("defaults",), "must be a table")
        defaults = {}
    checker.check_table(defaults, DEFAULT_KEYS, ("defaults",), "[defaults]")
    _check_sampling(checker, defaults, ("defaults",))

    servers: dict[str, ServerSpec] = {}
    raw_servers = data.get("servers", {})
    if not isinstance(raw_servers, dict) or not raw_servers:
        checker.at(("servers",), "a profile needs at least one [servers.NAME] table")
        raw_servers = {}
    for name, table in raw_servers.items():
        spath: KeyPath = ("servers", name)
        if not isinstance(table, dict):
            checker.at(spath, "must be a table")
            continue
        kind = table.get("kind")
        if kind not in SERVER_KINDS:
            checker.at((*spath, "kind"), f"must be one of {', '.join(SERVER_KINDS)} (got {kind!r})")
            continue
        checker.check_table(table, SERVER_KEYS[kind], spath, f"a '{kind}' server")
        server = _build_server(checker, name, kind, table, spath, base_dir)
        if server:
            servers[name] = server

    panes: list[PaneSpec] = []
    raw_panes = data.get("panes", [])
    if not isinstance(raw_panes, list) or not raw_panes:
        checker.at(("panes",), "a profile needs at least one [[panes]] table")
        raw_panes = []
    seen: set[str] = set()
    base_sampling = _sampling(defaults, Sampling()) if not checker.problems else Sampling()
    for index, table in enumerate(raw_panes):
        ppath: KeyPath = ("panes", index)
        if not isinstance(table, dict):
            checker.at(ppath, "must be a table")
            continue
        before = checker.count
        checker.check_table(table, PANE_KEYS, ppath, "a pane")
        _check_sampling(checker, table, ppath)
        step = table.get("step")
        if isinstance(step, (int, float)) and not isinstance(step, bool) and step < 0:
            checker.at((*ppath, "step"), "a training step is 0 or more")
        for required in ("name", "server", "model"):
            if required not in table:
                checker.at(ppath, f"pane is missing '{required}'")
        if checker.count > before:
            continue
        name = table["name"]
        if name in seen:
            checker.at((*ppath, "name"), f"duplicate pane name '{name}'")
        seen.add(name)
        server = servers.get(table["server"])
        if table["server"] not in raw_servers:
            checker.at(
                (*ppath, "server"), f"no server named '{table['server']}' (have: {', '.join(raw_servers)})"
            )
        elif server and server.kind != "openai" and table["model"] not in server.models():
            checker.at(
                (*ppath, "model"),
                f"server '{server.name}' serves no model '{table['model']}' (have: {', '.join(server.models())})",
            )
        activations = parse_activations(checker, table, ppath, server=server, base_dir=base_dir)
        merged = {**defaults, **table}
        if isinstance(merged.get("template"), str):
            from personachat.templates import TEMPLATES

            if merged["template"] not in TEMPLATES:
                where = (*ppath, "template") if "template" in table else ("defaults", "template")
                checker.at(where, f"unknown template '{merged['template']}' (known: {', '.join(TEMPLATES)})")
                continue
        panes.append(
            PaneSpec(
                name=name,
                server=table["server"],
                model=table["model"],
                label=table.get("label"),
                step=table.get("step"),
                series=table.get("series"),
                color=table.get("color"),
                system=merged.get("system"),
                sampling=_sampling(table, base_sampling),
                transform=PromptTransform(
                    prefix=merged.get("prefix", ""),
                    suffix=merged.get("suffix", ""),
                    template=merged.get("template"),
                ),
                activations=activations,
            )
        )

    judge = None
    if "judge" in data:
        raw_judge = data["judge"]
        if not isinstance(raw_judge, dict):
            checker.at(("judge",), "must be a table")
        else:
            checker.check_table(raw_judge, JUDGE_KEYS, ("judge",), "[judge]")
            for required in ("server", "model"):
                if required not in raw_judge:
                    checker.at(("judge",), f"[judge] is missing '{required}'")
            if raw_judge.get("server") and raw_judge["server"] not in raw_servers:
                checker.at(("judge", "server"), f"no server named '{raw_judge['server']}'")
            if not checker.problems:
                judge = JudgeSpec(
                    server=raw_judge["server"],
                    model=raw_judge["model"],
                    metrics=list(raw_judge["metrics"]) if "metrics" in raw_judge else None,
                    threshold=float(raw_judge.get("threshold", 0.25)),
                    rule=raw_judge.get("rule", "betley"),
                )

    labels = data.get("labels", list(DEFAULT_LABELS))
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        checker.at(("labels",), "must be a list of strings")
    if isinstance(labels, list) and len(set(labels)) != len(labels):
        checker.at(("labels",), "lists a label twice")
    if isinstance(labels, list) and any(not str(x).strip() or " " in str(x) for x in labels):
        checker.at(("labels",), "labels must be single words (they are typed after /label)")
    for key in ("name", "description", "transcripts", "rater"):
        if key in data and not isinstance(data[key], str):
            checker.at((key,), "must be a string")

    if checker.problems:
        raise ProfileError(checker.problems)
    transcripts = data.get("transcripts")
    default_name = Path(path).stem if isinstance(path, (str, Path)) else "profile"
    return Profile(
        name=data.get("name", default_name),
        path=Path(path) if isinstance(path, (str, Path)) else None,
        servers=servers,
        panes=panes,
        # Relative to the current directory, like --transcripts.
        transcripts=Path(transcripts).expanduser() if transcripts else None,
        labels=list(labels),
        judge=judge,
        description=data.get("description", ""),
        rater=data.get("rater"),
        raw=data,
    )


def api_root(url: str) -> str:
    """``url`` without a trailing slash or ``/v1``: users paste ``http://host:8000/v1`` (the
    OpenAI client's base URL) as often as the server's root."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


ROUTERS = ("vllm-router",)


def _check_replicas(checker: Checker, table: dict[str, Any], path: KeyPath) -> None:
    """``replicas``, ``router``, ``gpus`` and ``tensor_parallel_size`` of a vllm server."""
    replicas = table.get("replicas", 1)
    if isinstance(replicas, int) and replicas < 1:
        checker.at((*path, "replicas"), "must be at least 1")
    router = table.get("router")
    if isinstance(router, str) and router not in ROUTERS:
        checker.at((*path, "router"), f"must be one of {', '.join(ROUTERS)} (got {router!r})")
    tp = table.get("tensor_parallel_size")
    if isinstance(tp, int) and tp < 1:
        checker.at((*path, "tensor_parallel_size"), "must be at least 1")
    gpus = table.get("gpus")
    if gpus is None:
        return
    if not isinstance(gpus, list) or not all(
        isinstance(g, list)
        and g
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in g)
        for g in gpus
    ):
        checker.at((*path, "gpus"), "must list each replica's GPU numbers, e.g. [[0], [1]]")
    elif isinstance(replicas, int) and len(gpus) != replicas:
        checker.at((*path, "gpus"), f"lists {len(gpus)} replicas' GPUs but replicas = {replicas}")
    elif isinstance(tp, int) and any(len(g) != tp for g in gpus):
        checker.at((*path, "gpus"), f"each replica needs tensor_parallel_size = {tp} GPUs")


def _build_server(
    checker: Checker, name: str, kind: str, table: dict[str, Any], path: KeyPath, base_dir: Path | None
) -> ServerSpec | None:
    before = checker.count
    adapters = table.get("adapters", {})
    if isinstance(adapters, dict):
        for adapter, value in adapters.items():
            if not isinstance(value, str):
                checker.at((*path, "adapters", adapter), "must be a path (string)")
            if not valid_adapter_name(str(adapter)):
                checker.at(
                    (*path, "adapters", adapter),
                    "an adapter name is letters, digits, '.', '_' or '-' (it becomes a served model name)",
                )
    hub_keys: dict[str, dict[str, str]] = {}
    for key, what in (("adapter_revisions", "a commit hash"), ("adapter_subfolders", "a folder in the repo")):
        entries = table.get(key, {})
        hub_keys[key] = {}
        if not isinstance(entries, dict):
            continue
        for adapter, value in entries.items():
            if not isinstance(adapters, dict) or adapter not in adapters:
                checker.at((*path, key, adapter), "names no adapter of this server")
            elif not isinstance(value, str) or not value:
                checker.at((*path, key, adapter), f"must be {what} (string)")
            elif not is_hub_id(str(adapters[adapter])):
                checker.at((*path, key, adapter), "applies to hub ids only (this adapter is a folder)")
            else:
                hub_keys[key][str(adapter)] = value
    args = table.get("args", [])
    if isinstance(args, list) and not all(isinstance(a, str) for a in args):
        checker.at((*path, "args"), "must be a list of strings")
    urls: list[str] = []
    if kind == "openai":
        if "url" in table and "urls" in table:
            checker.at((*path, "urls"), "give either 'url' or 'urls', not both")
        urls = [table["url"]] if isinstance(table.get("url"), str) else list(table.get("urls") or [])
        if not urls:
            checker.at(path, "an 'openai' server needs 'url' (or 'urls' for replicas)")
        for url in urls:
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                checker.at((*path, "url"), f"must be an http(s) URL (got {url!r})")
    elif "model" not in table:
        checker.at(path, f"a '{kind}' server needs 'model' (a local path or hub id)")
    port = table.get("port")
    if isinstance(port, int) and not 0 < port < 65536:
        checker.at((*path, "port"), "must be between 1 and 65535")
    if kind == "vllm":
        _check_replicas(checker, table, path)
    device = table.get("device")
    if (
        kind == "transformers"
        and isinstance(device, str)
        and not re.match(r"^(auto|cpu|cuda(:\d+)?|mps)$", device)
    ):
        checker.at((*path, "device"), "must be auto, cpu, cuda, cuda:N or mps")
    if checker.count > before:
        return None
    model = table.get("model")
    given: dict[str, Any] = {  # absent keys keep ServerSpec's defaults (the one place they live)
        key: table[key]
        for key in (
            "served_name",
            "host",
            "port",
            "api_key_env",
            "device",
            "dtype",
            "revision",
            "runtime_lora",
            "replicas",
            "router",
            "gpus",
            "tensor_parallel_size",
        )
        if key in table
    }
    for key in ("connect_timeout", "read_timeout", "retry_budget"):
        if key in table:
            given[key] = float(table[key])
    return ServerSpec(
        name=name,
        kind=kind,  # type: ignore[arg-type]
        model=expand_path(model, base_dir) if isinstance(model, str) else None,
        adapters={k: expand_path(v, base_dir) for k, v in adapters.items()}
        if isinstance(adapters, dict)
        else {},
        args=list(args),
        python=expand_path(table["python"], base_dir) if table.get("python") else None,
        urls=[api_root(u) for u in urls],
        adapter_revisions=hub_keys["adapter_revisions"],
        adapter_subfolders=hub_keys["adapter_subfolders"],
        env={str(k): str(v) for k, v in table.get("env", {}).items()},
        **given,
    )


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile file; raise :class:`ProfileError` naming file, line and key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError([Problem(path, "profile not found")]) from None
    except OSError as exc:
        raise ProfileError([Problem(path, f"cannot read profile: {exc.strerror}")]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message, line = decode_error(exc)
        raise ProfileError([Problem(path, message, line=line)]) from None
    return parse_profile(data, path, text)


def valid_adapter_name(name: str) -> bool:
    """Whether ``name`` can be a served adapter name (letters, digits, '.', '_', '-')."""
    return bool(_ADAPTER_NAME.match(name))


def is_hub_id(value: str) -> bool:
    """True when ``value`` has the form ``owner/name`` of a model hub id."""
    return bool(_HUB_ID.match(value))


def find_profile(name: str | None) -> Path:
    """Resolve ``--profile``: a path, or a name in ./profiles/ or the project's profiles/ folder."""
    name = name or DEFAULT_PROFILE
    candidates = [Path(name)]
    if not name.endswith(".toml"):
        candidates.append(Path("profiles") / f"{name}.toml")
        candidates.append(Path(__file__).resolve().parent.parent / "profiles" / f"{name}.toml")
    for path in candidates:
        if path.is_file():
            return path
    raise ProfileError([Problem(name, "no such profile (give a path, or a name from profiles/)")])


def only_panes(profile: Profile, names: list[str]) -> Profile:
    """``profile`` with only the panes named (by pane name or model name), in the order given."""
    chosen: list[PaneSpec] = []
    for name in (n.strip() for n in names if n.strip()):
        matches = [p for p in profile.panes if name in (p.name, p.model)]
        if not matches:
            have = ", ".join(p.name for p in profile.panes)
            raise ProfileError(
                [Problem(profile.path or profile.name, f"no pane named '{name}' (have: {have})")]
            )
        chosen += [p for p in matches if p not in chosen]
    return dataclasses.replace(profile, panes=chosen)


def open_profile(name: str | None) -> Profile:
    """The profile ``--profile NAME`` means (default: the demo profile), loaded and validated."""
    return load_profile(find_profile(name))
