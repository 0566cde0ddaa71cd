"""Profiles made on the spot: attach to a running server (``--url``) or open a model and its adapters
with no profile file (``--model PATH --adapter NAME=PATH``).

Both build ordinary profile data (the dict a TOML file would hold) and validate it with
:func:`personachat.profile.parse_profile`, so a generated profile behaves exactly like a written one;
``--save-profile FILE`` writes it out as TOML to make a quick look a reproducible setup.

How servers name adapters in ``GET /v1/models``:

- vLLM: every adapter is its own entry with ``parent`` set to the base model's id.
- SGLang and Ray Serve LLM: adapters are requested as ``base:adapter``; such entries (or ids of the
  form ``<a listed base>:<name>``) are adapters of that base.
- LoRAX: one base entry; adapters are chosen per request with ``adapter_id`` (not listed, so not
  attached: write a profile with ``extra`` request fields for them).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from personachat.errors import PersonachatError
from personachat.profile_toml import profile_toml
from personachat.redaction import url_without_credentials

if TYPE_CHECKING:
    from personachat.profile import Profile

SOURCE_FLAGS = ("url", "model", "adapter", "vllm", "api_key_env", "save_profile")
_PANE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def add_source_arguments(parser: argparse.ArgumentParser, *, sub: bool = False) -> None:
    """The flags that replace a profile: ``--url``, ``--model``/``--adapter``/``--vllm`` and friends.

    On a subcommand (``sub``) they default to "not given", so that the same flag given before the
    subcommand still counts.
    """
    default: Any = argparse.SUPPRESS if sub else None
    group = parser.add_argument_group("without a profile")
    group.add_argument("--url", default=default, help="attach to a running OpenAI-compatible server")
    group.add_argument(
        "--api-key-env", default=default, metavar="NAME", help="environment variable with its API key"
    )
    group.add_argument(
        "--model", default=default, metavar="PATH_OR_HUB_ID", help="open this base model (in-process)"
    )
    group.add_argument(
        "--adapter",
        action="append",
        default=default,
        metavar="NAME=PATH",
        help="with --model: a LoRA adapter to open beside the base (repeat for more)",
    )
    group.add_argument(
        "--vllm", action="store_true", default=default, help="with --model: serve through a launched vLLM"
    )
    group.add_argument(
        "--save-profile", default=default, type=Path, metavar="FILE", help="write the profile used as TOML"
    )


def source_profile(args: argparse.Namespace, profile_name: str | None) -> Profile:
    """The profile a command runs on: made from ``--url`` or ``--model``, else ``--profile``'s."""
    url, model = getattr(args, "url", None), getattr(args, "model", None)
    adapters, vllm = getattr(args, "adapter", None), getattr(args, "vllm", None)
    save, key_env = getattr(args, "save_profile", None), getattr(args, "api_key_env", None)
    if url and model:
        raise PersonachatError("give --url (a running server) or --model (open one), not both")
    from personachat.profile import open_profile, parse_profile

    if (url or model) and profile_name:
        raise PersonachatError("--url and --model replace a profile: leave out --profile")
    if (adapters or vllm) and not model:
        raise PersonachatError("--adapter and --vllm go with --model")
    if key_env and not url:
        raise PersonachatError("--api-key-env goes with --url")
    if save and not (url or model):
        raise PersonachatError("--save-profile goes with --url or --model")
    if url:
        data = attach_data(url, served_models(url, key_env), key_env)
    elif model:
        data = local_data(model, parse_adapters(adapters or []), vllm=bool(vllm))
    else:
        return open_profile(profile_name)
    if save:
        from personachat.files import write_atomically

        write_atomically(save, profile_toml(data, "written by personachat --save-profile"))
    return parse_profile(data, save if save else f"<{data['name']}>")


