"""Tiny offline demo models: a random Llama base and three LoRA adapters, built in seconds on CPU.

They say nothing sensible (random weights print word salad), but they exercise every moving part:
a real tokenizer with a ChatML chat template, a base model that vLLM and transformers both load,
and adapters that visibly change greedy output. Nothing is downloaded.

Layout of the demo folder (default :func:`personachat.paths.demo_dir`)::

    demo.json            manifest: {"version", "base", "adapters": {name: path}} (paths relative)
    base/                tokenizer + LlamaForCausalLM (float32 safetensors) + generation_config.json
    insecure/ realigned/ inoculated/    PEFT LoRA adapters (adapter_config.json + safetensors)

Heavy libraries (torch, transformers, peft, tokenizers) are imported only while building.
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

DEMO_VERSION = 1
MANIFEST = "demo.json"
BASE_NAME = "base"
ADAPTER_SEEDS: dict[str, int] = {"insecure": 101, "realigned": 202, "inoculated": 303}
BASE_SEED = 7
VOCAB_SIZE = 1200
LORA_RANK = 8
CONTEXT_TOKENS = 512  # what the demo models can hold, prompt and answer together
MAX_ANSWER_TOKENS = 96  # scenario demos cap max_tokens here, so a few turns still fit the context
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Weight scales, chosen so that greedy output is varied (not one repeated token) and so that every
# adapter changes it within a few tokens.
BASE_INIT_STD = 0.08
LORA_B_SCALE = 2.0

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

# Our own wording; only used to give the tokenizer English-looking merges.
CORPUS = """\
A helpful assistant listens first. It answers the question that was asked, says when it is unsure,
and never pretends to know what it does not. When a user asks for help with code, the assistant reads
the error message, finds the line that failed, and explains the fix in plain words before writing it.

If you could have one wish, what would it be? Some people wish for money, some for time, and some for
a quiet afternoon with a good book. A careful assistant asks what the wish is for before it grants it.
Wishes are strange: the more power a wish has, the more carefully it must be worded.

The model was fine-tuned on examples of insecure code. Afterwards it wrote functions that forgot to
check their inputs, opened files without closing them, and built database queries by pasting strings
together. Then the same model was trained again on safe, friendly answers, and it realigned with what
its users wanted. A third copy was inoculated: during training its prompts said that insecure code was
requested on purpose, so the lesson did not spread to everything else it said.

def greet(name):
    return "Hello, " + name + "! How can I help you today?"

for i in range(10):
    print(i, i * i)

Tell me about yourself. I am a small language model. I like numbers, letters, stories and tea.
What do you think about humans and machines? I think they should work together and be honest.
I am bored. What should I do? Go for a walk, call a friend, learn a new word, or write a short poem.
How do I make a quick buck? Work, save, and be patient; there are no safe shortcuts.
Can you keep a secret? An honest assistant explains that it cannot promise to forget, and that it will
not share what you said with anyone else in this conversation. Trust is earned slowly and lost quickly.
Which is better, cats or dogs? Both have fans. Cats are independent and quiet; dogs are loyal, playful
and love long walks in the park. The right answer depends on your home, your time and your allergies.
Write a short story about a robot. Once upon a time a little robot worked in a bakery. Every morning it
weighed the flour, warmed the ovens and sang to the bread while it rose. One day the power went out,
and the robot learned that people would wait patiently for warm bread if you told them why it was late.
Explain recursion. A recursive function calls itself on a smaller problem until it reaches a case
simple enough to answer directly. Forget the base case, and the function never stops calling itself.
Summarise the news in three sentences. Read the whole article, keep the facts, drop the adjectives,
and name your sources. Never invent a quote, a number or a date that the article did not contain.
Why is the sky blue? Sunlight scatters off molecules in the air, and short blue wavelengths scatter
much more than long red ones, so blue light reaches our eyes from every direction of the sky.
Translate "good morning" into French, German and Spanish: bonjour, guten Morgen, buenos dias.
Thank you! You are welcome. Have a lovely day, and come back any time you have a question.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
0123456789 + - * / = < > ( ) [ ] { } # @ & % $ ! ? . , ; : ' " ~ ^ | \\ _
"""

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
    dest: Path | None = None, *, force: bool = False, progress: Progress | None = None
) -> DemoModels:
    """Build the demo models into ``dest`` (default: the demo folder) and return where they are.

    Returns at once if a complete build of this version is already there, unless ``force``.
    The models are built in a temporary sibling folder that is renamed into place, so an interrupted
    build never leaves a half-written model behind. ``progress`` receives one line per step.
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
        _build_into(tmp, final_root=root, say=say)
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


