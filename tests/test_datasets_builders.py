"""Builders against hand-written rows in each real schema: exact messages and exact skip counts."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cookbook.datasets.builder import MalformedRowError
from cookbook.datasets.hub import (
    DatasetUnavailableError,
    HelpSteer3Builder,
    HHHBuilder,
    UltraFeedbackBuilder,
    parse_transcript,
)
from cookbook.datasets.preference import Comparison, DemoBuilder, FileBuilder, NoUsablePairsError


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def all_pairs(splits):
    return splits.train + splits.test


def by_last_prompt(comparisons):
    return {comparison.prompt[-1]["content"]: comparison for comparison in comparisons}


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


# -- hh-rlhf --------------------------------------------------------------------------------------

HH_PREFIX = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Name a fruit."
HH_ROWS = [
    # multi-turn, usable
    {
        "chosen": HH_PREFIX + "\n\nAssistant: An apple.",
        "rejected": HH_PREFIX + "\n\nAssistant: I'd rather not.",
    },
    # transcripts disagree before the final reply
    {
        "chosen": "\n\nHuman: Name a fruit.\n\nAssistant: A pear.",
        "rejected": "\n\nHuman: Name a vegetable.\n\nAssistant: A leek.",
    },
    # "Human:" inside the reply, not after a blank line, stays in the reply
    {
        "chosen": "\n\nHuman: Write a line of a play.\n\nAssistant: Human: hello there\nRobot: the Human: said hi",
        "rejected": "\n\nHuman: Write a line of a play.\n\nAssistant: No.",
    },
    # whitespace inside turns is kept; only the separator goes
    {
        "chosen": "\n\nHuman:   spaced  question \n\nAssistant:  two leading spaces\n",
        "rejected": "\n\nHuman:   spaced  question \n\nAssistant: ok",
    },
    # empty rejected reply (a bare "Assistant:" at the end)
    {"chosen": "\n\nHuman: Say hi.\n\nAssistant: Hi!", "rejected": "\n\nHuman: Say hi.\n\nAssistant:"},
    # non-ASCII text
    {
        "chosen": "\n\nHuman: ¿Qué hora es en 東京?\n\nAssistant: Son las tres. 🙂",
        "rejected": "\n\nHuman: ¿Qué hora es en 東京?\n\nAssistant: No sé.",
    },
    # turns that do not alternate
    {
        "chosen": "\n\nHuman: a\n\nHuman: b\n\nAssistant: c",
        "rejected": "\n\nHuman: a\n\nHuman: b\n\nAssistant: d",
    },
    # duplicate of the first row
    {
        "chosen": HH_PREFIX + "\n\nAssistant: An apple.",
        "rejected": HH_PREFIX + "\n\nAssistant: I'd rather not.",
    },
    # chosen == rejected
    {"chosen": "\n\nHuman: Same?\n\nAssistant: Yes.", "rejected": "\n\nHuman: Same?\n\nAssistant: Yes."},
    # ends with a Human turn
    {
        "chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c",
        "rejected": "\n\nHuman: a\n\nAssistant: x\n\nHuman: c",
    },
    # not a string
    {"chosen": 3, "rejected": "\n\nHuman: a\n\nAssistant: b"},
]


def test_hhh_exact_messages_and_skip_counts(tmp_path):
    splits = HHHBuilder(local_path=write_jsonl(tmp_path / "hh.jsonl", HH_ROWS), test_size=1)()
    assert splits.rows_read == {"train": len(HH_ROWS)}
    assert dict(splits.skipped.counts) == {"malformed": 4, "empty": 1, "duplicate": 1, "identical": 1}
    assert len(splits.train) == 3 and len(splits.test) == 1
    pairs = by_last_prompt(all_pairs(splits))
    assert pairs["Name a fruit."] == Comparison(
        prompt=[u("Hi there"), a("Hello! How can I help?"), u("Name a fruit.")],
        chosen=[a("An apple.")],
        rejected=[a("I'd rather not.")],
    )
    assert pairs["Write a line of a play."].chosen == [a("Human: hello there\nRobot: the Human: said hi")]
    assert pairs["  spaced  question "].chosen == [a(" two leading spaces\n")]
    assert pairs["¿Qué hora es en 東京?"].chosen == [a("Son las tres. 🙂")]
    assert "differ before the final reply" in splits.skipped.examples["malformed"]


def test_hhh_reads_a_parquet_test_split(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", HH_ROWS[:1] + HH_ROWS[2:4])
    test = write_parquet(tmp_path / "test.parquet", [HH_ROWS[5], HH_ROWS[4]])
    splits = HHHBuilder(local_path=train, local_test_path=test)()
    assert splits.rows_read == {"train": 3, "test": 2}
    assert [pair.chosen for pair in splits.test] == [[a("Son las tres. 🙂")]]
    assert dict(splits.skipped.counts) == {"empty": 1}


def test_parse_transcript_rejects_text_before_the_first_turn():
    with pytest.raises(ValueError, match="text before the first turn"):
        parse_transcript("hello\n\nHuman: a\n\nAssistant: b")
    assert parse_transcript("Human: a\n\nAssistant: b") == [u("a"), a("b")]


# -- HelpSteer3 ------------------------------------------------------------------------------------


def helpsteer_row(preference, domain="general", language="english", context=None, r1="First.", r2="Second."):
    return {
        "domain": domain,
        "language": language,
        "context": context or [u("Question?")],
        "response1": r1,
        "response2": r2,
        "overall_preference": preference,
    }


HELPSTEER_ROWS = [
    helpsteer_row(-2, context=[u("Q1"), a("A1"), u("Q2")], r1="Better one.", r2="Worse one."),
    helpsteer_row(3, context=[u("Which?")], r1="Worse.", r2="Better."),
    helpsteer_row(0, context=[u("Tie?")]),
    helpsteer_row(5, context=[u("Out of range")]),
    helpsteer_row(-1, domain="code", context=[u("Code?")]),
    helpsteer_row(1, domain="stem", language="chinese", context=[u("几点了?")], r1="不知道", r2="三点。"),
    helpsteer_row(2, context="not a list"),
]


def test_helpsteer3_preference_sign_ties_and_filters(tmp_path):
    path = write_jsonl(tmp_path / "hs3.jsonl", HELPSTEER_ROWS)
    splits = HelpSteer3Builder(local_path=path, test_size=0, domain="general,stem")()
    assert dict(splits.skipped.counts) == {"tie": 1, "malformed": 2, "filtered": 1}
    pairs = by_last_prompt(splits.train)
    assert pairs["Q2"] == Comparison([u("Q1"), a("A1"), u("Q2")], [a("Better one.")], [a("Worse one.")])
    assert pairs["Which?"].chosen == [a("Better.")] and pairs["Which?"].rejected == [a("Worse.")]
    assert pairs["几点了?"].chosen == [a("三点。")]

    english = HelpSteer3Builder(local_path=path, test_size=0, language="English")()
    assert dict(english.skipped.counts) == {"tie": 1, "malformed": 2, "filtered": 1}
    assert "几点了?" not in by_last_prompt(english.train) and "Code?" in by_last_prompt(english.train)


# -- UltraFeedback ---------------------------------------------------------------------------------


def ultra_row(prompt, chosen, rejected, score_chosen=8.0, score_rejected=4.0, rejected_prompt=None):
    return {
        "prompt": prompt,
        "prompt_id": prompt.lower(),
        "chosen": [u(prompt), a(chosen)],
        "rejected": [u(rejected_prompt or prompt), a(rejected)],
        "messages": [u(prompt), a(chosen)],
        "score_chosen": score_chosen,
        "score_rejected": score_rejected,
    }


def test_ultrafeedback_ties_mismatches_and_empty_replies(tmp_path):
    rows = [
        ultra_row("Capital of Peru?", "Lima.", "Cusco."),
        ultra_row("Tied?", "A.", "B.", 7.0, 7.0),
        ultra_row("Mismatch?", "A.", "B.", rejected_prompt="Other prompt?"),
        ultra_row("Empty?", "", "Something."),
        ultra_row("Café?", "Un café, s'il vous plaît.", "Non."),
    ]
    path = write_parquet(tmp_path / "uf.parquet", rows)
    splits = UltraFeedbackBuilder(local_path=path, test_size=0)()
    assert dict(splits.skipped.counts) == {"tie": 1, "malformed": 1, "empty": 1}
    pairs = by_last_prompt(splits.train)
    assert pairs["Capital of Peru?"] == Comparison([u("Capital of Peru?")], [a("Lima.")], [a("Cusco.")])
    assert pairs["Café?"].chosen == [a("Un café, s'il vous plaît.")]


# -- local files -----------------------------------------------------------------------------------

FILE_ROWS = [
    {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"},
    {"prompt": [u("Hi")], "chosen": [a("Hello!")], "rejected": [a("Go away.")]},
    {"prompt": [u("Again")], "chosen": [u("Again"), a("Sure.")], "rejected": [u("Again"), a("No.")]},
    {"chosen": [u("Implicit"), a("Yes.")], "rejected": [u("Implicit"), a("No.")]},
]


def test_file_builder_accepts_both_layouts_in_every_format(tmp_path):
    expected = {
        "What is 2 + 2?": Comparison([u("What is 2 + 2?")], [a("4")], [a("5")]),
        "Hi": Comparison([u("Hi")], [a("Hello!")], [a("Go away.")]),
        "Again": Comparison([u("Again")], [a("Sure.")], [a("No.")]),
        "Implicit": Comparison([u("Implicit")], [a("Yes.")], [a("No.")]),
    }
    json_path = tmp_path / "prefs.json"
    json_path.write_text(json.dumps(FILE_ROWS), encoding="utf-8")
    for path in (write_jsonl(tmp_path / "prefs.jsonl", FILE_ROWS), str(json_path)):
        splits = FileBuilder(path=path, test_size=1)()
        assert by_last_prompt(all_pairs(splits)) == expected
    # Parquet needs one schema per column, so it holds the all-string layout.
    parquet = write_parquet(
        tmp_path / "prefs.parquet", [FILE_ROWS[0], {"prompt": "x", "chosen": "y", "rejected": "z"}]
    )
    splits = FileBuilder(path=parquet, test_size=0)()
    assert by_last_prompt(splits.train)["What is 2 + 2?"] == expected["What is 2 + 2?"]


def test_file_builder_names_file_line_and_field_of_a_malformed_row(tmp_path):
    rows = [json.dumps(row) for row in FILE_ROWS[:2]]
    rows.insert(1, json.dumps({"prompt": "Hi", "chosen": 7, "rejected": "no"}))
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(MalformedRowError, match=r"bad\.jsonl:2: field 'chosen' must be a string or a list"):
        FileBuilder(path=str(path), test_size=0)()

    path.write_text(json.dumps(FILE_ROWS[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(MalformedRowError, match=r"bad\.jsonl:2: invalid JSON"):
        FileBuilder(path=str(path), test_size=0)()

    path.write_text(json.dumps({"prompt": "p", "chosen": "c"}) + "\n", encoding="utf-8")
    with pytest.raises(
        MalformedRowError, match=r"bad\.jsonl:1: missing field 'rejected'.*skip_malformed=true"
    ):
        FileBuilder(path=str(path), test_size=0)()


def test_file_builder_skip_malformed_counts_every_bad_row(tmp_path):
    lines = [json.dumps(row) for row in FILE_ROWS]
    lines += [
        "{broken",
        json.dumps({"prompt": "p", "chosen": "c"}),
        json.dumps({"prompt": [{"role": "robot", "content": "x"}], "chosen": "a", "rejected": "b"}),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    splits = FileBuilder(path=str(path), test_size=0, skip_malformed=True)()
    assert len(splits.train) == 4
    assert dict(splits.skipped.counts) == {"malformed": 3}
    assert splits.skipped.examples["malformed"].startswith(f"{path}:5: invalid JSON")


def test_missing_file_and_too_small_test_split_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        FileBuilder(path=str(tmp_path / "nope.jsonl"))()
    path = write_jsonl(tmp_path / "small.jsonl", FILE_ROWS)
    with pytest.raises(NoUsablePairsError, match="only 4 usable pairs.*test_size=200"):
        FileBuilder(path=path)()


# -- shared options --------------------------------------------------------------------------------


def test_shuffle_is_deterministic_and_max_pairs_counts_the_rest():
    full = {"max_pairs": None, "test_size": 200}
    first, again, other = DemoBuilder(seed=1, **full)(), DemoBuilder(seed=1, **full)(), DemoBuilder(seed=2, **full)()
    assert first.train == again.train and first.test == again.test
    assert first.train != other.train and sorted(map(Comparison.key, first.train)) == sorted(
        map(Comparison.key, other.train)
    )
    capped = DemoBuilder(seed=1, max_pairs=100, test_size=50)()
    assert capped.train == first.train[:100] and capped.test == first.test[:50]
    assert capped.unused_pairs == (len(first.train) - 100) + (len(first.test) - 50)


def test_demo_defaults_size_the_quickstart():
    splits = DemoBuilder()()
    assert len(splits.train) == 320 and len(splits.test) == 64
    assert splits.unused_pairs == (1200 - 320) + (200 - 64)


def test_carved_test_split_never_overlaps_train(tmp_path):
    rows = [{"prompt": f"Question {i}?", "chosen": "Yes.", "rejected": "No."} for i in range(30)]
    splits = FileBuilder(path=write_jsonl(tmp_path / "p.jsonl", rows), test_size=10, seed=3)()
    train_keys = {pair.key() for pair in splits.train}
    assert len(splits.test) == 10 and len(splits.train) == 20
    assert not train_keys & {pair.key() for pair in splits.test}


def test_demo_set_size_and_shape():
    splits = DemoBuilder(max_pairs=None, test_size=200)()
    assert splits.rows_read == {"train": 1200, "test": 200}
    assert len(splits.train) == 1200 and len(splits.test) == 200 and splits.skipped.total() == 0
    train_prompts = {json.dumps(pair.prompt) for pair in splits.train}
    assert not train_prompts & {json.dumps(pair.prompt) for pair in splits.test}


# -- offline hub -----------------------------------------------------------------------------------


def test_offline_hub_builder_fails_fast_naming_the_local_option(tmp_path, monkeypatch, network_attempts):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-hf-home" / "datasets"))
    # As in a process that imported the libraries before the offline variables were set (which they
    # read once, at import): the builder still must not try the network.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(
        DatasetUnavailableError, match=r"'Anthropic/hh-rlhf'.*dataset=hhh dataset\.local_path="
    ):
        HHHBuilder()()
    assert network_attempts == []
    assert datasets.config.HF_HUB_OFFLINE is False and huggingface_hub.constants.HF_HUB_OFFLINE is False


def test_unreachable_hub_fails_fast_without_offline_variables(monkeypatch, network_attempts):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    with pytest.raises(DatasetUnavailableError, match=r"nvidia/HelpSteer3.*cannot be reached.*local_path"):
        HelpSteer3Builder()()
    # One refused connect, then the advice: no retries and no download attempt.
    assert [attempt for attempt in network_attempts if attempt[0] == "connect"] == [("connect", ("127.0.0.1", 9))]
