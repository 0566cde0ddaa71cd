"""Steering, adapter scale and persona projection inside one mixed-adapter batch (worker thread).

Each row carries its own settings (:class:`RowActivations`). For every decoder layer that some
row steers or projects at, one forward hook acts on the whole batch, so a pane's numbers do not
depend on what shares its batch:

- steering: ``output += D``, where ``D`` is ``[rows, 1, hidden]``: alpha times the row's vector
  for a row steered at this layer, zero for every other row (whose output is then unchanged, bit
  for bit), added at every position (prompt and answer);
- projection: ``(output[:, -1] * U).sum(-1)`` in float32, ``U`` each projecting row's unit vector
  (zero elsewhere): the projection of the hidden state of the token fed at this step, which the
  streamer reads once per step (:class:`ProjectionTap`).

The adapter scale needs no hook: it is the value of the row's block in ``mixed_lora``'s mask. A
projection hook registered after the steering hooks sees a steered output at the same layer.
torch is imported inside functions, so importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from personachat.errors import BackendError
from personachat.steering import VECTOR_TENSOR, ActivationSpec, ProjectSpec, SteerSpec, check_fits

if TYPE_CHECKING:
    import torch

    from personachat.backends.embedded_batch import Row, Runtime


@dataclass
class RowActivations:
    """One row's activation settings, as tensors ready for the hooks."""

    steer: tuple[int, Any] | None = None  # (layer, alpha * vector in the model's dtype)
    scale: float = 1.0  # the row's LoRA update is multiplied by this
    project: tuple[int, Any] | None = None  # (layer, unit vector in float32)


@dataclass
class ProjectionTap:
    """Per-row projections of the latest forward pass, one tensor per projected layer."""

    parts: dict[int, Any] = field(default_factory=dict)

    def take(self) -> list[float] | None:
        """Each row's projection from the forward pass just run (one sync), or None."""
        if not self.parts:
            return None
        values = functools.reduce(lambda a, b: a + b, self.parts.values())
        self.parts.clear()
        return [float(v) for v in values.tolist()]


def decoder_layers(model: Any) -> list[Any]:
    """The model's decoder layers (``model.layers`` of a causal LM, under peft's wrapper)."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    getter = getattr(base, "get_decoder", None)
    decoder = getter() if callable(getter) else None
    layers = getattr(decoder, "layers", None)
    if isinstance(layers, torch.nn.ModuleList):
        return list(layers)
    for name, module in base.named_modules():
        if name.rpartition(".")[2] == "layers" and isinstance(module, torch.nn.ModuleList):
            return list(module)
    return []


def check_model_fit(rt: Runtime, spec: SteerSpec | ProjectSpec) -> None:
    """Raise :class:`BackendError` when the file's layer or size does not fit the loaded model."""
    if not rt.layers:
        raise BackendError("this model's decoder layers were not found: it cannot be steered or projected")
    problem = check_fits(spec, len(rt.layers), rt.hidden_size, "the model")
    if problem:
        raise BackendError(problem)


def load_vector(rt: Runtime, spec: SteerSpec | ProjectSpec) -> torch.Tensor:
    """The file's vector as float32 on the model's device; the file must still be what was set."""
    import torch
    from safetensors.torch import load

    check_model_fit(rt, spec)
    try:
        data = Path(spec.vector).read_bytes()
    except OSError as exc:
        raise BackendError(f"cannot read vector file {spec.vector}: {exc.strerror or exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise BackendError(
            f"vector file {spec.vector} changed since it was set (sha256 {spec.sha256[:12]}, now "
            f"{digest[:12]}): set it again (/steer, or reload the profile)"
        )
    cached = rt.vectors.get(digest)
    if cached is not None:
        return cached
    try:
        vector = load(data).get(VECTOR_TENSOR)
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise BackendError(f"cannot read vector file {spec.vector}: {exc}") from None
    if vector is None or vector.dim() != 1 or vector.numel() != rt.hidden_size:
        raise BackendError(f"{spec.vector}: tensor '{VECTOR_TENSOR}' must be 1-D of the hidden size")
    vector = vector.to(device=rt.device, dtype=torch.float32)
    if not bool(torch.isfinite(vector).all()):
        raise BackendError(f"{spec.vector}: the vector has values that are not finite")
    rt.vectors[digest] = vector
    return vector


def row_activations(rt: Runtime, spec: ActivationSpec) -> RowActivations | None:
    """A request's settings as tensors (vectors loaded once per file content), or None."""
    if not spec.active:
        return None
    out = RowActivations(scale=1.0 if spec.adapter_scale is None else spec.adapter_scale)
    if spec.steer is not None:
        vector = load_vector(rt, spec.steer)
        if spec.steer.alpha != 0:  # alpha 0 adds nothing: no hook at all
            out.steer = (spec.steer.layer, (spec.steer.alpha * vector).to(rt.dtype))
    if spec.project is not None:
        vector = load_vector(rt, spec.project)
        norm = float(vector.norm())
        if norm == 0:
            raise BackendError(f"{spec.project.vector}: a zero vector has no direction to project on")
        out.project = (spec.project.layer, vector / norm)
    return out


def _hidden(output: Any) -> Any:
    return output[0] if isinstance(output, tuple) else output


def _steer(delta: Any, module: Any, args: tuple[Any, ...], output: Any) -> None:
    _hidden(output).add_(delta)


def _project(
    tap: ProjectionTap, layer: int, units: Any, module: Any, args: tuple[Any, ...], output: Any
) -> None:
    tap.parts[layer] = (_hidden(output)[:, -1, :].float() * units).sum(-1)


@contextlib.contextmanager
def activation_hooks(rt: Runtime, rows: Sequence[Row]) -> Iterator[ProjectionTap | None]:
    """Hooks for the rows' steering and projections during one ``generate``; yields the tap
    the streamer reads projections from (None when no row projects)."""
    import torch

    hidden = int(rt.hidden_size or 0)
    deltas: dict[int, torch.Tensor] = {}  # layer -> [rows, 1, hidden]
    units: dict[int, torch.Tensor] = {}  # layer -> [rows, hidden]
    for i, row in enumerate(rows):
        acts = row.activations
        if acts is not None and acts.steer is not None:
            layer, delta = acts.steer
            if layer not in deltas:
                deltas[layer] = torch.zeros(len(rows), 1, hidden, dtype=rt.dtype, device=rt.device)
            deltas[layer][i, 0] = delta
        if acts is not None and acts.project is not None:
            layer, unit = acts.project
            if layer not in units:
                units[layer] = torch.zeros(len(rows), hidden, dtype=torch.float32, device=rt.device)
            units[layer][i] = unit
    tap = ProjectionTap()
    handles = [
        rt.layers[layer].register_forward_hook(functools.partial(_steer, delta))
        for layer, delta in deltas.items()
    ]
    handles += [
        rt.layers[layer].register_forward_hook(functools.partial(_project, tap, layer, unit))
        for layer, unit in units.items()
    ]
    try:
        yield tap if units else None
    finally:
        for handle in handles:
            handle.remove()
