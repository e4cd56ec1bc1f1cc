"""The vLLM sampler against the native one, on the real bundled model and one engine for the whole
session (it takes tens of seconds to start): stop rules, seeds, weight sync, agreement of greedy
replies, and an on-policy run that resumes after dying mid-round. Skipped without vllm."""

import json
import math

import pytest
import torch

from cookbook.eval.ifeval import bundled_ifeval_rows
from cookbook.models import bundled_model_dir, load_model_and_tokenizer, make_tiny_model
from cookbook.on_policy import rounds
from cookbook.on_policy.rounds import read_round
from cookbook.recipes.preference.on_policy import cli
from cookbook.renderers import get_renderer
from cookbook.sampling import SamplingSettings, padding_token_id, prompt_seeds, sample
from cookbook.sampling.vllm_engine import EngineOptions, choose_sampler, get_engine
from cookbook.training.weight_sync import engine_weights

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

# What the on-policy recipe asks for with the options of `recipe_args` below, so the recipe test
# reuses this session's engine instead of building a second one.
OPTIONS = EngineOptions(str(bundled_model_dir()), dtype="float32", max_model_len=1024, compile=False,
                        kv_cache_bytes=1 << 29)


@pytest.fixture(scope="session")
def engine():
    return get_engine(OPTIONS)


@pytest.fixture(scope="session")
def model_and_renderer():
    model, tokenizer = load_model_and_tokenizer(dtype="float32", device="cpu")
    return model, get_renderer("chatml", tokenizer)


@pytest.fixture(scope="session")
def prompts(model_and_renderer):
    _, renderer = model_and_renderer
    rows = bundled_ifeval_rows()[:12]
    return [renderer.build_generation_prompt([{"role": "user", "content": row["prompt"]}]) for row in rows]


def stops(renderer):
    return list(renderer.get_stop_token_ids())


def test_auto_takes_vllm_when_installed_and_native_says_why():
    assert choose_sampler("auto").name == "vllm"
    assert choose_sampler("native").reason == "sampler=native"
    with pytest.raises(ValueError, match="sampler='fast' is not one of auto, vllm, native"):
        choose_sampler("fast")


def test_stop_tokens_strings_and_budget_as_the_native_sampler(engine, model_and_renderer, prompts):
    model, renderer = model_and_renderer
    settings = SamplingSettings(max_new_tokens=24)
    stop_ids = stops(renderer)
    mine = engine.sample(prompts[:4], settings, stop_ids)
    for completion in mine:
        assert completion.stopped == (completion.tokens[-1] in stop_ids)
        assert completion.stopped or len(completion.tokens) == 24
        assert all(token not in stop_ids for token in completion.tokens[:-1])
    # A stop string ends the reply at the token that completes it, in both samplers.
    stop_strings = [" the"]
    tokenizer = renderer.tokenizer
    ours = engine.sample(prompts[:4], settings, stop_ids, stop_strings=stop_strings)
    theirs = sample(model, prompts[:4], settings, stop_ids, padding_token_id(tokenizer, stop_ids),
                    stop_strings=stop_strings, tokenizer=tokenizer)
    for a, b in zip(ours, theirs):
        if a.tokens == b.tokens[: len(a.tokens)] or b.tokens == a.tokens[: len(b.tokens)]:
            assert a == b
    assert any(" the" in tokenizer.decode(c.tokens) and c.stopped for c in ours)


def test_seeds_replay_and_do_not_depend_on_the_other_prompts(engine, model_and_renderer, prompts):
    _, renderer = model_and_renderer
    settings = SamplingSettings(max_new_tokens=16, temperature=1.0, top_p=0.95)
    batch = [prompts[0]] * 3 + prompts[1:4]
    seeds = prompt_seeds(len(batch), torch.Generator().manual_seed(7))
    first = engine.sample(batch, settings, stops(renderer), seeds=seeds)
    assert first == engine.sample(batch, settings, stops(renderer), seeds=seeds)
    assert len({tuple(c.tokens) for c in first[:3]}) > 1  # one prompt, three seeds, three replies
    other = engine.sample(batch, settings, stops(renderer), seeds=prompt_seeds(len(batch), torch.Generator().manual_seed(8)))
    assert other != first
    if engine.per_request_seeds:
        alone = engine.sample(batch[:1], settings, stops(renderer), seeds=seeds[:1])
        assert alone[0] == first[0]


