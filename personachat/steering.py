"""Steering, adapter scale and persona projection: what a pane does to the model's activations.

Three pane settings, in-process only (``kind = "transformers"``): ``steer`` adds alpha times a
vector to the output of one decoder layer, ``adapter_scale`` multiplies the pane's LoRA update,
``project`` reads each answer token's hidden state along a vector. A vector file is safetensors
with a 1-D tensor ``vector`` (the model's hidden size) and optional string metadata ``layer`` (a
0-based decoder layer). Files are read here without torch: the header gives the tensor's name,
dtype and shape, and the content hash is recorded with every answer. The model-side checks
(hidden size, number of layers) run when the model is known; see docs/embedded.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personachat.checking import Checker, Expected
from personachat.errors import PersonachatError
from personachat.paths import expand_path
from personachat.toml_lines import KeyPath

VECTOR_TENSOR = "vector"
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
STEER_KEYS: dict[str, Expected] = {"vector": str, "layer": int, "alpha": (int, float)}
ACTIVATION_KEYS: dict[str, Expected] = {"steer": dict, "adapter_scale": (int, float), "project": str}
IN_PROCESS_ONLY = (
    'steering, adapter_scale and project need the in-process backend (a server with kind = "transformers")'
)


class VectorFileError(PersonachatError):
    """A steering or persona vector file that cannot be used; the message names the file."""


@dataclass(frozen=True)
class VectorFile:
    """What a vector file's header says, and its content hash."""

    path: str
    sha256: str
    size: int  # the number of values: the model's hidden size
    dtype: str
    layer: int | None  # the ``layer`` metadata, if any


def read_vector_file(path: str | Path) -> VectorFile:
    """Read and check a vector file's header (no torch); raises :class:`VectorFileError`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise VectorFileError(f"vector file {path} does not exist") from None
    except OSError as exc:
        raise VectorFileError(f"cannot read vector file {path}: {exc.strerror}") from None
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length]) if 2 <= length <= len(data) - 8 else None
    except (struct.error, UnicodeDecodeError, ValueError):
        header = None
    if not isinstance(header, dict):
        raise VectorFileError(f"{path} is not a safetensors file")
    metadata = header.pop("__metadata__", None) or {}
    entry = header.get(VECTOR_TENSOR)
    if not isinstance(entry, dict):
        have = ", ".join(sorted(header)) or "none"
        raise VectorFileError(f"{path} has no tensor named '{VECTOR_TENSOR}' (it has: {have})")
    shape, dtype = entry.get("shape"), entry.get("dtype")
    if not isinstance(shape, list) or len(shape) != 1 or not shape[0]:
        raise VectorFileError(f"{path}: tensor '{VECTOR_TENSOR}' must be 1-D (the hidden size), not {shape}")
    if dtype not in FLOAT_DTYPES:
        raise VectorFileError(f"{path}: tensor '{VECTOR_TENSOR}' must be floating point, not {dtype}")
    layer = metadata.get("layer") if isinstance(metadata, dict) else None
    if layer is not None:
        try:
            layer = int(str(layer))
        except ValueError:
            raise VectorFileError(f"{path}: metadata 'layer' must be a whole number, not {layer!r}") from None
        if layer < 0:
            raise VectorFileError(f"{path}: metadata 'layer' must be 0 or more, not {layer}")
    return VectorFile(str(path), hashlib.sha256(data).hexdigest(), int(shape[0]), dtype, layer)


@dataclass(frozen=True)
class SteerSpec:
    """Add ``alpha`` times the vector in ``vector`` to the output of decoder layer ``layer``."""

    vector: str  # the file's path
    layer: int
    alpha: float
    sha256: str  # of the file as read; the backend refuses a file that changed since
    size: int = 0  # the vector's length (the hidden size it fits)

    @classmethod
    def load(cls, path: str | Path, *, alpha: float, layer: int | None = None) -> SteerSpec:
        """A steering setting from a file; ``layer`` None takes the file's ``layer`` metadata."""
        info = read_vector_file(path)
        layer = info.layer if layer is None else layer
        if layer is None:
            raise VectorFileError(f"{path} has no 'layer' metadata: give the layer to steer at")
        if layer < 0:
            raise VectorFileError(f"the layer to steer at is 0 or more, not {layer}")
        if not math.isfinite(alpha):
            raise VectorFileError(f"alpha must be a finite number, not {alpha}")
        return cls(info.path, int(layer), float(alpha), info.sha256, info.size)

    def to_dict(self) -> dict[str, Any]:
        return {"vector": self.vector, "sha256": self.sha256, "layer": self.layer, "alpha": self.alpha}


@dataclass(frozen=True)
class ProjectSpec:
    """Project each answer token's layer-``layer`` output onto the unit vector of ``vector``."""

    vector: str
    layer: int
    sha256: str
    size: int = 0

    @classmethod
    def load(cls, path: str | Path) -> ProjectSpec:
        info = read_vector_file(path)
        if info.layer is None:
            raise VectorFileError(f"{path} has no 'layer' metadata: a persona vector file names its layer")
        return cls(info.path, info.layer, info.sha256, info.size)

    def to_dict(self) -> dict[str, Any]:
        return {"vector": self.vector, "sha256": self.sha256, "layer": self.layer}


