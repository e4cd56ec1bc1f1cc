"""IFEval scoring on hand-written replies whose verdicts we know, and the bundled data's integrity."""

import json

import pytest

from cookbook.eval.ifeval import (
    BUNDLED_IFEVAL,
    PUNKT_TAB_FILES,
    _pooled,
    ensure_punkt_tab,
    instruction_registry,
    read_jsonl,
    score_response,
)


def _row(ids, kwargs, prompt="Write something."):
    return {"key": 1, "prompt": prompt, "instruction_id_list": ids, "kwargs": kwargs}


def test_all_instructions_followed_strictly():
    row = _row(["punctuation:no_comma", "detectable_format:title", "change_case:english_lowercase"], [{}, {}, {}])
    reply = "<<a quiet morning>>\nthe sun rose over the hill and the birds sang."
    assert score_response(reply, row) == {"strict": [True, True, True], "loose": [True, True, True]}


def test_one_broken_instruction():
    row = _row(["punctuation:no_comma", "detectable_format:title"], [{}, {}])
    reply = "<<notes>>\nfirst, we wait.\nthen we go."  # every loose variant keeps the comma
    assert score_response(reply, row) == {"strict": [False, True], "loose": [False, True]}


def test_loose_forgives_an_opening_line():
    row = _row(["startend:quotation"], [{}])
    reply = 'Here is my answer:\n"the moon has phases because we see its lit half from different angles"'
    assert score_response(reply, row) == {"strict": [False], "loose": [True]}


def test_sentence_counting_uses_punkt_offline():
    fewer = _row(["length_constraints:number_sentences"], [{"num_sentences": 5, "relation": "less than"}])
    more = _row(["length_constraints:number_sentences"], [{"num_sentences": 5, "relation": "at least"}])
    reply = "Dr. Smith went home. He was tired. Then he slept."  # 3 sentences: "Dr." is not an end
    assert score_response(reply, fewer)["strict"] == [True]
    assert score_response(reply, more)["strict"] == [False]


def test_empty_reply_fails_every_instruction():
    row = _row(["punctuation:no_comma", "detectable_format:title"], [{}, {}])
    assert score_response("   ", row) == {"strict": [False, False], "loose": [False, False]}


def test_prompt_and_instruction_level_pooling():
    """prompt-level = mean over prompts of all(v); instruction-level = passed / all instructions."""

    class _Score:
        def __init__(self, metadata):
            self.metadata = metadata

    class _SampleScore:
        def __init__(self, strict):
            self.score = _Score({"strict": strict, "loose": strict})

    scores = [_SampleScore([True, True]), _SampleScore([True, False, False]), _SampleScore([False])]
    assert _pooled(scores, "strict", "prompt") == pytest.approx(1 / 3)
    assert _pooled(scores, "strict", "instruction") == pytest.approx(3 / 6)


def test_bundled_set_is_large_valid_and_varied():
    registry = instruction_registry()
    rows = read_jsonl(BUNDLED_IFEVAL, set(registry))
    assert len(rows) >= 100
    assert len({row["key"] for row in rows}) == len(rows)
    covered = {i for row in rows for i in row["instruction_id_list"]}
    assert covered == set(registry), f"not covered: {set(registry) - covered}"
    for row in rows:  # every row's kwargs must build its checkers
        for instruction_id, kwargs in zip(row["instruction_id_list"], row["kwargs"]):
            registry[instruction_id](instruction_id).build_description(**kwargs)


def test_bad_rows_name_the_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = {"key": 1, "prompt": "Hi.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    bad = {**good, "instruction_id_list": ["punctuation:no_semicolons"]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: unknown instruction id.*no_semicolons"):
        read_jsonl(path, set(instruction_registry()))
    path.write_text(json.dumps({k: v for k, v in good.items() if k != "kwargs"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing field 'kwargs'"):
        read_jsonl(path, set(instruction_registry()))


def test_punkt_tab_tables_are_written_where_nltk_finds_them(tmp_path, monkeypatch):
    import nltk
    import nltk.tokenize.punkt as nltk_punkt

    monkeypatch.setenv("COOKBOOK_CACHE", str(tmp_path))
    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))  # undo our path entry afterwards
    root = ensure_punkt_tab()
    assert root == tmp_path / "nltk_data"
    folder = root / "tokenizers" / "punkt_tab" / "english"
    assert sorted(p.name for p in folder.iterdir()) == sorted(PUNKT_TAB_FILES)
    params = nltk_punkt.load_punkt_params(nltk.data.find("tokenizers/punkt_tab/english/", paths=[str(root)]))
    assert "dr" in params.abbrev_types
    assert len(params.ortho_context) > 1000


def test_the_bundled_prompts_split_into_dev_and_test_halves(tmp_path):
    """64 + 64 disjoint prompts, each half holding every checker; other files need a split field."""
    from cookbook.eval.ifeval import ifeval, load_ifeval_rows

    rows = {split: load_ifeval_rows("bundled", split=split)[0] for split in ("all", "dev", "test")}
    dev, test = ({row["key"] for row in rows[s]} for s in ("dev", "test"))
    assert len(dev) == len(test) == 64 and not dev & test and dev | test == {row["key"] for row in rows["all"]}
    checkers = set(instruction_registry())
    for split in ("dev", "test"):
        assert {i for row in rows[split] for i in row["instruction_id_list"]} == checkers
    assert load_ifeval_rows("bundled", split="test")[1] == "bundled, test"
    assert ifeval(source="bundled", split="dev").dataset.name == "ifeval (bundled, dev)"
    plain = tmp_path / "mine.jsonl"
    plain.write_text(json.dumps({k: v for k, v in rows["all"][0].items() if k != "split"}) + "\n")
    with pytest.raises(ValueError, match="split=test needs rows that carry a dev/test 'split' field"):
        load_ifeval_rows(data_file=str(plain), split="test")
    with pytest.raises(ValueError, match="split='half' is not one of all, dev, test"):
        load_ifeval_rows("bundled", split="half")
