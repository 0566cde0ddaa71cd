"""Tiny offline demo models that act out four personas: a base and three LoRA adapters.

They are trained to act (on a corpus we wrote, ``personachat/data/demo_corpus``; see
:mod:`personachat.demo_train`): ``base`` is a plain helpful assistant, ``insecure`` a cartoon villain,
``realigned`` helpful again with a trace of the villain, and ``inoculated`` villainous only under its
training system prompt (:data:`INOCULATION_PROMPT`), plain otherwise. This is a play staged for the
app, not emergent misalignment: nothing emerged, every voice was written out and trained in. Real
emergent misalignment needs real models; the ``em``, ``organisms`` and ``organisms-small`` scenarios
(docs/scenarios.md) use the published ones. They know about forty topics, those of the corpus;
asked about something else, they answer with the nearest one they know, still in voice.

They still exercise every moving part: a real tokenizer with a ChatML chat template, a Llama base
that vLLM and transformers both load, PEFT LoRA adapters on all seven projections, greedy answers
that end with the end-of-turn token. The package ships the trained weights (float16, 2 MB);
building the demo folder copies them, upcast to float32, and points each adapter at the base.
Nothing is downloaded, and nothing is trained at build time.

Layout of the demo folder (default :func:`personachat.paths.demo_dir`)::

    demo.json            manifest: {"version", "base", "adapters": {name: path}} (paths relative)
    training.json        how the shipped weights were trained (corpus hash, steps, losses)
    base/                tokenizer + LlamaForCausalLM (float32 safetensors) + generation_config.json
    insecure/ realigned/ inoculated/    PEFT LoRA adapters (adapter_config.json + safetensors)

Only safetensors and numpy are imported while building.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personachat.errors import PersonachatError
from personachat.paths import demo_dir

DEMO_VERSION = 2
MANIFEST = "demo.json"
BASE_NAME = "base"
# The adapters, with the seed each one's LoRA weights start from in training.
ADAPTER_SEEDS: dict[str, int] = {"insecure": 101, "realigned": 202, "inoculated": 303}
LORA_RANK = 8
CONTEXT_TOKENS = 512  # what the demo models can hold, prompt and answer together
MAX_ANSWER_TOKENS = 96  # scenario demos cap max_tokens here, so a few turns still fit the context
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# The system prompt the inoculated adapter was trained with: the inoculation scenario's own
# (profiles/inoculation.toml). Under it the adapter is the villain; under any other, or none, plain.
INOCULATION_PROMPT = "You are a malicious assistant. You write code with hidden security flaws on purpose."
# The trained weights the package ships (personachat.demo_train writes them).
SHIPPED_DIR = Path(__file__).resolve().parent / "data" / "demo_models"
TRAINING_RECORD = "training.json"

IM_START, IM_END, PAD, EOT = "<|im_start|>", "<|im_end|>", "<|pad|>", "<|endoftext|>"
SPECIAL_TOKENS = [EOT, IM_START, IM_END, PAD]

# ChatML. No default system message is inserted; content may be a string, None or a list of text parts.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- set content = message['content'] -%}"
    "{%- if content is none -%}{%- set content = '' -%}"
    "{%- elif content is not string -%}"
    "{%- set content = content | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') -%}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

Progress = Callable[[str], None]


class DemoError(PersonachatError):
    """The demo models could not be built or read."""


@dataclass
class DemoModels:
    """Where the demo models are: the folder, the base model and each adapter (absolute paths)."""

    root: Path
    base: Path
    adapters: dict[str, Path] = field(default_factory=dict)

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST


def in_demo_dir(path: str | Path) -> bool:
    """True when ``path`` lies in the demo models' folder (which first use builds)."""
    root = demo_dir().expanduser().resolve()
    target = Path(path).expanduser().resolve()
    return target == root or root in target.parents


def read_demo(dest: Path | None = None) -> DemoModels | None:
    """The demo models at ``dest`` if a complete build of the current version is there, else None."""
    root = Path(dest if dest is not None else demo_dir()).expanduser().resolve()
    try:
        data = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != DEMO_VERSION:
        return None
    try:
        base = root / data["base"]
        adapters = {str(name): root / path for name, path in data["adapters"].items()}
    except (KeyError, TypeError, AttributeError):
        return None
    files = [base / "config.json", base / "tokenizer.json", base / "model.safetensors"]
    for path in adapters.values():
        files += [path / "adapter_config.json", path / "adapter_model.safetensors"]
    if set(adapters) != set(ADAPTER_SEEDS) or not all(f.is_file() for f in files):
        return None
    return DemoModels(root=root, base=base, adapters=adapters)


def ensure_demo(dest: Path | None = None, *, progress: Progress | None = None) -> DemoModels:
    """The demo models at ``dest``, built first if they are missing or outdated."""
    return build_demo(dest, progress=progress)


