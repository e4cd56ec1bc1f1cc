"""`OnPolicyTask`: the on-policy recipe's part of the shared loop. A micro-batch of pair ids (which
carry their round) becomes the preference loss on that round's pairs against their stored
reference log-probs; a round's first step also reports how its samples scored; the held-out eval
is IFEval on the bundled set."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from cookbook.on_policy.rounds import RoundStore
from cookbook.on_policy.schedule import split_pair_id
from cookbook.preference import reference as ref
from cookbook.preference.step import LossSettings
from cookbook.preference.train_dpo import pair_micro_batch, pair_step_metrics
from cookbook.training.loop import MicroBatchOutput


class OnPolicyTask:
    def __init__(self, store: RoundStore, settings: LossSettings, device, evaluate: Callable[[], dict] | None):
        self.store, self.settings, self.device, self._evaluate = store, settings, device, evaluate

    def loss_denominator(self, global_ids: Sequence[int]) -> float:
        return float(len(global_ids))

    def forward(self, model: nn.Module, ids: list[int]) -> MicroBatchOutput:
        rounds, local = zip(*(split_pair_id(i) for i in ids))
        if len(set(rounds)) != 1:
            raise ValueError(f"a micro-batch mixes rounds {sorted(set(rounds))}")
        data = self.store.round(rounds[0])
        pairs = [data.paired[i].tokenized_pair() for i in local]
        batch = self.store.collate(pairs, list(local)).to(self.device)
        reference = ref.TableReference(self.store.tables[rounds[0]]) if self.settings.needs_reference else None
        return pair_micro_batch(model, batch, self.settings, reference)

    def step_metrics(self, sums: dict[str, float], denominator: float) -> dict[str, float]:
        return {**self.store.round_summary(), **pair_step_metrics(sums)}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return self._evaluate() if self._evaluate is not None else {}
