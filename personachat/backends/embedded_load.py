"""Load a ``transformers`` server entry: one base model, its tokenizer, and every adapter onto it.

Paths are checked before anything heavy is imported, so that a typo is reported in a second with
the server and adapter named; an adapter made for another base (shapes that differ) is reported
as such. The demo models are built first when the profile points at their missing folder.
Called on the embedded backend's worker thread; ``say`` reports each step.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from personachat.adapters import AdapterError, inspect_adapter
from personachat.backends.embedded_batch import Runtime, StackedLora
from personachat.backends.embedded_steer import decoder_layers
from personachat.errors import ServerError
from personachat.paths import looks_like_path
from personachat.profile import ServerSpec

Say = Callable[[str], None]
DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}
SMALL_MODEL_PARAMS = 50_000_000  # below this, one CPU thread is fastest (see _cpu_threads)
_MISMATCH = re.compile(
    r"size mismatch for ([^:]+): copying a param with shape (.+?) from checkpoint, "
    r"the shape in current model is (.+?)\."
)


def load_runtime(server: ServerSpec, say: Say) -> Runtime:
    """Check paths, then load tokenizer, base and adapters; raises :class:`ServerError` with the cause."""
    model_ref = str(server.model)
    _build_demo_if_missing(model_ref, say)
    if _is_local(model_ref):
        folder = Path(model_ref).expanduser()
        if not folder.is_dir():
            raise ServerError(f"server '{server.name}': model folder {folder} does not exist")
        if not (folder / "config.json").is_file():
            raise ServerError(
                f"server '{server.name}': {folder} has no config.json; is it a transformers model folder?"
            )
    for name, path in server.adapters.items():
        if _is_local(path):
            try:
                inspect_adapter(path, name)
            except AdapterError as exc:
                raise ServerError(f"server '{server.name}': {exc}") from None

    if not _is_local(model_ref):
        pinned = (
            f"revision {server.revision}"
            if server.revision
            else "no revision pinned (revision = ... pins one)"
        )
        say(f"{model_ref} is a hub id: it is downloaded unless the Hugging Face cache has it ({pinned})")
    say("importing torch, transformers and peft")
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    device = resolve_device(server.device)
    dtype = resolve_dtype(server.dtype, device)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # tqdm bars on stderr would tear the terminal UI
    try:
        say(f"loading tokenizer and base model {model_ref} on {device} ({_dtype_name(dtype)})")
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_ref, revision=server.revision)
            model = AutoModelForCausalLM.from_pretrained(
                model_ref, revision=server.revision, dtype=dtype, device_map=str(device)
            )
        except (OSError, ValueError) as exc:
            raise ServerError(f"server '{server.name}': cannot load model {model_ref}: {exc}") from None
        model.eval()
        original = model.generation_config
        eos_ids = _ids(tokenizer.eos_token_id) | _ids(getattr(original, "eos_token_id", None))
        pad_id = _first(tokenizer.pad_token_id, getattr(original, "pad_token_id", None), *sorted(eos_ids), 0)
        # Sampling is always explicit: drop the checkpoint's defaults (temperature, top_k,
        # repetition_penalty, ...) so that generate() applies none of them behind our back.
        clean = GenerationConfig(bos_token_id=getattr(original, "bos_token_id", None), pad_token_id=pad_id)
        model.generation_config = clean
        if server.adapters:
            model = _load_adapters(server, model, device, say)
            model.generation_config = clean
            model.eval()
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    threads = _cpu_threads(model) if device.type == "cpu" else None
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    max_context = getattr(text_config, "max_position_embeddings", None)
    loaded_dtype = next(model.parameters()).dtype
    say(
        f"ready: {model_ref} with {len(server.adapters)} adapter(s) on {device} ({_dtype_name(loaded_dtype)})"
        + (f", {_resident_gb():.1f} GB resident, {threads} CPU thread(s)" if threads else "")
    )
    return Runtime(
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=loaded_dtype,
        decode=_decoder(tokenizer),
        eos_ids=frozenset(eos_ids),
        pad_id=int(pad_id),
        max_context=int(max_context) if max_context else None,
        has_adapters=bool(server.adapters),
        lora=_stacked_lora(model, list(server.adapters)) if server.adapters else None,
        commit=getattr(text_config, "_commit_hash", None) if not _is_local(model_ref) else None,
        layers=decoder_layers(model),
        hidden_size=getattr(text_config, "hidden_size", None),
    )


def _load_adapters(server: ServerSpec, model: Any, device: Any, say: Say) -> Any:
    from peft import PeftModel

    total = len(server.adapters)
    peft_model: Any = None
    for i, (name, path) in enumerate(server.adapters.items(), 1):
        say(f"loading adapter {name} ({i}/{total}) from {path}")
        # Adapter weights keep the base's dtype (peft would upcast bf16/fp16 ones to float32 for
        # training), as vLLM does.
        options: dict[str, Any] = {
            "adapter_name": name,
            "autocast_adapter_dtype": False,
            "torch_device": str(device),
        }
        if name in server.adapter_revisions:
            options["revision"] = server.adapter_revisions[name]
        if name in server.adapter_subfolders:
            options["subfolder"] = server.adapter_subfolders[name]
        try:
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(model, path, **options)
            else:
                peft_model.load_adapter(path, **options)
        except RuntimeError as exc:
            if "size mismatch" not in str(exc):
                raise
            raise ServerError(_mismatch_message(server, name, path, str(exc))) from None
        except ValueError as exc:  # e.g. "Target modules {...} not found in the base model"
            raise ServerError(
                f"server '{server.name}': adapter '{name}' ({path}) does not fit base model {server.model}: {exc}"
            ) from None
        except OSError as exc:
            raise ServerError(
                f"server '{server.name}': cannot load adapter '{name}' from {path}: {exc}"
            ) from None
    return peft_model


def _mismatch_message(server: ServerSpec, name: str, path: str, error: str) -> str:
    made_for = None
    with contextlib.suppress(AdapterError):
        made_for = inspect_adapter(path, name).base_model
    match = _MISMATCH.search(error)
    detail = (
        f" ({match.group(1)}: the adapter has {match.group(2)}, the base needs {match.group(3)})"
        if match
        else ""
    )
    return (
        f"server '{server.name}': adapter '{name}' ({path}) was made for another base model: its shapes "
        f"do not match {server.model}{detail}"
        + (f"; its adapter_config.json names {made_for} as its base" if made_for else "")
    )


def _cpu_threads(model: Any) -> int:
    """Use one CPU thread for a tiny model (unless OMP_NUM_THREADS says otherwise).

    On the demo model every operation is microseconds long; spreading it over threads only adds
    synchronisation, and on a busy machine a preempted thread stalls every step (measured on two
    cores under load: 10-20 times slower than one thread). Larger models keep torch's default.
    """
    import os

    import torch

    params = sum(p.numel() for p in model.parameters())
    if params < SMALL_MODEL_PARAMS and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    return torch.get_num_threads()


def _stacked_lora(model: Any, names: list[str]) -> StackedLora | None:
    """Stacked weights for ``mixed_lora`` if every LoRA layer is a plain LoRA ``Linear``, else None.

    DoRA and other variants, LoRA biases, LoRA on embeddings or convolutions, and fully trained
    ``modules_to_save`` go through peft's own ``adapter_names`` path instead.
    """
    from peft.tuners.lora.layer import Linear, LoraLayer

    layers = []
    for module in model.modules():
        if type(module).__name__ in ("ModulesToSaveWrapper", "TrainableTokensWrapper"):
            return None
        if isinstance(module, LoraLayer):
            dora = any(getattr(module, "use_dora", {}).values())
            bias = any(m.bias is not None for m in module.lora_B.values())
            if type(module) is not Linear or getattr(module, "lora_variant", None) or dora or bias:
                return None
            layers.append(module)
    return StackedLora.build(layers, names)


def resolve_device(spec: str) -> Any:
    """``auto``: CUDA when present, else CPU. An explicit device must exist."""
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ServerError(
            f"device '{spec}' asked for, but torch {torch.__version__} sees no CUDA GPU; "
            'use device = "auto" or "cpu"'
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ServerError(f"device '{spec}' asked for, but MPS is not available here")
    return device


def resolve_dtype(spec: str, device: Any) -> Any:
    """``auto``: float32 on CPU, the checkpoint's own dtype elsewhere; or a named dtype."""
    import torch

    if spec == "auto":
        return torch.float32 if device.type == "cpu" else "auto"
    name = DTYPES.get(spec.lower())
    if name is None:
        raise ServerError(f"dtype '{spec}' is not one of auto, {', '.join(sorted(set(DTYPES)))}")
    return getattr(torch, name)


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def _decoder(tokenizer: Any) -> Callable[[Sequence[int]], str]:
    """The fastest exact decoder: the Rust tokenizer when there is one (no Python clean-up step)."""
    rust = getattr(tokenizer, "_tokenizer", None)
    if rust is not None and hasattr(rust, "decode"):
        return lambda ids: rust.decode(ids, skip_special_tokens=True)
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _build_demo_if_missing(model_ref: str, say: Say) -> None:
    from personachat.demo import ensure_demo, read_demo
    from personachat.paths import demo_dir

    if is_demo_path(model_ref) and read_demo(demo_dir()) is None:
        say(f"the demo models are not built yet: building them in {demo_dir()} (once, a few seconds)")
        ensure_demo(demo_dir(), progress=say)


def is_demo_path(model: str) -> bool:
    """True when ``model`` is the demo base model's folder (which start() may build)."""
    from personachat.demo import BASE_NAME
    from personachat.paths import demo_dir

    return Path(model).expanduser().resolve() == (demo_dir() / BASE_NAME).expanduser().resolve()


def _is_local(ref: str) -> bool:
    return looks_like_path(ref) or Path(ref).expanduser().exists()


def _ids(value: Any) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, int):
        return {value}
    return {int(v) for v in value}


def _first(*values: Any) -> int:
    return next(int(v) for v in values if v is not None)


def _resident_gb() -> float:
    """This process's resident memory in GB (Linux; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1e6
    except OSError:
        pass
    return 0.0