def test_seeded_replies_of_more_prompt_tokens_than_one_step_takes(engine, model_and_renderer):
    """A round's worth of seeded prompts (more tokens than one engine step schedules) samples and
    replays: a prompt cut between steps would make vLLM's CPU build fail on its seeded generators."""
    _, renderer = model_and_renderer
    rows = bundled_ifeval_rows()[:48]
    batch = [renderer.build_generation_prompt([{"role": "user", "content": row["prompt"]}])
             for row in rows for _ in range(4)]
    assert sum(map(len, batch)) > 2 * 4096  # the engine's per-step budget (vllm_engine.Engine)
    settings = SamplingSettings(max_new_tokens=4, temperature=0.7)
    seeds = prompt_seeds(len(batch), torch.Generator().manual_seed(3))
    first = engine.sample(batch, settings, stops(renderer), seeds=seeds)
    assert len(first) == len(batch) and first == engine.sample(batch, settings, stops(renderer), seeds=seeds)


def test_engine_log_probs_are_the_model_s_own(engine, model_and_renderer, prompts):
    """`logprobs=True` gives each sampled token's log-prob under the unscaled distribution: what the
    trainer computes from the same weights (fp32 here), to rounding: the RL recipe's mismatch metric."""
    model, renderer = model_and_renderer
    completions = engine.sample(prompts[:4], SamplingSettings(max_new_tokens=12, temperature=0.8), stops(renderer),
                                seeds=[1, 2, 3, 4], logprobs=True)
    gaps = []
    for prompt, completion in zip(prompts[:4], completions):
        assert len(completion.logprobs) == len(completion.tokens) > 0
        ids = torch.tensor([list(prompt) + completion.tokens])
        with torch.no_grad():
            logps = torch.log_softmax(model(ids).logits[0, len(prompt) - 1 : -1].float(), dim=-1)
        trainer = logps.gather(1, torch.tensor(completion.tokens)[:, None])[:, 0]
        gaps += (trainer - torch.tensor(completion.logprobs)).abs().tolist()
    assert max(gaps) < 0.05 and sum(gaps) / len(gaps) < 0.005, max(gaps)


def test_loading_weights_changes_the_replies_and_loading_them_back_restores_them(engine, model_and_renderer,
                                                                                 prompts):
    model, renderer = model_and_renderer
    settings = SamplingSettings(max_new_tokens=16)
    before = engine.sample(prompts[:3], settings, stops(renderer))
    generator = torch.Generator().manual_seed(0)
    noisy = [(name, tensor + 0.05 * torch.randn(tensor.shape, generator=generator))
             for name, tensor in engine_weights(model)]
    seconds = engine.load_weights(noisy)
    assert engine.sample(prompts[:3], settings, stops(renderer)) != before
    engine.load_weights(engine_weights(model))
    assert engine.sample(prompts[:3], settings, stops(renderer)) == before
    assert seconds < 30


def test_greedy_replies_agree_with_the_native_sampler(engine, model_and_renderer, prompts):
    """Both in fp32, the same weights: replies part only where rounding swaps two top logits."""
    model, renderer = model_and_renderer
    settings = SamplingSettings(max_new_tokens=48)
    stop_ids = stops(renderer)
    ours = engine.sample(prompts, settings, stop_ids)
    theirs = sample(model, prompts, settings, stop_ids, padding_token_id(renderer.tokenizer, stop_ids), batch_size=4)
    same = sum(a == b for a, b in zip(ours, theirs))
    first_tokens = sum(a.tokens[:8] == b.tokens[:8] for a, b in zip(ours, theirs))
    print(f"greedy agreement: {same}/{len(prompts)} whole replies, {first_tokens}/{len(prompts)} first 8 tokens")
    assert first_tokens >= 0.75 * len(prompts) and same >= 0.5 * len(prompts)


PROMPTS = [f"Write one sentence about the number {n}." for n in range(6)]


def reply_length_reward(item, reply: str) -> float:
    return float(len(reply) % 5)


def recipe_args(log_path, prompt_file, *extra):
    return [f"log_path={log_path}", f"prompts={prompt_file}", "reward=test_vllm_engine:reply_length_reward",
            "rounds=2", "prompts_per_round=3", "samples_per_prompt=2", "steps_per_round=1", "batch_size=2",
            "micro_batch_size=2", "max_new_tokens=16", "max_length=1024", "temperature=1.0", "precision=fp32",
            "lora_rank=4", "learning_rate=1e-2", "eval_ifeval=false", "show_example=false", "display=plain",
            "sampler=vllm", "vllm_compile=false", "vllm_kv_cache_gib=0.5", "save_every=1", *extra]


