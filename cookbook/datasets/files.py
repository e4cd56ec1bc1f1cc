"""Reading rows from local JSONL, JSON or Parquet files, remembering where each row came from.

The one reader of local data files: preference and supervised data sets, on-policy prompt files and
IFEval prompt files all read through `read_rows`. Every row keeps a location ("train.jsonl:12") so
that an error can name the exact line. A line that is not valid JSON (or not valid UTF-8) is
returned with its error instead of raising, so callers decide whether it is fatal or a counted skip. A file that cannot be read as a whole (missing, a
directory, empty, not really gzip, not UTF-8 where it must be) raises `DataFileError` naming it.

Files are read as UTF-8; a byte-order mark at the start (Windows editors write one) is dropped.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cookbook.errors import UserError

SUPPORTED_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")
UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class DataFileError(UserError, ValueError):
    """A local data file that cannot be read as a whole; the message names the file (and line)."""


class DataFileNotFoundError(DataFileError, FileNotFoundError):
    pass


@dataclass(frozen=True)
class FileRow:
    location: str  # "path:line" for JSON Lines, "path[row]" for JSON arrays and Parquet
    data: Any  # a dict (any JSON value with objects_only=False), or None when the row is unreadable
    error: str | None = None  # why `data` is None


def read_rows(path: str | Path, objects_only: bool = True, noun: str = "rows") -> list[FileRow]:
    """All rows of one local file (see `iter_rows`), as a list."""
    return list(iter_rows(path, objects_only, noun))


def iter_rows(path: str | Path, objects_only: bool = True, noun: str = "rows") -> Iterator[FileRow]:
    """The rows of one local file, one at a time (a JSON Lines or Parquet file is never held whole,
    so a file of a million rows streams); raises DataFileError naming the file when it cannot be
    read: at once for a missing, directory or unsupported path, while iterating for its content.
    With `objects_only` a row that is not a JSON object is an error row; `noun` names what an empty
    file lacks ("rows", "prompts")."""
    path = _data_file(path)
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        rows = _read_json_lines(path, objects_only)
    elif name.endswith((".json", ".json.gz")):
        rows = _read_json(path, objects_only)
    else:
        rows = _read_parquet(path)
    return _checked(path, rows, noun)


def _data_file(path: str | Path) -> Path:
    """`path` when it names a readable kind of data file; DataFileError saying what it is otherwise."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataFileNotFoundError(f"data file {str(path)!r} does not exist")
    if path.is_dir():
        raise DataFileError(f"{path} is a directory; give a data file ({', '.join(SUPPORTED_SUFFIXES)})")
    if not path.name.lower().endswith(SUPPORTED_SUFFIXES):
        raise DataFileError(f"{path}: unsupported file type; expected one of {', '.join(SUPPORTED_SUFFIXES)}")
    return path


def _checked(path: Path, rows: Iterator[FileRow], noun: str) -> Iterator[FileRow]:
    count = 0
    try:
        for count, row in enumerate(rows, start=1):  # noqa: B007  (the count is read after the loop)
            yield row
    except PermissionError as error:
        raise DataFileError(f"{path} cannot be read: {error.strerror}") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise DataFileError(_gzip_problem(path, error)) from None
    if not count:
        raise DataFileError(f"{path} is empty: it holds no {noun}")


def files_fingerprint(*paths: str | Path | None) -> str:
    """A digest of the files' bytes (and each name's suffix, which decides how it is read); None
    stands for an absent file (a test split not given)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(b"|")
        if path is None:
            continue
        path = _data_file(path)
        digest.update(path.name.lower().split(".", 1)[-1].encode())
        try:
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
        except OSError as error:
            raise DataFileError(f"{path} cannot be read: {error.strerror or error}") from None
    return digest.hexdigest()


def count_lines(path: str | Path) -> int | None:
    """The number of lines of a plain JSON Lines file (a progress bar's total); None for other files."""
    path = Path(path).expanduser()
    if not path.name.lower().endswith(".jsonl") or not path.is_file():
        return None
    count = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
    return count


def _gzip_problem(path: Path, error: Exception) -> str:
    if isinstance(error, gzip.BadGzipFile) and "Not a gzipped file" in str(error):
        return f"{path} is not gzip-compressed although its name ends in .gz; rename it without .gz or compress it"
    if isinstance(error, EOFError):
        return f"{path}: the gzip data ends early (the file is truncated)"
    return f"{path}: corrupt gzip data ({error})"


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of each line, the byte-order mark dropped; refuses UTF-16."""
    with _open_binary(path) as handle:
        for line_number, raw in enumerate(handle, start=1):
            if line_number == 1:
                _check_not_utf16(path, raw)
                raw = raw.removeprefix(UTF8_BOM)
            yield line_number, raw


def _check_not_utf16(path: Path, start: bytes) -> None:
    if start.startswith(UTF16_BOMS):
        raise DataFileError(f"{path} is UTF-16 encoded; save it as UTF-8")


def _read_json_lines(path: Path, objects_only: bool) -> Iterator[FileRow]:
    for line_number, raw in _raw_lines(path):
        location = f"{path}:{line_number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            yield FileRow(location, None, _not_utf8(raw[error.start], error.start + 1))
            continue
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as error:
            yield FileRow(location, None, f"invalid JSON ({error.msg} at column {error.colno})")
            continue
        yield _as_row(location, data, objects_only)


def _not_utf8(byte: int, column: int) -> str:
    return f"not valid UTF-8 (byte 0x{byte:02x} at byte {column} of the line); save the file as UTF-8"


def _read_json(path: Path, objects_only: bool) -> Iterator[FileRow]:
    with _open_binary(path) as handle:
        raw = handle.read()
    _check_not_utf16(path, raw)
    raw = raw.removeprefix(UTF8_BOM)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line_number = raw.count(b"\n", 0, error.start) + 1
        column = error.start - raw.rfind(b"\n", 0, error.start)
        raise DataFileError(f"{path}:{line_number}: {_not_utf8(raw[error.start], column)}") from None
    if not text.strip():
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataFileError(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]  # the {"data": [...]} layout some exporters write
    if not isinstance(data, list):
        raise DataFileError(f"{path}: expected a JSON array of objects (or JSON Lines in a .jsonl file)")
    for index, item in enumerate(data):
        yield _as_row(f"{path}[{index}]", item, objects_only)


def _read_parquet(path: Path) -> Iterator[FileRow]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except pyarrow.ArrowException as error:
        problem = "it is empty" if path.stat().st_size == 0 else f"not a Parquet file ({error})"
        raise DataFileError(f"{path}: {problem}") from None
    index = 0
    for batch in parquet.iter_batches(batch_size=4096):
        for item in batch.to_pylist():
            yield _as_row(f"{path}[{index}]", item)
            index += 1


def _as_row(location: str, data: Any, objects_only: bool = True) -> FileRow:
    if objects_only and not isinstance(data, dict):
        return FileRow(location, None, f"expected a JSON object, got {type(data).__name__}")
    return FileRow(location, data)
