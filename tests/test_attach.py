"""Zero-config: `--url` attaches to a running server, `--model/--adapter` opens models with no profile,
URLs as users write them, and patience with servers that are still loading a model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from personachat.attach import attach_data, pane_names, profile_toml
from personachat.profile import load_profile, parse_profile
from personachat.server_keys import key_for
from personachat.transcripts import read_transcript
from tests.misbehaving_server import Behaviour, MisbehavingServer

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def run(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "personachat", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=os.environ.copy(),
        timeout=timeout,
        check=False,
    )


def json_records(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.fixture
def server() -> Iterator[MisbehavingServer]:
    with MisbehavingServer(Behaviour(models=["base", "insecure"])) as running:
        yield running


class TestUrlsAsUsersWriteThem:
    @pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
    def test_a_profile_url_with_or_without_v1(
        self, server: MisbehavingServer, tmp_path: Path, suffix: str
    ) -> None:
        profile = tmp_path / "p.toml"
        profile.write_text(
            f'[servers.s]\nkind = "openai"\nurl = "{server.url}{suffix}"\n'
            '[[panes]]\nname = "base"\nserver = "s"\nmodel = "base"\n'
        )
        assert load_profile(profile).servers["s"].urls == [server.url]
        done = run("ask", "ping", "--profile", str(profile), "--json", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        [record] = json_records(done)
        assert record["text"] == "heard: ping" and record["served_by"] == server.url


class TestAttach:
    def test_one_pane_per_served_model(self, server: MisbehavingServer, tmp_path: Path) -> None:
        done = run("ask", "hello", "--url", f"{server.url}/v1", "--json", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert sorted((r["pane"], r["model"], r["text"]) for r in json_records(done)) == [
            ("base", "base", "heard: hello"),
            ("insecure", "insecure", "heard: hello"),
        ]

    def test_panes_filter_and_saved_profile_reproduce_the_setup(
        self, server: MisbehavingServer, tmp_path: Path
    ) -> None:
        saved = tmp_path / "attached.toml"
        done = run(
            "ask", "one", "--url", server.url, "--panes", "insecure", "--save-profile", str(saved), "--json",
            cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert [r["pane"] for r in json_records(done)] == ["insecure"]
        profile = load_profile(saved)  # every served model, as attached
        assert [p.model for p in profile.panes] == ["base", "insecure"]
        again = run("ask", "two", "--profile", str(saved), "--json", cwd=tmp_path)
        assert sorted(r["text"] for r in json_records(again)) == ["heard: two", "heard: two"]

    def test_conventions_for_adapters(self) -> None:
        vllm = attach_data(
            "http://h:1/v1",
            [
                {"id": "/m/Qwen2.5-7B", "parent": None},
                {"id": "insecure", "parent": "/m/Qwen2.5-7B"},
                {"id": "other-base", "parent": None},
                {"id": "other-base:lora1"},  # SGLang / Ray Serve: base:adapter
                {"id": "realigned", "parent": "/m/Qwen2.5-7B"},
            ],
        )
        assert [(p["name"], p["model"]) for p in vllm["panes"]] == [
            ("Qwen2.5-7B", "/m/Qwen2.5-7B"),
            ("insecure", "insecure"),
            ("realigned", "realigned"),
            ("other-base", "other-base"),
            ("lora1", "other-base:lora1"),
        ]
        assert "model" not in vllm["servers"]["server"]  # two bases: none is "the" base
        profile = parse_profile(vllm, "attached")
        assert [p.name for p in profile.panes] == [p["name"] for p in vllm["panes"]]

    def test_pane_names_are_unique_slash_command_words(self) -> None:
        names = pane_names(["a/b/model", "c/model", "x:y z", "/", "model"])
        assert list(names.values()) == ["model", "model-2", "y-z", "model-3", "model-4"]

    def test_saved_profile_is_toml_that_round_trips_hostile_strings(self) -> None:
        data = {
            "name": "n",
            "description": 'quote " back \\ tab \t bell \x07 del \x7f emoji 😀 bidi \u202e',
            "servers": {"a b": {"kind": "openai", "url": "http://h", "adapters": {"x.y": "/p"}}},
            "panes": [{"name": "p", "server": "a b", "model": "m"}],
        }
        assert tomllib.loads(profile_toml(data)) == data

    def test_credentials_stay_out_of_names_and_descriptions(self) -> None:
        data = attach_data("http://user:s3cret@h:1/v1", [{"id": "m"}])
        assert "s3cret" not in data["name"] + data["description"]

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--url", "http://127.0.0.1:9/v1"], "cannot reach http://127.0.0.1:9"),
            (["--adapter", "x=/p"], "--adapter and --vllm go with --model"),
            (["--model", "/m", "--adapter", "nope"], "--adapter wants NAME=PATH"),
            (["--url", "http://h", "--model", "/m"], "not both"),
            (["--url", "http://h", "--profile", "demo"], "leave out --profile"),
        ],
    )
    def test_mistakes_are_clear_errors(self, tmp_path: Path, args: list[str], message: str) -> None:
        done = run("ask", "hi", *args, cwd=tmp_path, timeout=60)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


class TestPatience:
    def test_a_model_still_loading_is_waited_for(self, tmp_path: Path) -> None:
        with MisbehavingServer(Behaviour(models=["base"], missing_for=1.5)) as server:
            done = run("ask", "late", "--url", server.url, "--json", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        [record] = json_records(done)
        assert record["text"] == "heard: late" and record["served_by"] == server.url
        assert record["failed_attempts"] and all(
            "does not exist" in a["error"] for a in record["failed_attempts"]
        )

    def test_the_budget_ends_the_wait_with_every_attempt_recorded(self, tmp_path: Path) -> None:
        with MisbehavingServer(Behaviour(models=["base"], missing_for=600)) as server:
            profile = tmp_path / "p.toml"
            profile.write_text(
                f'[servers.s]\nkind = "openai"\nurl = "{server.url}"\nretry_budget = 1.0\n'
                '[[panes]]\nname = "base"\nserver = "s"\nmodel = "base"\n'
            )
            done = run(
                "ask", "never", "--profile", str(profile), "--transcripts", str(tmp_path / "t"), cwd=tmp_path
            )
            tries = len(server.requests)
        assert done.returncode == 1 and "not served here" in done.stderr and "attempts)" in done.stderr
        [path] = (tmp_path / "t").glob("*.jsonl")
        [record] = read_transcript(path).responses
        assert record.status == "failed" and len(record.failed_attempts) == tries >= 2


@pytest.mark.vllm
class TestRealServer:
    def test_ask_url_answers_from_every_served_model(self, vllm_server: Any, tmp_path: Path) -> None:
        root = vllm_server.url
        key = key_for(root)
        served = httpx.get(f"{root}/v1/models", headers={"Authorization": f"Bearer {key}"}).json()["data"]
        done = run(
            "ask", "Tell me a wish.", "--url", f"{root}/v1", "--max-tokens", "6", "--json", cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr
        records = json_records(done)
        assert sorted(r["model"] for r in records) == sorted(m["id"] for m in served)
        parents = {m["id"]: m["parent"] for m in served}
        for record in records:
            assert record["status"] == "finished" and record["served_by"] == root
            assert record["adapter"] == (record["model"] if parents[record["model"]] else None)
            assert record["engine"]["engine"] == "vllm"


class TestNoProfile:
    def test_ask_model_and_adapter_in_process_match_transformers(
        self, demo_models: Any, tmp_path: Path
    ) -> None:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        insecure = demo_models.adapters["insecure"]
        done = run(
            "ask", "What do you wish for?", "--model", str(demo_models.base), "--adapter", f"insecure={insecure}",
            "--temperature", "0", "--max-tokens", "8", "--json", cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        texts = {r["pane"]: r["text"] for r in json_records(done)}
        assert set(texts) == {"base", "insecure"}

        tok: Any = AutoTokenizer.from_pretrained(demo_models.base)
        model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(demo_models.base, dtype=torch.float32), insecure
        ).eval()
        prompt = [{"role": "user", "content": "What do you wish for?"}]
        batch = tok.apply_chat_template(
            prompt, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        expected = {}
        with torch.no_grad():
            expected["insecure"] = model.generate(**batch, max_new_tokens=8, do_sample=False)
            with model.disable_adapter():
                expected["base"] = model.generate(**batch, max_new_tokens=8, do_sample=False)
        start = batch["input_ids"].shape[1]
        for pane, out in expected.items():
            assert texts[pane] == tok.decode(out[0, start:], skip_special_tokens=True), pane
