"""Unpaired feedback data: the file builder (prompt, completion, label), `unpaired:<preference set>`,
a user's `module:Class`, bad labels, counted skips, tokenization through the shared cache, and the
rows of the KL estimate (each example with the next completion of its global batch)."""

import json
from pathlib import Path

import chz
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cookbook.datasets.load import load_unpaired_data
from cookbook.datasets.preference import DemoBuilder
from cookbook.datasets.unpaired import (
    UNPAIRED_DATASETS,
    BadLabelError,
    UnpairedDatasetBuilder,
    UnpairedExample,
    UnpairedFileBuilder,
)
from cookbook.errors import UserError
from cookbook.kto.step import TrainRows, held_out_pairs
from cookbook.renderers import get_renderer
from cookbook.training.schedule import BatchSchedule


def rows(n: int = 10) -> list[dict]:
    out = []
    for i in range(n):
        prompt = f"What is {i} plus {i}?" if i % 2 else [{"role": "user", "content": f"What is {i} plus {i}?"}]
        completion = f"It is {2 * i}." if i % 3 else [{"role": "assistant", "content": f"It is {2 * i}."}]
        out.append({"prompt": prompt, "completion": completion, "label": i % 4 != 0})
    return out


def write_jsonl(path: Path, items: list) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def test_a_labelled_file_gives_examples_in_either_message_form(tmp_path):
    path = write_jsonl(tmp_path / "feedback.jsonl", rows(10))
    splits = UnpairedFileBuilder(path=str(path), test_size=2)()
    assert len(splits.train) == 8 and len(splits.test) == 2
    examples = {ex.prompt[0]["content"]: ex for ex in splits.train + splits.test}
    first = examples["What is 0 plus 0?"]
    assert first == UnpairedExample([{"role": "user", "content": "What is 0 plus 0?"}],
                                    [{"role": "assistant", "content": "It is 0."}], False)
    assert examples["What is 5 plus 5?"].desirable is True
    assert examples["What is 5 plus 5?"].completion == [{"role": "assistant", "content": "It is 10."}]


def test_a_parquet_file_reads_the_same(tmp_path):
    items = [{"prompt": f"Say {i}.", "completion": str(i), "label": bool(i % 2)} for i in range(6)]
    path = tmp_path / "feedback.parquet"
    pq.write_table(pa.Table.from_pylist(items), path)
    splits = UnpairedFileBuilder(path=str(path), test_size=0)()
    assert sorted((ex.completion[0]["content"], ex.desirable) for ex in splits.train) == [
        (str(i), bool(i % 2)) for i in range(6)]


@pytest.mark.parametrize("label", ["yes", 1, None, "true"])
def test_a_label_that_is_not_a_boolean_names_file_row_and_field(tmp_path, label):
    items = rows(4)
    items[2]["label"] = label
    path = write_jsonl(tmp_path / "feedback.jsonl", items)
    for skip_malformed in (False, True):  # a wrong label is never silently skipped
        with pytest.raises(BadLabelError, match=rf"feedback\.jsonl:3: field 'label' must be a boolean .*got {label!r}"):
            UnpairedFileBuilder(path=str(path), test_size=0, skip_malformed=skip_malformed)()


def test_bad_rows_are_counted_named_skips(tmp_path):
    items = rows(8)
    del items[1]["completion"]
    items[3]["completion"] = "   "
    items.append(dict(items[4]))  # a duplicate
    items.append({"prompt": "Hi", "completion": [{"role": "user", "content": "not a reply"}], "label": True})
    path = write_jsonl(tmp_path / "feedback.jsonl", items)
    with pytest.raises(UserError, match=r"feedback\.jsonl:2: missing field 'completion'"):
        UnpairedFileBuilder(path=str(path), test_size=0)()
    splits = UnpairedFileBuilder(path=str(path), test_size=0, skip_malformed=True)()
    assert len(splits.train) == 6
    assert dict(splits.skipped.counts) == {"malformed": 2, "empty": 1, "duplicate": 1}
    assert splits.skipped.examples["malformed"].endswith("feedback.jsonl:2: missing field 'completion'")
    assert "feedback.jsonl:4" in splits.skipped.examples["empty"]


def test_unpaired_prefix_splits_each_pair_into_a_desirable_and_an_undesirable_example():
    builder = UNPAIRED_DATASETS.resolve("unpaired:demo")(preference=DemoBuilder(max_pairs=10, test_size=4))
    splits = builder()
    pairs = DemoBuilder(max_pairs=10, test_size=4)()
    assert len(splits.train) == 20 and len(splits.test) == 8
    assert sum(ex.desirable for ex in splits.train) == 10
    expected = {(json.dumps(p.prompt), json.dumps(p.chosen), True) for p in pairs.train}
    expected |= {(json.dumps(p.prompt), json.dumps(p.rejected), False) for p in pairs.train}
    assert {(json.dumps(ex.prompt), json.dumps(ex.completion), ex.desirable) for ex in splits.train} == expected
    assert builder.name() == "unpaired:demo"


