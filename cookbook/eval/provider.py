"""The `cookbook` model API for inspect-ai: our models, rendered with our renderers, in batches.

    inspect eval cookbook/ifeval --model cookbook//tmp/dpo/final -M renderer_name=chatml
    python -m cookbook.eval.run_inspect_evals model_path=/tmp/dpo/final   # the usual way

The name after `cookbook/` is a `model_path`: a training checkpoint (a LoRA run's adapter loads onto
the base its metadata names, merged), a local Hugging Face directory, a hub id, or the bundled
`smollm2-135m-instruct`. Model args (`-M`): `renderer_name`, `model_name`
(the base model, when a checkpoint does not record it), `batch_size`, `max_wait_ms`, `device`, `dtype`,
`num_threads` (torch CPU threads), `sampler` (auto, vllm, native: who generates; auto takes a vLLM
engine in this process when vLLM is installed, see `cookbook/sampling/vllm_engine.py`) and
`vllm_kv_cache_gib`.

Why our own provider instead of inspect's `hf`: evaluation must render prompts exactly as training
did (our renderer, not the tokenizer's chat template), stop on the renderer's stop tokens, and parse
replies with the renderer; and the `cookbook/preference` task needs log-probs from the same loaded
model. Concurrent `generate` calls are gathered into left-padded batches (see `batching.py`).
Importing this module registers the API; the package's `inspect_ai` entry point points here, so
inspect finds it without an import, and it also imports our tasks so `cookbook/ifeval` resolves.

The renderer: a training checkpoint records the one it was trained with (and its base model) in
`cookbook_checkpoint.json`; evaluation must use the same, or the model is scored on a prompt format
it never saw. The order of preference is therefore: an explicit `renderer_name`, then the
checkpoint's record, then the default renderer of the base model (or of the tokenizer)
(`resolve_model_spec`). Generation is `cookbook.sampling.sample` or the vLLM engine, the same two
samplers on-policy training samples with, under the same stop rules. Log-probs (`cookbook/preference`)
always come from the loaded model.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from inspect_ai.model import (
    ChatMessage,
    GenerateConfig,
    ModelAPI,
    ModelOutput,
    ModelUsage,
    modelapi,
)
from inspect_ai.model._model_info import MODEL_INFO_LOOKUP_API_KEY
from inspect_ai.model._model_output import ChatCompletionChoice
from inspect_ai.tool import ToolChoice, ToolInfo

from cookbook.eval.batching import RequestBatcher
from cookbook.models import (
    DEFAULT_MODEL,
    ModelNotFoundError,
    adapter_base_model,
    is_adapter_checkpoint,
    load_model_and_tokenizer,
    load_tokenizer,
    read_checkpoint_metadata,
    resolve_model_path,
)
from cookbook.renderers import check_renderer_matches_template, default_renderer_name, get_renderer
from cookbook.sampling import SamplingSettings, padding_token_id, prompt_seeds, sample
from cookbook.sampling.vllm_engine import EngineOptions, choose_sampler, get_engine
from cookbook.training.logprobs import pad_batch, sequence_logprobs

DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_TOKENS = 512
_STOP_REASONS = {"stop_sequence": "stop", "eos": "stop", "length": "max_tokens"}


def to_renderer_messages(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """inspect chat messages as the renderer's `{"role", "content"}` dicts (text content only).
    Our renderers know system, user and assistant; a tool result reaches the model as a user turn."""
    return [
        {"role": message.role if message.role in ("system", "user", "assistant") else "user", "content": message.text}
        for message in messages
    ]


def _message_content(message: Any) -> str:
    if isinstance(message, dict):
        return str(message.get("content", ""))
    return str(getattr(message, "content", message))


def check_model_path(model_path: str) -> None:
    """Fail early, naming the option, for a model_path that cannot exist."""
    if model_path == DEFAULT_MODEL:
        return
    path = Path(model_path).expanduser()
    looks_local = model_path.startswith((".", "/", "~")) or model_path.count("/") > 1
    if looks_local and not path.exists():
        raise ModelNotFoundError(f"model_path={model_path!r}: no such directory")
    if path.is_file():
        raise ModelNotFoundError(f"model_path={model_path!r} is a file; pass a checkpoint directory")


@dataclass(frozen=True)
class ModelSpec:
    """Where the weights come from and how prompts are rendered for them."""

    model_path: str
    base_model_name: str | None
    renderer_name: str


def resolve_model_spec(model_path: str, model_name: str | None = None, renderer_name: str | None = None, tokenizer=None) -> ModelSpec:
    """Decide the renderer for `model_path` (see the module docstring for the order)."""
    check_model_path(model_path)
    info = read_checkpoint_metadata(model_path)
    base_model_name = model_name or info.get("base_model_name")
    name = renderer_name or info.get("renderer_name")
    if not name:
        if base_model_name:
            name = default_renderer_name(base_model_name)
        else:
            name = default_renderer_name(tokenizer if tokenizer is not None else load_tokenizer(model_path))
    return ModelSpec(model_path=model_path, base_model_name=base_model_name, renderer_name=name)


def load_renderer(renderer_name: str, tokenizer):
    """Our renderer by name; an unknown name raises ValueError naming the option and the choices.
    Warns when the renderer disagrees with the model's own chat template."""
    try:
        renderer = get_renderer(renderer_name, tokenizer)
    except ValueError as error:
        raise ValueError(f"renderer_name={renderer_name!r}: {error}") from None
    check_renderer_matches_template(renderer, tokenizer)
    return renderer


