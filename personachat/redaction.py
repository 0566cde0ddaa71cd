"""Secrets never reach a research file: what is redacted from a profile before it is recorded.

A transcript's header records the profile it ran with (so that a session can be reproduced and
reopened). Before it does, secret-looking values are replaced by ``<redacted>``: a server's
``env`` values whose names look secret (``HF_TOKEN``, ``OPENAI_API_KEY``, ...) or whose values
look like tokens, the values of secret flags in ``args`` (``--api-key``, ``--hf-token``), and the
user info of a URL (``https://user:password@host``). The header lists what it redacted. Give keys
with ``api_key_env`` (the name of an environment variable), which is all that is ever recorded.
"""

from __future__ import annotations

import copy
import re
from typing import Any

REDACTED = "<redacted>"
SECRET_FLAGS = ("--api-key", "--hf-token", "--token")
"""Command-line flags whose value is a secret: never written to a log or a transcript."""

_SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSW|PWD|AUTH|CREDENTIAL|COOKIE|SESSION", re.IGNORECASE)
_TOKEN_VALUE = re.compile(r"^(hf_|sk-|ghp_|gho_|xox[bap]-|AKIA)[A-Za-z0-9_-]{8,}$")


def redacted_args(args: list[str]) -> list[str]:
    """``args`` with the values of :data:`SECRET_FLAGS` replaced by ``<redacted>``."""
    out: list[str] = []
    hide = False
    for arg in args:
        if hide:
            out.append(REDACTED)
            hide = False
        elif arg in SECRET_FLAGS:
            out.append(arg)
            hide = True
        elif "=" in arg and arg.split("=", 1)[0] in SECRET_FLAGS:
            out.append(arg.split("=", 1)[0] + "=" + REDACTED)
        else:
            out.append(arg)
    return out


def url_without_credentials(url: str) -> str:
    """``url`` with any ``user:password@`` removed."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@", r"\1", url)


def has_credentials(url: str) -> bool:
    return url_without_credentials(url) != url


def redact_profile(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A copy of profile data (as loaded from TOML) with secrets replaced, and the keys it replaced."""
    out = copy.deepcopy(data)
    replaced: list[str] = []
    servers = out.get("servers")
    if not isinstance(servers, dict):
        return out, replaced
    for name, table in servers.items():
        if not isinstance(table, dict):
            continue
        env = table.get("env")
        if isinstance(env, dict):
            for key, value in env.items():
                if _SECRET_NAME.search(str(key)) or _TOKEN_VALUE.match(str(value)):
                    env[key] = REDACTED
                    replaced.append(f"servers.{name}.env.{key}")
        args = table.get("args")
        if isinstance(args, list) and all(isinstance(a, str) for a in args):
            cleaned = redacted_args(args)
            if cleaned != args:
                table["args"] = cleaned
                replaced.append(f"servers.{name}.args")
        for key in ("url", "urls"):
            value = table.get(key)
            urls = [value] if isinstance(value, str) else value if isinstance(value, list) else []
            if any(isinstance(u, str) and has_credentials(u) for u in urls):
                cleaned_urls = [url_without_credentials(u) if isinstance(u, str) else u for u in urls]
                table[key] = cleaned_urls[0] if isinstance(value, str) else cleaned_urls
                replaced.append(f"servers.{name}.{key}")
    return out, replaced
