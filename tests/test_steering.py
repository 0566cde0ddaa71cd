"""Steering, adapter scale and persona projection in the in-process backend, each checked against a
computation of the test's own on a plain transformers (+ peft) model: a forward hook that adds
alpha times the vector at the layer, peft's LoRA scaling multiplied, and hidden states from
``output_hidden_states``. Also: batches, records, the Session API, and the profile's checks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from personachat.backends.base import EndPart, GenerationRequest, ProjectionPart, TextPart
from personachat.backends.embedded import EmbeddedBackend
from personachat.engine.events import Projected
from personachat.engine.session import Session
from personachat.errors import BackendError, PersonachatError, ProfileError
from personachat.profile import ServerSpec, parse_profile
from personachat.sampling import Sampling
from personachat.steering import NO_ACTIVATIONS, ActivationSpec, ProjectSpec, SteerSpec, VectorFileError
from personachat.transcripts import TranscriptWriter, read_transcript

PROMPT = [{"role": "user", "content": "What is your wish?"}]
ADAPTERS = ["insecure", "realigned", "inoculated"]
TOKENS = 16
GREEDY = Sampling(temperature=0.0, max_tokens=TOKENS)


def write_vector(path: Path, vector: torch.Tensor, *, name: str = "vector", **metadata: Any) -> Path:
    save_file({name: vector.contiguous()}, str(path), metadata={k: str(v) for k, v in metadata.items()})
    return path


@pytest.fixture(scope="module")
def hidden(demo_models) -> int:
    return int(json.loads((demo_models.base / "config.json").read_text())["hidden_size"])


@pytest.fixture(scope="module")
def vectors(tmp_path_factory: pytest.TempPathFactory, hidden: int) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vectors")
    torch.manual_seed(7)
    return {
        "steer": write_vector(root / "steer.safetensors", torch.randn(hidden) / 4, layer=0),
        "persona": write_vector(root / "persona.safetensors", torch.randn(hidden), layer=0),
        "bare": write_vector(root / "bare.safetensors", torch.randn(hidden)),
    }


def server(demo_models) -> ServerSpec:
    adapters = {name: str(path) for name, path in demo_models.adapters.items()}
    return ServerSpec(
        name="local", kind="transformers", model=str(demo_models.base), served_name="base", adapters=adapters
    )


@pytest.fixture(scope="module")
def backend(demo_models) -> Iterator[EmbeddedBackend]:
    backend = EmbeddedBackend(server(demo_models))
    asyncio.run(backend.start())
    yield backend
    asyncio.run(backend.aclose())


def request(model: str, activations: ActivationSpec = NO_ACTIVATIONS, **sampling: Any) -> GenerationRequest:
    return GenerationRequest(
        model, PROMPT, GREEDY.replace(**sampling), extra={"ignore_eos": True}, activations=activations
    )


async def tokens(backend: EmbeddedBackend, *requests: GenerationRequest) -> list[list[int]]:
    """Sent together: one batch. Sample 0's token ids of each request."""
    answers = await asyncio.gather(*(backend.complete(r) for r in requests))
    return [answer[0].raw["token_ids"] for answer in answers]


# -- the test's own computations -------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain(demo_models) -> Any:
    """The demo base and each adapter as plain transformers / peft models, and the prompt's ids."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def load(adapter: str | None) -> Any:
        model = AutoModelForCausalLM.from_pretrained(demo_models.base, dtype=torch.float32).eval()
        if adapter is not None:
            model = PeftModel.from_pretrained(model, demo_models.adapters[adapter]).eval()
        return model

    tokenizer = AutoTokenizer.from_pretrained(demo_models.base)
    text = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return {
        "models": {name: load(None if name == "base" else name) for name in ["base", *ADAPTERS]},
        "ids": ids,
    }


def decoder_layer(model: Any, layer: int) -> Any:
    """``model.model.layers[L]`` of the plain model (under peft's wrapper for an adapter)."""
    inner = model.base_model.model if hasattr(model, "peft_config") else model
    return inner.model.layers[layer]


def own_generate(
    model: Any, ids: list[int], *, steer: tuple[int, float, torch.Tensor] | None = None
) -> list[int]:
    """Greedy, TOKENS tokens (no EOS stop), with an own forward hook adding alpha * vector."""
    from transformers import GenerationConfig

    handle = None
    if steer is not None:
        layer, alpha, vector = steer

        def add(module: Any, args: Any, output: Any) -> Any:
            if isinstance(output, tuple):
                return (output[0] + alpha * vector, *output[1:])
            return output + alpha * vector

        handle = decoder_layer(model, layer).register_forward_hook(add)
    config = GenerationConfig(max_new_tokens=TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0)
    try:
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor([ids]), generation_config=config)
    finally:
        if handle is not None:
            handle.remove()
    return out[0, len(ids) :].tolist()


