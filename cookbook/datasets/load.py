"""The one call a trainer makes for its data: build, tokenize, summarize, cached.

    data = load_preference_data(config.dataset, renderer, max_length=config.max_length, console=console)
    data = load_supervised_data(config.dataset, renderer, config.max_length, config.train_on, console=console)
    data = load_unpaired_data(config.dataset, renderer, config.max_length, console=console)   # KTO
    train, test = data.train, data.test        # sequences of TokenizedPair / SupervisedSequence
    prompt_tokens, note = load_prompt_tokens([item.messages for item in prompts], renderer)  # on-policy
    log_metrics(data.summary.as_metrics(), step=0)

A first run streams the builder's rows: each usable item is kept only as its index and tokenized in
chunks of `CHUNK` (one batched tokenizer call each, `tokenize.py`) into the arrays of `cache.py`, so
neither the raw rows nor Python token lists of the whole set are ever in memory at once. The split,
the skips and the summary are then exactly what building the items and tokenizing them one by one
gives: items that do not fit `max_length` (or become identical) are dropped and counted at their
place in their split. Later runs with the same data, options, tokenizer and renderer (and every
resume) map the written arrays and print the stored summary instead: seconds, however large the
set. A progress line shows rows, rate and ETA while tokenizing; the summary says whether the cache
was used.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from tqdm.auto import tqdm

from cookbook.datasets import cache
from cookbook.datasets.builder import Skip, SkipCounts
from cookbook.datasets.preference import DPODatasetBuilder, NoUsablePairsError
from cookbook.datasets.summary import (
    DatasetSummary,
    LengthStats,
    SequenceLengthStats,
    SupervisedDataSummary,
    UnpairedDataSummary,
    UnpairedLengthStats,
    print_summary,
    print_supervised_summary,
    print_unpaired_summary,
)
from cookbook.datasets.supervised import NoUsableExamplesError, SupervisedDatasetBuilder
from cookbook.datasets.tokenize import (
    SupervisedSequence,
    TokenizedPair,
    TokenizedUnpaired,
    tokenize_comparisons,
    tokenize_conversations,
    tokenize_unpaired,
)
from cookbook.datasets.unpaired import NoUsableFeedbackError, UnpairedDatasetBuilder
from cookbook.renderers.base import TrainOn

CHUNK = 2048  # items per batched tokenizer call


@dataclass(frozen=True)
class PreferenceData:
    train: Sequence[TokenizedPair]
    test: Sequence[TokenizedPair]
    summary: DatasetSummary
    fingerprint: str = ""  # names the tokenized pairs of both splits (the reference cache's data key)
    cache_note: str = ""  # where the tokens came from, as the summary prints it


@dataclass(frozen=True)
class SupervisedData:
    train: Sequence[SupervisedSequence]
    test: Sequence[SupervisedSequence]
    summary: SupervisedDataSummary
    fingerprint: str = ""
    cache_note: str = ""


def load_preference_data(builder: DPODatasetBuilder, renderer, max_length: int | None, *, verbose: bool = True,
                         console: Console | None = None) -> PreferenceData:
    """Build, tokenize and summarize a preference data set (see the module docstring)."""
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be a positive number of tokens or None, got {max_length}")
    key = cache.data_key("pairs", builder, renderer, max_length)
    arrays, splits, summary, note = _open_or_build(
        "pairs", key, _preference_summary, lambda: _build_pairs(builder, renderer, max_length, key))
    data = PreferenceData(cache.PairSet(arrays, splits["train"]), cache.PairSet(arrays, splits["test"]), summary,
                          fingerprint=_fingerprint(key, arrays, splits), cache_note=note)
    if verbose:
        print_summary(summary, console, note=note)
    return data


def load_supervised_data(builder: SupervisedDatasetBuilder, renderer, max_length: int | None,
                         train_on: TrainOn = "last_assistant", *, verbose: bool = True,
                         console: Console | None = None) -> SupervisedData:
    """Build, tokenize and summarize a supervised data set (see the module docstring)."""
    if max_length is not None and max_length < 2:
        raise ValueError(f"max_length must be at least 2 tokens or None, got {max_length}")
    key = cache.data_key("sequences", builder, renderer, max_length, train_on=train_on)
    arrays, splits, summary, note = _open_or_build(
        "sequences", key, _supervised_summary, lambda: _build_sequences(builder, renderer, max_length, train_on, key))
    data = SupervisedData(cache.SequenceSet(arrays, splits["train"]), cache.SequenceSet(arrays, splits["test"]),
                          summary, fingerprint=_fingerprint(key, arrays, splits), cache_note=note)
    if verbose:
        print_supervised_summary(summary, console, note=note)
    return data


@dataclass(frozen=True)
class UnpairedData:
    train: Sequence[TokenizedUnpaired]  # a cache.UnpairedSet
    test: Sequence[TokenizedUnpaired]
    summary: UnpairedDataSummary
    fingerprint: str = ""
    cache_note: str = ""


def load_unpaired_data(builder: UnpairedDatasetBuilder, renderer, max_length: int | None, *, verbose: bool = True,
                       console: Console | None = None) -> UnpairedData:
    """Build, tokenize and summarize an unpaired feedback data set (see the module docstring)."""
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be a positive number of tokens or None, got {max_length}")
    key = cache.data_key("unpaired", builder, renderer, max_length)
    arrays, splits, summary, note = _open_or_build(
        "unpaired", key, _unpaired_summary, lambda: _build_unpaired(builder, renderer, max_length, key))
    data = UnpairedData(cache.UnpairedSet(arrays, splits["train"]), cache.UnpairedSet(arrays, splits["test"]),
                        summary, fingerprint=_fingerprint(key, arrays, splits), cache_note=note)
    if verbose:
        print_unpaired_summary(summary, console, note=note)
    return data


# -- a first run: stream, tokenize in chunks, write ------------------------------------------------------


class _ChunkedTokenizer:
    """`keep(item)` gives each usable item its index; every CHUNK items are tokenized together and
    appended to the store, in a worker thread, so that the tokenizer (which releases the GIL) runs
    while the next chunk's rows are read and converted. Skipped results are remembered (index ->
    Skip) for the accounting."""

    def __init__(self, tokenize: Callable[[list], list], append: Callable[[list], None], progress) -> None:
        self.tokenize, self.append, self.progress = tokenize, append, progress
        self.pending: list = []
        self.count = 0
        self.skips: dict[int, Skip] = {}
        self.worker = ThreadPoolExecutor(max_workers=1)
        self.running: Future | None = None

    def keep(self, item) -> int:
        self.pending.append(item)
        self.count += 1
        if len(self.pending) >= CHUNK:
            self.flush()
        return self.count - 1

    def flush(self) -> None:
        """Hand the pending items to the worker (after the chunk before them is written)."""
        self.wait()
        chunk, first = self.pending, self.count - len(self.pending)
        self.pending = []
        self.running = self.worker.submit(self._tokenize_chunk, chunk, first)

    def wait(self) -> None:
        if self.running is not None:
            self.running.result()  # re-raises what the worker raised
            self.running = None

    def close(self) -> None:
        if self.pending:
            self.flush()
        self.wait()
        self.worker.shutdown()

    def _tokenize_chunk(self, chunk: list, first: int) -> None:
        results = self.tokenize(chunk)
        for offset, result in enumerate(results):
            if isinstance(result, Skip):
                self.skips[first + offset] = result
        self.append(results)
        self.progress.update(len(chunk))


def _build_pairs(builder, renderer, max_length, key):
    writer = cache.StoreWriter("pairs", cache.PAIR_ARRAYS, key)
    try:
        def append(results: list) -> None:
            columns: dict[str, list] = {name: [] for name in cache.PAIR_ARRAYS}
            lengths = {name: writer.lengths[name] for name in ("prompt", "chosen", "rejected")}
            for result in results:
                ok = not isinstance(result, Skip)
                prompt_length = result.prompt_length if ok else 0
                if ok:
                    columns["prompt"] += result.chosen.tokens[:prompt_length]
                lengths["prompt"] += prompt_length
                columns["prompt_offsets"].append(lengths["prompt"])
                for side in ("chosen", "rejected"):
                    if ok:
                        sequence = getattr(result, side)
                        columns[side] += sequence.tokens[prompt_length:]
                        columns[f"{side}_weights"] += sequence.weights[prompt_length:]
                        lengths[side] += len(sequence) - prompt_length
                    columns[f"{side}_offsets"].append(lengths[side])
                columns["truncated"].append(ok and result.truncated)
                columns["margin"].append(result.margin if ok and result.margin is not None else math.nan)
            for name, values in columns.items():
                writer.write(name, values)

        splits, chunked = _tokenize_stream(
            builder, lambda items: tokenize_comparisons(items, renderer, max_length), append)
        train, test, skipped = _account(splits, chunked.skips, "pair")
        if not len(train):
            raise NoUsablePairsError(f"{builder.name()}: no training pair fits max_length={max_length}. "
                                     f"Skipped rows: {skipped.describe()}")
        arrays = _closed_arrays(writer)
        summary = DatasetSummary(
            name=builder.name(), rows_read=dict(splits.rows_read), train_pairs=len(train), test_pairs=len(test),
            skipped=dict(skipped.counts), skip_examples=dict(skipped.examples), unused_pairs=splits.unused_pairs,
            truncated_pairs=int(arrays["truncated"][np.concatenate([train, test])].sum()), max_length=max_length,
            train_lengths=_pair_lengths(arrays, train), test_lengths=_pair_lengths(arrays, test))
        directory = writer.finish({"summary": asdict(summary)}, {"train": train, "test": test})
    except BaseException:
        writer.abandon()
        raise
    return _read_back(writer, directory, cache.PAIR_ARRAYS, summary, key)


def _build_sequences(builder, renderer, max_length, train_on, key):
    writer = cache.StoreWriter("sequences", cache.SEQUENCE_ARRAYS, key)
    try:
        def append(results: list) -> None:
            columns: dict[str, list] = {name: [] for name in cache.SEQUENCE_ARRAYS}
            length = writer.lengths["tokens"]
            for result in results:
                ok = not isinstance(result, Skip)
                if ok:
                    columns["tokens"] += result.tokens
                    columns["weights"] += result.weights
                    length += len(result)
                columns["offsets"].append(length)
                columns["truncated"].append(ok and result.truncated)
            for name, values in columns.items():
                writer.write(name, values)

        splits, chunked = _tokenize_stream(
            builder, lambda items: tokenize_conversations(items, renderer, max_length, train_on), append)
        train, test, skipped = _account(splits, chunked.skips, "example")
        if not len(train):
            raise NoUsableExamplesError(f"{builder.name()}: no training conversation fits max_length={max_length}. "
                                        f"Skipped rows: {skipped.describe()}")
        arrays = _closed_arrays(writer)
        summary = SupervisedDataSummary(
            name=builder.name(), rows_read=dict(splits.rows_read), train_examples=len(train),
            test_examples=len(test), skipped=dict(skipped.counts), skip_examples=dict(skipped.examples),
            unused_examples=splits.unused_examples,
            truncated_examples=int(arrays["truncated"][np.concatenate([train, test])].sum()), max_length=max_length,
            train_on=train_on, train_lengths=_sequence_lengths(arrays, train),
            test_lengths=_sequence_lengths(arrays, test))
        directory = writer.finish({"summary": asdict(summary)}, {"train": train, "test": test})
    except BaseException:
        writer.abandon()
        raise
    return _read_back(writer, directory, cache.SEQUENCE_ARRAYS, summary, key)


def _build_unpaired(builder, renderer, max_length, key):
    writer = cache.StoreWriter("unpaired", cache.UNPAIRED_ARRAYS, key)
    try:
        def append(results: list) -> None:
            columns: dict[str, list] = {name: [] for name in cache.UNPAIRED_ARRAYS}
            lengths = {name: writer.lengths[name] for name in ("prompt", "completion")}
            for result in results:
                ok = not isinstance(result, Skip)
                prompt_length = result.prompt_length if ok else 0
                if ok:
                    columns["prompt"] += result.sequence.tokens[:prompt_length]
                    columns["completion"] += result.sequence.tokens[prompt_length:]
                    columns["completion_weights"] += result.sequence.weights[prompt_length:]
                    lengths["completion"] += result.completion_length
                lengths["prompt"] += prompt_length
                columns["prompt_offsets"].append(lengths["prompt"])
                columns["completion_offsets"].append(lengths["completion"])
                columns["desirable"].append(ok and result.desirable)
                columns["truncated"].append(ok and result.truncated)
            for name, values in columns.items():
                writer.write(name, values)

        splits, chunked = _tokenize_stream(
            builder, lambda items: tokenize_unpaired(items, renderer, max_length), append)
        train, test, skipped = _account(splits, chunked.skips, "example")
        if not len(train):
            raise NoUsableFeedbackError(f"{builder.name()}: no training example fits max_length={max_length}. "
                                        f"Skipped rows: {skipped.describe()}")
        arrays = _closed_arrays(writer)
        arrays["desirable"] = np.fromfile(writer.directory / "desirable.bin", dtype=np.uint8)
        summary = UnpairedDataSummary(
            name=builder.name(), rows_read=dict(splits.rows_read), train_examples=len(train), test_examples=len(test),
            train_desirable=int(arrays["desirable"][train].sum()), test_desirable=int(arrays["desirable"][test].sum()),
            skipped=dict(skipped.counts), skip_examples=dict(skipped.examples), unused_examples=splits.unused_examples,
            truncated_examples=int(arrays["truncated"][np.concatenate([train, test])].sum()), max_length=max_length,
            train_lengths=_unpaired_lengths(arrays, train), test_lengths=_unpaired_lengths(arrays, test))
        directory = writer.finish({"summary": asdict(summary)}, {"train": train, "test": test})
    except BaseException:
        writer.abandon()
        raise
    return _read_back(writer, directory, cache.UNPAIRED_ARRAYS, summary, key)


def load_prompt_tokens(conversations: Sequence[Sequence[dict]], renderer) -> tuple[cache.TokenListSet, str]:
    """The generation-prompt tokens of each conversation, in order, memory-mapped, and a note saying
    whether the cache had them. Tokenized in chunks of batched calls and cached like the data sets,
    keyed by the conversations themselves (so any prompt source is cached), tokenizer and renderer."""
    digest = hashlib.sha256()
    for messages in conversations:
        digest.update(json.dumps(list(messages), sort_keys=True, default=str).encode() + b"\n")
    key = cache.prompts_key(digest.hexdigest(), renderer)
    opened = cache.open_store("prompts", key)
    if opened is not None:
        arrays, splits, _ = opened
        return cache.TokenListSet(arrays, splits["all"]), f"cached tokens, read from {cache.cache_root()}"
    writer = cache.StoreWriter("prompts", cache.PROMPT_ARRAYS, key)
    try:
        for start in range(0, len(conversations), CHUNK):
            chunk = conversations[start : start + CHUNK]
            examples = renderer.encode_runs([renderer.generation_prompt_runs(list(messages)) for messages in chunk])
            lengths = np.cumsum([len(example.tokens) for example in examples]) + writer.lengths["tokens"]
            writer.write("tokens", [token for example in examples for token in example.tokens])
            writer.write("offsets", lengths)
        directory = writer.finish({}, {"all": np.arange(len(conversations))})
    except BaseException:
        writer.abandon()
        raise
    arrays, splits, _, note = _read_back(writer, directory, cache.PROMPT_ARRAYS, None, key)
    return cache.TokenListSet(arrays, splits["all"]), note


def _read_back(writer: cache.StoreWriter, directory: Path, dtypes, summary, key):
    arrays, splits, _ = cache.read_store(directory, dtypes)
    if writer.final is None:
        # Not cached: the maps keep the data readable after the files are gone.
        shutil.rmtree(directory, ignore_errors=True)
        return arrays, splits, summary, _uncached_note(key)
    return arrays, splits, summary, f"tokenized now, cached in {cache.cache_root()}"


def _tokenize_stream(builder, tokenize, append):
    total = sum(filter(None, (builder.row_count(split) for split in builder.split_names() if split))) or None
    with tqdm(total=total, unit=" rows", desc=f"tokenizing {builder.name()}", leave=False, mininterval=1,
              disable=total is not None and total < 10 * CHUNK) as progress:
        chunked = _ChunkedTokenizer(tokenize, append, progress)
        try:
            splits = builder(keep=chunked.keep)
        finally:
            chunked.close()
    return splits, chunked


def _account(splits, skips: dict[int, Skip], label: str) -> tuple[np.ndarray, np.ndarray, SkipCounts]:
    """Each split's items that tokenized, in split order; the others counted at `<split> <label> <i>`,
    their place in the split, after the builder's own skips."""
    skipped = SkipCounts()
    skipped.merge(splits.skipped)
    kept = {}
    for split in ("train", "test"):
        indices = getattr(splits, split)
        kept[split] = np.asarray(skipped.keep((skips.get(i, i) for i in indices), f"{split} {label}"),
                                 dtype=np.int64)
    return kept["train"], kept["test"], skipped