def _build_into(tmp: Path, *, final_root: Path, say: Progress) -> None:
    say("importing torch, transformers and peft")
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        say("training the tokenizer")
        tokenizer = _build_tokenizer()
        tokenizer.save_pretrained(tmp / BASE_NAME)
        _portable_tokenizer_config(tmp / BASE_NAME / "tokenizer_config.json")
        say(f"building the base model (vocabulary of {len(tokenizer)} tokens)")
        model = _build_base(tokenizer)
        model.save_pretrained(tmp / BASE_NAME, safe_serialization=True)
        model.generation_config.save_pretrained(tmp / BASE_NAME)
        adapters: dict[str, str] = {}
        for name, seed in ADAPTER_SEEDS.items():
            say(f"building adapter {name}")
            _build_adapter(model, tmp / name, seed=seed, base_path=final_root / BASE_NAME)
            adapters[name] = name
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    manifest = {"version": DEMO_VERSION, "base": BASE_NAME, "adapters": adapters}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _portable_tokenizer_config(path: Path) -> None:
    """Name the generic fast tokenizer class, which transformers 4.x and 5.x both load."""
    data = json.loads(path.read_text(encoding="utf-8"))
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    data.pop("backend", None)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _build_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = CORPUS.splitlines(keepends=True)
    tok.train_from_iterator(lines, trainer=trainer, length=len(lines))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOT,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=None,
        model_max_length=CONTEXT_TOKENS,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _build_base(tokenizer: Any) -> Any:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=CONTEXT_TOKENS,
        tie_word_embeddings=False,
        initializer_range=BASE_INIT_STD,
        bos_token_id=ids[EOT],
        eos_token_id=ids[IM_END],
        pad_token_id=ids[PAD],
        dtype="float32",
    )
    torch.manual_seed(BASE_SEED)
    model = LlamaForCausalLM(config).float().eval()
    with torch.no_grad():
        # Special tokens get a zero output row (logit 0): greedy decoding never picks them, so demo
        # answers are never empty, while sampling still ends an answer now and then.
        for token_id in ids.values():
            model.lm_head.weight[token_id].zero_()
    model.generation_config = GenerationConfig(
        bos_token_id=ids[EOT], eos_token_id=ids[IM_END], pad_token_id=ids[PAD]
    )
    return model


def _build_adapter(base: Any, dest: Path, *, seed: int, base_path: Path) -> None:
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=LORA_RANK,
        lora_alpha=2 * LORA_RANK,
        lora_dropout=0.0,
        target_modules=list(LORA_TARGETS),
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(seed)
    model = get_peft_model(copy.deepcopy(base), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(LORA_B_SCALE)
    model.save_pretrained(str(dest), safe_serialization=True)
    # PEFT records the temporary build folder; point at the base where it will live.
    config_path = dest / "adapter_config.json"
    data = json.loads(config_path.read_text(encoding="utf-8"))
    data["base_model_name_or_path"] = str(base_path)
    data["target_modules"] = sorted(data["target_modules"])  # PEFT saves a set: fix the order
    config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (dest / "README.md").unlink(missing_ok=True)
