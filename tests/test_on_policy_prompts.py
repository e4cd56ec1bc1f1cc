"""The on-policy recipe's prompt sources: the synthetic IFEval prompts (every checker, no conflicts,
varied wording, verifiable, deterministic, none from the evaluation set), JSONL files, the prompts of
a preference data set, and choosing a source from the command line."""

import itertools
import json
import re
import sys
import textwrap
from collections import Counter, defaultdict

import chz
import pytest

from cookbook.cli import run_cli
from cookbook.datasets.files import DataFileNotFoundError
from cookbook.errors import UserError
from cookbook.eval.ifeval import BUNDLED_IFEVAL, ifeval_row, instruction_registry, score_response
from cookbook.on_policy.ifeval_instructions import PHRASINGS, WORDS, conflict_table
from cookbook.on_policy.ifeval_synthetic import QUESTIONS, TASKS, IFEvalSyntheticPrompts, synthetic_prompts
from cookbook.on_policy.prompts import (
    PROMPT_SOURCES,
    FilePrompts,
    NoPromptsError,
    PreferencePrompts,
    PromptError,
    PromptFileError,
    PromptItem,
    PromptSource,
)
from cookbook.on_policy.rewards import IFEvalReward


@chz.chz
class PromptConfig:
    """A stand-in for the recipe's config with the prompts field declared as the recipe declares it."""

    prompts: PromptSource = chz.field(
        default_factory=IFEvalSyntheticPrompts, meta_factory=PROMPT_SOURCES.meta_factory(), doc="prompts to sample on"
    )


def parse(argv):
    return chz.Blueprint(PromptConfig).make_from_argv(argv)


@pytest.fixture(scope="module")
def synthetic():
    return IFEvalSyntheticPrompts()()


# -- synthetic IFEval prompts ---------------------------------------------------------------------


def test_every_checker_is_used_with_one_to_three_instructions(synthetic):
    assert len(synthetic) == 256 and synthetic.skipped.total() == 0
    used = Counter(i for item in synthetic for i in item.ifeval["instruction_id_list"])
    assert set(used) == set(instruction_registry()) and len(used) == 25
    for item in synthetic:
        ids = item.ifeval["instruction_id_list"]
        assert 1 <= len(ids) <= 3 and len(set(ids)) == len(ids)
        assert len(item.ifeval["kwargs"]) == len(ids)
        assert item.messages == ({"role": "user", "content": item.ifeval["prompt"]},)
    assert len({item.key for item in synthetic}) == 256
    assert Counter(len(item.ifeval["instruction_id_list"]) for item in synthetic).keys() == {1, 2, 3}


def test_instruction_counts_follow_the_options():
    items = IFEvalSyntheticPrompts(num_prompts=40, seed=3, min_instructions=2, max_instructions=2)()
    assert {len(item.ifeval["instruction_id_list"]) for item in items} == {2}
    with pytest.raises(ValueError, match="1 <= min <= max <= 5"):
        IFEvalSyntheticPrompts(min_instructions=3, max_instructions=2)


def test_no_two_instructions_of_a_prompt_conflict(synthetic):
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_CONFLICTS

    table = conflict_table()
    for item in synthetic:
        for first, second in itertools.combinations(item.ifeval["instruction_id_list"], 2):
            assert second not in table[first] and first not in table[second]
            # The IFEval registry's own table, in both directions.
            assert second not in INSTRUCTION_CONFLICTS[first] and first not in INSTRUCTION_CONFLICTS[second]


def test_required_words_are_never_forbidden(synthetic):
    for item in synthetic:
        arguments = dict(zip(item.ifeval["instruction_id_list"], item.ifeval["kwargs"]))
        forbidden = set(arguments.get("keywords:forbidden_words", {}).get("forbidden_words", []))
        required = set(arguments.get("keywords:existence", {}).get("keywords", []))
        if arguments.get("keywords:frequency", {}).get("relation") == "at least":
            required.add(arguments["keywords:frequency"]["keyword"])
        assert not forbidden & required, item.key


def test_same_seed_same_prompts_other_seed_other_prompts():
    first = synthetic_prompts(30, seed=7)
    assert synthetic_prompts(30, seed=7) == first
    assert IFEvalSyntheticPrompts(num_prompts=30, seed=7)() == first
    other = synthetic_prompts(30, seed=8)
    assert [item.ifeval["prompt"] for item in other] != [item.ifeval["prompt"] for item in first]


def _wordings(instruction_id: str, arguments: dict) -> list[str]:
    """Every wording of one instruction with its arguments (ours, then the checker's own)."""
    texts = [phrasing({**arguments, "_where": where}) for phrasing in PHRASINGS[instruction_id]
             for where in ("above", "below")]
    checker = instruction_registry()[instruction_id](instruction_id)
    texts.append(checker.build_description(**arguments))
    return texts


