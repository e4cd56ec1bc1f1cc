"""Training data: builders that turn raw rows into preference pairs or conversations, and their tokens.

    from cookbook.datasets.preference import DemoBuilder
    from cookbook.datasets.tokenize import load_preference_data
    data = load_preference_data(DemoBuilder(), get_renderer("chatml", tokenizer), max_length=256)

- `files.py`: the one reader of local JSONL, JSON and Parquet files, errors naming file and line;
- `builder.py`: what every builder shares (splits, skips, deduplication, shuffling);
- `preference.py`, `supervised.py`: each kind's item, builder base, file builder and `dataset=` family
  (`PREFERENCE_DATASETS`, `SUPERVISED_DATASETS`); `unpaired.py` the same for KTO's unpaired
  feedback (`UNPAIRED_DATASETS`); `hub.py`: the hub sets of both kinds;
- `tokenize.py`: items to tokens through the renderer, and `load_*_data`; `summary.py`: what was kept.

Builders are chz classes chosen on the command line by name (`dataset=hhh`, `dataset=prefs.jsonl`,
`dataset=chosen:demo`) or by import path (`dataset=my.module:MyBuilder`). This package lives inside
`cookbook` so it never shadows the Hugging Face `datasets` package. Importing it registers every
built-in builder (the hub sets are declared in `hub.py`).
"""

from cookbook.datasets import hub  # noqa: F401  (declares the hub sets of both families)
from cookbook.datasets.builder import Skip, assistant, to_messages, user
from cookbook.datasets.preference import PREFERENCE_DATASETS, Comparison, DPODatasetBuilder
from cookbook.datasets.supervised import SUPERVISED_DATASETS, Conversation, SupervisedDatasetBuilder

__all__ = [
    "PREFERENCE_DATASETS",
    "SUPERVISED_DATASETS",
    "Comparison",
    "Conversation",
    "DPODatasetBuilder",
    "Skip",
    "SupervisedDatasetBuilder",
    "assistant",
    "to_messages",
    "user",
]
