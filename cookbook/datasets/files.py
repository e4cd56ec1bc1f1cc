"""Reading rows from local JSONL, JSON or Parquet files, remembering where each row came from.

Every row keeps a location ("train.jsonl:12") so that an error can name the exact line. A line that
is not valid JSON is returned with its error instead of raising, so callers decide whether it is
fatal or a counted skip.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")


@dataclass(frozen=True)
class FileRow:
    location: str  # "path:line" for JSON Lines, "path[row]" for JSON arrays and Parquet
    data: dict[str, Any] | None
    error: str | None = None  # why `data` is None


def read_rows(path: str | Path) -> list[FileRow]:
    """All rows of one local file; raises FileNotFoundError / ValueError naming the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Preference data file {str(path)!r} does not exist")
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        return _read_json_lines(path)
    if name.endswith((".json", ".json.gz")):
        return _read_json(path)
    if name.endswith(".parquet"):
        return _read_parquet(path)
    raise ValueError(f"{path}: unsupported file type; expected one of {', '.join(SUPPORTED_SUFFIXES)}")


def _open_text(path: Path):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _read_json_lines(path: Path) -> list[FileRow]:
    rows = []
    with _open_text(path) as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            location = f"{path}:{line_number}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as error:
                rows.append(FileRow(location, None, f"invalid JSON ({error.msg} at column {error.colno})"))
                continue
            rows.append(_as_row(location, data))
    return rows


def _read_json(path: Path) -> list[FileRow]:
    with _open_text(path) as handle:
        text = handle.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]  # the {"data": [...]} layout some exporters write
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of objects (or JSON Lines in a .jsonl file)")
    return [_as_row(f"{path}[{index}]", item) for index, item in enumerate(data)]


def _read_parquet(path: Path) -> list[FileRow]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return [_as_row(f"{path}[{index}]", item) for index, item in enumerate(table.to_pylist())]


def _as_row(location: str, data: Any) -> FileRow:
    if not isinstance(data, dict):
        return FileRow(location, None, f"expected a JSON object, got {type(data).__name__}")
    return FileRow(location, data)