def test_each_instruction_is_stated_with_its_arguments_in_varied_wording(synthetic):
    """Each instruction appears in the prompt in one of its wordings, rendered with the kwargs the
    checker gets (so the text asks for what is checked), and every checker shows >= 2 wordings."""
    seen = defaultdict(set)
    for item in synthetic:
        text = item.ifeval["prompt"]
        for instruction_id, arguments in zip(item.ifeval["instruction_id_list"], item.ifeval["kwargs"]):
            wordings = _wordings(instruction_id, arguments)
            found = [index for index, wording in enumerate(wordings) if wording.rstrip(".") in text]
            assert found, f"{item.key}: no wording of {instruction_id} {arguments} in {text!r}"
            seen[instruction_id].add(found[0] // 2 if found[0] < len(wordings) - 1 else "checker")
    assert set(seen) == set(instruction_registry())
    for instruction_id, wordings in seen.items():
        assert len(wordings) >= 2, f"{instruction_id} always worded the same way"


def test_kwargs_are_complete_and_every_reply_can_be_scored(synthetic):
    for item in synthetic:
        fields = item.ifeval
        # Complete, valid arguments: what a prompts file with these fields would have to hold.
        assert ifeval_row(fields["instruction_id_list"], fields["kwargs"], fields["prompt"], item.key) == fields
        json.dumps(fields)  # samples.jsonl stores them
    for item in synthetic[:64]:
        verdicts = score_response("Here is a short answer. It has two sentences.", item.ifeval)
        assert len(verdicts["strict"]) == len(item.ifeval["instruction_id_list"])


EASY = {"change_case:english_lowercase", "punctuation:no_comma", "detectable_format:title", "keywords:existence",
        "keywords:forbidden_words", "startend:end_checker", "detectable_content:postscript", "startend:quotation",
        "detectable_content:number_placeholders", "detectable_format:number_highlighted_sections"}


def _crafted_reply(item: PromptItem) -> str:
    """A reply that follows every instruction of `item` (all of them in EASY)."""
    arguments = dict(zip(item.ifeval["instruction_id_list"], item.ifeval["kwargs"]))
    body = "we walked along the river in the morning and talked about the week ahead. the air was cool and quiet."
    assert not set(body.replace(".", "").split()) & set(WORDS)  # never a forbidden word
    parts = []
    if "detectable_format:title" in arguments:
        parts.append("<<a walk by the river>>")
    parts.append(body + " " + " ".join(arguments.get("keywords:existence", {}).get("keywords", [])))
    placeholders = arguments.get("detectable_content:number_placeholders", {}).get("num_placeholders", 0)
    highlights = arguments.get("detectable_format:number_highlighted_sections", {}).get("num_highlights", 0)
    parts.append(" ".join(["[place]"] * placeholders + ["*the bridge*"] * highlights))
    if "detectable_content:postscript" in arguments:
        parts.append(arguments["detectable_content:postscript"]["postscript_marker"] + " see you soon")
    if "startend:end_checker" in arguments:
        parts.append(arguments["startend:end_checker"]["end_phrase"])
    reply = "\n".join(part for part in parts if part)
    if "change_case:english_lowercase" in arguments:
        reply = reply.lower()
    if "startend:quotation" in arguments:
        reply = f'"{reply}"'
    return reply


def test_crafted_passing_replies_score_one():
    items = [item for item in synthetic_prompts(600, seed=11) if set(item.ifeval["instruction_id_list"]) <= EASY]
    covered = {i for item in items for i in item.ifeval["instruction_id_list"]}
    assert {"change_case:english_lowercase", "punctuation:no_comma"} <= covered and len(items) >= 30
    scorer = IFEvalReward().build()
    assert scorer.score(items, [_crafted_reply(item) for item in items]) == [1.0] * len(items)
    # And a reply that ignores them all follows none of the comma/lowercase ones.
    simple = [item for item in items if item.ifeval["instruction_id_list"] in (["punctuation:no_comma"],
                                                                              ["change_case:english_lowercase"])]
    assert simple and scorer.score(simple, ["Well, Here We Go, Then."] * len(simple)) == [0.0] * len(simple)


# -- never the evaluation set's prompts -----------------------------------------------------------


def _normalized(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text.lower()).split())


def _eval_task_sentences() -> set[str]:
    sentences = set()
    for line in BUNDLED_IFEVAL.read_text(encoding="utf-8").splitlines():
        prompt = json.loads(line)["prompt"]
        if prompt.startswith("First repeat the request"):
            prompt = prompt.split("\n", 1)[1]
        sentences.add(_normalized(re.split(r"(?<=[.?!])\s", prompt, maxsplit=1)[0]))
    return sentences


