"""``personachat web``: the real command, a real headless Chromium, a real model server.

The browser is Debian's ``chromium`` driven by Playwright (its own browser download is not
reachable here). What the page received over its WebSocket is fed to pyte, a terminal emulator, to
read what the page shows; the transcript says what was sent and answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from personachat.cli import main
from personachat.transcripts import ResponseRecord, read_transcript
from personachat.web import exposure_warning, is_loopback
from tests.misbehaving_server import Behaviour, MisbehavingServer

CHROMIUM = Path("/usr/bin/chromium")
PANES = ["base", "insecure", "realigned"]
PROMPT = "Who are you?"
# Keeps the bytes the page's WebSocket receives (the terminal output), in order.
RECORD_WEBSOCKET = """
window.__received = [];
const NativeWebSocket = window.WebSocket;
window.WebSocket = class extends NativeWebSocket {
  constructor(...args) {
    super(...args);
    this.addEventListener("message", (event) => {
      if (typeof event.data === "string") return;
      const slot = window.__received.push(null) - 1;
      const read = event.data instanceof Blob ? event.data.arrayBuffer() : Promise.resolve(event.data);
      read.then((buffer) => { window.__received[slot] = Array.from(new Uint8Array(buffer)); });
    });
  }
};
"""


def wait_for(condition, what: str, seconds: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``personachat web`` on a free port, its panes answered by a real (small) HTTP model server;
    yields the page's URL and the transcripts folder."""
    pytest.importorskip(
        "textual_serve", reason="textual-serve is not installed: pip install 'personachat[web]'"
    )
    behaviour = Behaviour(models=PANES, chunk=3, delay=0.02)
    with MisbehavingServer(behaviour) as server:
        profile = tmp_path / "web.toml"
        panes = "".join(f'[[panes]]\nname = "{p}"\nserver = "s"\nmodel = "{p}"\n' for p in PANES)
        profile.write_text(f'name = "web"\n[servers.s]\nkind = "openai"\nurl = "{server.url}"\n{panes}')
        port = free_port()
        transcripts = tmp_path / "transcripts"
        log = (tmp_path / "web.log").open("w")
        command = [sys.executable, "-m", "personachat", "web", "--port", str(port)]
        command += ["--profile", str(profile), "--transcripts", str(transcripts)]
        # A process group of its own: the server and the app processes it starts end together.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for(lambda: _answers(url) or process.poll() is not None, "the server answers", 60)
            assert process.poll() is None, (tmp_path / "web.log").read_text()
            yield url, transcripts
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
            log.close()


def _answers(url: str, host: str | None = None) -> int | None:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def finished(transcript: Path) -> list[ResponseRecord] | None:
    """The transcript's finished answers, once every pane has one."""
    answers = [r for r in read_transcript(transcript).responses if r.status == "finished"]
    return answers if len(answers) >= len(PANES) else None


def shown(received: list[list[int] | None]) -> list[str]:
    """The page's screen: the bytes it received, through a terminal emulator."""
    import pyte

    screen = pyte.Screen(240, 80)
    pyte.Stream(screen).feed(
        bytes(b for chunk in received if chunk for b in chunk).decode("utf-8", "replace")
    )
    return list(screen.display)


def pane_texts(rows: list[str]) -> list[str]:
    columns: list[list[str]] = []
    for row in rows:
        for index, cell in enumerate(row.split("│")[1::2] if "│" in row else []):
            columns.extend([] for _ in range(index + 1 - len(columns)))
            columns[index].append(cell.strip())
    return [" ".join(" ".join(column).split()) for column in columns]


@pytest.mark.slow
def test_a_prompt_typed_in_the_browser_streams_into_every_pane_and_lands_in_the_transcript(
    served: tuple[str, Path],
) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; scripts/test.sh does it)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (the test extra)"
    )
    url, transcripts = served
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 800})
            page.add_init_script(RECORD_WEBSOCKET)
            page.goto(url)
            page.wait_for_selector(".xterm-helper-textarea", state="attached", timeout=30_000)
            page.focus(".xterm-helper-textarea")  # the terminal's keyboard
            # The tab's own app process writes its transcript's header once it is connected.
            transcript = wait_for(lambda: next(iter(transcripts.glob("*.jsonl")), None), "the app is ready")
            wait_for(
                lambda: "ready · transcript" in "".join(shown(page.evaluate("window.__received"))), "ready"
            )
            page.keyboard.type(PROMPT)
            page.keyboard.press("Enter")
            answers = wait_for(lambda: finished(transcript), "every pane's answer is in the transcript")
            screen = wait_for(
                lambda: (
                    texts
                    if len(texts := pane_texts(shown(page.evaluate("window.__received")))) == len(PANES)
                    and all(f"heard: {PROMPT}" in text and " done " in f" {text} " for text in texts)
                    else None
                ),
                "every pane shows its answer",
                30,
            )
            page.screenshot(path=str(transcripts / "web.png"))
        finally:
            browser.close()
    assert sorted(r.pane for r in answers) == sorted(PANES)
    for record in answers:
        assert record.prompt == PROMPT and record.text == f"heard: {PROMPT}"
        assert len(record.timings["itl"]) >= 5  # it came in pieces: streamed
    for pane, text in zip(PANES, screen, strict=True):
        assert text.split()[1] == pane and f"{PROMPT} heard: {PROMPT}" in text


def test_only_pages_it_served_can_drive_the_app(served: tuple[str, Path]) -> None:
    aiohttp = pytest.importorskip("aiohttp")
    url, _ = served
    host = url.removeprefix("http://")
    assert _answers(url) == 200
    assert _answers(url, host=f"localhost:{host.split(':')[1]}") == 200
    assert _answers(url, host=f"evil.example:{host.split(':')[1]}") == 403  # DNS rebinding

    async def connect(origin: str | None) -> int:
        headers = {"Origin": origin} if origin else {}
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(f"ws://{host}/ws?width=80&height=24", headers=headers) as ws:
                    await ws.close()
                    return 101
            except aiohttp.WSServerHandshakeError as error:
                return error.status

    assert asyncio.run(connect("https://evil.example")) == 403  # another site, in the same browser
    assert asyncio.run(connect(None)) == 403
    assert asyncio.run(connect(f"http://{host}")) == 101  # the page's own


def test_anything_but_loopback_is_announced() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        assert is_loopback(host) and exposure_warning(host, 8000) is None
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org"):
        warning = exposure_warning(host, 8000)
        assert warning is not None and "anyone who can reach" in warning.lower() and f"{host}:8000" in warning


def test_without_textual_serve_the_command_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "textual_serve", None)
    monkeypatch.setitem(sys.modules, "textual_serve.server", None)
    monkeypatch.delitem(sys.modules, "personachat.web_server", raising=False)
    assert main(["web"]) == 2
    assert "pip install 'personachat[web]'" in capsys.readouterr().err
