"""``/load NAME PATH``: load an adapter into the running vLLM server and open a pane for it.

The loading itself (checks, the request, the adapter's identity) is
:mod:`personachat.runtime_adapters`; this module adds the pane to the session and the screen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from personachat.app.grid import PaneGrid
from personachat.app.pane import Pane
from personachat.errors import PersonachatError

if TYPE_CHECKING:
    from personachat.app.app import PersonachatApp


def can_load(app: PersonachatApp) -> bool:
    """Whether the profile has a server that loads adapters at run time."""
    return any(s.kind == "vllm" and s.runtime_lora for s in app.profile.servers.values())


async def open_adapter_pane(app: PersonachatApp, name: str, path: str) -> None:
    """Load adapter ``name`` from ``path``; on success a new pane answers from it."""
    from personachat.runtime_adapters import load_adapter, runtime_server

    try:
        if app.blind:
            raise PersonachatError("reveal the panes first (/reveal): a new pane would show its name")
        session = app.require_session()
        backend = session.backends.get(runtime_server(app.profile).name)
        if backend is None:
            raise PersonachatError("the runtime-LoRA server is not connected")
        app.say(f"loading adapter {name} from {path} …")
        spec, identity = await load_adapter(app.profile, backend, name, path)
        session.add_pane(spec, identity)
    except PersonachatError as exc:
        app.say(f"/load: {exc}", error=True)
        return
    number = len(app.panes) + 1
    pane = Pane(spec, number, id=f"pane-{number}")
    pane.label_keys = app.label_keys
    app.panes[spec.name] = pane
    grid = app.query_one(PaneGrid)
    await grid.mount(pane)
    grid.fit()
    sha = identity.get("sha256")
    app.say(f"adapter {name} loaded: pane {number}" + (f" (sha256 {sha[:12]}…)" if sha else ""))