def test_no_generated_prompt_is_or_contains_an_evaluation_prompt(synthetic):
    eval_prompts = {_normalized(json.loads(line)["prompt"])
                    for line in BUNDLED_IFEVAL.read_text(encoding="utf-8").splitlines()}
    eval_tasks = _eval_task_sentences()
    assert len(eval_tasks) > 40
    assert not {_normalized(task) for task in TASKS + QUESTIONS} & eval_tasks
    for item in list(synthetic) + synthetic_prompts(256, seed=1):
        text = _normalized(item.ifeval["prompt"])
        assert text not in eval_prompts
        assert not any(task in text for task in eval_tasks), item.ifeval["prompt"]


# -- prompts from a JSONL file --------------------------------------------------------------------


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def test_file_prompts_in_every_form(tmp_path):
    path = _write(tmp_path / "mine.jsonl", [
        json.dumps("Write a haiku about rust."),
        json.dumps([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]),
        "",
        json.dumps({"prompt": "Describe your street.", "key": "street"}),
        json.dumps({"messages": [{"role": "user", "content": "Count to three."}]}),
        json.dumps({"key": 7, "prompt": "Describe a quiet morning. Do not use any commas.",
                    "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}),
        json.dumps("Write a haiku about rust."),
        json.dumps(""),
    ])
    prompts = FilePrompts(path=path)()
    assert [item.key for item in prompts] == ["mine-1", "mine-2", "street", "mine-5", "7"]
    assert prompts[0].messages == ({"role": "user", "content": "Write a haiku about rust."},)
    assert prompts[1].messages[0] == {"role": "system", "content": "Be brief."} and prompts[1].ifeval is None
    assert prompts[4].ifeval == {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}],
                                 "prompt": "Describe a quiet morning. Do not use any commas."}
    assert prompts.rows_read == 7 and dict(prompts.skipped.counts) == {"duplicate": 1, "empty": 1}
    assert "same prompt as" in prompts.skipped.examples["duplicate"] and f"{path}:7" in prompts.describe()
    assert len(FilePrompts(path=path, max_prompts=2)()) == 2


def test_the_bundled_ifeval_file_reads_as_scorable_prompts():
    prompts = FilePrompts(path=str(BUNDLED_IFEVAL))()
    assert len(prompts) == 128 and all(item.ifeval for item in prompts) and prompts[0].key == "9000"


@pytest.mark.parametrize(("lines", "message"), [
    ([], r"is empty: it holds no prompts"),
    (["", "   "], r"is empty: it holds no prompts"),
    ([json.dumps("fine"), "{not json"], r"bad\.jsonl:2: invalid JSON"),
    (["3"], r"bad\.jsonl:1: expected a string, a list of messages or an object"),
    ([json.dumps({"text": "hi"})], r"bad\.jsonl:1: an object needs exactly one of 'prompt'"),
    ([json.dumps({"prompt": 5})], r"bad\.jsonl:1: field 'prompt' must be a string or a list of messages"),
    ([json.dumps([{"role": "user"}])], r"bad\.jsonl:1: field 'prompt'\[0\] must be an object with 'role'"),
    ([json.dumps([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])],
     r"bad\.jsonl:1: the last message must be a user turn"),
    ([json.dumps([{"role": "robot", "content": "a"}])], r"bad\.jsonl:1: message 0 has unknown role 'robot'"),
    ([json.dumps({"prompt": "a", "instruction_id_list": ["punctuation:no_comma"]})],
     r"bad\.jsonl:1: field 'instruction_id_list' needs 'kwargs'"),
    ([json.dumps({"prompt": "a", "instruction_id_list": ["no:such"], "kwargs": [{}]})],
     r"bad\.jsonl:1: unknown instruction id\(s\) \['no:such'\]"),
    ([json.dumps({"prompt": "a", "instruction_id_list": ["keywords:existence"], "kwargs": [{}]})],
     r"bad\.jsonl:1: kwargs\[0\] \(keywords:existence\): missing argument\(s\) \['keywords'\]"),
    ([json.dumps({"prompt": "a", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{"x": 1}]})],
     r"bad\.jsonl:1: kwargs\[0\] \(punctuation:no_comma\): unexpected argument\(s\) \['x'\]"),
    ([json.dumps({"prompt": "a", "instruction_id_list": ["keywords:letter_frequency"],
                  "kwargs": [{"letter": "ab", "let_frequency": 2, "let_relation": "at least"}]})],
     r"bad\.jsonl:1: kwargs\[0\] \(keywords:letter_frequency\): invalid value for \['letter'\]"),
    ([json.dumps({"prompt": "a", "key": "k"}), json.dumps({"prompt": "b", "key": "k"})],
     r"bad\.jsonl:2: key 'k' is already used by .*bad\.jsonl:1"),
])
def test_bad_prompt_files_fail_naming_the_file_and_line(tmp_path, lines, message):
    path = _write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(UserError, match=message):
        FilePrompts(path=path)()