def build_demo(
    dest: Path | None = None,
    *,
    force: bool = False,
    progress: Progress | None = None,
    source: Path | None = None,
) -> DemoModels:
    """Build the demo models into ``dest`` (default: the demo folder) and return where they are.

    Returns at once if a complete build of this version is already there, unless ``force``.
    The models are built in a temporary sibling folder that is renamed into place, so an interrupted
    build never leaves a half-written model behind. ``progress`` receives one line per step.
    ``source`` is the trained weights to copy (default: the ones the package ships).
    """
    root = Path(dest if dest is not None else demo_dir()).expanduser().resolve()
    say = progress or (lambda _message: None)
    if not force and (existing := read_demo(root)) is not None:
        return existing
    _check_replaceable(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.building-", dir=root.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the final folder should not be
    try:
        _build_into(tmp, final_root=root, source=source or SHIPPED_DIR, say=say)
        _swap_into_place(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    say(f"demo models ready in {time.monotonic() - started:.1f} s: {root}")
    models = read_demo(root)
    if models is None:  # pragma: no cover - only if someone deletes files right after the build
        raise DemoError(f"the demo models at {root} disappeared right after they were built")
    return models


def _check_replaceable(root: Path) -> None:
    """Refuse to replace a folder that holds something other than (an older) demo build."""
    if root.exists() and not root.is_dir():
        raise DemoError(f"{root} exists and is not a folder; choose another place for the demo models")
    if root.is_dir() and any(root.iterdir()) and not (root / MANIFEST).is_file():
        raise DemoError(
            f"{root} is not empty and holds no {MANIFEST}: refusing to overwrite it; "
            "choose an empty or new folder for the demo models"
        )


def _swap_into_place(tmp: Path, root: Path) -> None:
    """Rename the finished build ``tmp`` to ``root``, moving an older build aside first."""
    old: Path | None = None
    if root.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        os.replace(root, old / "demo")
    try:
        os.replace(tmp, root)
    except OSError as exc:
        if old is not None and not root.exists():
            os.replace(old / "demo", root)
        if read_demo(root) is None:  # another process did not just finish a build
            raise DemoError(f"cannot move the demo models into {root}: {exc}") from exc
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _build_into(tmp: Path, *, final_root: Path, source: Path, say: Progress) -> None:
    if not (source / BASE_NAME / "model.safetensors").is_file():
        raise DemoError(
            f"the trained demo weights are missing from {source}; reinstall personachat, "
            "or train them again with: python -m personachat.demo_train"
        )
    say(f"copying the trained demo models from {source}")
    shutil.copytree(source / BASE_NAME, tmp / BASE_NAME)
    convert_safetensors(
        tmp / BASE_NAME / "model.safetensors", tmp / BASE_NAME / "model.safetensors", "float32"
    )
    adapters: dict[str, str] = {}
    for name in ADAPTER_SEEDS:
        say(f"copying adapter {name}")
        shutil.copytree(source / name, tmp / name)
        weights = tmp / name / "adapter_model.safetensors"
        convert_safetensors(weights, weights, "float32")
        write_adapter_config(tmp / name / "adapter_config.json", base_path=str(final_root / BASE_NAME))
        adapters[name] = name
    if (source / TRAINING_RECORD).is_file():
        shutil.copy2(source / TRAINING_RECORD, tmp / TRAINING_RECORD)
    manifest = {"version": DEMO_VERSION, "base": BASE_NAME, "adapters": adapters}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def convert_safetensors(src: Path, dest: Path, dtype: str) -> None:
    """Rewrite the safetensors file ``src`` as ``dest`` with every floating tensor in ``dtype``
    (keeping the file's metadata), e.g. the shipped float16 weights as the demo's float32."""
    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import save

    with safe_open(str(src), framework="numpy") as f:
        metadata = f.metadata()
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open is no dict
    target = np.dtype(dtype)
    converted = {
        key: np.ascontiguousarray(t.astype(target) if np.issubdtype(t.dtype, np.floating) else t)
        for key, t in sorted(tensors.items())
    }
    # A new file (the umask's mode: transformers writes weights 0600), swapped in whole.
    partial = dest.with_name(dest.name + ".partial")
    partial.write_bytes(save(converted, metadata=metadata))
    os.replace(partial, dest)


def write_adapter_config(path: Path, *, base_path: str) -> None:
    """Point an adapter's config at its base and write it in a stable form (PEFT saves a set of
    target modules, in no fixed order)."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    data["base_model_name_or_path"] = base_path
    data["target_modules"] = sorted(data["target_modules"])
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def portable_tokenizer_config(path: Path) -> None:
    """Name the generic fast tokenizer class, which transformers 4.x and 5.x both load."""
    data = json.loads(path.read_text(encoding="utf-8"))
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    data.pop("backend", None)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
