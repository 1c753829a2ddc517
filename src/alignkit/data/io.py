"""Reading and writing feedback files.

Containers: JSON Lines (``.jsonl``, or a ``.json`` file holding one JSON array),
gzip-compressed JSON Lines (``.jsonl.gz``; detected by its magic bytes, whatever the
name), Parquet (``.parquet``) and a Hugging Face dataset saved with ``save_to_disk`` (a
directory). The record format inside (alignkit, TRL, HH, …) is detected from the first
row; see :mod:`alignkit.data.formats`.

Writers never leave a half-written file: they write a temporary file next to the
target and ``os.replace`` it into place at the end. pyarrow and ``datasets`` are
imported only when a Parquet file or a dataset directory is touched.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.data.formats import FORMATS, detect_row_format, record_to_row, row_to_record
from alignkit.data.records import Comparison, Record
from alignkit.errors import DataError

__all__ = [
    "CONTAINERS",
    "LoadResult",
    "detect_container",
    "detect_format",
    "load_prompts",
    "load_records",
    "read_rows",
    "save_records",
]

CONTAINERS = ("jsonl", "jsonl.gz", "parquet", "hf-dataset")
_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"


@dataclass
class LoadResult:
    """What :func:`load_records` read.

    ``records`` are the usable records (incomparable comparisons dropped unless
    ``keep_incomparable``); ``n_incomparable`` counts the incomparable comparisons seen
    (dropped or kept); ``format`` is the record format, ``container`` the file kind.
    """

    records: list[Record]
    format: str
    n_incomparable: int
    path: str
    container: str = "jsonl"
    n_rows: int = 0
    kinds: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)


# ------------------------------------------------------------------- containers


def detect_container(path: str | os.PathLike) -> str:
    """Which container ``path`` is: jsonl, jsonl.gz, parquet or hf-dataset."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise DataError("no such file or directory", path=str(p)) from None
    except OSError as e:  # a name too long, a permission denied, a loop of links
        raise DataError(f"cannot open: {e.strerror}", path=str(p)[:300]) from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        # a pipe or device: reading could wait forever for a writer, and it can be read
        # only once (formats are detected from the first row, then the file is read again)
        raise DataError("not a regular file (a pipe or a device?); save it to a file", path=str(p))
    if p.is_dir():
        if _is_dataset_dir(p):
            return "hf-dataset"
        raise DataError(
            "expected a file, or a dataset directory written by datasets' save_to_disk "
            "(no dataset_info.json or dataset_dict.json found)",
            path=str(p),
        )
    with open(p, "rb") as f:
        head = f.read(4)
    if head.startswith(_GZIP_MAGIC):
        return "jsonl.gz"
    if head == _PARQUET_MAGIC:
        return "parquet"
    return "jsonl"


