"""One mixed-adapter ``generate`` call: per-row sampling, per-row stopping, per-row incremental text.

Runs on the embedded backend's worker thread. A *row* is one sample of one request; rows with
different adapters, sampling settings, prompt lengths and stop strings share one batch because
everything that differs between them is applied per row here:

- :class:`RowSampler` (a logits processor) picks each row's next token itself, greedy or sampled
  with the row's own temperature, top-k, top-p, repetition penalty and ``torch.Generator``, and
  hands ``generate`` a one-hot score row; ``generate`` runs greedy and so takes that token.
- :class:`RowStopper` (a stopping criterion) feeds the new token column to :class:`BatchStreamer`,
  which decodes each row incrementally and ends it on EOS, a stop string, ``max_tokens`` or a
  cancel, then tells ``generate`` which rows are done; the whole call ends when every row is.
- :func:`mixed_lora` gives each row its own adapter (see there for why not peft's
  ``adapter_names``, which remains the fallback), scaled by the row's adapter scale.
- :func:`~personachat.backends.embedded_steer.activation_hooks` steers rows and reads their
  persona projections. A projecting row's last token is fed one step after it was chosen, so the
  stopper keeps such a row open for that one step and the row's end part waits for its value.

The stopper drives the streamer (rather than passing it as ``generate(streamer=...)``) because
transformers 5 calls ``streamer.put`` after the stopping criteria (on MPS a step late): a stop
string or a cancel would otherwise be seen one decoding step later. torch is imported inside
functions so that importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from personachat.backends.base import EndPart, ProjectionPart, StreamPart, TextPart
from personachat.backends.embedded_steer import ProjectionTap, RowActivations, activation_hooks
from personachat.sampling import Sampling

if TYPE_CHECKING:
    import torch

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in adapter_names
GREEDY_BELOW = 1e-5  # temperatures below this decode greedily, as in vLLM
CONTEXT_TOKENS = 5  # prompt tokens decoded before the answer, so the first token's text is exact
REPLACEMENT = "\ufffd"


class RowOwner(Protocol):
    """The request a row belongs to, as the worker sees it."""

    cancelled: bool


Decode = Callable[[Sequence[int]], str]
Emit = Callable[[list[tuple["Row", list[StreamPart]]]], None]


class RowText:
    """Incremental detokenization of one row, with stop strings.

    Decodes a sliding window of token ids and keeps only text that cannot change any more: text
    ending in U+FFFD (a multi-byte character cut between tokens) waits for the next token. The
    window starts a few prompt tokens early, so that tokenizers which drop a leading space at the
    start of a decode (SentencePiece) still give the answer's first token its space. Text that
    could be the beginning of a stop string is held back until it is known not to be one.
    """

    def __init__(self, decode: Decode, context: Sequence[int], stop: Sequence[str] = ()):
        self._decode = decode
        self._ids = list(context)
        self._prefix = 0
        self._read = len(self._ids)
        self._prefix_text = decode(self._ids) if self._ids else ""
        self._stop = tuple(s for s in stop if s)
        self._longest = max((len(s) for s in self._stop), default=0)
        self.text = ""  # stable text so far, truncated before a stop string once one is found
        self._sent = 0

    def add(self, token_id: int) -> str | None:
        """Take one generated token; returns the stop string it completed, if any."""
        self._ids.append(token_id)
        new = self._decode(self._ids[self._prefix :])
        if len(new) <= len(self._prefix_text) or new.endswith(REPLACEMENT):
            return None
        before = len(self.text)
        self.text += new[len(self._prefix_text) :]
        self._prefix, self._read = self._read, len(self._ids)
        self._prefix_text = self._decode(self._ids[self._prefix : self._read])
        if not self._stop:
            return None
        start = max(0, before - self._longest + 1)
        found = [(i, s) for s in self._stop if (i := self.text.find(s, start)) != -1]
        if not found:
            return None
        at, stop = min(found)
        self.text = self.text[:at]
        return stop

    def take(self, final: bool = False) -> str:
        """The text not handed out yet, less a tail that may still become a stop string."""
        end = len(self.text)
        if not final and self._stop:
            tail = self.text[max(self._sent, end - self._longest + 1) :]
            for k in range(len(tail), 0, -1):
                if any(s.startswith(tail[-k:]) for s in self._stop):
                    end -= k
                    break
        delta = self.text[self._sent : end]
        self._sent = max(self._sent, end)
        return delta


@dataclass(eq=False)
class Row:
    """One sample of one request inside a batch."""

    owner: RowOwner
    index: int  # the sample index within its request
    prompt_ids: list[int]
    adapter: str  # an adapter name, or BASE_ADAPTER
    sampling: Sampling
    seed: int | None  # this row's own seed (the request's seed + index), None: a fresh random one
    ignore_eos: bool = False
    min_tokens: int = 0  # EOS cannot end the row before this many tokens
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop", "length", or "cancelled" (never reported)
    stop_reason: str | None = None  # the stop string that ended the row
    pad: int = 0  # left padding in the batch
    text: RowText | None = None
    generator: Any = None
    activations: RowActivations | None = None  # steering, adapter scale, projection
    projection: list[float] = field(default_factory=list)  # one value per answer token so far
    awaiting: bool = False  # the last token's projection comes with the next forward pass
    held_end: EndPart | None = None  # the end part, sent after the last token's projection

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def settled(self) -> bool:
        """Done, with everything sent (its last projection included)."""
        return self.done and not self.awaiting

    @property
    def projects(self) -> bool:
        return self.activations is not None and self.activations.project is not None

    @property
    def greedy(self) -> bool:
        return self.sampling.temperature < GREEDY_BELOW

    def advance(self, token_id: int, eos_ids: frozenset[int]) -> list[StreamPart]:
        """Take the row's next token; returns the parts to send (text, and the end once it ends)."""
        assert self.text is not None
        self.token_ids.append(token_id)
        if token_id in eos_ids and not self.ignore_eos and len(self.token_ids) > self.min_tokens:
            self.finish_reason = "stop"
        elif stop := self.text.add(token_id):
            self.finish_reason, self.stop_reason = "stop", stop
        elif len(self.token_ids) >= self.sampling.max_tokens:
            self.finish_reason = "length"
        delta = self.text.take(final=self.done)
        parts: list[StreamPart] = [TextPart(self.index, delta)] if delta else []
        # Every answer token is projected but an EOS that ends the answer (it has no text).
        self.awaiting = self.projects and not (self.finish_reason == "stop" and self.stop_reason is None)
        if self.done:
            end = EndPart(self.index, self.finish_reason, self.stop_reason)
            if self.awaiting:
                self.held_end = end
            else:
                parts.append(end)
        return parts

    def take_projection(self, value: float) -> list[StreamPart]:
        """The projection of the last token (read at the step after it was chosen)."""
        self.awaiting = False
        self.projection.append(value)
        parts: list[StreamPart] = [ProjectionPart(self.index, len(self.projection) - 1, [value])]
        if self.held_end is not None:
            parts.append(self.held_end)
            self.held_end = None
        return parts

    def drop(self) -> None:
        """The request was cancelled: nothing more is sent."""
        if not self.done:
            self.finish_reason = "cancelled"
        self.awaiting, self.held_end = False, None