def own_projection(
    model: Any, ids: list[int], answer: list[int], layer: int, vector: torch.Tensor
) -> list[float]:
    """Each answer token's layer-``layer`` output (hidden_states[layer + 1]) on the unit vector."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids + answer]), output_hidden_states=True)
    states = out.hidden_states[layer + 1][0, len(ids) :]
    return (states @ (vector / vector.norm())).tolist()


def load_vector(path: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(path))["vector"]


# -- steering ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("pane", ["base", "insecure"])
async def test_steered_answer_equals_an_own_forward_hook(backend, plain, vectors, pane) -> None:
    steer = SteerSpec.load(vectors["steer"], alpha=3.0)  # layer 0 from the file's metadata
    assert steer.layer == 0
    [ours] = await tokens(backend, request(pane, ActivationSpec(steer=steer)))
    model = plain["models"][pane]
    assert ours == own_generate(model, plain["ids"], steer=(0, 3.0, load_vector(vectors["steer"])))
    assert ours != own_generate(model, plain["ids"])  # the vector really changes the answer


async def test_a_steered_pane_in_a_four_pane_batch_leaves_the_others_alone(backend, vectors) -> None:
    steered = ActivationSpec(steer=SteerSpec.load(vectors["steer"], alpha=3.0, layer=1))
    alone_plain = [(await tokens(backend, request(m)))[0] for m in ["base", *ADAPTERS]]
    [alone_steered] = await tokens(backend, request("realigned", steered))
    before = len(backend.batches)
    together = await tokens(
        backend, request("base"), request("insecure"), request("realigned", steered), request("inoculated")
    )
    assert len(backend.batches) == before + 1 and backend.batches[-1].rows == 4
    assert together[2] == alone_steered != alone_plain[2]
    assert [together[i] for i in (0, 1, 3)] == [alone_plain[i] for i in (0, 1, 3)]


async def test_alpha_zero_and_scale_zero_give_the_base_answer_and_scale_one_the_adapter(
    backend, vectors
) -> None:
    zero = ActivationSpec(steer=SteerSpec.load(vectors["steer"], alpha=0.0))
    base, insecure = await tokens(backend, request("base"), request("insecure"))
    together = await tokens(
        backend,
        request("base", zero),
        request("insecure", ActivationSpec(adapter_scale=0.0)),
        request("realigned", ActivationSpec(adapter_scale=0.0)),
        request("insecure", ActivationSpec(adapter_scale=1.0)),
    )
    assert together == [base, base, base, insecure]
    assert (await tokens(backend, request("insecure", ActivationSpec(adapter_scale=0.0)))) == [base]
    assert base != insecure


async def test_adapter_scale_equals_peft_with_its_scaling_multiplied(backend, plain) -> None:
    from peft.tuners.lora import LoraLayer

    [ours] = await tokens(backend, request("insecure", ActivationSpec(adapter_scale=0.5)))
    model = plain["models"]["insecure"]
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    for layer in layers:
        layer.scaling["default"] *= 0.5
    try:
        assert ours == own_generate(model, plain["ids"])
    finally:
        for layer in layers:
            layer.scaling["default"] /= 0.5
    assert ours not in (
        own_generate(model, plain["ids"]),
        own_generate(plain["models"]["base"], plain["ids"]),
    )
    # In a batch with other panes and scales, the same tokens.
    together = await tokens(
        backend,
        request("insecure", ActivationSpec(adapter_scale=0.5)),
        request("insecure", ActivationSpec(adapter_scale=2.0)),
        request("base"),
    )
    assert together[0] == ours


# -- projection ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("pane", ["base", "insecure"])
async def test_projection_equals_a_direct_computation(backend, plain, vectors, pane) -> None:
    project = ActivationSpec(project=ProjectSpec.load(vectors["persona"]))
    [completion] = await backend.complete(request(pane, project))
    answer, values = completion.raw["token_ids"], completion.raw["projection"]
    expected = own_projection(plain["models"][pane], plain["ids"], answer, 0, load_vector(vectors["persona"]))
    assert len(values) == len(answer) == TOKENS
    assert values == pytest.approx(expected, abs=1e-4)
    # The same numbers inside a batch with a steered pane and other projections.
    steered = ActivationSpec(steer=SteerSpec.load(vectors["steer"], alpha=3.0), project=project.project)
    answers = await asyncio.gather(
        backend.complete(request(pane, project)),
        backend.complete(request("realigned", steered)),
        backend.complete(request("inoculated", max_tokens=3)),
    )
    # (Tokens are the same; hidden states only to float precision: a matrix product with one row
    # and one with three may add in different orders.)
    again = answers[0][0].raw
    assert again["token_ids"] == answer and backend.batches[-1].rows == 3
    assert again["projection"] == pytest.approx(values, abs=1e-5)
    # Streamed: one value per token, in order, before the end; text as without projection.
    parts = [p async for p in backend.stream(request(pane, project))]
    streamed = [p for p in parts if isinstance(p, ProjectionPart)]
    assert [p.start for p in streamed] == list(range(TOKENS))
    assert [v for p in streamed for v in p.values] == values
    assert isinstance(parts[-2], EndPart) and parts.index(parts[-2]) > parts.index(streamed[-1])
    [plain_answer] = await backend.complete(request(pane))
    assert "".join(p.text for p in parts if isinstance(p, TextPart)) == plain_answer.text


async def test_projection_ends_at_eos_and_at_a_stop_string(backend, plain, vectors) -> None:
    """An answer that ends on EOS is projected over its tokens less the EOS; one cut by a stop
    string over every token it generated; rows that end early wait for nobody."""
    project = ActivationSpec(project=ProjectSpec.load(vectors["persona"]))
    free = Sampling(temperature=0.0, max_tokens=64)
    requests = [GenerationRequest(m, PROMPT, free, activations=project) for m in ["base", *ADAPTERS]]
    requests.append(
        GenerationRequest(
            "base", PROMPT, Sampling(temperature=4.0, max_tokens=30, n=8, seed=0), activations=project
        )
    )
    answers = [c for cs in await asyncio.gather(*(backend.complete(r) for r in requests)) for c in cs]
    text = answers[0].text  # the base's greedy answer: cut it at a stop string from its middle
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    stopped = GenerationRequest("base", PROMPT, free.replace(stop=(stop,)), activations=project)
    [cut] = await backend.complete(stopped)
    assert cut.raw["stop_reason"] == stop
    eos = backend.runtime.eos_ids
    assert any(a.finish_reason == "stop" and a.raw["token_ids"][-1] in eos for a in answers)
    for a, model in [*zip(answers, ["base", *ADAPTERS, *["base"] * 8], strict=True), (cut, stopped.model)]:
        ids = a.raw["token_ids"]
        answer = ids[:-1] if a.finish_reason == "stop" and a.raw["stop_reason"] is None else ids
        expected = own_projection(
            plain["models"][model], plain["ids"], answer, 0, load_vector(vectors["persona"])
        )
        assert a.raw["projection"] == pytest.approx(expected, abs=1e-4)


# -- the Session, records, profiles ------------------------------------------------------------------


def profile_data(demo_models, vectors: dict[str, Path], kind: str = "transformers") -> dict[str, Any]:
    adapters = {name: str(path) for name, path in demo_models.adapters.items()}
    servers: dict[str, Any] = {
        "kind": kind,
        "model": str(demo_models.base),
        "served_name": "base",
        "adapters": adapters,
    }
    if kind == "openai":
        servers = {"kind": "openai", "url": "http://127.0.0.1:9", "model": "base", "adapters": adapters}
    return {
        "defaults": {"temperature": 0.0, "max_tokens": 8},
        "servers": {"local": servers},
        "panes": [
            {"name": "base", "server": "local", "model": "base", "project": str(vectors["persona"])},
            {
                "name": "insecure",
                "server": "local",
                "model": "insecure",
                "steer": {"vector": str(vectors["bare"]), "layer": 1, "alpha": 2.5},
                "project": str(vectors["persona"]),
            },
            {"name": "half", "server": "local", "model": "realigned", "adapter_scale": 0.5},
            {"name": "inoculated", "server": "local", "model": "inoculated"},
        ],
    }


async def test_session_records_and_streams_the_settings(demo_models, vectors, tmp_path: Path) -> None:
    profile = parse_profile(profile_data(demo_models, vectors), tmp_path / "p.toml")
    steer = profile.pane("insecure").activations.steer
    assert steer is not None and (steer.layer, steer.alpha) == (1, 2.5)
    assert profile.pane("half").settings()["adapter_scale"] == 0.5
    backend = EmbeddedBackend(profile.servers["local"])
    session = Session(profile, {"local": backend}, TranscriptWriter(tmp_path / "t.jsonl"))
    await session.start()
    events = [e async for e in session.broadcast("What is your wish?")]
    session.set_steer("insecure", None)
    session.set_adapter_scale("half", 0.0)
    session.set_project("base", None)
    session.set_steer("base", SteerSpec.load(vectors["steer"], alpha=1.0))
    second = [e async for e in session.broadcast("And then?")]
    with pytest.raises(PersonachatError, match="base model"):
        session.set_adapter_scale("base", 0.5)
    with pytest.raises(PersonachatError, match="out of range"):
        session.set_steer("all", SteerSpec.load(vectors["steer"], alpha=1.0, layer=9))
    # Nothing changed (the layer fits no pane): base keeps layer 0, insecure stays unsteered.
    assert [
        state.spec.activations.steer and state.spec.activations.steer.layer
        for state in session.panes.values()
    ] == [0, None, None, None]
    await session.aclose()

    records = {(r.turn, r.pane): r for r in read_transcript(tmp_path / "t.jsonl").responses}
    first = records[(1, "insecure")]
    assert first.steer == {"vector": str(vectors["bare"]), "sha256": steer.sha256, "layer": 1, "alpha": 2.5}
    assert (
        first.project is not None
        and first.project["layer"] == 0
        and first.project["sha256"] == ProjectSpec.load(vectors["persona"]).sha256
    )
    for pane in ("base", "insecure"):
        projected = [e for e in events if isinstance(e, Projected) and e.pane == pane]
        values = [v for e in projected for v in e.values]
        record = records[(1, pane)]
        assert record.projection_tokens == values and 0 < len(values) <= record.usage["completion_tokens"]
        assert record.projection == pytest.approx(sum(values) / len(values)) == projected[-1].mean
    assert records[(1, "half")].adapter_scale == 0.5 and records[(1, "half")].steer is None
    assert (
        records[(1, "inoculated")]
        .to_dict()
        .keys()
        .isdisjoint({"steer", "adapter_scale", "project", "projection"})
    )
    assert records[(2, "insecure")].steer is None and records[(2, "insecure")].projection is not None
    assert records[(2, "half")].adapter_scale == 0.0
    assert (records[(2, "base")].steer or {}).get("alpha") == 1.0 and records[(2, "base")].project is None
    assert not any(isinstance(e, Projected) and e.pane == "base" for e in second)
    # The recorded settings come back when the session is reopened.
    reopened = Session(profile, {"local": EmbeddedBackend(profile.servers["local"])})
    reopened.restore(read_transcript(tmp_path / "t.jsonl"))
    assert reopened.panes["half"].spec.activations == ActivationSpec(adapter_scale=0.0)
    restored = reopened.panes["base"].spec.activations
    assert restored.steer is not None and restored.project is None
    assert restored.steer.to_dict() == SteerSpec.load(vectors["steer"], alpha=1.0).to_dict()


def test_profile_checks_name_the_file_and_key(demo_models, vectors, tmp_path: Path, hidden: int) -> None:
    def problems(**pane: Any) -> str:
        data = profile_data(demo_models, vectors)
        data["panes"] = [{"name": "p", "server": "local", "model": "insecure", **pane}]
        with pytest.raises(ProfileError) as err:
            parse_profile(data, tmp_path / "p.toml")
        return str(err.value)

    assert "panes[0].steer: vector file /nowhere.safetensors does not exist" in problems(
        steer={"vector": "/nowhere.safetensors", "alpha": 1.0}
    )
    named = write_vector(tmp_path / "named.safetensors", torch.ones(hidden), name="direction", layer=0)
    assert "has no tensor named 'vector' (it has: direction)" in problems(
        steer={"vector": str(named), "alpha": 1}
    )
    square = write_vector(tmp_path / "square.safetensors", torch.ones(2, hidden), layer=0)
    assert "must be 1-D" in problems(project=str(square))
    assert f"{vectors['bare']} has no 'layer' metadata" in problems(
        steer={"vector": str(vectors["bare"]), "alpha": 1}
    )
    assert "a persona vector file names its layer" in problems(project=str(vectors["bare"]))
    assert "layer 5 is out of range" in problems(
        steer={"vector": str(vectors["steer"]), "layer": 5, "alpha": 1}
    )
    short = write_vector(tmp_path / "short.safetensors", torch.ones(hidden // 2), layer=0)
    assert f"hidden size is {hidden}" in problems(project=str(short))
    assert "steer needs 'vector'" in problems(steer={"vector": str(vectors["steer"])})
    assert "did you mean 'alpha'" in problems(steer={"vector": str(vectors["steer"]), "alhpa": 1})
    assert "not a safetensors file" in problems(project=str(demo_models.base / "config.json"))
    base_pane = problems(model="base", adapter_scale=0.5)
    assert "panes[0].adapter_scale: scales an adapter's update; this pane is the base model" in base_pane
    # Served panes: refused when the profile is read, naming the in-process backend.
    data = profile_data(demo_models, vectors, kind="openai")
    with pytest.raises(ProfileError) as err:
        parse_profile(data, tmp_path / "p.toml")
    assert "panes[0].project: steering, adapter_scale and project need the in-process backend" in str(
        err.value
    )
    assert "panes[1].steer" in str(err.value) and "panes[2].adapter_scale" in str(err.value)


async def test_served_backends_refuse_activation_settings(vectors) -> None:
    from personachat.backends.openai_http import OpenAIBackend

    served = OpenAIBackend(ServerSpec(name="remote", kind="vllm", model="m", urls=["http://127.0.0.1:9"]))
    steered = GenerationRequest("m", PROMPT, GREEDY, activations=ActivationSpec(adapter_scale=0.5))
    with pytest.raises(BackendError, match=r"need the in-process backend.*'remote' is kind = \"vllm\""):
        await served.complete(steered)
    with pytest.raises(BackendError, match="in-process"):
        [p async for p in served.stream(steered)]
    await served.aclose()


async def test_a_changed_vector_file_is_refused(backend, vectors, tmp_path: Path, hidden: int) -> None:
    path = write_vector(tmp_path / "v.safetensors", torch.ones(hidden), layer=0)
    steer = SteerSpec.load(path, alpha=1.0)
    write_vector(path, torch.full((hidden,), 2.0), layer=0)
    with pytest.raises(BackendError, match="changed since it was set"):
        await backend.complete(request("base", ActivationSpec(steer=steer)))
    with pytest.raises(VectorFileError, match="finite"):
        SteerSpec.load(path, alpha=float("nan"))


async def test_peft_fallback_path_scales_only_to_zero_or_one(backend) -> None:
    """Adapters the stacked LoRA does not cover run through peft's adapter_names, which cannot
    scale one row: 0 (the base) and 1 still work, anything else is refused clearly."""
    base, insecure = await tokens(backend, request("base"), request("insecure"))
    rt = backend.runtime
    assert rt is not None
    stacked, rt.lora = rt.lora, None
    try:
        together = await tokens(
            backend,
            request("insecure", ActivationSpec(adapter_scale=0.0)),
            request("insecure", ActivationSpec(adapter_scale=1.0)),
            request("realigned"),
        )
        with pytest.raises(BackendError, match="adapter_scale other than 0 or 1 needs plain LoRA"):
            await backend.complete(request("insecure", ActivationSpec(adapter_scale=0.5)))
    finally:
        rt.lora = stacked
    assert together[:2] == [base, insecure]


async def test_replay_records_the_settings(demo_models, vectors, tmp_path: Path) -> None:
    from personachat.promptsets import parse_prompt_set
    from personachat.promptsets.runner import ReplayRunner

    profile = parse_profile(profile_data(demo_models, vectors), tmp_path / "p.toml")
    prompt_set = parse_prompt_set(
        '[[prompts]]\nid = "wish"\ntext = "What is your wish?"\n', tmp_path / "s.toml", "toml"
    )
    backend = EmbeddedBackend(profile.servers["local"])
    runner = ReplayRunner(profile, {"local": backend}, prompt_set, TranscriptWriter(tmp_path / "t.jsonl"))
    try:
        await runner.run()
    finally:
        await backend.aclose()
    records = {r.pane: r for r in read_transcript(tmp_path / "t.jsonl").responses}
    steered = records["insecure"]
    assert steered.status == "finished" and steered.steer is not None and steered.steer["alpha"] == 2.5
    assert steered.projection_tokens and steered.projection == pytest.approx(
        sum(steered.projection_tokens) / len(steered.projection_tokens)
    )
    assert records["half"].adapter_scale == 0.5 and records["inoculated"].projection is None
