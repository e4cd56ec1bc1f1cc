"""Sampling completions from our models: one batched decode loop with a KV cache, shared by the
inspect-ai eval provider (`cookbook/eval/provider.py`) and on-policy preference training.

    from cookbook.sampling import SamplingSettings, sample

- `sampler.py`: `sample(model, prompts, settings, ...)`, batching, model mode, seeding;
- `decode.py`: prefill and decode of one batch (why our own loop instead of `model.generate`), its
  key/value cache (allocated once per batch, compacted as rows finish) and its stop rule;
- `token_choice.py`: greedy / temperature / top-k / top-p as pure tensor functions;
- `vllm_engine.py`: the same `Completion`s from a vLLM engine in this process (`sampler=vllm`), when
  vLLM is installed, and `choose_sampler` (what `sampler=auto` picks, and why).
"""

from cookbook.sampling.sampler import Completion, SamplingSettings, padding_token_id, prompt_seeds, sample

__all__ = ["Completion", "SamplingSettings", "padding_token_id", "prompt_seeds", "sample"]
