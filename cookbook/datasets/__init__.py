"""Preference data: builders that turn raw rows into comparisons, and their tokenization.

    from cookbook.datasets import DemoBuilder, load_preference_data
    data = load_preference_data(DemoBuilder(), get_renderer("chatml", tokenizer), max_length=256)

Builders are chz classes chosen on the command line by name (`dataset=hhh`, `dataset=file
dataset.path=prefs.jsonl`) or by import path (`dataset=my.module:MyBuilder`); see README.md here.
This package lives inside `cookbook` so it never shadows the Hugging Face `datasets` package.
"""

from cookbook.datasets.builder import ComparisonSplits, DPODatasetBuilder, NoUsablePairsError, SkipCounts
from cookbook.datasets.comparison import (
    SKIP_REASONS,
    Comparison,
    Skip,
    SkipReason,
    assistant,
    comparison_from_conversations,
    to_messages,
    user,
)
from cookbook.datasets.demo import DemoBuilder
from cookbook.datasets.file import FileBuilder, MalformedRowError
from cookbook.datasets.files import DataFileError
from cookbook.datasets.helpsteer3 import HelpSteer3Builder
from cookbook.datasets.hhh import HHHBuilder, parse_transcript
from cookbook.datasets.hub import DatasetUnavailableError, HubDatasetBuilder
from cookbook.datasets.load import PreferenceData, load_preference_data
from cookbook.datasets.registry import (
    DatasetMetaFactory,
    dataset_meta_factory,
    register_builder,
    registered_builders,
    resolve_builder,
)
from cookbook.datasets.summary import DatasetSummary, LengthStats, print_summary
from cookbook.datasets.tokenize import (
    MIN_COMPLETION_TOKENS,
    TokenizedPair,
    TokenizedSequence,
    tokenize_comparison,
)
from cookbook.datasets.ultrafeedback import UltraFeedbackBuilder

__all__ = [
    "MIN_COMPLETION_TOKENS",
    "SKIP_REASONS",
    "Comparison",
    "ComparisonSplits",
    "DPODatasetBuilder",
    "DataFileError",
    "DatasetMetaFactory",
    "DatasetSummary",
    "DatasetUnavailableError",
    "DemoBuilder",
    "FileBuilder",
    "HHHBuilder",
    "HelpSteer3Builder",
    "HubDatasetBuilder",
    "LengthStats",
    "MalformedRowError",
    "NoUsablePairsError",
    "PreferenceData",
    "Skip",
    "SkipCounts",
    "SkipReason",
    "TokenizedPair",
    "TokenizedSequence",
    "UltraFeedbackBuilder",
    "assistant",
    "comparison_from_conversations",
    "dataset_meta_factory",
    "load_preference_data",
    "parse_transcript",
    "print_summary",
    "register_builder",
    "registered_builders",
    "resolve_builder",
    "to_messages",
    "tokenize_comparison",
    "user",
]
