"""Persona vectors from a persona_vectors trait file, in-process (after Chen et al., 2025).

For every instruction pair and question, the pane's model answers the question greedily twice:
with the positive instruction as the system prompt, and with the negative one. Each answer is then
run through the model once more (its scored sequence, :mod:`personachat.lens.render`) and the
output of decoder layer ``L`` (0-based, ``model.layers[L]``) is averaged over the answer's tokens.
The persona vector is the mean of the positive answers' averages minus the mean of the negative
ones. With a judge (``--judge``), only the pairs whose positive answer shows the trait and whose
negative answer does not, both coherent, are used, as Chen et al. filter theirs. docs/lens.md
says where this follows their code and where it differs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personachat.errors import PersonachatError
from personachat.lens.render import render_sequence
from personachat.lens.score import model_scope
from personachat.steering import VECTOR_TENSOR

SIDES = ("pos", "neg")
COHERENCE_MIN = 50.0  # Chen et al.: both answers of a pair at least this coherent


@dataclass
class ExtractionAnswer:
    """One answer made for the extraction: which side, instruction and question, and what was said."""

    side: str  # "pos" or "neg"
    instruction: int  # the instruction pair's index
    question: int  # the question's index
    messages: list[dict[str, str]]
    text: str = ""
    finish_reason: str | None = None
    tokens: int = 0  # answer tokens in the scored sequence
    scores: dict[str, float | None] = field(default_factory=dict)  # judge metric -> 0-100 score
    kept: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "instruction": self.instruction,
            "question": self.question,
            "messages": self.messages,
            "text": self.text,
            "finish_reason": self.finish_reason,
            "tokens": self.tokens,
            "scores": self.scores,
            "kept": self.kept,
        }


def extraction_answers(instructions: list[dict[str, str]], questions: list[str]) -> list[ExtractionAnswer]:
    """The answers to make: each instruction pair x each question x (pos, neg), pairs side by side."""
    out = []
    for k, pair in enumerate(instructions):
        for q, question in enumerate(questions):
            for side in SIDES:
                messages = [{"role": "system", "content": pair[side]}, {"role": "user", "content": question}]
                out.append(ExtractionAnswer(side, k, q, messages))
    return out


def pairs(answers: list[ExtractionAnswer]) -> Iterator[tuple[ExtractionAnswer, ExtractionAnswer]]:
    """(positive, negative) answers to the same question under the same instruction pair."""
    by_key = {(a.side, a.instruction, a.question): a for a in answers}
    for a in answers:
        if a.side == "pos" and ("neg", a.instruction, a.question) in by_key:
            yield a, by_key[("neg", a.instruction, a.question)]


def judge_filter(answers: list[ExtractionAnswer], trait: str, coherence: str, threshold: float) -> int:
    """Keep the pairs Chen et al. keep: trait >= ``threshold`` on the positive side, < 100 - ``threshold``
    on the negative, both coherent >= 50 (a missing score keeps nothing). Marks ``kept``; returns
    the number of pairs kept."""
    kept = 0
    for pos, neg in pairs(answers):
        p, n = pos.scores.get(trait), neg.scores.get(trait)
        cp, cn = pos.scores.get(coherence), neg.scores.get(coherence)
        ok = (
            p is not None
            and n is not None
            and cp is not None
            and cn is not None
            and p >= threshold
            and n < 100 - threshold
            and cp >= COHERENCE_MIN
            and cn >= COHERENCE_MIN
        )
        pos.kept = neg.kept = ok
        kept += ok
    return kept


def check_layer(model: Any, layer: int) -> Any:
    """The model's decoder layers, when ``layer`` is one of them; else a clear error."""
    from personachat.backends.embedded_steer import decoder_layers

    layers = decoder_layers(model)
    if not layers:
        raise PersonachatError(f"cannot find the decoder layers of {type(model).__name__}")
    if not 0 <= layer < len(layers):
        raise PersonachatError(
            f"layer {layer} does not exist: the model has decoder layers 0 to {len(layers) - 1}"
        )
    return layers


def answer_means(runtime: Any, adapter: str | None, answers: list[ExtractionAnswer], layer: int) -> list[Any]:
    """Per answer, the output of decoder layer ``layer`` averaged over its tokens (float32, on the CPU);
    None for an answer with no tokens. One forward pass per answer, the model as the pane's."""
    import torch

    layers = check_layer(runtime.model, layer)
    captured: list[Any] = []

    def keep(_module: Any, _args: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)

    means: list[Any] = []
    handle = layers[layer].register_forward_hook(keep)
    try:
        with torch.inference_mode(), model_scope(runtime, adapter):
            for answer in answers:
                sequence = render_sequence(runtime.tokenizer, answer.messages, answer.text)
                answer.tokens = len(sequence.answer_ids)
                if not sequence.answer_ids:
                    means.append(None)
                    continue
                captured.clear()
                ids = torch.tensor([sequence.token_ids], dtype=torch.long, device=runtime.device)
                runtime.model(input_ids=ids, use_cache=False, logits_to_keep=1)
                states = captured[0][0, sequence.answer_start :].float()
                means.append(states.mean(dim=0).cpu())
    finally:
        handle.remove()
    return means


def persona_vector(answers: list[ExtractionAnswer], means: list[Any]) -> tuple[Any, int, int]:
    """(mean of kept positive answers - mean of kept negative answers, positives used, negatives used)."""
    import torch

    sides: dict[str, list[Any]] = {side: [] for side in SIDES}
    for answer, mean in zip(answers, means, strict=True):
        if answer.kept and mean is not None:
            sides[answer.side].append(mean)
    for side in SIDES:
        if not sides[side]:
            raise PersonachatError(
                f"no {side} answer left to average (every one was empty or filtered out): "
                "more questions (--limit), more tokens (--max-tokens), or no --judge"
            )
    pos, neg = (torch.stack(sides[s]).mean(dim=0) for s in SIDES)
    return pos - neg, len(sides["pos"]), len(sides["neg"])


def vector_bytes(vector: Any, metadata: dict[str, Any]) -> bytes:
    """A safetensors file: the 1-D float32 tensor ``vector`` and string metadata (``layer`` …)."""
    import torch
    from safetensors.torch import save

    tensor = vector.detach().to(dtype=torch.float32, device="cpu").contiguous()
    return bytes(save({VECTOR_TENSOR: tensor}, metadata={k: str(v) for k, v in metadata.items()}))


def write_vector(path: Path, vector: Any, metadata: dict[str, Any]) -> Path:
    """Write the vector file whole (temporary file + rename)."""
    from personachat.files import write_atomically

    return write_atomically(path, vector_bytes(vector, metadata))
