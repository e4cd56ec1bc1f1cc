"""Supervised fine-tuning (SFT): conversations -> tokens with loss weights -> packed batches -> NLL.

    from cookbook.supervised import load_supervised_data, resolve_supervised_builder
    data = load_supervised_data(resolve_supervised_builder("chosen:demo")(), renderer, max_length=512)

Builders are chz classes chosen on the command line (`dataset=chosen:demo`, `dataset=no_robots`,
`dataset=sft.jsonl`, `dataset=my.module:MyBuilder`; see registry.py). The training step
(`sft_forward`) and held-out eval (`evaluate_supervised`) reach the shared training loop through
`SupervisedTask`.
"""

from cookbook.supervised.builder import ExampleSplits, NoUsableExamplesError, SupervisedDatasetBuilder
from cookbook.supervised.chosen import ChosenBuilder, chosen_builder_for
from cookbook.supervised.collate import (
    SUPERVISED_LAYOUTS,
    SupervisedBatch,
    SupervisedLayout,
    collate_packed,
    collate_padded,
    collate_sequences,
    make_supervised_collate,
)
from cookbook.supervised.evaluation import evaluate_supervised
from cookbook.supervised.example import (
    Conversation,
    check_conversation,
    conversation_from_messages,
    conversation_from_prompt_completion,
)
from cookbook.supervised.file import SupervisedFileBuilder, row_to_conversation
from cookbook.supervised.load import SupervisedData, load_supervised_data
from cookbook.supervised.no_robots import NoRobotsBuilder
from cookbook.supervised.registry import (
    DEFAULT_SUPERVISED_DATASET,
    SupervisedDatasetMetaFactory,
    register_supervised_builder,
    registered_supervised_builders,
    resolve_supervised_builder,
    supervised_dataset_meta_factory,
)
from cookbook.supervised.step import SupervisedStepResult, sft_forward, step_metrics, trained_token_count
from cookbook.supervised.summary import (
    SequenceLengthStats,
    SupervisedDataSummary,
    print_supervised_example,
    print_supervised_summary,
)
from cookbook.supervised.task import SupervisedTask
from cookbook.supervised.tokenize import TRAIN_ON_CHOICES, SupervisedSequence, tokenize_conversation

__all__ = [
    "DEFAULT_SUPERVISED_DATASET",
    "SUPERVISED_LAYOUTS",
    "TRAIN_ON_CHOICES",
    "ChosenBuilder",
    "Conversation",
    "ExampleSplits",
    "NoRobotsBuilder",
    "NoUsableExamplesError",
    "SequenceLengthStats",
    "SupervisedBatch",
    "SupervisedData",
    "SupervisedDataSummary",
    "SupervisedDatasetBuilder",
    "SupervisedDatasetMetaFactory",
    "SupervisedFileBuilder",
    "SupervisedLayout",
    "SupervisedSequence",
    "SupervisedStepResult",
    "SupervisedTask",
    "check_conversation",
    "chosen_builder_for",
    "collate_packed",
    "collate_padded",
    "collate_sequences",
    "conversation_from_messages",
    "conversation_from_prompt_completion",
    "evaluate_supervised",
    "load_supervised_data",
    "make_supervised_collate",
    "print_supervised_example",
    "print_supervised_summary",
    "register_supervised_builder",
    "registered_supervised_builders",
    "resolve_supervised_builder",
    "row_to_conversation",
    "sft_forward",
    "step_metrics",
    "supervised_dataset_meta_factory",
    "tokenize_conversation",
    "trained_token_count",
]
