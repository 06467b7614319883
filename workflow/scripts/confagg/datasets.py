"""Dataset sources normalized to rows {"id", "problem", "answer", "source"}.

Sources (config `datasets.<name>.source`):
- ``hf:<hub id or local dataset dir>``: `datasets.load_dataset` with `split`/`subset`;
- ``file:<path>``: a local .jsonl, .json, .parquet or .csv file;
- ``builtin:arith``: the seeded procedural arithmetic set (`confagg.builtin_arith`).

A per-dataset field mapping (`fields`) names the source fields for id, problem and
answer. Values follow one rule in every format (`_as_text`): text is kept as written,
integers convert exactly, floats are refused unless `float_answers: whole`. Rows are checked one by one; a bad row stops with a DataError that names
the file, row and field, unless `on_bad_rows: skip`, which drops it and reports why.
"""

from __future__ import annotations

import csv
import decimal
import io
import json
import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .io import DataError, LongInt, iter_jsonl, json_loads, not_utf8, undecodable_field

log = logging.getLogger(__name__)

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


@dataclass
class NormalizeReport:
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count

    def summary(self) -> str:
        if not self.skipped:
            return f"kept {self.kept} rows, skipped none"
        reasons = ", ".join(f"{n} {why}" for why, n in self.skipped.most_common())
        return f"kept {self.kept} rows, skipped {sum(self.skipped.values())} ({reasons})"


def _iter_file_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (1-based row number, record) from a local file; JSONL rows are file lines."""
    if not path.exists():
        raise DataError(path, "file not found")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from iter_jsonl(path)
    elif suffix == ".json":
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw[:exc.start].count(b"\n") + 1
            raise DataError(path, f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at line "
                            f"{line} (save the file as UTF-8)") from None
        try:
            data = json_loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"invalid JSON ({exc.msg} at line {exc.lineno})") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(path, "expected a JSON list of records (or {\"data\": [...]})")
        for i, rec in enumerate(data, start=1):
            if not isinstance(rec, dict):
                raise DataError(path, f"expected an object, got {type(rec).__name__}", row=i)
            yield i, rec
    elif suffix == ".parquet":
        from .io import read_parquet

        for i, rec in enumerate(read_parquet(path).to_pylist(), start=1):
            yield i, rec
    elif suffix == ".csv":
        yield from _iter_csv(path)
    else:
        raise DataError(path, f"unsupported file type '{suffix}'; use one of {FILE_SUFFIXES}")


def _iter_csv(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """CSV records; row numbers count the header as row 1, as a spreadsheet shows them.
    A byte-order mark is skipped; a byte that is not UTF-8 names its row and column."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        # Find the record (a quoted cell may span lines) and the column holding the byte.
        text = raw.decode("utf-8-sig", "surrogateescape")
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, [])
        where = {"row": raw[:exc.start].count(b"\n") + 1, "field": None}
        for i, cells in enumerate([header, *reader], start=1):
            bad = [c for c, cell in enumerate(cells) if undecodable_field({"": cell}) is not None]
            if bad:
                col = bad[0]
                name = header[col] if i > 1 and col < len(header) else f"column {col + 1}"
                where = {"row": i, "field": undecodable_field({name: cells[col]})}
                break
        raise not_utf8(path, raw, exc, **where) from None
    for i, rec in enumerate(csv.DictReader(io.StringIO(text, newline="")), start=2):
        yield i, rec


