"""Supervised builders: row layouts, skips by name, splits, the registry and the chz command line."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from pathlib import Path

import chz
import pytest

from cookbook.datasets.builder import MalformedRowError
from cookbook.datasets.hub import DatasetUnavailableError, HHHBuilder, NoRobotsBuilder
from cookbook.datasets.preference import DemoBuilder, FileBuilder
from cookbook.datasets.supervised import (
    SUPERVISED_DATASETS,
    ChosenBuilder,
    Conversation,
    NoUsableExamplesError,
    SupervisedDatasetBuilder,
    SupervisedFileBuilder,
    check_conversation,
)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def keys(conversations) -> list[str]:
    return sorted(Conversation(c).key() if isinstance(c, list) else c.key() for c in conversations)


def write_jsonl(path: Path, rows) -> str:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


@chz.chz
class SFTConfig:
    dataset: SupervisedDatasetBuilder = chz.field(
        default_factory=SUPERVISED_DATASETS.resolve(SUPERVISED_DATASETS.default),
        meta_factory=SUPERVISED_DATASETS.meta_factory(), doc="data",
    )


def test_every_module_imports():
    for name in ("cookbook.datasets.supervised", "cookbook.datasets.tokenize", "cookbook.datasets.summary",
                 "cookbook.datasets.hub", "cookbook.supervised.batching", "cookbook.supervised.step",
                 "cookbook.supervised.train_sft"):
        module = importlib.import_module(name)
        for exported in getattr(module, "__all__", ()):
            assert hasattr(module, exported), exported


def test_file_reads_both_layouts(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [
        {"messages": [user("Hi"), assistant("Hello!")], "id": 7},  # extra keys are ignored
        {"prompt": "2+2?", "completion": "4"},
        {"prompt": [user("Name a colour.")], "completion": [assistant("Red.")]},
        # A completion written as the whole conversation repeats the prompt first.
        {"prompt": [user("Capital of France?")], "completion": [user("Capital of France?"), assistant("Paris.")]},
    ])
    splits = SupervisedFileBuilder(path=path, test_size=0)()
    assert keys(splits.train) == keys([
        [user("Hi"), assistant("Hello!")],
        [user("2+2?"), assistant("4")],
        [user("Name a colour."), assistant("Red.")],
        [user("Capital of France?"), assistant("Paris.")],
    ])
    assert splits.rows_read == {"train": 4} and splits.skipped.total() == 0


@pytest.mark.parametrize("suffix", [".json", ".parquet"])
def test_file_reads_json_and_parquet(tmp_path, suffix):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(5)]
    path = tmp_path / f"sft{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    splits = SupervisedFileBuilder(path=str(path), test_size=2)()
    assert len(splits.train) == 3 and len(splits.test) == 2
    assert {c.messages[0]["content"] for c in splits.train + splits.test} == {f"q{i}" for i in range(5)}


def test_malformed_row_names_file_and_line_unless_skipped(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [
        {"messages": [user("a"), assistant("b")]},
        {"prompt": "only a prompt"},
        "{not json",
    ])
    with pytest.raises(MalformedRowError, match=r"sft.jsonl:2: expected a 'messages' field"):
        SupervisedFileBuilder(path=path, test_size=0)()
    splits = SupervisedFileBuilder(path=path, test_size=0, skip_malformed=True)()
    assert len(splits.train) == 1
    assert splits.skipped.counts == {"malformed": 2}
    assert "sft.jsonl:2" in splits.skipped.examples["malformed"]


def test_skips_are_counted_by_name(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [
        {"messages": [user("a"), assistant("b")]},
        {"messages": [user("a"), assistant("b")]},  # duplicate
        {"messages": [user("a"), assistant("  ")]},  # empty last reply
        {"messages": [user("only a question")]},  # nothing to train on
        {"messages": [user("x"), {"role": "robot", "content": "y"}]},  # unknown role
        {"messages": [user("c"), assistant("d"), user("e")]},  # trailing user turn: kept, trimmed
    ])
    splits = SupervisedFileBuilder(path=path, test_size=0, skip_malformed=True)()
    assert splits.skipped.counts == {"duplicate": 1, "empty": 1, "malformed": 2}
    assert keys(splits.train) == keys([[user("a"), assistant("b")], [user("c"), assistant("d")]])


def test_check_conversation_rules():
    assert check_conversation(Conversation([user("q"), assistant("a")])) == Conversation([user("q"), assistant("a")])
    assert check_conversation(Conversation([])).reason == "malformed"
    assert check_conversation(Conversation([user("q"), assistant("")])).reason == "empty"
    # Only the last reply must be non-empty: all_assistant then trains an empty turn's end marker.
    kept = check_conversation(Conversation([user("q"), assistant(""), user("q2"), assistant("a2")]))
    assert isinstance(kept, Conversation)


def test_splits_are_deterministic_disjoint_and_capped(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(20)])
    first = SupervisedFileBuilder(path=path, test_size=5, max_examples=10, seed=3)()
    again = SupervisedFileBuilder(path=path, test_size=5, max_examples=10, seed=3)()
    other = SupervisedFileBuilder(path=path, test_size=5, max_examples=10, seed=4)()
    assert first.train == again.train and first.test == again.test
    assert first.train != other.train
    assert len(first.train) == 10 and len(first.test) == 5 and first.unused_examples == 5
    assert not {c.key() for c in first.train} & {c.key() for c in first.test}


def test_test_path_and_too_small_train(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"q{i}", "completion": "a"} for i in range(3)])
    test = write_jsonl(tmp_path / "test.jsonl", [{"prompt": f"t{i}", "completion": "a"} for i in range(4)])
    splits = SupervisedFileBuilder(path=train, test_path=test, test_size=None)()
    assert len(splits.train) == 3 and len(splits.test) == 4 and splits.rows_read == {"train": 3, "test": 4}
    with pytest.raises(NoUsableExamplesError, match="lower dataset.test_size"):
        SupervisedFileBuilder(path=train, test_size=3)()
    with pytest.raises(ValueError, match="has no test split of its own"):
        SupervisedFileBuilder(path=train, test_size=None)()


def no_robots_row(index: int, category: str = "Open QA", system: bool = False, turns: int = 1) -> dict:
    """A row in the hub schema: prompt, prompt_id, messages (system optional, then turns), category."""
    messages = [{"content": "You are a terse assistant.", "role": "system"}] if system else []
    for turn in range(turns):
        messages.append({"content": f"Question {index}.{turn}?", "role": "user"})
        messages.append({"content": f"Answer {index}.{turn}.", "role": "assistant"})
    return {"prompt": f"Question {index}.0?", "prompt_id": f"{index:064x}", "messages": messages, "category": category}


def test_no_robots_reads_the_hub_schema_from_local_files(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [
        no_robots_row(0), no_robots_row(1, "Chat", system=True, turns=2), no_robots_row(2, "Coding"),
        {**no_robots_row(3), "messages": "not a list"},
    ])
    test = write_jsonl(tmp_path / "test.jsonl", [no_robots_row(10, "Summarize")])
    splits = NoRobotsBuilder(local_path=train, local_test_path=test)()
    assert len(splits.train) == 3 and len(splits.test) == 1
    assert splits.skipped.counts == {"malformed": 1}
    chat = next(c for c in splits.train if c.messages[0]["role"] == "system")
    assert [m["role"] for m in chat.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert splits.test[0].messages == no_robots_row(10)["messages"]
    assert NoRobotsBuilder(local_path=train).name() == train


def test_no_robots_offline_names_local_path():
    with pytest.raises(DatasetUnavailableError, match="dataset=no_robots dataset.local_path=FILE.jsonl"):
        NoRobotsBuilder()()


def test_chosen_keeps_the_preference_split():
    splits = SUPERVISED_DATASETS.resolve("chosen:demo")()()
    pairs = DemoBuilder()()
    assert keys(splits.train) == keys([*p.prompt, *p.chosen] for p in pairs.train)
    assert keys(splits.test) == keys([*p.prompt, *p.chosen] for p in pairs.test)
    # The DPO phase that follows is evaluated on prompts SFT never trained on.
    train_prompts = {json.dumps(c.messages[:-1]) for c in splits.train}
    assert not train_prompts & {json.dumps(c.messages[:-1]) for c in splits.test}
    assert splits.rows_read == {"train": 1200, "test": 200} and splits.unused_examples == pairs.unused_pairs


def test_chosen_reports_the_preference_skips(tmp_path):
    prefs = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": "q1", "chosen": "good", "rejected": "bad"},
        {"prompt": "q2", "chosen": "same", "rejected": "same"},  # identical: the preference builder skips it
        {"prompt": "q3", "chosen": "yes", "rejected": "no"},
        {"prompt": "q3", "chosen": "yes", "rejected": "maybe"},  # same chosen conversation as the row above
        {"prompt": "q4", "chosen": "fine", "rejected": "poor"},
    ])
    splits = SUPERVISED_DATASETS.resolve(f"chosen:{prefs}")(preference=FileBuilder(path=prefs, test_size=1))()
    # The repeated prompt + chosen is a duplicate whichever split each copy landed in.
    assert splits.skipped.counts == {"identical": 1, "duplicate": 1}
    assert len(splits.train) + len(splits.test) == 3
    assert splits.rows_read == {"train": 5}


def parse(argv: list[str]) -> SupervisedDatasetBuilder:
    return chz.Blueprint(SFTConfig).make_from_argv(argv).dataset


def test_cli_forms():
    default = parse([])
    assert isinstance(default, ChosenBuilder) and isinstance(default.preference, DemoBuilder)
    assert parse(["dataset.test_size=5"]).test_size == 5
    hhh = parse(["dataset=chosen:hhh", "dataset.preference.local_path=hh.jsonl"])
    assert isinstance(hhh.preference, HHHBuilder) and hhh.preference.local_path == "hh.jsonl"
    spelled = parse(["dataset=chosen", "dataset.preference=hhh"])
    assert isinstance(spelled.preference, HHHBuilder)
    by_path = parse(["dataset=data/sft.jsonl", "dataset.test_size=3"])
    assert isinstance(by_path, SupervisedFileBuilder) and by_path.path == "data/sft.jsonl" and by_path.test_size == 3
    no_robots = parse(["dataset=no_robots", "dataset.local_path=nr.jsonl"])
    assert isinstance(no_robots, NoRobotsBuilder) and no_robots.local_path == "nr.jsonl"
    with pytest.raises(chz.blueprint.InvalidBlueprintArg, match="Unknown supervised dataset 'hh'"):
        parse(["dataset=hh"])
    with pytest.raises(chz.blueprint.InvalidBlueprintArg, match="Unknown dataset 'nope'"):
        parse(["dataset=chosen:nope"])


def test_module_class_path_imports_a_user_subclass(tmp_path, monkeypatch):
    (tmp_path / "user_sft.py").write_text(textwrap.dedent('''
        import chz
        from cookbook.datasets import Conversation, SupervisedDatasetBuilder

        @chz.chz
        class Echo(SupervisedDatasetBuilder):
            words: int = 4

            def load_rows(self, split):
                return range(self.words)

            def row_to_example(self, row):
                return Conversation([{"role": "user", "content": f"say {row}"},
                                     {"role": "assistant", "content": str(row)}])

        class NotABuilder:
            pass
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_sft", raising=False)
    config = chz.Blueprint(SFTConfig).make_from_argv(["dataset=user_sft:Echo", "dataset.words=6", "dataset.test_size=2"])
    splits = config.dataset()
    assert len(splits.train) == 4 and len(splits.test) == 2
    with pytest.raises(chz.blueprint.InvalidBlueprintArg, match="NotABuilder is not a subclass of"):
        chz.Blueprint(SFTConfig).make_from_argv(["dataset=user_sft:NotABuilder"])