def _closed_arrays(writer: cache.StoreWriter) -> dict[str, np.ndarray]:
    """The arrays written so far, read back from the staging files (offsets and flags only are needed)."""
    for handle in writer.files.values():
        handle.flush()
    names = [name for name in writer.dtypes if name.endswith("offsets") or name == "truncated" or name == "weights"]
    return {name: np.fromfile(writer.directory / f"{name}.bin", dtype=writer.dtypes[name]) for name in names}


def _pair_lengths(arrays: dict[str, np.ndarray], index: np.ndarray) -> LengthStats:
    if not len(index):
        return LengthStats()
    lengths = [np.diff(arrays[f"{side}_offsets"])[index] for side in ("prompt", "chosen", "rejected")]
    stats = [(int(values.sum()) / len(values), int(values.max())) for values in lengths]
    return LengthStats(*(value for pair in stats for value in pair))


def _unpaired_lengths(arrays: dict[str, np.ndarray], index: np.ndarray) -> UnpairedLengthStats:
    if not len(index):
        return UnpairedLengthStats()
    prompt, completion = (np.diff(arrays[f"{side}_offsets"])[index] for side in ("prompt", "completion"))
    return UnpairedLengthStats(int(prompt.sum()) / len(prompt), int(prompt.max()),
                               int(completion.sum()) / len(completion), int(completion.max()))