def generate_batch(
    model,
    prompts: list[list[int]],
    settings: SamplingSettings,
    pad_token_id: int,
    stop_token_ids: list[int],
    stop_strings: list[str] | None = None,
    tokenizer=None,
) -> list[list[int]]:
    """Completion tokens for each prompt (one batch), each cut after its first stop token or string.
    Sampling draws from torch's default generator, which the provider seeds from the eval's seed."""
    completions = sample(
        model,
        prompts,
        settings,
        stop_token_ids,
        pad_token_id,
        batch_size=max(len(prompts), 1),
        stop_strings=stop_strings,
        tokenizer=tokenizer,
    )
    return [completion.tokens for completion in completions]


@torch.inference_mode()
def score_sequences(model, sequences, pad_token_id: int, max_rows: int) -> list[float]:
    """Weighted log-prob sum of each sequence (objects with .tokens and .weights), `max_rows` a time."""
    device = next(model.parameters()).device
    logps: list[float] = []
    for start in range(0, len(sequences), max_rows):
        input_ids, loss_weights, attention_mask = pad_batch(sequences[start : start + max_rows], pad_token_id)
        values = sequence_logprobs(model, input_ids.to(device), loss_weights.to(device), attention_mask.to(device))
        logps.extend(values.float().cpu().tolist())
    return logps