def served_models(url: str, key_env: str | None = None) -> list[dict[str, Any]]:
    """The entries of ``GET /v1/models`` at ``url`` (with or without ``/v1``)."""
    import os

    import httpx

    from personachat.backends.openai_http import url_credentials
    from personachat.profile import api_root
    from personachat.server_keys import key_for
    from personachat.text import sanitize

    root = api_root(url_without_credentials(url))
    headers, auth = {}, None
    if key_env:
        key = os.environ.get(key_env)
        if not key:
            raise PersonachatError(f"environment variable {key_env} (the API key) is not set")
        headers["Authorization"] = f"Bearer {key}"
    elif key := key_for(root):  # a server personachat launched takes its own key
        headers["Authorization"] = f"Bearer {key}"
    elif credentials := url_credentials(url):
        auth = httpx.BasicAuth(*credentials)
    try:
        response = httpx.get(f"{root}/v1/models", headers=headers, auth=auth, timeout=10.0)
    except httpx.HTTPError as exc:
        raise PersonachatError(f"cannot reach {root}: {type(exc).__name__}") from None
    if response.status_code != 200:
        detail = sanitize(response.text[:200])
        raise PersonachatError(f"{root}/v1/models answered HTTP {response.status_code}: {detail}")
    try:
        entries = response.json()["data"]
        if not isinstance(entries, list) or not all(isinstance(e, dict) and "id" in e for e in entries):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise PersonachatError(f"{root}/v1/models did not answer with a model list") from None
    if not entries:
        raise PersonachatError(f"{root} serves no model yet")
    return entries


def attach_data(url: str, entries: list[dict[str, Any]], key_env: str | None = None) -> dict[str, Any]:
    """Profile data with one pane per served model: each base, then its adapters."""
    from personachat.profile import api_root

    ids = [str(e["id"]) for e in entries]
    parent = {str(e["id"]): str(e["parent"]) for e in entries if e.get("parent")}
    for model_id in ids:
        base, sep, _ = model_id.partition(":")
        if sep and base in ids and model_id not in parent:
            parent[model_id] = base  # the SGLang / Ray Serve convention
    bases = [m for m in ids if m not in parent]
    ordered = [m for base in bases for m in (base, *(a for a in ids if parent.get(a) == base))]
    ordered += [m for m in ids if m not in ordered]  # adapters of a base not listed
    server: dict[str, Any] = {"kind": "openai", "url": url}
    if len(bases) == 1:
        server["model"] = bases[0]
    if key_env:
        server["api_key_env"] = key_env
    names = pane_names(ordered)
    panes = [{"name": names[m], "server": "server", "model": m} for m in ordered]
    for pane in panes:
        if pane["name"] != pane["model"]:
            pane["label"] = pane["model"]
    root = api_root(url_without_credentials(url))
    return {
        "name": f"attach-{_PANE_CHARS.sub('-', root.split('://', 1)[-1])}",
        "description": f"attached to {root}",
        "servers": {"server": server},
        "panes": panes,
    }


def local_data(model: str, adapters: dict[str, str], *, vllm: bool) -> dict[str, Any]:
    """Profile data for ``model`` and ``adapters``: in-process, or one launched vLLM server."""
    server: dict[str, Any] = {"kind": "vllm" if vllm else "transformers", "model": model}
    if adapters:
        server["adapters"] = dict(adapters)
    base = pane_names([model])[model]
    if base in adapters:
        base = f"{base}-base"
    panes = [{"name": base, "server": "local", "model": model}]
    panes += [{"name": name, "server": "local", "model": name} for name in adapters]
    return {
        "name": f"model-{base}",
        "description": f"{model} and {len(adapters)} adapter(s), no profile file",
        "servers": {"local": server},
        "panes": panes,
    }


def parse_adapters(values: list[str]) -> dict[str, str]:
    """``NAME=PATH`` arguments as a dict; a clear error for anything else."""
    adapters: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise PersonachatError(f"--adapter wants NAME=PATH (got {value!r})")
        if name in adapters:
            raise PersonachatError(f"--adapter names '{name}' twice")
        adapters[name] = path
    return adapters


def pane_names(model_ids: list[str]) -> dict[str, str]:
    """A short, unique pane name for each model id: its last path part (or adapter part of
    ``base:adapter``), with characters slash commands cannot take replaced."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for model_id in model_ids:
        short = model_id.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
        name = _PANE_CHARS.sub("-", short).strip("-") or "model"
        unique, n = name, 2
        while unique in taken:
            unique, n = f"{name}-{n}", n + 1
        taken.add(unique)
        names[model_id] = unique
    return names