class BatchStreamer:
    """Splits each step's token column into per-row text deltas (the ``put``/``end`` of a streamer).

    ``emit`` receives, once per step, every row that has something to send. Rows whose request
    was cancelled end at the next step without sending anything.
    """

    def __init__(self, rows: list[Row], eos_ids: frozenset[int], emit: Emit, stats: BatchStats):
        self.rows = rows
        self.eos_ids = eos_ids
        self.emit = emit
        self.stats = stats
        self.on_step: Callable[[], None] | None = None
        self.tap: ProjectionTap | None = None  # projections of the tokens fed at this step

    def put(self, token_ids: torch.Tensor) -> None:
        if token_ids.dim() > 1:  # generate() first puts the prompt
            return
        self.stats.steps += 1
        updates: list[tuple[Row, list[StreamPart]]] = []
        projections = self.tap.take() if self.tap is not None else None
        for i, (row, token) in enumerate(zip(self.rows, token_ids.tolist(), strict=True)):
            if row.settled:
                continue
            if row.owner.cancelled:
                row.drop()
                continue
            parts: list[StreamPart] = []
            if row.awaiting and projections is not None:
                parts = row.take_projection(projections[i])
            if not row.done:
                parts += row.advance(token, self.eos_ids)
            if parts:
                updates.append((row, parts))
        if updates:
            self.emit(updates)
        if self.on_step is not None:
            self.on_step()

    def end(self) -> None:
        """Generation stopped: any row still open ran into the batch's length limit."""
        updates: list[tuple[Row, list[StreamPart]]] = []
        for row in self.rows:
            if row.settled:
                continue
            if row.owner.cancelled:
                row.drop()
                continue
            held, row.held_end, row.awaiting = row.held_end, None, False
            if held is not None:  # (generate() always runs the step that reads the projection)
                updates.append((row, [held]))
                continue
            row.finish_reason = "length"
            assert row.text is not None
            delta = row.text.take(final=True)
            parts: list[StreamPart] = [TextPart(row.index, delta)] if delta else []
            updates.append((row, [*parts, EndPart(row.index, "length")]))
        if updates:
            self.emit(updates)

    def done_mask(self) -> list[bool]:
        """Rows generate() may stop: a row awaiting its last projection needs one more step."""
        return [row.settled for row in self.rows]


