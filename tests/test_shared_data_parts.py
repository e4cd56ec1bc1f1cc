"""The data code the preference and supervised recipes share: `SplitBuilder` (what differs between
the two builder bases is a class variable, and each difference is pinned here), the
`Registry` behind both `dataset=` families, `SkipCounts.keep`, the summary helpers and
`batch_to`, the `.to(device)` of every batch type."""

from __future__ import annotations

from dataclasses import replace

import chz
import pytest
import torch

from cookbook.datasets.builder import Skip, SkipCounts, assistant, user
from cookbook.datasets.preference import (
    PREFERENCE_DATASETS,
    Comparison,
    DPODatasetBuilder,
    FileBuilder,
    NoUsablePairsError,
)
from cookbook.datasets.summary import count_metrics, mean_and_max
from cookbook.datasets.supervised import (
    SUPERVISED_DATASETS,
    Conversation,
    NoUsableExamplesError,
    SupervisedDatasetBuilder,
    SupervisedFileBuilder,
)
from cookbook.datasets.tokenize import SupervisedSequence, TokenizedPair, TokenizedSequence
from cookbook.preference.batching import collate_padded as collate_pairs_padded
from cookbook.registry import Registry
from cookbook.supervised.batching import collate_padded
from cookbook.training.packing import batch_to


class NumberedRows:
    """Rows are numbers: `train_rows` and `test_rows` list each split's (no test rows: the test set is
    carved out of train)."""

    def split_names(self):
        return ("train", "test" if self.test_rows else None)

    def load_rows(self, split):
        return self.train_rows if split == "train" else self.test_rows


@chz.chz
class Pairs(NumberedRows, DPODatasetBuilder):
    """Row i is the pair (q{i}, a{i} over b{i})."""

    train_rows: tuple[int, ...] = (0, 1, 2, 3)
    test_rows: tuple[int, ...] = (0, 9)

    def row_to_comparison(self, row):
        return Comparison([user(f"q{row}")], [assistant(f"a{row}")], [assistant(f"b{row}")])


@chz.chz
class Conversations(NumberedRows, SupervisedDatasetBuilder):
    """Row i is the conversation (q{i}, a{i})."""

    train_rows: tuple[int, ...] = (0, 1, 2, 3)
    test_rows: tuple[int, ...] = (0, 9)

    def row_to_example(self, row):
        return Conversation([user(f"q{row}"), assistant(f"a{row}")])


def test_supervised_dedupes_across_splits_preference_within_each():
    pairs = Pairs(test_size=10)()
    assert len(pairs.train) == 4 and len(pairs.test) == 2 and pairs.skipped.total() == 0
    conversations = Conversations(test_size=10)()
    assert len(conversations.train) == 4 and len(conversations.test) == 1
    assert dict(conversations.skipped.counts) == {"duplicate": 1}
    assert conversations.skipped.examples["duplicate"] == "test row 0: same messages as an earlier row (of either split)"
    within = (Pairs(train_rows=(0, 1, 1), test_rows=(), test_size=0)(),
              Conversations(train_rows=(0, 1, 1), test_rows=(), test_size=0)())
    assert [dict(splits.skipped.counts) for splits in within] == [{"duplicate": 1}, {"duplicate": 1}]
    assert within[0].skipped.examples["duplicate"] == "train row 2: same prompt, chosen and rejected as an earlier row"


def test_both_bases_word_the_same_failures_in_their_own_nouns():
    with pytest.raises(NoUsablePairsError, match=r"only 4 usable pairs, so carving out dataset\.test_size=4 test pairs"):
        Pairs(test_rows=(), test_size=4)()
    with pytest.raises(NoUsableExamplesError, match=r"only 4 usable conversations, so carving out dataset\.test_size=4 "
                       r"test conversations leaves none to train on"):
        Conversations(test_rows=(), test_size=4)()
    with pytest.raises(ValueError, match=r"dataset\.max_pairs must be >= 1 or None, got 0"):
        Pairs(max_pairs=0)()
    with pytest.raises(ValueError, match=r"dataset\.max_examples must be >= 1 or None, got 0"):
        Conversations(max_examples=0)()
    with pytest.raises(ValueError, match=r"dataset\.test_size must be >= 0, got -1"):
        Pairs(test_size=-1)()
    with pytest.raises(ValueError, match=r"dataset\.test_size must be >= 0 or None, got -1"):
        Conversations(test_size=-1)()


def test_nothing_usable_is_reported_as_such_even_with_a_carved_test_set():
    @chz.chz
    class AllTies(Pairs):
        def row_to_comparison(self, row):
            return Skip("tie", f"row {row}")

    @chz.chz
    class AllFiltered(Conversations):
        def row_to_example(self, row):
            return Skip("filtered", f"row {row}")

    with pytest.raises(NoUsablePairsError, match=r"no usable training pairs in split 'train' \(4 rows read\).*tie=4"):
        AllTies(test_rows=())()
    with pytest.raises(NoUsableExamplesError, match=r"no usable training conversations in split 'train' \(4 rows read\)"):
        AllFiltered(test_rows=())()


