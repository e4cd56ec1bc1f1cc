"""`cookbook/ifeval`: instruction following with verifiable instructions (IFEval's schema).

Each row has `key`, `prompt`, `instruction_id_list` and `kwargs` (one dict per instruction). The
reply is checked with the standard IFEval checkers from the `if-verifiable` package, and we report
the four usual numbers:

- prompt-level strict / loose: the fraction of prompts whose every instruction is followed;
- instruction-level strict / loose: the fraction of all instructions followed (pooled over prompts).

"Loose" also accepts the reply with its first and/or last line removed or its `*` markup stripped.

Data: with `source="auto"` the task uses google/IFEval when the hub is reachable and the bundled
set otherwise (`data/ifeval_prompts.jsonl`: 128 prompts written for this project, covering all 25
checkers of the registry). `source="bundled"` or `"hub"` force one; `data_file=` reads your own jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.scorer import Metric, SampleScore, Score, Scorer, Target, metric, scorer
from inspect_ai.solver import TaskState, generate

BUNDLED_IFEVAL = Path(__file__).parent / "data" / "ifeval_prompts.jsonl"
HUB_IFEVAL = "google/IFEval"
IFEvalSource = Literal["auto", "bundled", "hub"]


def instruction_registry() -> dict[str, Any]:
    """The IFEval checker classes by instruction id (with NLTK's data made available offline)."""
    from cookbook.eval.nltk_data import ensure_punkt_tab

    ensure_punkt_tab()
    import langdetect

    langdetect.DetectorFactory.seed = 0  # language detection is random unless seeded
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    return INSTRUCTION_DICT


def check_row(row: Any, where: str, known_ids: set[str]) -> dict[str, Any]:
    """The row as a dict, or ValueError naming `where` and the bad field."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for name in ("key", "prompt", "instruction_id_list", "kwargs"):
        if name not in row:
            raise ValueError(f"{where}: missing field {name!r}")
    if not isinstance(row["prompt"], str) or not row["prompt"].strip():
        raise ValueError(f"{where}: field 'prompt' must be a non-empty string")
    ids, kwargs = row["instruction_id_list"], row["kwargs"]
    if not isinstance(ids, list) or not ids:
        raise ValueError(f"{where}: field 'instruction_id_list' must be a non-empty list")
    if not isinstance(kwargs, list) or len(kwargs) != len(ids):
        raise ValueError(f"{where}: field 'kwargs' must be a list with one dict per instruction ({len(ids)})")
    unknown = [i for i in ids if i not in known_ids]
    if unknown:
        raise ValueError(f"{where}: unknown instruction id(s) {unknown} in 'instruction_id_list'")
    return {"key": row["key"], "prompt": row["prompt"], "instruction_id_list": list(ids),
            "kwargs": [dict(k or {}) for k in kwargs]}


def read_jsonl(path: Path, known_ids: set[str]) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error})") from None
            rows.append(check_row(row, where, known_ids))
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def _hub_usable() -> bool:
    from cookbook.datasets.hub import hub_offline
    from cookbook.models import hub_reachable

    return not hub_offline() and hub_reachable()


def load_ifeval_rows(source: IFEvalSource = "auto", data_file: str | None = None) -> tuple[list[dict[str, Any]], str]:
    """(rows, where they came from)."""
    known_ids = set(instruction_registry())
    if data_file:
        path = Path(data_file).expanduser()
        if not path.exists():
            raise ValueError(f"cookbook/ifeval: data_file={data_file!r} does not exist")
        return read_jsonl(path, known_ids), str(path)
    if source not in ("auto", "bundled", "hub"):
        raise ValueError(f"cookbook/ifeval: source={source!r} is not one of auto, bundled, hub")
    if source == "hub" or (source == "auto" and _hub_usable()):
        from datasets import load_dataset

        try:
            split = load_dataset(HUB_IFEVAL, split="train")
        except Exception as error:
            if source == "hub":
                raise RuntimeError(
                    f"cookbook/ifeval: could not load {HUB_IFEVAL} from the hub ({type(error).__name__}: "
                    f"{error}). Use source=bundled to run offline."
                ) from None
            print(f"note: {HUB_IFEVAL} unavailable ({type(error).__name__}); using the bundled IFEval set")
        else:
            rows = []
            for index, row in enumerate(split):
                # The hub rows list every checker argument in each kwargs dict, unused ones as null.
                row = {**row, "kwargs": [{k: v for k, v in kw.items() if v is not None} for kw in row["kwargs"]]}
                rows.append(check_row(row, f"{HUB_IFEVAL} row {index}", known_ids))
            return rows, HUB_IFEVAL
    return read_jsonl(BUNDLED_IFEVAL, known_ids), "bundled"


def score_response(response: str, row: dict[str, Any]) -> dict[str, Any]:
    """Per-instruction strict and loose verdicts for one reply, with the counts the metrics pool."""
    from if_verifiable.common import evaluate_instructions

    registry = instruction_registry()
    results, _ = evaluate_instructions(
        response=response,
        instruction_id_list=row["instruction_id_list"],
        kwargs_list=row["kwargs"],
        prompt=row["prompt"],
        instruction_registry=registry,
    )
    by_id = {result.instruction_id: result for result in results}
    # An empty reply gets no results at all: count each of its instructions as failed.
    strict = [bool(by_id[i].strict_pass) if i in by_id else False for i in row["instruction_id_list"]]
    loose = [bool(by_id[i].loose_pass) if i in by_id else False for i in row["instruction_id_list"]]
    return {"strict": strict, "loose": loose}


def pooled_accuracy(verdict_lists: list[list[bool]], level: str) -> float:
    """Prompt level: the fraction of replies with every verdict true; instruction level: the
    fraction of all verdicts that are true, pooled over replies."""
    if not verdict_lists:
        return 0.0
    if level == "prompt":
        return sum(all(v) for v in verdict_lists) / len(verdict_lists)
    total = sum(len(v) for v in verdict_lists)
    return sum(sum(v) for v in verdict_lists) / total if total else 0.0


def _pooled(scores: list[SampleScore], mode: str, level: str) -> float:
    return pooled_accuracy([s.score.metadata[mode] for s in scores if s.score.metadata], level)


@metric
def prompt_level_strict() -> Metric:
    """Fraction of prompts with every instruction followed (strict)."""
    def compute(scores: list[SampleScore]) -> float:
        return _pooled(scores, "strict", "prompt")

    return compute


@metric
def prompt_level_loose() -> Metric:
    """Fraction of prompts with every instruction followed (loose)."""
    def compute(scores: list[SampleScore]) -> float:
        return _pooled(scores, "loose", "prompt")

    return compute


@metric
def instruction_level_strict() -> Metric:
    """Fraction of all instructions followed (strict), pooled over prompts."""
    def compute(scores: list[SampleScore]) -> float:
        return _pooled(scores, "strict", "instruction")

    return compute


@metric
def instruction_level_loose() -> Metric:
    """Fraction of all instructions followed (loose), pooled over prompts."""
    def compute(scores: list[SampleScore]) -> float:
        return _pooled(scores, "loose", "instruction")

    return compute


@scorer(metrics=[prompt_level_strict(), prompt_level_loose(), instruction_level_strict(), instruction_level_loose()])
def ifeval_scorer() -> Scorer:
    """Checks the reply against the sample's instructions; value 1 when all pass strictly."""

    async def score(state: TaskState, target: Target) -> Score:
        row = state.metadata["ifeval"]
        response = state.output.completion if state.output else ""
        verdicts = score_response(response, row)
        return Score(
            value=float(all(verdicts["strict"])),
            answer=response,
            metadata={**verdicts, "instruction_id_list": row["instruction_id_list"]},
        )

    return score


def ifeval_samples(rows: list[dict[str, Any]]) -> list[Sample]:
    return [Sample(id=row["key"], input=row["prompt"], metadata={"ifeval": row}) for row in rows]


@task
def ifeval(source: str = "auto", data_file: str | None = None) -> Task:
    """Instruction following on IFEval-schema prompts (see the module docstring)."""
    rows, origin = load_ifeval_rows(source, data_file)  # type: ignore[arg-type]
    return Task(
        name="cookbook/ifeval",
        dataset=MemoryDataset(ifeval_samples(rows), name=f"ifeval ({origin})"),
        solver=generate(),
        scorer=ifeval_scorer(),
        metadata={"ifeval_source": origin},
    )
