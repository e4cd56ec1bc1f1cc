"""`RoundStore`: each round's pairs and reference log-probs, made once and kept on disk.

Asked for round r (by the schedule, at the round's first step), it reads `rounds/<r>/samples.jsonl`
when a previous attempt finished it, and otherwise samples the round's prompts with the policy as it
is now (the round's start), scores the replies, picks the pairs, computes their reference log-probs
over the very micro-batches training will use, and writes the round's files. So resuming after a
kill in the middle of sampling samples that round again from the same checkpoint and seed, and
resuming in the middle of training trains on the pairs already written.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch

from cookbook.errors import UserError
from cookbook.on_policy.collect import RoundSampling, collect_round
from cookbook.on_policy.prompt import PromptItem
from cookbook.on_policy.round_files import RoundData, read_round, round_dir, round_metrics, write_round
from cookbook.preference import reference as ref
from cookbook.preference.reference_setup import combine_ranks
from cookbook.training import checkpoint as ckpt
from cookbook.training import distributed as dist_utils
from cookbook.training.resume_config import ResumeConfigError, check_resume_config


class NoUsablePairsError(UserError):
    """Every prompt of a round tied (or fell under min_reward_gap): there is nothing to train on."""


# round index -> (the model that computes its reference log-probs, the context to run it in)
ReferenceForRound = Callable[[int], tuple[torch.nn.Module, Callable]]


class RoundStore:
    def __init__(self, run, causal_lm, prompts: list[PromptItem], prompt_tokens: list[list[int]], renderer,
                 scorer, how: RoundSampling, prompts_per_round: int, collate, reference: ReferenceForRound | None,
                 sampling_scope: Callable = contextlib.nullcontext,
                 sampling_context: Callable = contextlib.nullcontext,
                 lockstep: Callable[[bool], bool] | None = None):
        self.run, self.causal_lm, self.prompts, self.prompt_tokens = run, causal_lm, prompts, prompt_tokens
        self.renderer, self.scorer, self.how, self.prompts_per_round = renderer, scorer, how, prompts_per_round
        self.collate, self.reference = collate, reference
        # Entered around all of a round's sampling (FSDP gathers the root's weights for it).
        # The precision sampling computes in (the training's autocast, entered once per batch).
        self.sampling_scope, self.sampling_context, self.lockstep = sampling_scope, sampling_context, lockstep
        self.schedule = None  # set by the recipe once the schedule exists (they refer to each other)
        self.current: RoundData | None = None
        self.tables: dict[int, torch.Tensor] = {}
        self.first_step_of_round = False

    # -- what the schedule asks --------------------------------------------------------------------

    def num_pairs(self, round_index: int, step: int) -> int:
        self.first_step_of_round = step % self.schedule.steps_per_round == 0
        return len(self.round(round_index, step).paired)

    def round(self, round_index: int, step: int | None = None) -> RoundData:
        if self.current is None or self.current.index != round_index:
            self.current = self._load_or_make(round_index, step)
            paired = self.current.paired
            self.tables = {round_index: torch.tensor([record.reference_logps or (float("nan"),) * 2
                                                     for record in paired], dtype=torch.float32).reshape(-1, 2)}
        return self.current

    def round_summary(self) -> dict[str, float]:
        """The current round's summary metrics, logged with the round's first step."""
        return dict(self.current.summary) if self.current and self.first_step_of_round else {}

    # -- making a round ----------------------------------------------------------------------------

    def round_prompts(self, round_index: int) -> list[int]:
        """Indices of the round's prompts: the next prompts_per_round, wrapping around the list."""
        count = min(self.prompts_per_round, len(self.prompts))
        start = round_index * count
        return [(start + i) % len(self.prompts) for i in range(count)]

    def _load_or_make(self, round_index: int, step: int | None) -> RoundData:
        run = self.run
        data = read_round(run.log_path, round_index) if run.info.is_main else None
        data = dist_utils.broadcast_object(data, run.info)
        if data is not None and not run.resumed and not same_meaning(data.config, run.config_dict()):
            # Left by an earlier attempt that never trained, with other options: not this run's.
            run.console.print(f"Round {round_index}: {round_dir(run.log_path, round_index)} was sampled with other "
                              "options by an earlier attempt; sampling it again")
            data = None
        if data is not None:
            run.console.print(f"Round {round_index}: reusing {round_dir(run.log_path, round_index)}")
            if not data.paired:
                raise self._no_pairs_error(data)
            return data
        if step is not None and step % self.schedule.steps_per_round:
            raise UserError(f"{round_dir(run.log_path, round_index)} holds no complete samples.jsonl, but the run "
                            f"resumes at step {step}, in the middle of round {round_index}: the round's samples "
                            "cannot be drawn again from its starting model. Restart the run "
                            "(behavior_if_log_dir_exists=delete).")
        return self._make(round_index)

    def _make(self, round_index: int) -> RoundData:
        run, how = self.run, self.how
        indices = self.round_prompts(round_index)
        run.console.print(f"Round {round_index}: sampling {how.samples_per_prompt} replies to each of "
                          f"{len(indices)} prompts")
        with self.sampling_scope():
            records, stats = collect_round(
                self.causal_lm, [self.prompts[i] for i in indices], [self.prompt_tokens[i] for i in indices],
                self.renderer, self.scorer, how, round_index, run.info,
                compute_context=self.sampling_context, lockstep=self.lockstep)
        data = RoundData(round_index, records, config=run.config_dict())
        started = time.perf_counter()
        if data.paired and self.reference is not None:
            self._fill_reference(data)
        data.summary = {"round": round_index, **round_metrics(records),
                        "samples/tokens_per_second": stats.generated_tokens / max(stats.seconds, 1e-9),
                        "samples/seconds": stats.seconds,
                        "samples/reference_seconds": time.perf_counter() - started}
        if run.info.is_main:
            write_round(run.log_path, data)
        dist_utils.barrier(run.info)
        summary = data.summary
        run.console.print(
            f"Round {round_index}: {summary.get('samples/pair_fraction', 0):.0%} of prompts gave a pair; reward "
            f"mean {summary.get('samples/reward_mean', 0):.3f}, best {summary.get('samples/reward_best', 0):.3f}, "
            f"worst {summary.get('samples/reward_worst', 0):.3f}; {stats.generated_tokens:,} tokens in "
            f"{stats.seconds:.1f} s ({summary['samples/tokens_per_second']:.0f}/s)")
        if not data.paired:
            raise self._no_pairs_error(data)
        return data

    def _fill_reference(self, data: RoundData) -> None:
        """Reference log-probs of the round's pairs, over this rank's training micro-batches of the
        round (so with reference=round_start the round's first step starts at policy == reference)."""
        run, info = self.run, self.run.info
        pairs = [record.tokenized_pair() for record in data.paired]
        batches = [ids for ids in self.schedule.round_micro_batches(data.index, len(pairs)) if ids]
        model, context = self.reference(data.index)
        num_forwards = int(dist_utils.all_reduce_max(len(batches), info)) if run.strategy == "fsdp" else len(batches)
        was_training = model.training
        model.eval()
        with context():
            rows = ref.fill_reference_logps(model, pairs, batches, num_forwards, len(pairs), self.collate,
                                            info.device, info.is_main, desc=f"reference log-probs (round {data.index})")
        model.train(was_training)
        table = combine_ranks(rows, info)
        for record, (chosen, rejected) in zip(data.paired, table.tolist()):
            record.reference_logps = (chosen, rejected)

    def _no_pairs_error(self, data: RoundData) -> NoUsablePairsError:
        ties = sum(record.skip == "tie" for record in data.records)
        gaps = sum(record.skip == "small_gap" for record in data.records)
        entry = ckpt.latest_resumable_checkpoint(self.run.log_path)
        saved = (f"The model so far is {entry['path']} (step {entry['step']})." if entry
                 else "No training step had run yet.")
        return NoUsablePairsError(
            f"round {data.index}: none of its {len(data.records)} prompts gave a pair ({ties} with all replies "
            f"scored equal, {gaps} under min_reward_gap); stopping. Its samples are in "
            f"{round_dir(self.run.log_path, data.index)}. {saved} More samples_per_prompt, a higher temperature or "
            "another reward may give pairs.")


def same_meaning(stored: dict, new: dict) -> bool:
    """Whether two configs agree on every option that changes what a run computes."""
    try:
        check_resume_config(stored, new)
    except ResumeConfigError:
        return False
    return True