class RowStopper:
    """A stopping criterion: hands the new tokens to the streamer and reports the rows that are done."""

    def __init__(self, streamer: BatchStreamer):
        self.streamer = streamer

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        import torch

        self.streamer.put(input_ids[:, -1])
        return torch.tensor(self.streamer.done_mask(), dtype=torch.bool, device=input_ids.device)


class RowSampler:
    """A logits processor that chooses each row's token with that row's own settings and generator.

    Returns scores that are 0 for the chosen token and -inf elsewhere, so that greedy ``generate``
    takes it. Seeded rows draw from their own ``torch.Generator``, so a seed reproduces the same
    draws whatever else shares the batch.
    """

    def __init__(self, rows: list[Row], eos_ids: frozenset[int]):
        self.rows = rows
        self.eos_ids = sorted(eos_ids)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        choice = scores.argmax(dim=-1)
        for r, row in enumerate(self.rows):
            if row.done:
                continue
            s = row.sampling
            logits = scores[r]
            changed = len(row.token_ids) < row.min_tokens and bool(self.eos_ids)
            if changed:
                eos = torch.tensor(self.eos_ids, device=logits.device)
                logits = logits.index_fill(0, eos, float("-inf"))
            if s.repetition_penalty is not None and s.repetition_penalty != 1.0:
                logits = _repetition_penalty(logits, input_ids[r, row.pad :], float(s.repetition_penalty))
                changed = True
            if not row.greedy:
                choice[r] = _sample(logits, s, row.generator)
            elif changed:
                choice[r] = logits.argmax()
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, choice.unsqueeze(1), 0.0)
        return out


def _repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """vLLM's and transformers' rule: divide positive logits of seen tokens, multiply negative ones."""
    import torch

    picked = logits.gather(0, seen)
    picked = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits.clone().scatter_(0, seen, picked)


