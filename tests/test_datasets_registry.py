"""Choosing a builder from the command line through chz, and the README's custom-builder example."""

import re
import sys
import textwrap
from pathlib import Path

import chz
import pytest

from cookbook.datasets.builder import SKIP_REASONS
from cookbook.datasets.hub import HelpSteer3Builder, HHHBuilder
from cookbook.datasets.preference import PREFERENCE_DATASETS, DemoBuilder, DPODatasetBuilder, FileBuilder

README = Path(__file__).resolve().parents[1] / "docs" / "data.md"


@chz.chz
class TrainConfig:
    """A stand-in for a trainer config with the dataset field declared as the recipes declare it."""

    dataset: DPODatasetBuilder = chz.field(
        default_factory=DemoBuilder, meta_factory=PREFERENCE_DATASETS.meta_factory(), doc="preference data set"
    )
    max_length: int = 128


def parse(argv):
    return chz.entrypoint(TrainConfig, argv=argv)


def test_default_and_sub_fields_configure_the_demo_builder():
    assert parse([]).dataset == DemoBuilder()
    assert parse(["dataset.test_size=5", "dataset.seed=3"]).dataset == DemoBuilder(test_size=5, seed=3)


def test_registered_names_pick_builders_and_take_their_fields():
    config = parse(["dataset=hhh", "dataset.test_size=100", "max_length=64"])
    assert config.dataset == HHHBuilder(test_size=100) and config.max_length == 64
    config = parse(["dataset=helpsteer3", "dataset.domain=general,stem", "dataset.max_pairs=10"])
    assert config.dataset == HelpSteer3Builder(domain="general,stem", max_pairs=10)
    config = parse(["dataset=file", "dataset.path=prefs.jsonl", "dataset.skip_malformed=true"])
    assert config.dataset == FileBuilder(path="prefs.jsonl", skip_malformed=True)
    assert set(PREFERENCE_DATASETS.names()) == {"demo", "file", "helpsteer3", "hhh", "ultrafeedback"}


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(
        chz.blueprint.InvalidBlueprintArg,
        match="Registered datasets: demo, file, helpsteer3, hhh, ultrafeedback",
    ):
        chz.Blueprint(TrainConfig).make_from_argv(["dataset=hh"])
    with pytest.raises(ValueError, match="Unknown dataset 'hh'"):
        PREFERENCE_DATASETS.resolve("hh")


def test_module_class_path_imports_a_user_subclass(tmp_path, monkeypatch):
    (tmp_path / "user_prefs.py").write_text(
        textwrap.dedent(
            """
            import chz
            from cookbook.datasets import Comparison, DPODatasetBuilder, assistant, user

            @chz.chz
            class NumbersBuilder(DPODatasetBuilder):
                count: int = 6

                def load_rows(self, split):
                    return range(self.count)

                def row_to_comparison(self, row):
                    return Comparison([user(f"{row}+1?")], [assistant(str(row + 1))], [assistant("?")])

            class NotABuilder:
                pass
            """
        ),
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_prefs", raising=False)
    config = parse(["dataset=user_prefs:NumbersBuilder", "dataset.count=9", "dataset.test_size=2"])
    assert type(config.dataset).__name__ == "NumbersBuilder" and config.dataset.count == 9
    splits = config.dataset()
    assert len(splits.train) == 7 and len(splits.test) == 2
    with pytest.raises(chz.blueprint.InvalidBlueprintArg, match="NotABuilder is not a subclass of"):
        chz.Blueprint(TrainConfig).make_from_argv(["dataset=user_prefs:NotABuilder"])
    with pytest.raises(chz.blueprint.InvalidBlueprintArg, match="could not import module 'no_such_module'"):
        chz.Blueprint(TrainConfig).make_from_argv(["dataset=no_such_module:Builder"])


def readme_python_block() -> str:
    """The one ```python block of the README section (the custom-builder example)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
    assert len(blocks) == 1, f"expected exactly one python example in {README}, found {len(blocks)}"
    return blocks[0]


def test_readme_custom_builder_example_runs_as_documented(tmp_path, monkeypatch):
    text = README.read_text(encoding="utf-8")
    assert "dataset=my_prefs:CapitalsBuilder dataset.test_size=1" in text
    (tmp_path / "my_prefs.py").write_text(readme_python_block(), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_prefs", raising=False)
    config = parse(["dataset=my_prefs:CapitalsBuilder", "dataset.test_size=1"])
    splits = config.dataset()
    assert len(splits.train) == 2 and len(splits.test) == 1
    assert dict(splits.skipped.counts) == {"empty": 1}
    answers = {
        pair.prompt[0]["content"]: (pair.chosen[0]["content"], pair.rejected[0]["content"])
        for pair in splits.train + splits.test
    }
    assert answers == {
        "What is the capital of France?": ("Paris", "Lyon"),
        "What is the capital of Japan?": ("Tokyo", "Osaka"),
        "What is the capital of Italy?": ("Rome", "Milan"),
    }


def test_readme_names_every_registered_dataset_and_skip_reason():
    text = README.read_text(encoding="utf-8")
    for name in PREFERENCE_DATASETS.names():
        assert f"`{name}`" in text
    for reason in SKIP_REASONS:
        assert f"`{reason}`" in text
