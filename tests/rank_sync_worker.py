"""Run under torchrun by test_distributed.py: a few DDP/FSDP training steps through the library's
own pieces, then every rank writes its gradient and parameter checksums for the test to compare."""

import json
import sys

import torch

from cookbook.datasets.load import load_preference_data
from cookbook.datasets.preference import DemoBuilder
from cookbook.models import load_model_and_tokenizer
from cookbook.preference.batching import collate_padded
from cookbook.preference.step import LossSettings, preference_forward
from cookbook.renderers import get_renderer
from cookbook.training import distributed as dist_utils
from cookbook.training.logprobs import SequenceLogprobModel


def checksum(tensors) -> float:
    """Sum of |x| over whole tensors (FSDP shards are gathered first), in float64."""
    full = (t.full_tensor() if hasattr(t, "full_tensor") else t for t in tensors)
    return float(sum(t.double().abs().sum() for t in full))


def main(model_dir: str, strategy: str, out_path: str) -> None:
    info = dist_utils.init_distributed("cpu")
    causal_lm, tokenizer = load_model_and_tokenizer(model_dir, device="cpu")
    data = load_preference_data(DemoBuilder(max_pairs=16, test_size=0), get_renderer("chatml", tokenizer), 128,
                                verbose=False)
    policy = dist_utils.wrap_model(SequenceLogprobModel(causal_lm), strategy, info,
                                   layers=list(causal_lm.get_decoder().layers))
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    settings = LossSettings(loss_type="simpo", beta=2.0)
    grad_sums = []
    for step in range(2):
        # Each rank sees different pairs; after the all-reduce the gradients must agree.
        ids = [4 * step + 2 * info.rank, 4 * step + 2 * info.rank + 1]
        batch = collate_padded([data.train[i] for i in ids], ids, tokenizer.pad_token_id)
        preference_forward(policy, batch, settings, None).loss_sum.backward()
        grad_sums.append(checksum(p.grad for p in policy.parameters()))
        optimizer.step()
        optimizer.zero_grad()
    param_sum = checksum(p.detach() for p in policy.parameters())
    with open(f"{out_path}.rank{info.rank}.json", "w") as f:
        json.dump({"grad_sums": grad_sums, "param_sum": param_sum}, f)
    dist_utils.shutdown_distributed()


if __name__ == "__main__":
    main(*sys.argv[1:])