def _is_dataset_dir(p: Path) -> bool:
    return (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists()


def _container_for_output(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".jsonl.gz") or name.endswith(".json.gz"):
        return "jsonl.gz"
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if path.is_dir() or "." not in name:
        return "hf-dataset"
    raise DataError(
        "expected an output name ending in .jsonl, .jsonl.gz or .parquet, "
        "or a directory (HF dataset)",
        path=str(path),
    )


def read_rows(path: str | os.PathLike, container: str | None = None) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_or_row_number, row)`` from any container (1-based numbers).

    Blank JSONL lines are skipped (their numbers are kept, so errors point at the real
    line). Invalid JSON raises :class:`DataError` naming the line.
    """
    p = Path(path)
    container = container or detect_container(p)
    if container in ("jsonl", "jsonl.gz"):
        yield from _read_jsonl(p, gz=container == "jsonl.gz")
    elif container == "parquet":
        yield from _read_parquet(p)
    elif container == "hf-dataset":
        yield from _read_hf(p)
    else:
        raise DataError(f"expected a container in {CONTAINERS}, got {container!r}", path=str(p))


def _read_jsonl(p: Path, *, gz: bool) -> Iterator[tuple[int, Any]]:
    try:
        f = gzip.open(p, "rt", encoding="utf-8-sig") if gz else open(p, encoding="utf-8-sig")
        with f:
            first = True
            for i, line in enumerate(f, start=1):
                if first:
                    first = False
                    stripped = line.lstrip()
                    if stripped.startswith("["):  # a .json file holding one array
                        text = line + f.read()
                        yield from _read_json_array(p, text)
                        return
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    if "\\u" in line:  # escapes may spell a lone surrogate: not Unicode
                        json.dumps(row, ensure_ascii=False).encode("utf-8")
                except (ValueError, RecursionError) as e:
                    raise DataError(_json_error(e), path=str(p), line=i) from None
                yield i, row
    except (OSError, EOFError, UnicodeDecodeError) as e:
        # gzip.BadGzipFile is an OSError; a truncated gzip raises EOFError.
        what = "gzip-compressed JSON Lines" if gz else "UTF-8 JSON Lines"
        raise DataError(f"cannot read as {what}: {e}", path=str(p)) from None


def _read_json_array(p: Path, text: str) -> Iterator[tuple[int, Any]]:
    try:
        data = json.loads(text)
        if "\\u" in text:  # escapes may spell a lone surrogate: not Unicode
            json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError) as e:
        line = e.lineno if isinstance(e, json.JSONDecodeError) else None
        raise DataError(_json_error(e), path=str(p), line=line) from None
    if not isinstance(data, list):
        raise DataError("expected a JSON array of objects", path=str(p))
    yield from enumerate(data, start=1)


def _json_error(e: Exception) -> str:
    """What is wrong with a JSON text, in one line."""
    if isinstance(e, json.JSONDecodeError):
        return f"invalid JSON ({e.msg} at column {e.colno})"
    if isinstance(e, RecursionError):
        return "invalid JSON (nested too deeply)"
    if isinstance(e, UnicodeEncodeError):
        return "invalid JSON (a \\u escape spells a lone surrogate, which is not Unicode)"
    return f"invalid JSON ({str(e).splitlines()[0][:120]})"  # e.g. an integer of 5000 digits


def _read_parquet(p: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError subclasses
        raise DataError(f"cannot read as Parquet: {e}", path=str(p)) from None
    yield from enumerate(table.to_pylist(), start=1)


def _read_hf(p: Path) -> Iterator[tuple[int, Any]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as e:
        raise DataError(f"cannot load with datasets.load_from_disk: {e}", path=str(p)) from None
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        if "train" in ds:
            ds = ds["train"]
        elif len(splits) == 1:
            ds = ds[splits[0]]
        else:
            raise DataError(
                f"expected a single split or a 'train' split, found {splits}", path=str(p)
            )
    yield from enumerate(ds, start=1)


# ------------------------------------------------------------------------ load


def detect_format(path: str | os.PathLike) -> str:
    """The record format of the file at ``path``, from its first row."""
    for line, row in read_rows(path):
        if not isinstance(row, dict):
            raise DataError(
                f"expected a JSON object, got {type(row).__name__}", path=str(path), line=line
            )
        try:
            return detect_row_format(row)
        except DataError as e:
            raise DataError(e.reason, path=str(path), line=line) from None
    raise DataError("no records (the file is empty)", path=str(path))


def load_records(
    path: str | os.PathLike,
    *,
    keep_incomparable: bool = False,
    format: str | None = None,
) -> LoadResult:
    """Read every record in ``path`` (any container, any format; see module docstring).

    ``format`` forces the record format instead of detecting it from the first row.
    Incomparable comparisons are counted in ``n_incomparable`` and dropped unless
    ``keep_incomparable``. Raises :class:`DataError` (naming file, line, field and what
    was expected) on a malformed row, and when no usable record remains.
    """
    p = Path(path)
    if format is not None and format not in FORMATS:
        raise DataError(f"expected a format in {FORMATS}, got {format!r}", path=str(p))
    container = detect_container(p)
    fmt = format
    records: list[Record] = []
    kinds: dict[str, int] = {}
    n_rows = n_incomparable = 0
    for line, row in read_rows(p, container):
        try:
            if not isinstance(row, dict):
                raise DataError(f"expected a JSON object, got {type(row).__name__}")
            if fmt is None:
                fmt = detect_row_format(row)
            record = row_to_record(row, fmt)
        except DataError as e:
            raise DataError(e.reason, path=str(p), line=line, field=e.field) from None
        n_rows += 1
        kinds[record.kind] = kinds.get(record.kind, 0) + 1
        if isinstance(record, Comparison) and record.incomparable:
            n_incomparable += 1
            if not keep_incomparable:
                continue
        records.append(record)
    if n_rows == 0:
        raise DataError("no records (the file is empty)", path=str(p))
    if not records:
        raise DataError(
            f"no usable records: all {n_rows} rows are incomparable comparisons", path=str(p)
        )
    return LoadResult(
        records=records,
        format=fmt or "alignkit",
        n_incomparable=n_incomparable,
        path=str(p),
        container=container,
        n_rows=n_rows,
        kinds=kinds,
    )


def load_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts, in file order (repeats kept), from the one prompts reader every command uses.

    A ``.txt`` file holds one prompt per non-blank line. Anything else is a container
    :func:`read_rows` reads (JSONL, ``.jsonl.gz``, Parquet, an HF dataset directory) whose
    rows give a ``prompt`` string, or are records in any of :data:`FORMATS` (an HH
    transcript, an implicit-prompt TRL row, ...) whose prompt is taken. Errors name the file,
    the line and the field.
    """
    p = Path(path)
    if not p.exists():
        raise DataError("prompts file not found", path=str(p))
    prompts: list[str] = []
    if p.suffix == ".txt":
        with open(p, encoding="utf-8-sig") as f:
            prompts = [line.rstrip("\r\n") for line in f if line.strip()]
    else:
        try:
            for line, row in read_rows(p):
                prompts.append(_row_prompt(row, p, line))
        except DataError as e:
            if e.line == 1 and "invalid JSON" in e.reason and p.suffix not in (".jsonl", ".json", ".gz"):
                raise DataError(f"{e.reason}; a plain-text prompts file (one a line) must end in .txt",
                                path=str(p), line=1) from None
            raise
    if not prompts:
        raise DataError("no prompts (the file is empty)", path=str(p))
    return prompts


