"""Merging generation shards: a shard with a wrongly typed or null key names the file,
the row and the field (it used to surface as a bare pyarrow or numpy error)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confagg.generation import SAMPLE_SCHEMA, merge_shards
from confagg.io import DataError, write_jsonl


def shard(path, pids, sample_idx, idx_type=None):
    """A shard in SAMPLE_SCHEMA but for the given problem_id values and sample_idx type."""
    n = len(pids)
    idx_type = idx_type or pa.int32()
    cols = {f.name: pa.array([None] * n, type=f.type) for f in SAMPLE_SCHEMA}
    cols.update(problem_id=pa.array(pids, type=pa.string()),
                sample_idx=pa.array(sample_idx, type=idx_type),
                text=pa.array(["t"] * n), final_text=pa.array(["t"] * n))
    pq.write_table(pa.table(cols), path)
    return str(path)


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "d.jsonl"
    write_jsonl(path, [{"id": p, "problem": "x", "answer": "1", "source": "t"} for p in "ab"])
    return str(path)


def test_a_float_sample_idx_names_file_row_and_field(tmp_path, dataset):
    good = shard(tmp_path / "0.parquet", ["a", "a"], [0, 1])
    bad = shard(tmp_path / "1.parquet", ["b", "b"], [0.0, 1.5], pa.float64())
    with pytest.raises(DataError) as err:
        merge_shards([good, bad], dataset, 2, str(tmp_path / "m.parquet"))
    assert str(err.value) == (f"{bad}, row 2, field 'sample_idx': double value 1.5 does not "
                              "convert to int32")
    # whole-number floats convert exactly and merge
    ok = shard(tmp_path / "1.parquet", ["b", "b"], [0.0, 1.0], pa.float64())
    assert merge_shards([good, ok], dataset, 2, str(tmp_path / "m.parquet")) == 4


def test_a_null_problem_id_names_file_row_and_field(tmp_path, dataset):
    good = shard(tmp_path / "0.parquet", ["a", "a"], [0, 1])
    bad = shard(tmp_path / "1.parquet", ["b", None], [0, 1])
    with pytest.raises(DataError) as err:
        merge_shards([good, bad], dataset, 2, str(tmp_path / "m.parquet"))
    assert str(err.value) == f"{bad}, row 2, field 'problem_id': problem_id is null"
    bad = shard(tmp_path / "1.parquet", ["b", "b"], [0, None])
    with pytest.raises(DataError, match=r"1.parquet, row 2, field 'sample_idx': sample_idx is "
                                        r"null"):
        merge_shards([good, bad], dataset, 2, str(tmp_path / "m.parquet"))
