"""`cookbook/preference`: does the model prefer the chosen reply of held-out preference pairs?

Each sample is one `Comparison` from a dataset builder's test split (default: the `demo` builder).
The solver asks the evaluated model for log p(chosen | prompt) and log p(rejected | prompt), each the
sum over the completion tokens the renderer weights (the same quantity DPO trains on), and the
scorer gives:

- 1 when chosen_logp > rejected_logp + tie_tolerance,
- 0 when chosen_logp < rejected_logp - tie_tolerance,
- 0.5 for a tie (|difference| <= tie_tolerance nats; default 1e-4, room for float noise between
  two padded rows of one batch), so a model indifferent between the replies scores 0.5, not 0 or 1.

Metrics: `accuracy` (mean score), `mean_margin` (mean chosen_logp - rejected_logp, in nats) and
`tie_rate`. The task needs log-probs, so it runs only with the `cookbook` provider
(`--model cookbook/<path>`); with any other model it fails with a message that says so.
"""

from __future__ import annotations

from typing import Any

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import ModelOutput, get_model
from inspect_ai.scorer import Metric, SampleScore, Score, Scorer, Target, metric, scorer
from inspect_ai.solver import Generate, Solver, TaskState, solver

DEFAULT_TIE_TOLERANCE = 1e-4


def pair_score(chosen_logp: float, rejected_logp: float, tie_tolerance: float = DEFAULT_TIE_TOLERANCE) -> float:
    """1 if chosen is more likely, 0 if rejected is, 0.5 within `tie_tolerance` nats."""
    margin = chosen_logp - rejected_logp
    if abs(margin) <= tie_tolerance:
        return 0.5
    return 1.0 if margin > 0 else 0.0


def comparison_samples(comparisons) -> list[Sample]:
    """One sample per comparison; the raw messages travel in metadata so any renderer can score them."""
    samples = []
    for index, comparison in enumerate(comparisons):
        samples.append(
            Sample(
                id=index,
                input=comparison.prompt[-1]["content"],
                target="chosen",
                metadata={"prompt": comparison.prompt, "chosen": comparison.chosen, "rejected": comparison.rejected},
            )
        )
    return samples


def load_test_comparisons(dataset: str, test_size: int | None, seed: int):
    """The held-out comparisons of a registered builder (or `module:Class`)."""
    from cookbook.datasets.preference import PREFERENCE_DATASETS

    builder_cls = PREFERENCE_DATASETS.resolve(dataset)
    fields: dict[str, Any] = {"seed": seed}
    if test_size is not None:
        fields["test_size"] = test_size
    splits = builder_cls(**fields)()
    if not splits.test:
        raise ValueError(f"cookbook/preference: dataset={dataset!r} has no test pairs (test_size={test_size})")
    return splits.test


@solver
def compare_logprobs() -> Solver:
    """Scores the sample's chosen and rejected replies with the evaluated model's log-probs."""

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        model = get_model()
        score_comparison = getattr(model.api, "score_comparison", None)
        if score_comparison is None:
            raise RuntimeError(
                f"cookbook/preference needs log-probs from the cookbook model provider, but the model is "
                f"{model} ; run it with --model cookbook/<model_path> (or through run_inspect_evals)"
            )
        meta = state.metadata
        chosen_logp, rejected_logp = await score_comparison(meta["prompt"], meta["chosen"], meta["rejected"])
        state.metadata["chosen_logp"] = chosen_logp
        state.metadata["rejected_logp"] = rejected_logp
        preferred = "chosen" if chosen_logp >= rejected_logp else "rejected"
        state.output = ModelOutput.from_content(model=str(model), content=preferred)
        return state

    return solve


def _metadata_mean(scores: list[SampleScore], key: str) -> float:
    values = [s.score.metadata[key] for s in scores if s.score.metadata and key in s.score.metadata]
    return sum(values) / len(values) if values else 0.0


@metric
def mean_margin() -> Metric:
    """Mean of chosen_logp - rejected_logp (nats)."""
    def compute(scores: list[SampleScore]) -> float:
        return _metadata_mean(scores, "margin")

    return compute


@metric
def tie_rate() -> Metric:
    """Fraction of pairs scored as ties."""
    def compute(scores: list[SampleScore]) -> float:
        return _metadata_mean(scores, "tie")

    return compute


@metric
def accuracy() -> Metric:
    """Mean pair score (ties count 0.5)."""
    def compute(scores: list[SampleScore]) -> float:
        return sum(float(s.score.value) for s in scores) / len(scores) if scores else 0.0

    return compute


@scorer(metrics=[accuracy(), mean_margin(), tie_rate()])
def preference_scorer(tie_tolerance: float = DEFAULT_TIE_TOLERANCE) -> Scorer:
    """The ties rule of the module docstring applied to the solver's two log-probs."""

    async def score(state: TaskState, target: Target) -> Score:
        chosen_logp, rejected_logp = state.metadata["chosen_logp"], state.metadata["rejected_logp"]
        value = pair_score(chosen_logp, rejected_logp, tie_tolerance)
        return Score(
            value=value,
            answer=state.output.completion,
            metadata={"margin": chosen_logp - rejected_logp, "tie": float(value == 0.5),
                      "chosen_logp": chosen_logp, "rejected_logp": rejected_logp},
        )

    return score


def preference_task(comparisons, tie_tolerance: float = DEFAULT_TIE_TOLERANCE, dataset_name: str = "pairs") -> Task:
    """The task over any list of comparisons (tests build one with a known answer)."""
    return Task(
        name="cookbook/preference",
        dataset=MemoryDataset(comparison_samples(comparisons), name=dataset_name),
        solver=compare_logprobs(),
        scorer=preference_scorer(tie_tolerance),
    )


@task
def preference(
    dataset: str = "demo", test_size: int | None = None, seed: int = 0, tie_tolerance: float = DEFAULT_TIE_TOLERANCE
) -> Task:
    """Held-out preference pairs of `dataset`, scored by the model's log-probs (module docstring)."""
    return preference_task(load_test_comparisons(dataset, test_size, seed), tie_tolerance, dataset_name=f"{dataset} test")