def _row_prompt(row: Any, p: Path, line: int) -> str:
    if not isinstance(row, dict):
        raise DataError(f"expected a JSON object, got {type(row).__name__}", path=str(p), line=line)
    if isinstance(row.get("prompt"), str):
        return row["prompt"]
    if "kind" in row or "chosen" in row or "rejected" in row:
        try:
            prompt = getattr(row_to_record(row, detect_row_format(row)), "prompt", None)
        except DataError as e:
            raise DataError(e.reason, path=str(p), line=line, field=e.field) from None
        if isinstance(prompt, str):
            return prompt
    raise DataError("missing or not a string (expected the prompt text)", path=str(p), line=line, field="prompt")


# ------------------------------------------------------------------------ save


def save_records(
    records: Iterable[Record],
    path: str | os.PathLike,
    *,
    format: str = "alignkit",
) -> int:
    """Write ``records`` to ``path`` atomically; return the number of rows written.

    The container follows the name: ``.jsonl``, ``.jsonl.gz``, ``.parquet``, or a
    directory (no suffix, or an existing directory) for an HF dataset. ``format`` is
    ``"alignkit"`` (every record type) or one of the TRL-family formats ``"trl"``,
    ``"trl_conversational"``, ``"trl_implicit"``, ``"hh"`` (comparisons only).
    """
    p = Path(path)
    if format not in FORMATS:
        raise DataError(f"expected a format in {FORMATS}, got {format!r}", path=str(p))
    container = _container_for_output(p)
    rows = []
    for i, record in enumerate(records, start=1):
        try:
            rows.append(record_to_row(record, format))
        except DataError as e:
            raise DataError(f"record {i}: {e.reason}", path=str(p), field=e.field) from None
        except (AttributeError, TypeError):
            raise DataError(
                f"record {i}: expected a record (Comparison, Ranking, …), got {type(record).__name__}",
                path=str(p),
            ) from None
    if not rows:
        raise DataError("no records to write", path=str(p))
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"cannot create the output directory: {e.strerror}", path=str(p.parent)
        ) from None
    if container == "hf-dataset":
        if p.exists() and not (p.is_dir() and _is_dataset_dir(p)):
            raise DataError(
                "exists and is not a saved dataset; refusing to replace it "
                "(give a new directory name, or a .jsonl/.jsonl.gz/.parquet file)",
                path=str(p),
            )
        _write_hf_atomic(rows, p, format)
    else:
        _write_file_atomic(rows, p, container, format)
    return len(rows)


