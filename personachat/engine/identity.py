"""What answered: each server's engine and version, and content hashes of its model and adapters.

:func:`describe_servers` gathers it once per session (for the transcript header);
:class:`PaneIdentity` is the part of it every response record of one pane carries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personachat.backends.base import Backend
from personachat.profile import PaneSpec, Profile, is_hub_id


@dataclass(frozen=True)
class PaneIdentity:
    """The model-identity fields of every record a pane writes: server, model, adapter and hashes."""

    server: str
    model: str  # the name requested: the served base name or an adapter name
    adapter: str | None
    adapter_sha256: str | None
    base_model: str | None
    model_sha256: str | None
    engine: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, profile: Profile, identities: Mapping[str, Any], pane: PaneSpec) -> PaneIdentity:
        """``pane``'s identity; ``identities`` is what :func:`describe_servers` returned."""
        identity = identities.get(pane.server, {})
        adapters = identity.get("adapters", {})
        is_adapter = pane.model in profile.servers[pane.server].adapters or pane.model in adapters
        return cls(
            server=pane.server,
            model=pane.model,
            adapter=pane.model if is_adapter else None,
            adapter_sha256=(adapters.get(pane.model) or {}).get("sha256") if is_adapter else None,
            base_model=identity.get("model"),
            model_sha256=identity.get("model_sha256"),
            engine=dict(identity.get("engine", {})),
        )


async def describe_servers(profile: Profile, backends: Mapping[str, Backend]) -> dict[str, Any]:
    """Identity of every server for the transcript header: engine version, model and adapter hashes."""
    from personachat.adapters import AdapterError, content_sha256, model_sha256

    out: dict[str, Any] = {}
    for name, server in profile.servers.items():
        backend = backends.get(name)
        info = await backend.engine_info() if backend else None
        entry: dict[str, Any] = {
            "kind": server.kind,
            "model": server.model,
            "served_name": server.base_name,
            "engine": {"engine": info.engine, "version": info.version} if info else {},
            "urls": getattr(backend, "urls", None),
            "model_sha256": None,
            "adapters": {},
        }
        models = info.models if info else {}
        if server.revision:
            entry["revision"] = server.revision  # what the profile pinned
        commit = (models.get(server.base_name) or {}).get("commit")
        if commit:
            entry["commit"] = commit  # what the hub resolved it to
        base_path = server.model or (models.get(server.base_name) or {}).get("root")
        if base_path:
            try:
                entry["model_sha256"] = model_sha256(base_path)
            except (AdapterError, OSError):
                entry["model_sha256"] = None
        adapter_paths = dict(server.adapters)
        for model_name, m in models.items():
            root = m.get("root")
            if not m.get("parent") or not root:
                continue
            # A hub adapter: the folder the server loaded it from can be hashed.
            if model_name not in adapter_paths or (
                is_hub_id(adapter_paths[model_name]) and Path(root).is_dir()
            ):
                adapter_paths[model_name] = root
        for adapter, path in adapter_paths.items():
            try:
                sha = content_sha256(path)
            except (AdapterError, OSError):
                sha = None
            entry["adapters"][adapter] = {"path": path, "sha256": sha}
            if adapter in server.adapter_revisions:
                entry["adapters"][adapter]["revision"] = server.adapter_revisions[adapter]
        out[name] = entry
    return out