def _sample(logits: torch.Tensor, s: Sampling, generator: Any) -> torch.Tensor:
    """Temperature, then top-k, then top-p (vLLM's order), then one draw from ``generator``."""
    import torch

    logits = logits / s.temperature
    if s.top_k is not None and 0 < s.top_k < logits.shape[-1]:
        kth = torch.topk(logits, s.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if s.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        before = sorted_probs.cumsum(0) - sorted_probs  # probability mass ahead of each token
        drop = before >= s.top_p
        drop[0] = False
        probs = probs.scatter(0, order[drop], 0.0)
    return torch.multinomial(probs, 1, generator=generator)[0]


@dataclass
class BatchStats:
    """What one ``generate`` call did (kept by the backend for tests and benchmarks)."""

    rows: int = 0
    adapters: list[str] = field(default_factory=list)
    prompt_width: int = 0
    steps: int = 0
    tokens: int = 0  # tokens generated by rows that were not cancelled
    seconds: float = 0.0
    cancelled: int = 0


@dataclass
class Runtime:
    """A loaded model as the worker uses it."""

    model: Any  # a PeftModel (adapters loaded) or a plain PreTrainedModel
    tokenizer: Any
    device: Any  # torch.device
    dtype: Any  # torch.dtype
    decode: Decode
    eos_ids: frozenset[int]
    pad_id: int
    max_context: int | None
    has_adapters: bool
    lora: StackedLora | None = None  # None: mixed batches go through peft's adapter_names
    commit: str | None = None  # the hub commit the weights came from (hub ids only)
    layers: list[Any] = field(default_factory=list)  # the decoder layers (steering, projection)
    hidden_size: int | None = None
    vectors: dict[str, Any] = field(default_factory=dict)  # steering/persona vectors by sha256


@dataclass
class StackedLora:
    """Every adapter's LoRA weights per layer side by side, for batches in which each row uses its
    own adapter.

    Per layer ``a`` is ``[in, adapters * r]`` (each adapter's A, transposed, in its own block of
    ``r`` columns) and ``b`` is ``[adapters * r, out]`` (each adapter's B, transposed and scaled);
    adapters of lower rank, or that skip the layer, are zero-padded. A copy of the LoRA weights
    (small beside the base), made once at load.
    """

    slots: dict[str, int]  # adapter name -> its block
    layers: list[tuple[Any, Any, Any, int]]  # (peft LoRA layer, a, b, r)

    @classmethod
    def build(cls, layers: list[Any], names: list[str]) -> StackedLora:
        import torch

        slots = {name: i for i, name in enumerate(names)}
        stacked = []
        for layer in layers:
            present = [n for n in names if n in layer.lora_A]
            if not present:
                continue
            ref = layer.lora_A[present[0]].weight
            r = max(layer.lora_A[n].weight.shape[0] for n in present)
            out_features = layer.lora_B[present[0]].weight.shape[0]
            a = torch.zeros(ref.shape[1], len(names) * r, dtype=ref.dtype, device=ref.device)
            b = torch.zeros(len(names) * r, out_features, dtype=ref.dtype, device=ref.device)
            with torch.no_grad():
                for n in present:
                    weight_a, weight_b = layer.lora_A[n].weight, layer.lora_B[n].weight
                    at = slots[n] * r
                    a[:, at : at + weight_a.shape[0]] = weight_a.T
                    b[at : at + weight_b.shape[1], :] = (weight_b * layer.scaling[n]).T
            stacked.append((layer, a, b, r))
        return cls(slots, stacked)


@contextlib.contextmanager
def mixed_lora(rt: Runtime, rows: list[Row]) -> Iterator[None]:
    """Each row gets its own adapter's LoRA delta, in two plain matrix products per layer.

    peft's ``adapter_names`` path loops over adapters in every LoRA layer at every step, rebuilding
    Python index lists and indexing with them: on the demo model that was over half of a decoding
    step, and it grows with the number of adapters. Here, with the adapters disabled (each LoRA layer
    returns its base output), a forward hook computes ``x @ A_all`` for all adapters at once, zeroes
    the blocks that are not the row's own adapter (all of them for base rows), and adds ``@ B_all``.
    The extra work is ``adapters * r`` columns instead of ``r``, small beside the base's matrices.
    Used for every batch with adapter rows, so a pane gets the same numbers alone or in any batch.
    A row's mask holds its adapter scale instead of 1 (``adapter_scale``), which scales its update.
    """
    import torch

    assert rt.lora is not None
    count = len(rt.lora.slots)
    masks: dict[int, torch.Tensor] = {}
    for r in {r for *_, r in rt.lora.layers}:
        mask = torch.zeros(len(rows), 1, count * r, dtype=rt.dtype)
        for i, row in enumerate(rows):
            if row.adapter in rt.lora.slots:
                at = rt.lora.slots[row.adapter] * r
                mask[i, :, at : at + r] = row.activations.scale if row.activations else 1.0
        masks[r] = mask.to(rt.device)

    def add_deltas(
        a: Any, b: Any, mask: Any, module: Any, args: tuple[Any, ...], output: torch.Tensor
    ) -> torch.Tensor:
        x = args[0]
        picked = (x.to(a.dtype) @ a) * (mask if x.dim() == 3 else mask.squeeze(1))
        return output.add_((picked @ b).to(output.dtype))

    handles = [
        layer.register_forward_hook(functools.partial(add_deltas, a, b, masks[r]))
        for layer, a, b, r in rt.lora.layers
    ]
    try:
        with rt.model.disable_adapter():
            yield
    finally:
        for handle in handles:
            handle.remove()


def run_batch(
    rt: Runtime, rows: list[Row], emit: Emit, stats: BatchStats, on_step: Callable[[], None] | None = None
) -> None:
    """Generate every row of ``rows`` in one ``generate`` call (left-padded, mixed adapters).

    ``stats`` is filled in as the call runs (``steps`` every step, the rest at the end): a request
    can end, and its consumer look, before the batch is over.
    """
    import torch
    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

    width = max(len(row.prompt_ids) for row in rows)
    ids = torch.full((len(rows), width), rt.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        row.pad = width - len(row.prompt_ids)
        ids[i, row.pad :] = torch.tensor(row.prompt_ids, dtype=torch.long)
        mask[i, row.pad :] = 1
        row.text = RowText(rt.decode, row.prompt_ids[-CONTEXT_TOKENS:], row.sampling.stop)
        if not row.greedy:
            row.generator = torch.Generator(device=rt.device)
            if row.seed is None:
                row.generator.seed()
            else:
                row.generator.manual_seed(row.seed)
    adapters = sorted({row.adapter for row in rows})
    stats.rows, stats.adapters, stats.prompt_width = len(rows), adapters, width
    streamer = BatchStreamer(rows, rt.eos_ids, emit, stats)
    streamer.on_step = on_step
    projecting = any(row.projects for row in rows)
    config = GenerationConfig(
        # One step more when a row projects: its last token's hidden state comes with that step.
        max_new_tokens=max(row.sampling.max_tokens for row in rows) + int(projecting),
        do_sample=False,
        num_beams=1,
        pad_token_id=rt.pad_id,
    )
    kwargs: dict[str, Any] = {}
    scope: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if rt.has_adapters:
        if adapters == [BASE_ADAPTER]:
            scope = rt.model.disable_adapter()
        elif rt.lora is not None:
            scope = mixed_lora(rt, rows)
        elif len(adapters) == 1:
            rt.model.set_adapter(adapters[0])
        else:
            kwargs["adapter_names"] = [row.adapter for row in rows]
    started = time.perf_counter()
    with torch.inference_mode(), scope, activation_hooks(rt, rows) as tap:
        streamer.tap = tap
        rt.model.generate(
            input_ids=ids.to(rt.device),
            attention_mask=mask.to(rt.device),
            generation_config=config,
            logits_processor=LogitsProcessorList([RowSampler(rows, rt.eos_ids)]),
            stopping_criteria=StoppingCriteriaList([RowStopper(streamer)]),
            **kwargs,
        )
    streamer.end()
    stats.seconds = time.perf_counter() - started
    stats.cancelled = sum(row.finish_reason == "cancelled" for row in rows)
    stats.tokens = sum(len(row.token_ids) for row in rows if row.finish_reason != "cancelled")
