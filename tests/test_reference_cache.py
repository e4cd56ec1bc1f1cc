"""The reference log-prob cache is reused for the same data and weights, and only then."""

import torch

from cookbook.datasets.tokenize import TokenizedPair, TokenizedSequence
from cookbook.models import make_tiny_model
from cookbook.preference import reference as ref


def _pair(tokens: list[int]) -> TokenizedPair:
    seq = TokenizedSequence(tokens, [0.0] + [1.0] * (len(tokens) - 1))
    return TokenizedPair(chosen=seq, rejected=TokenizedSequence(tokens[:-1] + [9], seq.weights), prompt_length=1)


def test_cache_is_keyed_by_data_and_reference_weights(tmp_path, tokenizer):
    train, test = [_pair([1, 2, 3]), _pair([4, 5])], [_pair([6, 7, 8])]
    model = make_tiny_model(tokenizer, seed=0)
    data_key = ref.data_key(train, test)
    key = ref.cache_key("tiny", ref.model_fingerprint(model), data_key)
    tables = {"train": torch.randn(2, 2), "test": torch.randn(1, 2)}
    ref.save_cache(tmp_path, key, data_key, tables)

    cached = ref.load_cached(tmp_path, key=key)
    torch.testing.assert_close(cached["train"], tables["train"])
    assert ref.load_cached(tmp_path, data_key=data_key) is not None

    changed_data = ref.data_key([_pair([1, 2, 4]), _pair([4, 5])], test)
    assert ref.load_cached(tmp_path, key=ref.cache_key("tiny", ref.model_fingerprint(model), changed_data)) is None
    assert ref.load_cached(tmp_path, data_key=changed_data) is None

    other_model = make_tiny_model(tokenizer, seed=1)
    assert ref.model_fingerprint(other_model) != ref.model_fingerprint(model)
    assert ref.load_cached(tmp_path, key=ref.cache_key("tiny", ref.model_fingerprint(other_model), data_key)) is None
    assert ref.load_cached(tmp_path, key=ref.cache_key("other", ref.model_fingerprint(model), data_key)) is None


def test_missing_rows_are_reported_not_used():
    table = ref.empty_table(3)
    table[0] = torch.tensor([-1.0, -2.0])
    merged = ref.merge_tables(table, torch.tensor([[float("nan")] * 2, [-3.0, -4.0], [float("nan")] * 2]))
    assert merged[0].tolist() == [-1.0, -2.0] and merged[1].tolist() == [-3.0, -4.0]
    assert torch.isnan(merged[2]).all()
