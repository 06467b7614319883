"""File helpers shared by every stage: JSONL/Parquet I/O, atomic writes, input errors."""

from __future__ import annotations

import codecs
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Bad input data. The message names the file, the row (1-based) and the field."""

    def __init__(self, path: str | os.PathLike, message: str, *, row: int | None = None,
                 field: str | None = None):
        self.path = str(path)
        self.row = row
        self.field = field
        where = self.path
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")


# Called before every atomic publish; each raises to refuse it (`confagg.smk` adds one:
# the job's Snakemake is gone, so a newer run may own the output).
_publish_checks: list[Callable[[], None]] = []


def add_publish_check(check: Callable[[], None]) -> None:
    _publish_checks.append(check)


def _publish(tmp: str, path: Path) -> None:
    for check in _publish_checks:
        check()
    os.replace(tmp, path)


def _apply_umask(path: str) -> None:
    """mkstemp creates files as 0600; give them the mode an ordinary open() would."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def ensure_parent(path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write via a temp file in the same folder and rename, so a kill never leaves half a file."""
    p = ensure_parent(path)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        _apply_umask(tmp)
        _publish(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows atomically as JSON Lines (UTF-8, non-ASCII kept). Returns the row count."""
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


class LongInt(str):
    """A JSON integer literal too long for int() (Python's digit limit), kept as its digits."""


def _parse_int(digits: str) -> int | LongInt:
    limit = getattr(sys, "get_int_max_str_digits", lambda: 0)()
    if limit and len(digits.lstrip("-")) > limit:
        return LongInt(digits)
    return int(digits)


def json_loads(text: str) -> Any:
    """json.loads, but an integer of any length parses (long ones as LongInt)."""
    return json.loads(text, parse_int=_parse_int)


def undecodable_field(obj: Any) -> str | None:
    """The first top-level key whose key or value holds a byte that was not UTF-8
    (decoded with surrogateescape), or None."""
    def bad(v: Any) -> bool:
        if isinstance(v, str):
            return any("\udc80" <= ch <= "\udcff" for ch in v)
        if isinstance(v, dict):
            return any(bad(k) or bad(x) for k, x in v.items())
        if isinstance(v, list):
            return any(bad(x) for x in v)
        return False

    if isinstance(obj, dict):
        for key, value in obj.items():
            if bad(key) or bad(value):
                return str(key).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return None


def not_utf8(path, raw: bytes, exc: UnicodeDecodeError, *, row: int | None,
             field: str | None = None) -> DataError:
    """The DataError for a line or record that is not UTF-8: the row, the field when
    known, the byte and its column."""
    return DataError(path, f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at byte "
                     f"{exc.start + 1} of the row (save the file as UTF-8)",
                     row=row, field=field)


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line_number, object) for each non-blank line; a bad line raises DataError.

    A UTF-8 byte-order mark is skipped; a byte that is not UTF-8 is an error naming its
    row (and field). Integers of any length parse (long ones as LongInt).
    """
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                try:
                    field = undecodable_field(json_loads(raw.decode("utf-8", "surrogateescape")))
                except ValueError:
                    field = None
                raise not_utf8(path, raw, exc, row=lineno, field=field) from None
            if not line.strip():
                continue
            try:
                obj = json_loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(path, f"invalid JSON ({exc.msg})", row=lineno) from None
            if not isinstance(obj, dict):
                raise DataError(path, f"expected a JSON object, got {type(obj).__name__}",
                                row=lineno)
            yield lineno, obj


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    return [obj for _, obj in iter_jsonl(path)]


def write_parquet(path: str | os.PathLike, table) -> None:
    """Write a pyarrow Table atomically (temp file + rename)."""
    import pyarrow.parquet as pq

    p = ensure_parent(path)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd")
        _apply_umask(tmp)
        _publish(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_parquet(path: str | os.PathLike, columns: list[str] | None = None):
    """Read a Parquet file; a missing or unreadable file or column raises DataError naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not Path(path).exists():
        raise DataError(path, "file not found")
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(path, f"not a readable Parquet file ({exc})") from None
    if columns is not None:
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise DataError(path, f"missing column(s) {missing}; has {schema.names}",
                            field=missing[0])
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(path, f"not a readable Parquet file ({exc})") from None


def conform(path: str | os.PathLike, table, schema, *, required: tuple[str, ...] = ()):
    """`table` cast to `schema` (its columns, in its order). A null in a `required`
    field, or a value that does not convert exactly (a float 1.5 for an integer), raises
    DataError naming the file, the row (1-based) and the field, not a bare pyarrow error."""
    import pyarrow as pa

    for field in schema:
        if field.name not in table.schema.names:
            raise DataError(path, f"missing column '{field.name}'; has {table.schema.names}",
                            field=field.name)
        col = table.column(field.name)
        if field.name in required and col.null_count:
            row = col.is_null().to_pylist().index(True) + 1
            raise DataError(path, f"{field.name} is null", row=row, field=field.name)
        if col.type.equals(field.type):
            continue
        try:
            col.cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            for row, value in enumerate(col.to_pylist(), start=1):
                try:
                    pa.array([value], type=col.type).cast(field.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                    raise DataError(path, f"{col.type} value {value!r} does not convert to "
                                    f"{field.type}", row=row, field=field.name) from None
            raise DataError(path, f"column of {col.type} does not convert to {field.type} "
                            f"({exc})", field=field.name) from None
    return table.select(schema.names).cast(schema)
