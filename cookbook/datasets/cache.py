"""A tokenized data set on disk: flat token arrays, memory-mapped, written once and reused.

A loaded data set is a few flat arrays (int32 token ids, uint8 loss weights, int64 offsets, one
entry per item) and the index of each split into them. A pair stores its prompt once and each
reply's tokens after the prompt, so a 700-token pair costs about 2 KB on disk and, memory-mapped,
next to nothing in resident memory until a batch reads it: `PairSet[i]` builds the `TokenizedPair`
of item i when asked.

The directory is named by a key over everything that decides the tokens: the builder's source data
(`source_fingerprint()`: its files' bytes, the hub split's fingerprint), its options (split sizes,
seed, limits), the tokenizer, the renderer and its settings, `max_length` (and `train_on`), and the
code that turns rows into tokens; a change of any of them is another key, so a new directory. It is
written under a hidden staging name and renamed into place when complete, and read only when its
`meta.json` says complete and every array has the length it records: a write cut short is never
used. `$COOKBOOK_DATA_CACHE` moves the cache (default `$COOKBOOK_CACHE/tokenized`); `off` turns it
off. A builder without a source fingerprint is tokenized again on every run.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cookbook.datasets.builder import builder_options
from cookbook.datasets.tokenize import SupervisedSequence, TokenizedPair, TokenizedSequence, TokenizedUnpaired
from cookbook.models import cache_dir

CACHE_VARIABLE = "COOKBOOK_DATA_CACHE"
META_NAME = "meta.json"
STALE_STAGING_SECONDS = 24 * 3600
PAIR_ARRAYS = {"prompt": np.int32, "chosen": np.int32, "chosen_weights": np.uint8, "rejected": np.int32,
               "rejected_weights": np.uint8, "prompt_offsets": np.int64, "chosen_offsets": np.int64,
               "rejected_offsets": np.int64, "truncated": np.uint8, "margin": np.float32}  # margin: NaN = none
SEQUENCE_ARRAYS = {"tokens": np.int32, "weights": np.uint8, "offsets": np.int64, "truncated": np.uint8}
PROMPT_ARRAYS = {"tokens": np.int32, "offsets": np.int64}  # generation prompts of the on-policy recipes
UNPAIRED_ARRAYS = {"prompt": np.int32, "completion": np.int32, "completion_weights": np.uint8,
                   "prompt_offsets": np.int64, "completion_offsets": np.int64, "desirable": np.uint8,
                   "truncated": np.uint8}
KIND_ARRAYS = {"pairs": PAIR_ARRAYS, "sequences": SEQUENCE_ARRAYS, "prompts": PROMPT_ARRAYS,
               "unpaired": UNPAIRED_ARRAYS}
# The code whose change changes the tokens a set holds: its source is part of the key.
TOKENIZING_MODULES = ("cookbook.datasets.builder", "cookbook.datasets.tokenize", "cookbook.datasets.cache",
                      "cookbook.datasets.load", "cookbook.renderers.base")


def cache_root() -> Path | None:
    """Where tokenized sets live; None when the cache is off."""
    value = os.environ.get(CACHE_VARIABLE, "")
    if value.lower() in ("off", "0", "false", "no"):
        return None
    return Path(value).expanduser() if value else cache_dir() / "tokenized"


def prompts_key(conversations_digest: str, renderer) -> str:
    """The key of a set of generation prompts: the conversations themselves (their digest), the
    tokenizer, the renderer and the tokenizing code."""
    parts = {"kind": "prompts", "source": conversations_digest, "code": _code_digest(TOKENIZING_MODULES),
             "tokenizer": tokenizer_fingerprint(renderer.tokenizer), "renderer": renderer_fingerprint(renderer)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def data_key(kind: str, builder, renderer, max_length: int | None, **options: Any) -> str | None:
    """The key of a tokenized set (see the module docstring); None when the builder cannot say what
    data it reads."""
    source = builder.source_fingerprint()
    if source is None:
        return None
    parts = {"kind": kind, "source": source, "builder": builder_options(builder),
             "builder_code": _code_digest((type(builder).__module__,)), "code": _code_digest(TOKENIZING_MODULES),
             "tokenizer": tokenizer_fingerprint(renderer.tokenizer), "renderer": renderer_fingerprint(renderer),
             "max_length": max_length, **options}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@functools.cache
def _code_digest(modules: tuple[str, ...]) -> str:
    import importlib

    digest = hashlib.sha256()
    for name in modules:
        path = inspect.getsourcefile(importlib.import_module(name))
        digest.update(Path(path).read_bytes() if path else name.encode())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    extra = json.dumps([type(tokenizer).__name__, tokenizer.all_special_tokens], default=str)
    return hashlib.sha256((text + extra).encode()).hexdigest()


def renderer_fingerprint(renderer) -> str:
    settings = {key: value for key, value in vars(renderer).items() if key != "tokenizer"}
    return json.dumps([type(renderer).__module__, type(renderer).__qualname__, renderer.name, settings],
                      sort_keys=True, default=str)


# -- writing ---------------------------------------------------------------------------------------------


class StoreWriter:
    """Appends items to the arrays of a staging directory; `publish` moves it into place."""

    def __init__(self, kind: str, arrays: dict[str, type], key: str | None) -> None:
        self.kind, self.dtypes, self.key = kind, arrays, key
        root = cache_root() if key is not None else None
        self.final = root / f"{kind}-{key[:40]}" if root is not None else None
        parent = root if root is not None else Path(tempfile.gettempdir())
        parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(parent)
        self.directory = Path(tempfile.mkdtemp(dir=parent, prefix=f".{kind}-staging-"))
        self.files = {name: open(self.directory / f"{name}.bin", "wb") for name in arrays}  # noqa: SIM115
        self.lengths = dict.fromkeys(arrays, 0)
        for name in arrays:
            if name.endswith("offsets"):
                self.write(name, [0])

    def write(self, name: str, values) -> None:
        if self.dtypes[name] == np.uint8 and name.endswith("weights"):
            raw = np.asarray(values, dtype=np.float32)
            if not np.all((raw == 0) | (raw == 1)):  # a renderer's loss weights are 0/1; a byte each holds only those
                raise ValueError(f"{name}: loss weights other than 0 and 1 cannot be stored as bytes")
        array = np.asarray(values, dtype=self.dtypes[name])
        array.tofile(self.files[name])
        self.lengths[name] += int(array.size)

    def finish(self, meta: dict, splits: dict[str, np.ndarray]) -> Path:
        """Close the arrays, write the split indices and meta.json, and move the set into place
        (or, uncached, leave it in its temporary directory); the directory to read it from."""
        for handle in self.files.values():
            handle.close()
        for split, index in splits.items():
            np.asarray(index, dtype=np.int64).tofile(self.directory / f"split_{split}.bin")
        meta = {**meta, "kind": self.kind, "key": self.key, "lengths": self.lengths,
                "splits": {split: len(index) for split, index in splits.items()}, "complete": True}
        (self.directory / META_NAME).write_text(json.dumps(meta, indent=1, default=str))
        if self.final is None:
            return self.directory
        if self.final.exists() and read_store(self.final, self.dtypes) is None:
            shutil.rmtree(self.final, ignore_errors=True)  # a torn set: ours replaces it
        try:
            os.replace(self.directory, self.final)
        except OSError:  # another process published the same set meanwhile: keep theirs
            shutil.rmtree(self.directory, ignore_errors=True)
        return self.final

    def abandon(self) -> None:
        for handle in self.files.values():
            handle.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def _remove_stale_staging(parent: Path) -> None:
    """Staging directories a killed writer left behind (older than a day, so never a live one)."""
    now = time.time()
    for entry in parent.glob(".*-staging-*"):
        try:
            if now - entry.stat().st_mtime > STALE_STAGING_SECONDS:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue


# -- reading ---------------------------------------------------------------------------------------------


def open_store(kind: str, key: str | None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict] | None:
    """(arrays, split indices, meta) of a complete cached set, memory-mapped; None when there is none."""
    root = cache_root()
    if key is None or root is None:
        return None
    return read_store(root / f"{kind}-{key[:40]}", KIND_ARRAYS[kind])


def read_store(directory: Path, dtypes: dict[str, type]) -> tuple[dict, dict, dict] | None:
    """The set in `directory`, or None unless its meta.json is complete and every file as long as
    it records (a torn write is treated as no cache)."""
    try:
        meta = json.loads((directory / META_NAME).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("complete") is not True:
        return None
    arrays, splits = {}, {}
    try:
        for name, dtype in dtypes.items():
            arrays[name] = _map(directory / f"{name}.bin", dtype, meta["lengths"][name])
        for split, length in meta["splits"].items():
            splits[split] = _map(directory / f"split_{split}.bin", np.int64, length)
    except (OSError, KeyError, ValueError):
        return None
    return arrays, splits, meta


def _map(path: Path, dtype, length: int) -> np.ndarray:
    if path.stat().st_size != length * np.dtype(dtype).itemsize:
        raise ValueError(f"{path} is not {length} items long")
    if length == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(length,))


class _ArraySet(Sequence):
    """The items of one split, built from the arrays on access (`_item` builds one)."""

    def __init__(self, arrays: dict[str, np.ndarray], index: np.ndarray) -> None:
        self.arrays, self.index = arrays, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, position):
        if isinstance(position, slice):
            return [self[i] for i in range(*position.indices(len(self)))]
        return self._item(int(self.index[position]))

    def _item(self, item: int):
        raise NotImplementedError

    def __iter__(self) -> Iterator:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and len(other) == len(self) and all(a == b for a, b in zip(self, other))

    def __add__(self, other: Sequence) -> list:
        return [*self, *other]


class PairSet(_ArraySet):
    """The pairs of one split (TokenizedPair)."""

    def _item(self, item: int) -> TokenizedPair:
        a = self.arrays
        prompt = a["prompt"][a["prompt_offsets"][item]:a["prompt_offsets"][item + 1]].tolist()

        def sequence(side: str) -> TokenizedSequence:
            start, stop = a[f"{side}_offsets"][item], a[f"{side}_offsets"][item + 1]
            reply = a[side][start:stop].tolist()
            weights = a[f"{side}_weights"][start:stop].astype(np.float32).tolist()
            return TokenizedSequence(prompt + reply, [0.0] * len(prompt) + weights)

        margin = float(a["margin"][item])
        return TokenizedPair(sequence("chosen"), sequence("rejected"), len(prompt), bool(a["truncated"][item]),
                             None if math.isnan(margin) else margin)


class SequenceSet(_ArraySet):
    """The sequences of one split (SupervisedSequence)."""

    def _item(self, item: int) -> SupervisedSequence:
        a = self.arrays
        start, stop = a["offsets"][item], a["offsets"][item + 1]
        return SupervisedSequence(a["tokens"][start:stop].tolist(), a["weights"][start:stop].astype(np.float32).tolist(),
                                  bool(a["truncated"][item]))


class UnpairedSet(_ArraySet):
    """The unpaired examples of one split (TokenizedUnpaired)."""

    def _item(self, item: int) -> TokenizedUnpaired:
        a = self.arrays
        prompt = a["prompt"][a["prompt_offsets"][item]:a["prompt_offsets"][item + 1]].tolist()
        start, stop = a["completion_offsets"][item], a["completion_offsets"][item + 1]
        weights = a["completion_weights"][start:stop].astype(np.float32).tolist()
        sequence = TokenizedSequence(prompt + a["completion"][start:stop].tolist(), [0.0] * len(prompt) + weights)
        return TokenizedUnpaired(sequence, len(prompt), bool(a["desirable"][item]), bool(a["truncated"][item]))

    def desirable(self) -> np.ndarray:
        """Whether each example of the split is desirable, in split order (bool [n])."""
        return self.arrays["desirable"][self.index].astype(bool)


class TokenListSet(_ArraySet):
    """Token lists (list[int]), one per item: the generation prompts of an on-policy run."""

    def _item(self, item: int) -> list[int]:
        offsets = self.arrays["offsets"]
        return self.arrays["tokens"][offsets[item]:offsets[item + 1]].tolist()

    def lengths(self) -> np.ndarray:
        offsets = self.arrays["offsets"]
        return (offsets[1:] - offsets[:-1])[self.index]

    def subset(self, positions: Sequence[int]) -> TokenListSet:
        return TokenListSet(self.arrays, self.index[np.asarray(positions, dtype=np.int64)])
