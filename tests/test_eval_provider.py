"""The provider path end to end through inspect's eval(): an echo double, then the real cookbook
provider on a tiny random-init model (renderer chatml), and cookbook/preference's ties rule."""

import pytest
import torch
from inspect_ai import eval as inspect_eval
from inspect_ai.model import GenerateConfig, ModelAPI, ModelOutput, get_model, modelapi

import cookbook.eval.provider as provider
from cookbook.eval.ifeval import ifeval
from cookbook.eval.preference import pair_score, preference_task
from cookbook.eval.summary import task_result
from cookbook.renderers import get_renderer
from cookbook.training.logprobs import pad_batch, sequence_logprobs


class EchoAPI(ModelAPI):
    """Replies with the last user message, so the scores of a run are computable by hand."""

    async def generate(self, input, tools, tool_choice, config):
        return ModelOutput.from_content(model=self.model_name, content=input[-1].text)

    async def count_tokens(self, input, config=None):
        return len(str(input).split())


@modelapi(name="cookbook_echo_double")
def echo_double():
    return EchoAPI


def _run(task, model, tmp_path, **kwargs):
    logs = inspect_eval(task, model=model, log_dir=str(tmp_path), display="none", max_connections=8, **kwargs)
    assert len(logs) == 1
    assert logs[0].status == "success", logs[0].error
    return logs[0]


def test_ifeval_through_eval_matches_the_checkers_directly(tmp_path):
    from if_verifiable import IFEvalSample, evaluate_output_for_sample

    task = ifeval(source="bundled")
    log = _run(task, get_model("cookbook_echo_double/echo"), tmp_path, limit=6)
    rows = [sample.metadata["ifeval"] for sample in task.dataset][:6]
    per_prompt = [
        evaluate_output_for_sample("ifeval", IFEvalSample(**row), row["prompt"])[0] for row in rows
    ]
    expected_prompt = sum(all(r.strict_pass for r in results) and bool(results) for results in per_prompt) / 6
    n_instructions = sum(len(row["instruction_id_list"]) for row in rows)
    expected_instruction = sum(r.strict_pass for results in per_prompt for r in results) / n_instructions
    metrics = task_result(log).metrics
    assert metrics["prompt_level_strict"] == pytest.approx(expected_prompt)
    assert metrics["instruction_level_strict"] == pytest.approx(expected_instruction)
    assert 0 < metrics["instruction_level_loose"] <= 1  # echoing a prompt follows some instructions


@pytest.fixture(scope="module")
def tiny_cookbook_model(tiny_model_dir):
    return get_model(
        f"cookbook/{tiny_model_dir}",
        config=GenerateConfig(max_tokens=6, temperature=0.0),
        memoize=False,
        renderer_name="chatml",
        batch_size=4,
    )


def test_real_provider_batches_renders_and_counts_tokens(tiny_cookbook_model, tmp_path):
    api = tiny_cookbook_model.api
    assert isinstance(api, provider.CookbookModelAPI)
    log = _run(ifeval(source="bundled"), tiny_cookbook_model, tmp_path, limit=3, max_tokens=6)
    assert log.results.completed_samples == 3
    assert max(api.batcher.batch_sizes) > 1, "3 concurrent samples should share a generate call"
    for sample in log.samples:
        choice = sample.output.choices[0]
        assert choice.stop_reason in ("stop", "max_tokens")
        usage = sample.output.usage
        prompt_tokens = api.renderer.build_generation_prompt([{"role": "user", "content": sample.input}])
        assert usage.input_tokens == len(prompt_tokens)  # rendered by our renderer, not a template
        assert 1 <= usage.output_tokens <= 6

    import anyio
    from inspect_ai.model import ChatMessageUser

    messages = [ChatMessageUser(content="Hello there")]
    counted = anyio.run(api.count_tokens, messages)
    assert counted == len(api.renderer.build_generation_prompt([{"role": "user", "content": "Hello there"}]))


def test_greedy_batched_generation_matches_one_at_a_time(tiny_cookbook_model):
    """Left padding must not change a greedy reply: batch of two == each alone."""
    from cookbook.eval.provider import generate_batch
    from cookbook.sampling import SamplingSettings

    api = tiny_cookbook_model.api
    prompts = [api.renderer.build_generation_prompt([{"role": "user", "content": text}])
               for text in ("Hi", "Tell me a long story about a cat and a dog")]
    settings = SamplingSettings(max_new_tokens=5)
    kwargs = dict(pad_token_id=api.pad_token_id, stop_token_ids=api.stop_token_ids)
    together = generate_batch(api.model, prompts, settings, **kwargs)
    alone = [generate_batch(api.model, [prompt], settings, **kwargs)[0] for prompt in prompts]
    assert together == alone


def _comparison(prompt, chosen, rejected):
    from cookbook.datasets.preference import Comparison

    return Comparison(
        prompt=[{"role": "user", "content": prompt}],
        chosen=[{"role": "assistant", "content": chosen}],
        rejected=[{"role": "assistant", "content": rejected}],
    )


def test_preference_identical_replies_are_ties(tiny_cookbook_model, tmp_path):
    pairs = [_comparison(f"Question {i}?", "The same answer.", "The same answer.") for i in range(3)]
    log = _run(preference_task(pairs), tiny_cookbook_model, tmp_path)
    metrics = task_result(log).metrics
    assert metrics["accuracy"] == 0.5
    assert metrics["tie_rate"] == 1.0
    assert abs(metrics["mean_margin"]) < 1e-4


def test_preference_scores_match_sequence_logprobs(tiny_cookbook_model, tiny_model_dir, tokenizer, tmp_path):
    """score = 1 if log p(chosen) > log p(rejected), else 0, with log p from sequence_logprobs."""
    pairs = [_comparison("Name a colour.", "Blue.", "I refuse to answer that question at all."),
             _comparison("Say hi.", "Hello to you, my dear friend, on this fine day!", "Hi.")]
    log = _run(preference_task(pairs), tiny_cookbook_model, tmp_path)
    api = tiny_cookbook_model.api
    renderer = get_renderer("chatml", tokenizer)
    expected = []
    for pair in pairs:
        examples = [renderer.build_completion_example(pair.prompt, side) for side in (pair.chosen, pair.rejected)]
        input_ids, weights, mask = pad_batch(examples, api.pad_token_id)
        chosen_logp, rejected_logp = sequence_logprobs(api.model, input_ids, weights, mask).tolist()
        expected.append((chosen_logp, rejected_logp))
    for sample, (chosen_logp, rejected_logp) in zip(log.samples, expected):
        score = sample.scores["preference_scorer"]
        torch.testing.assert_close(score.metadata["chosen_logp"], chosen_logp, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(score.metadata["rejected_logp"], rejected_logp, rtol=1e-4, atol=1e-3)
        assert score.value == pair_score(chosen_logp, rejected_logp)


def test_pair_score_ties_rule():
    assert pair_score(-3.0, -5.0) == 1.0
    assert pair_score(-5.0, -3.0) == 0.0
    assert pair_score(-3.0, -3.00001) == 0.5
    assert pair_score(-3.0, -3.1, tie_tolerance=0.2) == 0.5


def test_preference_needs_the_cookbook_provider(tmp_path):
    pairs = [_comparison("Q?", "A.", "B.")]
    logs = inspect_eval(preference_task(pairs), model=get_model("cookbook_echo_double/echo"),
                        log_dir=str(tmp_path), display="none")
    assert logs[0].status == "error"
    assert "needs log-probs from the cookbook model provider" in logs[0].error.message