@dataclass(frozen=True)
class ActivationSpec:
    """A pane's activation settings (none by default): steering, adapter scale, projection."""

    steer: SteerSpec | None = None
    adapter_scale: float | None = None  # None: the adapter as trained (1)
    project: ProjectSpec | None = None

    @property
    def active(self) -> bool:
        return self.steer is not None or self.adapter_scale is not None or self.project is not None

    @classmethod
    def from_record(
        cls, steer: dict[str, Any] | None, adapter_scale: float | None, project: dict[str, Any] | None
    ) -> ActivationSpec:
        """The settings a response record names (a reopened session continues with them). The
        files are not read here: a file that changed since is refused when the pane next asks."""
        try:
            return cls(
                SteerSpec(
                    str(steer["vector"]), int(steer["layer"]), float(steer["alpha"]), str(steer["sha256"])
                )
                if steer
                else None,
                adapter_scale,
                ProjectSpec(str(project["vector"]), int(project["layer"]), str(project["sha256"]))
                if project
                else None,
            )
        except (KeyError, TypeError, ValueError):  # a record edited by hand: no settings
            return NO_ACTIVATIONS

    def to_dict(self) -> dict[str, Any]:
        """The settings that are set, as recorded (pane settings, response records)."""
        out: dict[str, Any] = {}
        if self.steer is not None:
            out["steer"] = self.steer.to_dict()
        if self.adapter_scale is not None:
            out["adapter_scale"] = self.adapter_scale
        if self.project is not None:
            out["project"] = self.project.to_dict()
        return out


NO_ACTIVATIONS = ActivationSpec()


def check_adapter_scale(scale: float) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise VectorFileError(f"adapter_scale must be a finite number, not {scale!r}")
    return float(scale)


def _model_shape(model: str | None) -> tuple[int | None, int | None]:
    """A local model folder's decoder layers and hidden size, from its config.json (None: unknown)."""
    try:
        config = json.loads((Path(str(model)) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    layers, hidden = text.get("num_hidden_layers"), text.get("hidden_size")
    return (layers if isinstance(layers, int) else None), (hidden if isinstance(hidden, int) else None)


def check_fits(
    spec: SteerSpec | ProjectSpec, layers: int | None, hidden: int | None, model: str
) -> str | None:
    """Why ``spec`` does not fit a model with ``layers`` decoder layers of ``hidden`` size, or None."""
    if layers is not None and not 0 <= spec.layer < layers:
        return f"layer {spec.layer} is out of range: {model} has {layers} decoder layers (0-{layers - 1})"
    if hidden is not None and spec.size and spec.size != hidden:
        return f"{spec.vector} has {spec.size} values, but {model}'s hidden size is {hidden}"
    return None


def parse_activations(
    checker: Checker,
    table: dict[str, Any],
    path: KeyPath,
    *,
    server: Any,  # a ServerSpec, or None when the pane's server is unknown
    base_dir: Path | None,
) -> ActivationSpec:
    """The pane keys ``steer``, ``adapter_scale`` and ``project`` (types checked by the caller)."""
    given = [key for key in ACTIVATION_KEYS if key in table]
    if not given:
        return NO_ACTIVATIONS
    if server is not None and server.kind != "transformers":
        for key in given:
            checker.at((*path, key), f"{IN_PROCESS_ONLY}; server '{server.name}' is kind = \"{server.kind}\"")
        return NO_ACTIVATIONS
    model = server.model if server is not None else None
    layers, hidden = _model_shape(model) if model else (None, None)
    steer = project = scale = None
    raw = table.get("steer")
    if isinstance(raw, dict) and checker.check_table(raw, STEER_KEYS, (*path, "steer"), "steer"):
        if "vector" not in raw or "alpha" not in raw:
            checker.at((*path, "steer"), "steer needs 'vector' (a file) and 'alpha' (0 adds nothing)")
        else:
            try:
                steer = SteerSpec.load(
                    expand_path(raw["vector"], base_dir), alpha=raw["alpha"], layer=raw.get("layer")
                )
            except VectorFileError as exc:
                checker.at((*path, "steer"), str(exc))
    raw = table.get("project")
    if isinstance(raw, str):
        try:
            project = ProjectSpec.load(expand_path(raw, base_dir))
        except VectorFileError as exc:
            checker.at((*path, "project"), str(exc))
    for key, spec in (("steer", steer), ("project", project)):
        problem = spec and check_fits(spec, layers, hidden, str(model))
        if problem:
            checker.at((*path, key), problem)
    raw = table.get("adapter_scale")
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        if not math.isfinite(raw):
            checker.at((*path, "adapter_scale"), "must be a finite number")
        elif server is not None and table.get("model") == server.base_name:
            checker.at((*path, "adapter_scale"), "scales an adapter's update; this pane is the base model")
        else:
            scale = float(raw)
    return ActivationSpec(steer, scale, project)