def test_unpaired_prefix_takes_a_preference_file(tmp_path):
    pairs = [{"prompt": f"Q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(6)]
    path = write_jsonl(tmp_path / "prefs.jsonl", pairs)
    builder = UNPAIRED_DATASETS.resolve(f"unpaired:{path}")()
    assert builder.preference.path == str(path)
    splits = chz.replace(builder, preference=chz.replace(builder.preference, test_size=2))()
    assert len(splits.train) == 8 and len(splits.test) == 4
    for example in splits.train:
        assert example.completion[0]["content"].startswith("good" if example.desirable else "bad")


@chz.chz
class NumberFeedback(UnpairedDatasetBuilder):
    """A user's builder: even answers are desirable."""

    def load_rows(self, split):
        return range(12)

    def row_to_example(self, row):
        return UnpairedExample([{"role": "user", "content": f"Pick {row}"}],
                               [{"role": "assistant", "content": str(row)}], row % 2 == 0)


def test_module_class_and_file_shorthand_resolve_through_the_one_registry(tmp_path):
    cls = UNPAIRED_DATASETS.resolve("test_kto_data:NumberFeedback")
    assert issubclass(cls, UnpairedDatasetBuilder)
    splits = cls(test_size=2)()
    assert len(splits.train) == 10
    path = write_jsonl(tmp_path / "feedback.jsonl", rows(4))
    assert UNPAIRED_DATASETS.resolve(str(path))(test_size=1)().rows_read == {"train": 4}
    with pytest.raises(ValueError, match="Unknown unpaired dataset 'nope'"):
        UNPAIRED_DATASETS.resolve("nope")


def test_tokenized_through_the_shared_cache_with_loss_on_the_completion_only(tmp_path, tokenizer):
    renderer = get_renderer("chatml", tokenizer)
    path = write_jsonl(tmp_path / "feedback.jsonl", rows(10))
    builder = UnpairedFileBuilder(path=str(path), test_size=2)
    data = load_unpaired_data(builder, renderer, max_length=256, verbose=False)
    assert "tokenized now" in data.cache_note
    assert data.summary.train_examples == 8 and data.summary.test_examples == 2
    assert data.summary.train_desirable + data.summary.test_desirable == 7
    for example in data.train:
        p = example.prompt_length
        assert tokenizer.decode(example.sequence.tokens[:p]).endswith("<|im_start|>assistant\n")
        assert tokenizer.decode(example.sequence.tokens[p:]).startswith("It is ")
        assert not any(example.sequence.weights[:p]) and any(example.sequence.weights[p:])
    again = load_unpaired_data(builder, renderer, max_length=256, verbose=False)
    assert "cached tokens" in again.cache_note
    assert [ex.sequence.tokens for ex in again.train] == [ex.sequence.tokens for ex in data.train]
    assert list(again.train.desirable()) == [ex.desirable for ex in data.train]


def test_each_step_pairs_its_examples_with_the_next_completion_of_its_global_batch(tmp_path, tokenizer):
    renderer = get_renderer("chatml", tokenizer)
    data = load_unpaired_data(UnpairedFileBuilder(path=str(write_jsonl(tmp_path / "f.jsonl", rows(10))), test_size=0),
                              renderer, max_length=256, verbose=False)
    schedule = BatchSchedule(len(data.train), batch_size=4, micro_batch_size=2, num_epochs=2, max_steps=None, seed=0)
    train_rows = TrainRows.of(data.train, schedule, max_length=256)
    assert len(train_rows.pairs) == schedule.total_steps * 4 == 16
    for step in range(schedule.total_steps):
        batch = schedule.global_batch(step)
        offset = train_rows.offsets[tuple(batch)]
        for k, example in enumerate(batch):
            own, other = data.train[example], data.train[batch[(k + 1) % 4]]
            pair = train_rows.pairs[offset + k]
            assert pair.chosen == own.sequence and pair.prompt_length == own.prompt_length
            assert pair.rejected.tokens == (own.sequence.tokens[:own.prompt_length]
                                            + other.sequence.tokens[other.prompt_length:])
            assert pair.rejected.weights[own.prompt_length:] == other.sequence.weights[other.prompt_length:]
    assert train_rows.batches == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [12, 13], [14, 15]]
    held_out = held_out_pairs(data.train, max_length=40)
    assert held_out.partner == [*range(1, 10), 0] and all(len(pair.rejected) <= 40 for pair in held_out)