def test_missing_file_and_only_empty_prompts(tmp_path):
    with pytest.raises(DataFileNotFoundError, match="does not exist"):
        FilePrompts(path=str(tmp_path / "none.jsonl"))()
    with pytest.raises(NoPromptsError, match=r"no usable prompts \(1 rows read; skipped: empty=1"):
        FilePrompts(path=_write(tmp_path / "blank.jsonl", [json.dumps(" ")]))()
    assert issubclass(PromptFileError, PromptError) and issubclass(PromptError, ValueError)


# -- prompts of a preference data set -------------------------------------------------------------


def test_prompts_of_the_demo_preference_set():
    source = parse(["prompts=prompts:demo"]).prompts
    assert isinstance(source, PreferencePrompts)
    prompts = source()
    assert source.name() == "prompts:demo" and len(prompts) > 50
    assert all(item.key.startswith("demo-") and item.messages[-1]["role"] == "user" for item in prompts)
    assert len({json.dumps(item.messages) for item in prompts}) == len(prompts)
    # Keys depend on the prompt only, so another shuffle keeps them.
    reshuffled = parse(["prompts=prompts:demo", "prompts.dataset.seed=5"]).prompts()
    assert {item.key for item in prompts} & {item.key for item in reshuffled}
    limited = parse(["prompts=preference", "prompts.dataset=demo", "prompts.max_prompts=10"]).prompts()
    assert len(limited) == 10 and limited.unused > 0


# -- choosing a source on the command line --------------------------------------------------------


def test_cli_forms_of_prompts(tmp_path):
    assert parse([]).prompts == IFEvalSyntheticPrompts()
    assert parse(["prompts.num_prompts=8", "prompts.seed=2"]).prompts == IFEvalSyntheticPrompts(num_prompts=8, seed=2)
    assert parse(["prompts=file", "prompts.path=p.jsonl"]).prompts == FilePrompts(path="p.jsonl")
    assert parse(["prompts=p.jsonl", "prompts.max_prompts=3"]).prompts == FilePrompts(path="p.jsonl", max_prompts=3)
    config = parse(["prompts=prompts:demo", "prompts.dataset.test_size=5", "prompts.split=test"])
    assert config.prompts.dataset.test_size == 5 and config.prompts.split == "test"
    assert set(PROMPT_SOURCES.names()) == {"file", "ifeval_synthetic", "preference"}


def test_cli_unknown_and_invalid_prompts():
    with pytest.raises(chz.blueprint.InvalidBlueprintArg,
                       match="Registered prompt sources: file, ifeval_synthetic, preference"):
        parse(["prompts=nope"])
    with pytest.raises(chz.blueprint.InvalidBlueprintArg, match="Unknown dataset 'nope'"):
        parse(["prompts=prompts:nope"])
    with pytest.raises(chz.blueprint.InvalidBlueprintArg, match="prompts=no_such_module:X: could not import"):
        parse(["prompts=no_such_module:X"])


def test_cli_reports_a_bad_prompts_option_on_one_error_line(capsys):
    def main(config: PromptConfig) -> int:
        return 0

    assert run_cli(main, ["prompts=nope"]) == 2
    assert capsys.readouterr().err.startswith("error: prompts=nope: Unknown prompts 'nope'.")
    assert run_cli(main, ["prompts.min_instructions=4"]) == 2
    assert "prompts.min_instructions and prompts.max_instructions must satisfy" in capsys.readouterr().err


def test_a_users_own_source_by_module_path(tmp_path, monkeypatch):
    (tmp_path / "user_prompts.py").write_text(textwrap.dedent("""
        import chz
        from cookbook.on_policy.prompts import PromptItem, PromptSource

        @chz.chz
        class Numbers(PromptSource):
            count: int = 3

            def load_rows(self):
                return ((f"row {i}", i) for i in range(self.count))

            def row_to_item(self, row, where):
                return PromptItem(f"n{row}", ({"role": "user", "content": f"What is {row} + 1?"},))
    """), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_prompts", raising=False)
    prompts = parse(["prompts=user_prompts:Numbers", "prompts.count=4"]).prompts()
    assert [item.key for item in prompts] == ["n0", "n1", "n2", "n3"] and prompts.source == "Numbers"