def _sequence_lengths(arrays: dict[str, np.ndarray], index: np.ndarray) -> SequenceLengthStats:
    if not len(index):
        return SequenceLengthStats()
    offsets = arrays["offsets"]
    lengths = np.diff(offsets)[index]
    # A sequence's trained tokens: its weights after the first token (nothing predicts that one).
    cumulative = np.concatenate([[0], np.cumsum(arrays["weights"], dtype=np.int64)])
    trained = (cumulative[offsets[index + 1]] - cumulative[offsets[index] + 1]).astype(float)
    return SequenceLengthStats(int(lengths.sum()) / len(lengths), int(lengths.max()),
                               float(trained.sum()) / len(trained), float(trained.max()), float(trained.sum()))


def _fingerprint(key: str | None, arrays: dict[str, np.ndarray], splits: dict[str, np.ndarray]) -> str:
    """The data's name for caches built on it (the reference log-probs): its key and split indices,
    or, uncached, a digest of the arrays themselves."""
    digest = hashlib.sha256((key or "").encode())
    for name in sorted(arrays if key is None else ()):
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    for split in ("train", "test"):
        digest.update(np.ascontiguousarray(splits[split]).tobytes() + b"|")
    return digest.hexdigest()


def _uncached_note(key: str | None) -> str:
    return ("tokenized now, not cached: the cache is off (COOKBOOK_DATA_CACHE)" if key is not None else
            "tokenized now, not cached: this builder names no source_fingerprint() for its data")


def _open_or_build(kind: str, key: str, summary_from: Callable[[dict], Any], build: Callable[[], tuple]) -> tuple:
    """(arrays, splits, summary, note) from the complete store under `key`, else from `build()`,
    which tokenizes and writes it."""
    stored = cache.open_store(kind, key)
    if stored is None:
        return build()
    arrays, splits, meta = stored
    return arrays, splits, summary_from(meta["summary"]), f"cached tokens, read from {cache.cache_root()}"


def _preference_summary(values: dict) -> DatasetSummary:
    return DatasetSummary(**{**values, "train_lengths": LengthStats(**values["train_lengths"]),
                             "test_lengths": LengthStats(**values["test_lengths"])})


def _supervised_summary(values: dict) -> SupervisedDataSummary:
    return SupervisedDataSummary(**{**values, "train_lengths": SequenceLengthStats(**values["train_lengths"]),
                                    "test_lengths": SequenceLengthStats(**values["test_lengths"])})


def _unpaired_summary(values: dict) -> UnpairedDataSummary:
    return UnpairedDataSummary(**{**values, "train_lengths": UnpairedLengthStats(**values["train_lengths"]),
                                  "test_lengths": UnpairedLengthStats(**values["test_lengths"])})

