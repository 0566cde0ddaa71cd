"""Inspect LoRA adapter folders and model folders without importing torch.

:func:`inspect_adapter` reads ``adapter_config.json``, finds the weights, hashes the content and lists
what vLLM would refuse (``problems``) or what is worth knowing (``notes``), so that a bad adapter is
reported before a server spends a minute starting. :func:`content_sha256` and :func:`model_sha256`
identify exactly which weights produced an answer (recorded in transcripts).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personachat.errors import PersonachatError, Problem
from personachat.toml_lines import key_lines, line_of

CONFIG_NAME = "adapter_config.json"
WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
# The values vLLM accepts for --max-lora-rank.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# modules_to_save entries vLLM accepts (classification heads).
CLASSIFIER_HEADS = ("classifier", "score")
# init_lora_weights strings that only set the starting weights; a saved adapter is then a plain LoRA.
# Others (PiSSA, OLoRA, CorDA, LoftQ, ...) change the base weights when PEFT loads the adapter.
PLAIN_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
MODEL_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")
_CHUNK = 1 << 20


class AdapterError(PersonachatError):
    """An adapter (or model) folder is missing, incomplete or unreadable."""


@dataclass
class AdapterInfo:
    """What an adapter folder holds, as read from its ``adapter_config.json``."""

    path: Path
    name: str
    rank: int
    alpha: float
    target_modules: list[str] | str | None
    use_rslora: bool = False
    use_dora: bool = False
    modules_to_save: list[str] | None = None
    bias: str = "none"
    init: bool | str = True
    rank_pattern: dict[str, int] = field(default_factory=dict)
    base_model: str | None = None
    weights: list[Path] = field(default_factory=list)
    sha256: str = ""
    problems: list[str] = field(default_factory=list)  # reasons vLLM refuses the adapter
    notes: list[str] = field(default_factory=list)  # worth knowing, not a problem

    @property
    def max_rank(self) -> int:
        """The largest rank of any module: ``r`` or a ``rank_pattern`` override."""
        return max([self.rank, *self.rank_pattern.values()])

    @property
    def scaling(self) -> float:
        """The default factor applied to ``B @ A``: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA."""
        if self.rank <= 0:
            return 0.0
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    @property
    def vllm_ok(self) -> bool:
        return not self.problems


def inspect_adapter(path: Path | str, name: str | None = None) -> AdapterInfo:
    """Read the adapter at ``path`` (named ``name``, default the folder name).

    Raises :class:`AdapterError` if the folder, its config or its weights are missing or unreadable.
    Features vLLM refuses do not raise: they are listed in ``problems``.
    """
    folder = Path(path).expanduser()
    name = name or folder.name
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise AdapterError(f"adapter '{name}': {folder} {what}")
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise AdapterError(
            f"adapter '{name}': {folder} has no {CONFIG_NAME}; is it a PEFT adapter folder "
            "(saved with model.save_pretrained on a PeftModel)?"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise AdapterError(f"adapter '{name}': cannot read {config_path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise AdapterError(
            f"adapter '{name}': {config_path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from exc
    if not isinstance(config, dict):
        raise AdapterError(f"adapter '{name}': {config_path} must hold a JSON object")
    weights = [folder / w for w in WEIGHT_NAMES if (folder / w).is_file()]
    if not weights:
        raise AdapterError(
            f"adapter '{name}': {folder} has no weights ({' or '.join(WEIGHT_NAMES)}); was the save interrupted?"
        )

    rank = config.get("r", 8)
    alpha = config.get("lora_alpha", 8)
    rank_pattern = config.get("rank_pattern") or {}
    info = AdapterInfo(
        path=folder,
        name=name,
        rank=rank if _is_int(rank) else 0,
        alpha=alpha if _is_number(alpha) else 0.0,
        target_modules=config.get("target_modules"),
        use_rslora=bool(config.get("use_rslora", False)),
        use_dora=bool(config.get("use_dora", False)),
        modules_to_save=config.get("modules_to_save"),
        bias=str(config.get("bias") or "none"),
        init=config.get("init_lora_weights", True),
        rank_pattern={k: v for k, v in rank_pattern.items() if _is_int(v)}
        if isinstance(rank_pattern, dict)
        else {},
        base_model=config.get("base_model_name_or_path"),
        weights=weights,
        sha256=content_sha256(folder),
    )
    info.problems = _problems(config, info)
    info.notes = _notes(config, info)
    return info


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _problems(config: dict[str, Any], info: AdapterInfo) -> list[str]:
    """Why vLLM would refuse this adapter (the same checks as vLLM's PEFTHelper, worded for users)."""
    problems: list[str] = []
    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA":
        problems.append(f"peft_type is {peft_type!r}: vLLM serves only LoRA adapters")
    rank = config.get("r", 8)
    if not _is_int(rank) or rank <= 0:
        problems.append(f"r must be a positive integer, not {rank!r}")
    if not _is_number(config.get("lora_alpha", 8)):
        problems.append(f"lora_alpha must be a number, not {config.get('lora_alpha')!r}")
    if not config.get("target_modules") and not config.get("target_parameters"):
        problems.append("no target_modules: the adapter changes nothing vLLM can load")
    rank_pattern = config.get("rank_pattern") or {}
    if not isinstance(rank_pattern, dict):
        problems.append("rank_pattern must be a JSON object")
    else:
        for key, value in rank_pattern.items():
            if not _is_int(value) or value <= 0:
                problems.append(f"rank_pattern[{key!r}] must be a positive integer, not {value!r}")
    extra = [m for m in info.modules_to_save or [] if m not in CLASSIFIER_HEADS]
    if extra:
        problems.append(
            f"modules_to_save {extra}: vLLM loads only LoRA weights (besides classifier heads); "
            "these fully trained modules would be ignored, so vLLM refuses the adapter"
        )
    if info.use_dora:
        problems.append("DoRA (use_dora): vLLM does not support it; merge the adapter into the base instead")
    if info.bias != "none":
        problems.append(f"bias={info.bias!r}: vLLM supports only bias='none'")
    if config.get("lora_bias"):
        problems.append("lora_bias: vLLM does not support LoRA bias")
    init = info.init
    if isinstance(init, str) and init.lower() not in PLAIN_INITS:
        problems.append(
            f"init_lora_weights={init!r}: inits such as PiSSA, OLoRA, CorDA and LoftQ change the base weights "
            "when PEFT loads the adapter; convert it to a plain LoRA with PEFT's "
            "path_initial_model_for_weight_conversion"
        )
    for key, what in (
        ("alora_invocation_tokens", "Activated LoRA (aLoRA)"),
        ("layer_replication", "layer_replication"),
        ("use_bdlora", "block-diagonal LoRA (BD-LoRA)"),
        ("use_qalora", "QALoRA"),
    ):
        if config.get(key):
            problems.append(f"{key}: vLLM does not support {what}")
    return problems


def _notes(config: dict[str, Any], info: AdapterInfo) -> list[str]:
    notes: list[str] = []
    if info.use_rslora:
        notes.append(f"rsLoRA: scaling alpha/sqrt(r) = {info.scaling:g}")
    if info.rank_pattern:
        notes.append(f"rank_pattern: ranks up to {info.max_rank} (r={info.rank})")
    if config.get("alpha_pattern"):
        notes.append("alpha_pattern: per-module alpha overrides")
    heads = [m for m in info.modules_to_save or [] if m in CLASSIFIER_HEADS]
    if heads:
        notes.append(f"modules_to_save {heads}: a classification head, used by vLLM's pooling models only")
    if info.weights[0].name.endswith(".bin"):
        notes.append("weights are a pickle (.bin): prefer safetensors")
    return notes


def vllm_lora_rank(ranks: Iterable[int]) -> int:
    """The smallest ``--max-lora-rank`` value vLLM accepts that fits every rank in ``ranks``."""
    ranks = list(ranks)
    bad = [r for r in ranks if not _is_int(r) or r < 1]
    if bad:
        raise AdapterError(f"invalid LoRA rank {bad[0]!r}: ranks are positive integers")
    need = max(ranks, default=1)
    for allowed in VLLM_LORA_RANKS:
        if allowed >= need:
            return allowed
    raise AdapterError(
        f"LoRA rank {need} is above {VLLM_LORA_RANKS[-1]}, the largest --max-lora-rank vLLM accepts; "
        "merge this adapter into its base model and serve the merged model instead"
    )


# --- content hashes ---------------------------------------------------------------------------------

_hash_cache: dict[tuple[tuple[str, int, int, int], ...], str] = {}


def content_sha256(path: Path | str) -> str:
    """SHA-256 of an adapter folder: its ``adapter_config.json`` and weight files.

    See :func:`files_sha256` for the method. Raises :class:`AdapterError` if none of the files exist.
    """
    folder = Path(path).expanduser()
    return files_sha256([folder / n for n in (CONFIG_NAME, *WEIGHT_NAMES) if (folder / n).is_file()], folder)


def model_sha256(path: Path | str) -> str:
    """SHA-256 of a model folder: config, generation config, tokenizer files and weights (shards too)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise AdapterError(f"model folder {folder} does not exist")
    files = [
        p
        for p in folder.iterdir()
        if p.is_file() and (p.name in MODEL_FILES or p.name.endswith(MODEL_SUFFIXES))
    ]
    return files_sha256(files, folder)


def files_sha256(files: Iterable[Path], folder: Path) -> str:
    """SHA-256 over ``files`` sorted by name: for each, its name, NUL, its size, NUL, then its bytes.

    Results are cached in this process by each file's (path, mtime, size): asking again is cheap,
    and a rewritten file is hashed again.
    """
    files = sorted(files, key=lambda p: p.name)
    if not files:
        raise AdapterError(f"{folder} holds no model or adapter files to identify")
    try:
        stats = [(p, p.stat()) for p in files]
    except OSError as exc:
        raise AdapterError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    key = tuple((str(p.absolute()), st.st_mtime_ns, st.st_size, st.st_ino) for p, st in stats)
    cached = _hash_cache.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    try:
        for path, st in stats:
            digest.update(path.name.encode("utf-8") + b"\0" + str(st.st_size).encode("ascii") + b"\0")
            with path.open("rb") as fh:
                while chunk := fh.read(_CHUNK):
                    digest.update(chunk)
    except OSError as exc:
        raise AdapterError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    result = digest.hexdigest()
    _hash_cache[key] = result
    return result


def flag_value(args: list[str], flag: str) -> str | None:
    """The value of ``flag`` in a command line (``--flag V`` or ``--flag=V``), or None."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _pin(revision: object) -> str:
    return f"pinned at {revision}" if isinstance(revision, str) else "no revision pinned: the latest commit"


def check_adapters(path: Path, data: dict[str, Any], text: str) -> tuple[list[Problem], list[str]]:
    """Inspect every adapter folder named in the profile; return (errors, notes).

    Local folders are inspected (config, weights, rank, features vLLM refuses). Hub ids
    (``owner/name``) are checked for form only: nothing is fetched, so this runs offline.
    """
    from personachat.demo import in_demo_dir
    from personachat.paths import expand_path, looks_like_path
    from personachat.profile import is_hub_id

    lines = key_lines(text)
    errors: list[Problem] = []
    notes: list[str] = []
    base_dir = path.resolve().parent
    servers: dict[str, Any] = data["servers"] if isinstance(data.get("servers"), dict) else {}
    for name, table in servers.items():
        if not isinstance(table, dict):
            continue
        kind = table.get("kind")
        model = table.get("model")
        if isinstance(model, str) and kind in ("vllm", "transformers"):
            resolved = expand_path(model, base_dir)
            mpath = ("servers", name, "model")
            if in_demo_dir(resolved) and not Path(resolved).exists():
                notes.append(
                    f"server '{name}': the demo models are built on first run "
                    "(or now with `personachat demo build`)"
                )
                continue
            if looks_like_path(model) or Path(resolved).is_absolute():
                if not Path(resolved).exists():
                    errors.append(
                        Problem(
                            path,
                            f"model folder not found: {resolved}",
                            ".".join(map(str, mpath)),
                            line_of(lines, mpath),
                        )
                    )
            elif not is_hub_id(model):
                errors.append(
                    Problem(
                        path,
                        f"'{model}' is neither an existing path nor a hub id (owner/name)",
                        ".".join(map(str, mpath)),
                        line_of(lines, mpath),
                    )
                )
            else:
                notes.append(
                    f"server '{name}': model '{model}' is a hub id (not checked offline; "
                    f"{_pin(table.get('revision'))})"
                )
        adapters = table.get("adapters")
        if not isinstance(adapters, dict):
            continue
        args: list[Any] = table["args"] if isinstance(table.get("args"), list) else []
        limit_text = flag_value([str(a) for a in args], "--max-lora-rank")
        limit = int(limit_text) if limit_text and limit_text.isdigit() else None
        for adapter, value in adapters.items():
            if not isinstance(value, str):
                continue
            apath = ("servers", name, "adapters", adapter)
            key = ".".join(map(str, apath))
            line = line_of(lines, apath)
            resolved = expand_path(value, base_dir)
            if not looks_like_path(value) and not Path(resolved).is_absolute():
                # Not written as a path and no such folder beside the profile: a hub id or a mistake.
                if not is_hub_id(value):
                    errors.append(
                        Problem(
                            path,
                            f"'{value}' is neither an existing folder nor a hub id (owner/name)",
                            key,
                            line,
                        )
                    )
                elif kind == "vllm" and limit is None:
                    errors.append(
                        Problem(
                            path,
                            f"adapter '{adapter}' is a hub id, so its rank cannot be read before vLLM "
                            'downloads it: add "--max-lora-rank", "R" to this server\'s args (R at least '
                            f"the adapter's rank, one of {', '.join(map(str, VLLM_LORA_RANKS))})",
                            key,
                            line,
                        )
                    )
                else:
                    pins = table.get("adapter_revisions")
                    folders = table.get("adapter_subfolders")
                    sub = folders.get(adapter) if isinstance(folders, dict) else None
                    pin = _pin(pins.get(adapter) if isinstance(pins, dict) else None)
                    notes.append(
                        f"adapter '{adapter}': '{value}'{f' folder {sub}' if sub else ''} is a hub id "
                        f"(form checked; not fetched offline; {pin})"
                    )
                continue
            try:
                info = inspect_adapter(resolved, adapter)
            except AdapterError as exc:
                errors.append(Problem(path, str(exc), key, line))
                continue
            if limit is not None and info.max_rank > limit:
                errors.append(
                    Problem(
                        path,
                        f"adapter rank {info.max_rank} is above this server's --max-lora-rank {limit}",
                        key,
                        line,
                    )
                )
            elif info.max_rank > 512:
                errors.append(
                    Problem(path, f"adapter rank {info.max_rank} is above vLLM's maximum (512)", key, line)
                )
            if kind == "vllm":
                for problem in info.problems:
                    errors.append(Problem(path, f"vLLM refuses this adapter: {problem}", key, line))
            for note in info.notes:
                notes.append(f"adapter '{adapter}': {note}")
    return errors, notes