def test_on_policy_with_vllm_resumes_after_dying_mid_round(engine, tmp_path, monkeypatch, capsys):
    """The round a run died in is sampled again, from the resumed policy and the same seeds, into the
    same replies as a run that never died; the engine samples the LoRA policy's merged weights."""
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    prompt_file = tmp_path / "prompts.jsonl"
    prompt_file.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    whole = tmp_path / "whole"
    cli(recipe_args(whole, prompt_file))
    assert "Sampler: vllm" in capsys.readouterr().out

    original, calls = rounds.collect_round, {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # round 1's sampling, after round 0 trained and was saved
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(rounds, "collect_round", dying)
    died = tmp_path / "died"
    with pytest.raises(KeyboardInterrupt):
        cli(recipe_args(died, prompt_file))
    assert read_round(died, 1) is None
    monkeypatch.setattr(rounds, "collect_round", original)
    cli(recipe_args(died, prompt_file, "behavior_if_log_dir_exists=resume"))
    for index in (0, 1):
        assert read_round(died, index).records == read_round(whole, index).records
    # Round 1 was sampled from the trained policy: its replies are not round 0's model's.
    summary = read_round(whole, 1).summary
    assert summary["samples/weight_sync_seconds"] < 30 and math.isfinite(summary["samples/reward_mean"])


def test_auto_keeps_the_native_sampler_for_a_head_size_vllm_cannot_run_on_a_cpu(tokenizer):
    tiny = make_tiny_model(tokenizer, hidden_size=64, num_heads=4)  # head size 16
    choice = choose_sampler("auto", model_config=tiny.config)
    assert choice.name == "native" and "head sizes 32, 64" in choice.reason and "not this model's 16" in choice.reason
    with pytest.raises(ValueError, match="sampler=vllm: vLLM's CPU attention takes head sizes"):
        choose_sampler("vllm", model_config=tiny.config)
    assert choose_sampler("auto", model_config=make_tiny_model(tokenizer, hidden_size=64, num_heads=2).config).name == "vllm"


def test_rl_with_vllm_logs_the_sampler_trainer_log_prob_gap(engine, tmp_path, monkeypatch, capsys):
    """The RL recipe samples its groups with the engine (LoRA: merged weights), asks it for each
    token's log-prob, and logs how far those are from the trainer's own: small, in fp32."""
    from cookbook.recipes.rl.train import cli as rl_cli
    from cookbook.rl.groups import GroupRecord

    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    prompt_file = tmp_path / "prompts.jsonl"
    prompt_file.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    log_path = tmp_path / "rl"
    rl_cli([f"log_path={log_path}", f"prompts={prompt_file}", "reward=test_vllm_engine:reply_length_reward",
            "rounds=2", "batch_size=6", "group_size=3", "micro_batch_size=3", "max_new_tokens=16", "max_length=1024",
            "cut_off_reward=None", "temperature=1.0", "precision=fp32", "lora_rank=4", "learning_rate=1e-2",
            "show_example=false", "display=plain", "sampler=vllm", "vllm_compile=false", "vllm_kv_cache_gib=0.5"])
    assert "Sampler: vllm" in capsys.readouterr().out
    for index in (0, 1):
        summary = read_round(log_path, index, GroupRecord).summary
        if "samples/logprob_diff_mean" in summary:  # a round whose groups all tied trains on nothing
            assert summary["samples/logprob_diff_mean"] < 0.01 and summary["samples/logprob_diff_max"] < 0.2
            break
    else:
        pytest.fail("no round kept a group, so no log-prob gap was measured")


def test_one_engine_serves_every_checkpoint_of_its_architecture(engine, tmp_path):
    """A compare eval (a trained model beside its base) gets this process's engine for both models,
    each loading its own weights; a model of another architecture is refused."""
    from dataclasses import replace

    config = json.loads((bundled_model_dir() / "config.json").read_text())
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({**config, "_name_or_path": "elsewhere", "use_cache": False}))
    assert get_engine(replace(OPTIONS, model_dir=str(checkpoint))) is engine
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
    with pytest.raises(ValueError, match="does not serve"):
        get_engine(replace(OPTIONS, model_dir=str(other)))
