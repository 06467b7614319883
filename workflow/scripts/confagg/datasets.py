"""Dataset sources normalized to rows {"id", "problem", "answer", "source"}.

Sources (config `datasets.<name>.source`):
- ``hf:<hub id or local dataset dir>``: `datasets.load_dataset` with `split`/`subset`;
- ``file:<path>``: a local .jsonl, .json, .parquet or .csv file;
- ``builtin:arith``: the seeded procedural arithmetic set (`confagg.builtin_arith`).

A per-dataset field mapping (`fields`) names the source fields for id, problem and
answer. Rows are checked one by one; a bad row stops with a DataError that names
the file, row and field, unless `on_bad_rows: skip`, which drops it and reports why.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .io import DataError, iter_jsonl

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
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
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
        with open(path, newline="", encoding="utf-8") as fh:
            # Row numbers count the header as row 1, as a spreadsheet shows them.
            for i, rec in enumerate(csv.DictReader(fh), start=2):
                yield i, rec
    else:
        raise DataError(path, f"unsupported file type '{suffix}'; use one of {FILE_SUFFIXES}")


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


def _as_text(value: Any, *, allow_int: bool) -> str | None:
    """A field value as a non-empty string, or None when it is not acceptable."""
    if isinstance(value, str):
        value = value.strip()
        return value or None
    # Integers convert exactly (Hub AIME sets store answers as ints). Floats do not:
    # 27.0 might be "27" or "27.0", and 0.1 has no exact decimal form, so refuse them.
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _describe(value: Any) -> str:
    if value is None:
        return "missing"
    if isinstance(value, str):
        return "empty"
    return f"not a string ({type(value).__name__} {value!r})"


def normalize_rows(rows, *, name: str, spec: dict[str, Any], where: str,
                   report: NormalizeReport) -> list[dict[str, str]]:
    """Map and check raw rows. `where` names the file in errors."""
    fields = {"id": None, "problem": "problem", "answer": "answer", **(spec.get("fields") or {})}
    skip = spec.get("on_bad_rows", "error") == "skip"
    out: list[dict[str, str]] = []
    seen: dict[str, int] = {}
    for rowno, rec in rows:
        problem = _as_text(rec.get(fields["problem"]), allow_int=False)
        answer = _as_text(rec.get(fields["answer"]), allow_int=True)
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
            problems.append((fields["answer"], f"answer is {_describe(rec.get(fields['answer']))}"))
        if problems:
            fld, why = problems[0]
            if not skip:
                raise DataError(where, why + " (set on_bad_rows: skip to drop such rows)",
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