def _write_file_atomic(rows: list[dict[str, Any]], p: Path, container: str, fmt: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as raw:
            if container == "parquet":
                _write_parquet(rows, raw, fmt)
            elif container == "jsonl.gz":
                # mtime=0: identical records give byte-identical files.
                with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
                    _write_jsonl(rows, gz)
            else:
                _write_jsonl(rows, raw)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_jsonl(rows: list[dict[str, Any]], f) -> None:
    for i, row in enumerate(rows, start=1):
        f.write(_dumps(row, i).encode("utf-8") + b"\n")


def _dumps(row: dict[str, Any], i: int) -> str:
    """One row as strict JSON (no NaN/Infinity), checked to be encodable as UTF-8."""
    try:
        text = json.dumps(row, ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")
    except (TypeError, ValueError) as e:  # UnicodeEncodeError is a ValueError
        raise DataError(f"record {i}: cannot be written as JSON: {e}") from None
    return text


def _columnar(rows: list[dict[str, Any]], fmt: str) -> list[dict[str, Any]]:
    """Rows ready for Arrow: every row has every column (None where absent; Arrow takes
    the columns from the first row), nested free-form dicts (meta, segments) as JSON."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    out = []
    for i, row in enumerate(rows, start=1):
        r = {c: row.get(c) for c in columns}
        if fmt == "alignkit":
            for name in ("meta", "segment_a", "segment_b"):
                if r.get(name) is not None:
                    r[name] = _dumps(r[name], i)
        out.append(r)
    return out


def _write_parquet(rows: list[dict[str, Any]], f, fmt: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pa.Table.from_pylist(_columnar(rows, fmt))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise DataError(f"cannot store these records in Parquet: {e}") from None
    pq.write_table(table, f)


def _write_hf_atomic(rows: list[dict[str, Any]], p: Path, fmt: str) -> None:
    import datasets

    tmp = Path(tempfile.mkdtemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp"))
    old = None
    try:
        quiet = not datasets.utils.are_progress_bars_disabled()
        if quiet:
            datasets.disable_progress_bars()
        try:
            datasets.Dataset.from_list(_columnar(rows, fmt)).save_to_disk(str(tmp))
        finally:
            if quiet:
                datasets.enable_progress_bars()
        if p.exists():
            # A directory cannot be replaced in one step: move the old one aside first.
            old = Path(tempfile.mkdtemp(dir=p.parent, prefix=f".{p.name}.", suffix=".old"))
            os.rmdir(old)
            os.replace(p, old)
        os.replace(tmp, p)
    except BaseException:
        if old is not None and old.exists() and not p.exists():
            os.replace(old, p)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
