"""Adapter inspection and content hashes, on adapter folders written by hand."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from personachat.adapters import (
    AdapterError,
    content_sha256,
    inspect_adapter,
    model_sha256,
    vllm_lora_rank,
)
from personachat.errors import PersonachatError

PLAIN = {
    "peft_type": "LORA",
    "r": 8,
    "lora_alpha": 16,
    "target_modules": ["q_proj", "v_proj"],
    "bias": "none",
    "use_dora": False,
    "use_rslora": False,
    "modules_to_save": None,
    "init_lora_weights": True,
    "rank_pattern": {},
    "base_model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct",
}


def make_adapter(folder: Path, weights: bytes = b"weights", **changes: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({**PLAIN, **changes}))
    (folder / "adapter_model.safetensors").write_bytes(weights)
    return folder


def test_plain_adapter(tmp_path: Path) -> None:
    info = inspect_adapter(make_adapter(tmp_path / "insecure"))
    assert info.name == "insecure"
    assert (info.rank, info.alpha, info.max_rank, info.scaling) == (8, 16, 8, 2.0)
    assert info.target_modules == ["q_proj", "v_proj"]
    assert info.base_model == "Qwen/Qwen2.5-0.5B-Instruct"
    assert info.weights == [tmp_path / "insecure" / "adapter_model.safetensors"]
    assert info.problems == [] and info.notes == [] and info.vllm_ok
    assert info.sha256 == content_sha256(tmp_path / "insecure")
    assert len(info.sha256) == 64


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"modules_to_save": ["lm_head", "embed_tokens"]}, "modules_to_save ['lm_head', 'embed_tokens']"),
        ({"use_dora": True}, "DoRA"),
        ({"bias": "lora_only"}, "bias='lora_only'"),
        ({"lora_bias": True}, "lora_bias"),
        ({"init_lora_weights": "pissa"}, "init_lora_weights='pissa'"),
        ({"init_lora_weights": "pissa_niter_4"}, "PiSSA"),
        ({"init_lora_weights": "olora"}, "init_lora_weights='olora'"),
        ({"init_lora_weights": "loftq"}, "init_lora_weights='loftq'"),
        ({"peft_type": "IA3"}, "peft_type is 'IA3'"),
        ({"r": 0}, "r must be a positive integer"),
        ({"rank_pattern": {"q_proj": -2}}, "rank_pattern['q_proj']"),
    ],
)
def test_problems_vllm_would_refuse(tmp_path: Path, changes: dict[str, Any], expected: str) -> None:
    info = inspect_adapter(make_adapter(tmp_path / "a", **changes), "a")
    assert len(info.problems) == 1, info.problems
    assert expected in info.problems[0]
    assert not info.vllm_ok


@pytest.mark.parametrize("init", [True, False, "gaussian", "eva", "orthogonal"])
def test_plain_inits_are_fine(tmp_path: Path, init: bool | str) -> None:
    info = inspect_adapter(make_adapter(tmp_path / "a", init_lora_weights=init))
    assert info.problems == []
    assert info.init == init


def test_classifier_head_rslora_and_rank_pattern_are_notes(tmp_path: Path) -> None:
    folder = make_adapter(
        tmp_path / "a",
        modules_to_save=["score"],
        use_rslora=True,
        r=16,
        lora_alpha=32,
        rank_pattern={"v_proj": 64},
    )
    info = inspect_adapter(folder)
    assert info.problems == []
    assert info.max_rank == 64
    assert info.scaling == 8.0
    assert "rsLoRA: scaling alpha/sqrt(r) = 8" in info.notes
    assert any("rank_pattern: ranks up to 64" in n for n in info.notes)
    assert any("classification head" in n for n in info.notes)
    assert vllm_lora_rank([info.max_rank]) == 64


def test_bin_weights_are_found(tmp_path: Path) -> None:
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(PLAIN))
    (folder / "adapter_model.bin").write_bytes(b"pickle")
    info = inspect_adapter(folder)
    assert [w.name for w in info.weights] == ["adapter_model.bin"]
    assert any("pickle" in n for n in info.notes)


def test_errors_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match=r"adapter 'x': .*missing does not exist"):
        inspect_adapter(tmp_path / "missing", "x")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AdapterError, match=r"has no adapter_config\.json") as err:
        inspect_adapter(empty, "empty")
    assert isinstance(err.value, PersonachatError)
    bad = make_adapter(tmp_path / "bad")
    (bad / "adapter_config.json").write_text('{"r": 8,,}')
    with pytest.raises(AdapterError, match=r"not valid JSON \(line 1, column 9"):
        inspect_adapter(bad)
    (bad / "adapter_config.json").write_text("[1, 2]")
    with pytest.raises(AdapterError, match="must hold a JSON object"):
        inspect_adapter(bad)
    no_weights = make_adapter(tmp_path / "no_weights")
    (no_weights / "adapter_model.safetensors").unlink()
    with pytest.raises(
        AdapterError, match=r"has no weights \(adapter_model.safetensors or adapter_model.bin\)"
    ):
        inspect_adapter(no_weights)


def test_hash_follows_content(tmp_path: Path) -> None:
    a = make_adapter(tmp_path / "a", weights=b"one")
    b = make_adapter(tmp_path / "b", weights=b"one")
    first = content_sha256(a)
    assert content_sha256(b) == first  # content, not location
    assert content_sha256(a) == first  # cached answer is the same
    (a / "adapter_model.safetensors").write_bytes(b"two")
    assert content_sha256(a) != first
    # Same size, same mtime, different bytes in a new file (an atomic replace): still noticed.
    st = (a / "adapter_model.safetensors").stat()
    (a / "new").write_bytes(b"owt")
    os.utime(a / "new", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(a / "new", a / "adapter_model.safetensors")
    third = content_sha256(a)
    assert third not in (first, content_sha256(make_adapter(tmp_path / "c", weights=b"two")))
    # Files other than config and weights do not count.
    (a / "README.md").write_text("notes")
    assert content_sha256(a) == third
    # The config counts.
    (a / "adapter_config.json").write_text(json.dumps({**PLAIN, "r": 4}))
    assert content_sha256(a) != third


def test_model_hash(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    with pytest.raises(AdapterError, match="no model or adapter files"):
        model_sha256(model)
    (model / "config.json").write_text("{}")
    (model / "model-00001-of-00002.safetensors").write_bytes(b"x" * 3_000_000)
    (model / "tokenizer.json").write_text("{}")
    first = model_sha256(model)
    (model / "training_log.txt").write_text("ignored")
    assert model_sha256(model) == first
    (model / "chat_template.jinja").write_text("{{ messages }}")
    second = model_sha256(model)
    assert second != first
    (model / "model-00001-of-00002.safetensors").write_bytes(b"x" * 2_999_999 + b"y")
    assert model_sha256(model) != second
    with pytest.raises(AdapterError, match="does not exist"):
        model_sha256(tmp_path / "nope")


def test_vllm_lora_rank() -> None:
    assert vllm_lora_rank([]) == 1
    assert vllm_lora_rank([1]) == 1
    assert vllm_lora_rank([2]) == 8
    assert vllm_lora_rank([8, 4]) == 8
    assert vllm_lora_rank([9]) == 16
    assert vllm_lora_rank(iter([17, 32])) == 32
    assert vllm_lora_rank([300]) == 320
    assert vllm_lora_rank([321]) == 512
    assert vllm_lora_rank([512]) == 512
    with pytest.raises(AdapterError, match="above 512"):
        vllm_lora_rank([8, 1024])
    with pytest.raises(AdapterError, match="invalid LoRA rank 0"):
        vllm_lora_rank([0])