def _iter_hub_rows(spec: dict[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a Hub dataset (or a local dataset folder) through `datasets.load_dataset`."""
    import datasets

    path = spec["source"][len("hf:"):]
    try:
        ds = datasets.load_dataset(path, name=spec.get("subset"), split=spec.get("split", "train"))
    except Exception as exc:  # the loader raises many kinds; say which dataset failed
        raise DataError(spec["source"],
                        f"could not load dataset: {type(exc).__name__}: {exc}") from exc
    yield from enumerate(ds, start=1)


def _as_text(value: Any, *, allow_int: bool, float_answers: str = "error") -> str | None:
    """A field value as a non-empty string, or None when it is not acceptable.

    The same rules for every format: text (JSON strings, CSV cells, string columns) is
    kept as written ("027", "0.5"); integers (JSON integer literals of any length,
    integer columns) convert exactly; floats (JSON numbers with a fraction or an
    exponent, float and decimal columns) do not, since their written form is lost
    (27.0 might be "27" or "27.0", and 0.1 has no exact binary form), unless
    `float_answers: whole` reads whole-number floats as integers (27.0 -> "27").
    """
    if isinstance(value, LongInt):
        return str(value) if allow_int else None
    if isinstance(value, str):
        value = value.strip()
        return value or None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value) if allow_int else None
    if float_answers == "whole" and _whole(value):
        return str(int(value))
    return None


def _whole(value: Any) -> bool:
    """A finite float or decimal with no fraction part."""
    if isinstance(value, float):
        return math.isfinite(value) and value.is_integer()
    if isinstance(value, decimal.Decimal):
        return value.is_finite() and value == value.to_integral_value()
    return False


def _describe(value: Any, *, answer: bool = False, float_answers: str = "error") -> str:
    if value is None:
        return "missing"
    if isinstance(value, str) and not isinstance(value, LongInt):
        return "empty"
    what = f"{type(value).__name__} {value!r}" if not isinstance(value, LongInt) else (
        f"an integer of {len(value.lstrip('-'))} digits")
    if answer and isinstance(value, (float, decimal.Decimal)):
        if not _whole(value):
            return f"not a string ({what}): store answers that are not whole numbers as text"
        if float_answers != "whole":
            return (f"not a string ({what}); set float_answers: whole to read whole-number "
                    f"floats as integers ({value!r} -> '{int(value)}')")
    return f"not a string ({what})"


def normalize_rows(rows, *, name: str, spec: dict[str, Any], where: str,
                   report: NormalizeReport) -> list[dict[str, str]]:
    """Map and check raw rows. `where` names the file in errors."""
    fields = {"id": None, "problem": "problem", "answer": "answer", **(spec.get("fields") or {})}
    skip = spec.get("on_bad_rows", "error") == "skip"
    floats = spec.get("float_answers", "error")
    out: list[dict[str, str]] = []
    seen: dict[str, int] = {}
    for rowno, rec in rows:
        problem = _as_text(rec.get(fields["problem"]), allow_int=False)
        answer = _as_text(rec.get(fields["answer"]), allow_int=True, float_answers=floats)
        if fields["id"] is None:
            rid = f"{name}-{rowno:05d}"
        else:
            rid = _as_text(rec.get(fields["id"]), allow_int=True)
        problems = []
        if rid is None:
            problems.append((fields["id"], f"id is {_describe(rec.get(fields['id']))}"))
        elif rid in seen:
            problems.append((fields["id"], f"duplicate id '{rid}' (first at row {seen[rid]})"))
        if problem is None:
            problems.append((fields["problem"],
                             f"problem is {_describe(rec.get(fields['problem']))}"))
        if answer is None:
            problems.append((fields["answer"], "answer is " + _describe(
                rec.get(fields["answer"]), answer=True, float_answers=floats)))
        if problems:
            fld, why = problems[0]
            if not skip:
                raise DataError(where, why + " (or set on_bad_rows: skip to drop such rows)"
                                if "float_answers" in why else
                                why + " (set on_bad_rows: skip to drop such rows)",
                                row=rowno, field=fld)
            report.skipped[why.split(" (")[0].split(" '")[0]] += 1
            log.warning("%s row %d field '%s': %s; skipped", where, rowno, fld, why)
            continue
        seen[rid] = rowno
        out.append({"id": rid, "problem": problem, "answer": answer, "source": spec["source"]})
        if spec.get("limit") and len(out) >= spec["limit"]:
            break
    report.kept = len(out)
    return out


def load_dataset_rows(name: str, spec: dict[str, Any], *, base_dir: str | Path = ".",
                      ) -> tuple[list[dict[str, str]], NormalizeReport]:
    """Load and normalize the dataset `name` described by its config entry `spec`."""
    source = spec["source"]
    report = NormalizeReport()
    if source.startswith("builtin:"):
        from .builtin_arith import generate_problems

        if source != "builtin:arith":
            raise DataError(source, "unknown builtin dataset (known: builtin:arith)")
        raw = enumerate(generate_problems(**(spec.get("builtin") or {})), start=1)
        # The generator's own fields are already normalized names.
        spec = {**spec, "fields": {"id": "id", "problem": "problem", "answer": "answer"}}
        where = source
    elif source.startswith("file:"):
        path = Path(source[len("file:"):])
        if not path.is_absolute():
            path = Path(base_dir) / path
        raw = _iter_file_rows(path)
        where = str(path)
    elif source.startswith("hf:"):
        raw = _iter_hub_rows(spec)
        where = source
    else:
        raise DataError(source, "source must start with hf:, file: or builtin:")
    rows = normalize_rows(raw, name=name, spec=spec, where=where, report=report)
    if not rows:
        raise DataError(where, f"dataset '{name}' has no usable rows ({report.summary()})")
    return rows, report