def test_a_converter_returning_something_else_is_named():
    @chz.chz
    class Wrong(Conversations):
        def row_to_example(self, row):
            return row

    with pytest.raises(TypeError, match=r"Wrong\.row_to_example returned int; expected a Conversation or a Skip"):
        Wrong()()


def test_skip_counts_keep_labels_each_skip_by_its_position():
    skipped = SkipCounts()
    kept = skipped.keep(["a", Skip("too_long", "3 tokens"), "b", Skip("too_long", "9 tokens")], "train pair")
    assert kept == ["a", "b"]
    assert dict(skipped.counts) == {"too_long": 2} and skipped.examples == {"too_long": "train pair 1: 3 tokens"}


def test_one_registry_class_serves_both_families():
    # Each family's registry refuses the other family's builders, naming its own base class.
    with pytest.raises(ValueError, match=r"HHHBuilder is not a subclass of cookbook\.datasets\.SupervisedDatasetBuilder"):
        SUPERVISED_DATASETS.resolve("cookbook.datasets.hub:HHHBuilder")
    with pytest.raises(ValueError, match=r"NoRobotsBuilder is not a subclass of cookbook\.datasets\.DPODatasetBuilder"):
        PREFERENCE_DATASETS.resolve("cookbook.datasets.hub:NoRobotsBuilder")
    # A data file's path is each family's file builder.
    pairs_file = PREFERENCE_DATASETS.meta_factory().from_string("prefs.jsonl")
    assert pairs_file.func is FileBuilder and pairs_file.keywords == {"path": "prefs.jsonl"}
    sft_file = SUPERVISED_DATASETS.resolve("sft.parquet")
    assert sft_file.func is SupervisedFileBuilder and sft_file.keywords == {"path": "sft.parquet"}

    registry = Registry(Conversations, "toy_data", "toy", base_path="tests.Conversations", unknown="Unknown {spec!r}")
    registry.register("toy")(Conversations)
    assert registry.names() == {"toy": Conversations} and registry.factory("toy") is Conversations
    with pytest.raises(ValueError, match="Unknown 'nope'"):
        registry.resolve("nope")
    with pytest.raises(ValueError, match="Unknown 'toy.jsonl'"):  # no file builder: no file shorthand
        registry.resolve("toy.jsonl")
    with pytest.raises(TypeError, match=r"toy_data 'bad' needs a Conversations subclass"):
        registry.register("bad")(Pairs)
    @chz.chz
    class OtherConversations(Conversations):
        pass

    with pytest.raises(ValueError, match="'toy' is already registered to Conversations"):
        registry.register("toy")(OtherConversations)


def test_summary_helpers():
    assert mean_and_max([1, 2, 6]) == (3.0, 6)
    metrics = count_metrics({"train": 5, "test": 2}, {"train_pairs": 4}, {"tie": 1})
    assert list(metrics)[:2] == ["data/rows_read", "data/train_pairs"]
    assert metrics["data/rows_read"] == 7 and metrics["data/skipped/tie"] == 1 and metrics["data/skipped/duplicate"] == 0


class Spans:
    """Stands for a non-tensor attention mask that knows how to move itself."""

    def __init__(self, device="cpu"):
        self.device = device

    def to(self, device):
        return Spans(device)


def test_batch_to_moves_every_tensor_and_loss_tokens_of_both_batch_types():
    sequence = SupervisedSequence(tokens=[1, 2, 3, 4], weights=[0.0, 0.0, 1.0, 1.0])
    pair = TokenizedPair(
        chosen=TokenizedSequence(tokens=[1, 2, 3], weights=[0.0, 1.0, 1.0]),
        rejected=TokenizedSequence(tokens=[1, 2, 4, 5], weights=[0.0, 1.0, 1.0, 1.0]),
        prompt_length=1,
    )
    meta = torch.device("meta")
    for batch in (collate_padded([sequence, sequence], [0, 1], pad_token_id=0),
                  collate_pairs_padded([pair], [7], pad_token_id=0)):
        moved = batch.to(meta)
        assert type(moved) is type(batch)
        for name, value in vars(moved).items():
            if isinstance(value, torch.Tensor):
                assert value.device == meta, name
            elif isinstance(value, int):
                assert value == getattr(batch, name), name
        assert all(t.device == meta for t in vars(moved.loss_tokens).values() if isinstance(t, torch.Tensor))
        assert batch.input_ids.device.type == "cpu"  # the original stays where it was
    with_spans = batch_to(replace(batch, attention_mask=Spans()), meta)
    assert with_spans.attention_mask.device == meta