class CookbookModelAPI(ModelAPI):
    """Serves one cookbook model; see the module docstring for the model args."""

    def __init__(
        self,
        model_name: str,
        base_url: str | None = None,
        api_key: str | None = None,
        config: GenerateConfig = GenerateConfig(),
        renderer_name: str | None = None,
        base_model_name: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_wait_ms: float = 20.0,
        device: str = "auto",
        dtype: str = "auto",
        num_threads: int | None = None,
        sampler: str = "auto",
        vllm_kv_cache_gib: float = 1.0,
        **model_args: Any,
    ) -> None:
        super().__init__(model_name=model_name, base_url=base_url, api_key=api_key, config=config)
        if model_args:
            raise ValueError(
                f"unknown model args for the cookbook provider: {', '.join(sorted(model_args))} "
                "(known: renderer_name, base_model_name, batch_size, max_wait_ms, device, dtype, num_threads, sampler, "
                "vllm_kv_cache_gib)"
            )
        self.batch_size = int(batch_size)
        if api_key == MODEL_INFO_LOOKUP_API_KEY:
            # inspect builds a throwaway instance only to look up the model's name in its price and
            # context-window table; loading the weights for that would double the memory we use.
            return
        self.model, self.tokenizer = load_model_and_tokenizer(model_name, dtype=dtype, device=device)
        self.spec = resolve_model_spec(model_name, base_model_name, renderer_name, tokenizer=self.tokenizer)
        self.renderer = load_renderer(self.spec.renderer_name, self.tokenizer)
        self.stop_token_ids = list(self.renderer.get_stop_token_ids())
        # Stop strings that are single special tokens are already covered by the token ids; passing
        # them as strings too would only slow generation down.
        special = set(self.tokenizer.all_special_tokens)
        self.stop_strings = [s for s in self.renderer.get_stop_sequences() if s not in special]
        self.pad_token_id = padding_token_id(self.tokenizer, self.stop_token_ids)
        if config.seed is not None:
            torch.manual_seed(config.seed)
        if num_threads:
            # On a CPU shared with other jobs, fewer intra-op threads can be several times faster:
            # OpenMP threads spin waiting for each other when the cores are oversubscribed.
            torch.set_num_threads(int(num_threads))
        self.engine = self._sampling_engine(sampler, float(vllm_kv_cache_gib))
        self.batcher = RequestBatcher(self._run_batch, self.batch_size, max_wait_s=float(max_wait_ms) / 1000)

    def _sampling_engine(self, sampler: str, kv_cache_gib: float):
        """The vLLM engine when `sampler` chooses it (None: the native sampler); prints which and why."""
        dtype = next(self.model.parameters()).dtype
        choice = choose_sampler(sampler, device=next(self.model.parameters()).device, dtype=dtype,
                                model_config=self.model.config)
        if choice.name == "native":
            print(f"cookbook provider: native sampler ({choice.reason})")
            return None
        path = resolve_model_path(self.model_name)
        if is_adapter_checkpoint(path):
            path = resolve_model_path(adapter_base_model(path))
        max_len = min(getattr(self.model.config, "max_position_embeddings", 4096) or 4096, 4096)
        engine = get_engine(EngineOptions(path, dtype=str(dtype).removeprefix("torch."), max_model_len=max_len,
                                          kv_cache_bytes=int(kv_cache_gib * 2**30)))
        # The loaded model is what is evaluated (an adapter merged into its base): the engine gets it
        # (again before a batch if another model of this process, e.g. a compared base, loaded its own).
        engine.load_weights(self.model.named_parameters(), owner=self)
        print(f"cookbook provider: vLLM sampler ({choice.reason}); {engine.describe()}")
        return engine

    # -- inspect-ai ModelAPI ---------------------------------------------------------------------

    async def generate(
        self,
        input: list[ChatMessage],
        tools: list[ToolInfo],
        tool_choice: ToolChoice,
        config: GenerateConfig,
    ) -> ModelOutput:
        prompt_tokens = self.renderer.build_generation_prompt(to_renderer_messages(input))
        settings = SamplingSettings(
            max_new_tokens=config.max_tokens or DEFAULT_MAX_TOKENS,
            temperature=config.temperature if config.temperature is not None else 0.0,
            top_p=config.top_p,
            top_k=config.top_k,
        )
        completion = await self.batcher.submit(("generate", settings), list(prompt_tokens))
        parsed = self.renderer.parse_response(completion)
        usage = ModelUsage(
            input_tokens=len(prompt_tokens),
            output_tokens=len(completion),
            total_tokens=len(prompt_tokens) + len(completion),
        )
        choice = ChatCompletionChoice(
            message=_assistant_message(_message_content(parsed.message), self.model_name),
            stop_reason=_STOP_REASONS.get(parsed.stop_reason, "unknown"),
        )
        return ModelOutput(model=self.model_name, choices=[choice], usage=usage)

    async def count_tokens(self, input: str | list[ChatMessage], config: GenerateConfig | None = None) -> int:
        # inspect's default counts with a tiktoken file it downloads; ours is exact and offline.
        if isinstance(input, str):
            return len(self.tokenizer.encode(input, add_special_tokens=False))
        return len(self.renderer.build_generation_prompt(to_renderer_messages(input)))

    async def count_text_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    async def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def max_tokens(self) -> int | None:
        return DEFAULT_MAX_TOKENS

    def max_connections(self) -> int:
        # Two batches' worth in flight: one running, the next one filling up.
        return 2 * self.batch_size

    def connection_key(self) -> str:
        return self.model_name

    # -- log-probs for cookbook/preference ---------------------------------------------------------

    async def score_comparison(
        self, prompt: list[dict[str, str]], chosen: list[dict[str, str]], rejected: list[dict[str, str]]
    ) -> tuple[float, float]:
        """(log p(chosen | prompt), log p(rejected | prompt)) under this model, summed over the
        completion tokens the renderer weights (batched with other concurrent calls)."""
        chosen_example = self.renderer.build_completion_example(prompt, chosen)
        rejected_example = self.renderer.build_completion_example(prompt, rejected)
        return await self.batcher.submit(("score",), (chosen_example, rejected_example))

    # -- the blocking batch work (runs in a worker thread) -------------------------------------------

    def _run_batch(self, key: Hashable, items: list[Any]) -> list[Any]:
        if key[0] == "generate" and self.engine is not None:
            if self.engine.weights_owner is not self:
                self.engine.load_weights(self.model.named_parameters(), owner=self)
            # Seeds from torch's default generator, which the provider seeds from the eval's seed.
            completions = self.engine.sample(items, key[1], self.stop_token_ids, stop_strings=self.stop_strings,
                                             seeds=prompt_seeds(len(items), None))
            return [completion.tokens for completion in completions]
        if key[0] == "generate":
            return generate_batch(
                self.model,
                items,
                key[1],
                pad_token_id=self.pad_token_id,
                stop_token_ids=self.stop_token_ids,
                stop_strings=self.stop_strings,
                tokenizer=self.tokenizer,
            )
        sequences = [example for pair in items for example in pair]
        logps = score_sequences(self.model, sequences, self.pad_token_id, max_rows=2 * self.batch_size)
        return [(logps[2 * i], logps[2 * i + 1]) for i in range(len(items))]


def _assistant_message(text: str, model_name: str):
    from inspect_ai.model import ChatMessageAssistant

    return ChatMessageAssistant(content=text, model=model_name, source="generate")


@modelapi(name="cookbook")
def cookbook() -> type[ModelAPI]:
    return CookbookModelAPI


@functools.cache
def _register_tasks() -> None:
    # Registers `cookbook/ifeval` and `cookbook/preference` with inspect's task registry.
    import cookbook.eval.tasks  # noqa: F401


_register_tasks()
