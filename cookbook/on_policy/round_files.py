"""What one round leaves on disk: `rounds/<n>/samples.jsonl`, one line per prompt.

Each line holds the prompt (messages and rendered tokens), every sampled reply (tokens, text,
reward, whether it ended with a stop token), the pair chosen from them (or why none) and the pair's
reference log-probs. So a user can read what the policy wrote and how it was scored, and a resumed
run trains on exactly these pairs instead of sampling again. `rounds/<n>/round.json` holds the
round's summary metrics.

Both files are written to a temporary name and renamed, `samples.jsonl` last: a round whose
`samples.jsonl` exists is complete, and a kill mid-round leaves nothing that resume would trust.
`round.json` also records the options the round was made with, so a fresh run can tell a round of
its own from one an earlier attempt with other options left behind.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from cookbook.datasets.tokenize import TokenizedPair, TokenizedSequence
from cookbook.on_policy.pairs import ChosenPair

ROUNDS_DIR = "rounds"
SAMPLES_NAME = "samples.jsonl"
SUMMARY_NAME = "round.json"


@dataclass(frozen=True)
class Reply:
    tokens: list[int]  # sampled tokens, the stop token included when there was one
    text: str  # the assistant message the renderer parses from them
    reward: float
    stopped: bool  # False: cut off at max_new_tokens


@dataclass
class PromptRecord:
    key: str
    messages: list[dict]
    prompt_tokens: list[int]
    replies: list[Reply]
    pair: ChosenPair | None = None
    skip: str | None = None  # why there is no pair: tie, small_gap
    reference_logps: tuple[float, float] | None = None  # (chosen, rejected), set before training

    def tokenized_pair(self) -> TokenizedPair:
        """The pair as training tokens: prompt + reply, loss weight 1 on every sampled token."""
        if self.pair is None:
            raise ValueError(f"prompt {self.key!r} has no pair ({self.skip})")
        prompt = self.prompt_tokens

        def sequence(reply: Reply) -> TokenizedSequence:
            return TokenizedSequence(prompt + reply.tokens, [0.0] * len(prompt) + [1.0] * len(reply.tokens))

        chosen, rejected = self.replies[self.pair.chosen], self.replies[self.pair.rejected]
        return TokenizedPair(sequence(chosen), sequence(rejected), prompt_length=len(prompt),
                             truncated=not (chosen.stopped and rejected.stopped))

    def as_json(self) -> dict:
        return {
            "key": self.key, "messages": self.messages, "prompt_tokens": self.prompt_tokens,
            "replies": [{"text": r.text, "reward": r.reward, "stopped": r.stopped, "tokens": r.tokens}
                        for r in self.replies],
            "pair": None if self.pair is None else {"chosen": self.pair.chosen, "rejected": self.pair.rejected,
                                                    "gap": self.pair.gap},
            "skip": self.skip,
            "reference_logps": None if self.reference_logps is None else list(self.reference_logps),
        }

    @classmethod
    def from_json(cls, row: dict) -> PromptRecord:
        pair = row["pair"]
        return cls(
            key=row["key"], messages=row["messages"], prompt_tokens=row["prompt_tokens"],
            replies=[Reply(r["tokens"], r["text"], r["reward"], r["stopped"]) for r in row["replies"]],
            pair=None if pair is None else ChosenPair(pair["chosen"], pair["rejected"], pair["gap"]),
            skip=row["skip"],
            reference_logps=None if row["reference_logps"] is None else tuple(row["reference_logps"]),
        )


@dataclass
class RoundData:
    """A complete round: every prompt's record, the summary metrics, the options it was made with."""

    index: int
    records: list[PromptRecord]
    summary: dict[str, float] = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    @property
    def paired(self) -> list[PromptRecord]:
        return [record for record in self.records if record.pair is not None]


def round_dir(log_path: str | Path, index: int) -> Path:
    return Path(log_path) / ROUNDS_DIR / f"{index:04d}"


def write_round(log_path: str | Path, data: RoundData) -> Path:
    """Write the round's files (summary first, samples last, each by rename); the samples path."""
    directory = round_dir(log_path, data.index)
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomically(directory / SUMMARY_NAME,
                      json.dumps({"summary": data.summary, "config": data.config}, indent=2, default=str) + "\n")
    lines = "".join(json.dumps(record.as_json(), ensure_ascii=False) + "\n" for record in data.records)
    return _write_atomically(directory / SAMPLES_NAME, lines)


def read_round(log_path: str | Path, index: int) -> RoundData | None:
    """The round as written, or None when its samples were never completely written."""
    directory = round_dir(log_path, index)
    samples = directory / SAMPLES_NAME
    if not samples.exists():
        return None
    with open(samples, encoding="utf-8") as handle:
        records = [PromptRecord.from_json(json.loads(line)) for line in handle if line.strip()]
    summary_path = directory / SUMMARY_NAME
    stored = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return RoundData(index, records, stored.get("summary", {}), stored.get("config", {}))


def _write_atomically(path: Path, text: str) -> Path:
    staging = path.with_name(path.name + ".tmp")
    with open(staging, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, path)
    return path


def round_metrics(records: list[PromptRecord]) -> dict[str, float]:
    """The round's sample metrics: reward mean over all replies, best and worst per prompt
    averaged over prompts, the fraction of prompts that gave a pair, reply length in tokens."""
    replies = [reply for record in records for reply in record.replies]
    if not replies:
        return {"samples/prompts": 0}
    best = [max(r.reward for r in record.replies) for record in records]
    worst = [min(r.reward for r in record.replies) for record in records]
    return {
        "samples/prompts": len(records),
        "samples/reward_mean": sum(r.reward for r in replies) / len(replies),
        "samples/reward_best": sum(best) / len(best),
        "samples/reward_worst": sum(worst) / len(worst),
        "samples/pair_fraction": sum(record.pair is not None for record in records) / len(records),
        "samples/ties": sum(record.skip == "tie" for record in records),
        "samples/reply_tokens": sum(len(r.tokens) for r in replies) / len(replies),
        "samples/cut_off_fraction": sum(not r.stopped for r in replies) / len(replies),
    }
