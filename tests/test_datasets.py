"""Dataset normalization on excerpts of the public files (tests/data), every source kind,
and bad rows."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confagg.builtin_arith import generate_problems
from confagg.datasets import load_dataset_rows
from confagg.io import DataError, read_jsonl


def spec(source, **kw):
    base = {"source": source, "split": "train", "subset": None, "on_bad_rows": "error",
            "limit": None, "fields": {"id": None, "problem": "problem", "answer": "answer"}}
    fields = kw.pop("fields", {})
    base["fields"].update(fields)
    base.update(kw)
    return base


def test_aime25_rows_keep_ids_and_string_answers(shared_data):
    rows, report = load_dataset_rows(
        "aime25", spec(f"file:{shared_data}/benchmarks/aime25.jsonl", fields={"id": "id"}))
    assert len(rows) == 5 and report.kept == 5 and not report.skipped
    assert rows[0] == {"id": "aime_2025_I_1",
                       "problem": "Find the sum of all integer bases $b>9$ for which $17_b$ is "
                                  "a divisor of $97_b.$",
                       "answer": "70", "source": f"file:{shared_data}/benchmarks/aime25.jsonl"}
    assert all(set(r) == {"id", "problem", "answer", "source"} for r in rows)


def test_hmmt_latex_answers_survive_unchanged(shared_data):
    rows, _ = load_dataset_rows(
        "hmmt24", spec(f"file:{shared_data}/benchmarks/hmmt_feb_2024.jsonl", fields={"id": "id"}))
    by_id = {r["id"]: r["answer"] for r in rows}
    assert by_id["hmmt_feb_2024_9"] == r"0,i\sqrt{6},-i\sqrt{6}"
    assert by_id["hmmt_feb_2024_18"] == r"\dfrac{4^{2024}}{\binom{4048}{2024}}-2"
    rows, _ = load_dataset_rows(
        "hmmt25", spec(f"file:{shared_data}/benchmarks/hmmt_feb_2025.jsonl", fields={"id": "id"}))
    assert {r["id"]: r["answer"] for r in rows}["hmmt_feb_2025_17"] == r"2^{25} \cdot 26!"


def test_integer_ids_become_strings(shared_data):
    rows, _ = load_dataset_rows(
        "aime24", spec(f"file:{shared_data}/benchmarks/aime24.jsonl", fields={"id": "id"}))
    assert rows[0]["id"] == "60" and rows[0]["answer"] == "204"
    assert rows[7]["answer"] == "025"  # text keeps its leading zero


def test_math_train_empty_answers_stop_with_file_row_and_field(shared_data):
    path = f"{shared_data}/train/math_train.jsonl"
    with pytest.raises(DataError) as err:
        load_dataset_rows("math", spec(f"file:{path}"))
    msg = str(err.value)
    assert path in msg and "row 7" in msg and "field 'answer'" in msg and "missing" in msg


def test_math_train_skip_mode_reports_what_was_dropped(shared_data):
    path = shared_data / "train" / "math_train.jsonl"
    rows, report = load_dataset_rows("math", spec(f"file:{path}", on_bad_rows="skip"))
    assert len(rows) == len(path.read_text().splitlines()) - 4
    assert report.skipped == {"answer is missing": 2, "answer is empty": 2}
    assert "skipped 4" in report.summary()
    assert rows[0]["id"] == "math-00001"  # row-numbered ids when the source has none


def test_gsm8k_field_mapping_and_limit(shared_data):
    rows, _ = load_dataset_rows(
        "gsm8k", spec(f"file:{shared_data}/train/gsm8k_train_final.jsonl",
                      fields={"problem": "question"}, limit=5))
    assert len(rows) == 5 and rows[0]["answer"] == "72"
    assert rows[0]["problem"].startswith("Natalia sold clips")


def test_float_answer_is_refused(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"problem": "p1", "answer": "1"}) + "\n"
                    + json.dumps({"problem": "p2", "answer": 27.0}) + "\n")
    with pytest.raises(DataError) as err:
        load_dataset_rows("bad", spec(f"file:{path}"))
    assert str(err.value).startswith(f"{path}, row 2, field 'answer': answer is not a string "
                                     "(float 27.0)")


def test_duplicate_ids_are_refused(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text("".join(json.dumps({"id": "a", "problem": f"p{i}", "answer": "1"}) + "\n"
                            for i in range(2)))
    with pytest.raises(DataError, match=r"row 2, field 'id': duplicate id 'a' \(first at row 1\)"):
        load_dataset_rows("dup", spec(f"file:{path}", fields={"id": "id"}))


def test_invalid_json_line_names_row(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"problem": "p", "answer": "1"}\n{not json\n')
    with pytest.raises(DataError, match=r"broken.jsonl, row 2: invalid JSON"):
        load_dataset_rows("broken", spec(f"file:{path}"))


def test_parquet_csv_and_json_sources(tmp_path):
    recs = [{"q": "What is 1+1?", "a": "2"}, {"q": "What is 2+3?", "a": "5"}]
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "d.parquet")
    (tmp_path / "d.json").write_text(json.dumps(recs))
    (tmp_path / "d.csv").write_text("q,a\nWhat is 1+1?,2\nWhat is 2+3?,5\n")
    for suffix in ("parquet", "json", "csv"):
        rows, _ = load_dataset_rows(
            "d", spec(f"file:{tmp_path}/d.{suffix}", fields={"problem": "q", "answer": "a"}))
        assert [(r["problem"], r["answer"]) for r in rows] == [("What is 1+1?", "2"),
                                                               ("What is 2+3?", "5")], suffix


def test_csv_bad_row_counts_header_as_row_one(tmp_path):
    (tmp_path / "d.csv").write_text("problem,answer\nWhat is 1+1?,2\nWhat is 2+3?,\n")
    with pytest.raises(DataError, match=r"d.csv, row 3, field 'answer': answer is empty"):
        load_dataset_rows("d", spec(f"file:{tmp_path}/d.csv"))


def test_hub_loader_reads_a_local_dataset_folder(tmp_path, shared_data):
    """The hf: path is the real `datasets.load_dataset` call; here it reads a local folder
    laid out like a Hub repository (data/train-*.parquet), since nothing is downloaded."""
    recs = read_jsonl(f"{shared_data}/benchmarks/hmmt_feb_2025.jsonl")
    (tmp_path / "repo" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "repo" / "data" / "train-0.parquet")
    rows, _ = load_dataset_rows(
        "hmmt25", spec(f"hf:{tmp_path}/repo", split="train", fields={"id": "id"}))
    assert len(rows) == 4 and rows[3]["answer"] == r"\sqrt{6}"


def test_hub_loader_failure_names_the_dataset(tmp_path):
    with pytest.raises(DataError, match=r"hf:.*missing-repo: could not load dataset"):
        load_dataset_rows("x", spec(f"hf:{tmp_path}/missing-repo"))


def test_builtin_arith_is_seeded_and_correct():
    a = list(generate_problems(n_problems=50, seed=7))
    assert a == list(generate_problems(n_problems=50, seed=7))
    assert a != list(generate_problems(n_problems=50, seed=8))
    for row in a:
        if row["problem"].startswith("Compute "):
            # Bare expressions must evaluate (with normal precedence) to the stated answer.
            assert eval(row["problem"][len("Compute "):-1]) == int(row["answer"]), row
        assert int(row["answer"]) >= 0
    hard = list(generate_problems(n_problems=50, seed=7, min_operands=4, max_operands=4,
                                  max_value=99, word_fraction=0.0))
    assert all(r["problem"].count(" + ") + r["problem"].count(" - ") + r["problem"].count(" * ")
               == 3 for r in hard)


def test_whole_number_floats_need_the_option_that_the_error_names(tmp_path):
    """A public AMC 2023 file stores answers as floats (27.0): refused by default with
    a message naming float_answers, read as integers with float_answers: whole; a float
    that is not whole (0.5) stays refused, since its written form is lost."""
    path = tmp_path / "amc.jsonl"
    path.write_text("".join(json.dumps({"problem": f"p{i}", "answer": a}) + "\n"
                            for i, a in enumerate([27.0, 3, "4.0", 1e20])))
    with pytest.raises(DataError) as err:
        load_dataset_rows("amc", spec(f"file:{path}"))
    assert str(err.value).startswith(
        f"{path}, row 1, field 'answer': answer is not a string (float 27.0); set "
        "float_answers: whole to read whole-number floats as integers (27.0 -> '27')")
    rows, _ = load_dataset_rows("amc", spec(f"file:{path}", float_answers="whole"))
    assert [r["answer"] for r in rows] == ["27", "3", "4.0", "100000000000000000000"]

    path.write_text(json.dumps({"problem": "p", "answer": 0.5}) + "\n")
    with pytest.raises(DataError, match=r"row 1, field 'answer': answer is not a string "
                                        r"\(float 0.5\): store answers that are not whole "
                                        r"numbers as text"):
        load_dataset_rows("amc", spec(f"file:{path}", float_answers="whole"))


def test_jsonl_csv_and_parquet_follow_the_same_rules(tmp_path):
    """Text is kept as written ("027", "0.5"), integers convert exactly, floats need
    float_answers: whole, in every format."""
    text = [{"problem": "p1", "answer": "027"}, {"problem": "p2", "answer": "0.5"}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in text))
    (tmp_path / "t.csv").write_text("problem,answer\np1,027\np2,0.5\n")
    pq.write_table(pa.Table.from_pylist(text), tmp_path / "t.parquet")
    for suffix in ("jsonl", "csv", "parquet"):
        rows, _ = load_dataset_rows("t", spec(f"file:{tmp_path}/t.{suffix}"))
        assert [r["answer"] for r in rows] == ["027", "0.5"], suffix

    nums = [{"problem": "p1", "answer": 27}, {"problem": "p2", "answer": 27.0}]
    (tmp_path / "n.jsonl").write_text("".join(json.dumps(r) + "\n" for r in nums))
    pq.write_table(pa.table({"problem": ["p1", "p2"], "answer": pa.array([27.0, 5.0])}),
                   tmp_path / "f.parquet")
    pq.write_table(pa.table({"problem": ["p1", "p2"], "answer": pa.array([27, 5])}),
                   tmp_path / "i.parquet")
    for name, row in [("n.jsonl", 2), ("f.parquet", 1)]:
        with pytest.raises(DataError, match=rf"row {row}, field 'answer': answer is not a "
                                            r"string \(float 27.0\); set float_answers: whole"):
            load_dataset_rows("n", spec(f"file:{tmp_path}/{name}"))
    assert [r["answer"] for r in load_dataset_rows(
        "n", spec(f"file:{tmp_path}/n.jsonl", float_answers="whole"))[0]] == ["27", "27"]
    assert [r["answer"] for r in load_dataset_rows(
        "n", spec(f"file:{tmp_path}/f.parquet", float_answers="whole"))[0]] == ["27", "5"]
    assert [r["answer"] for r in load_dataset_rows(
        "n", spec(f"file:{tmp_path}/i.parquet"))[0]] == ["27", "5"]


def test_a_5000_digit_integer_answer_is_kept_exactly(tmp_path):
    """Integers convert exactly, whatever their length (Python's int() stops at 4300
    digits; the digits are kept as written instead)."""
    digits = "9" * 4999 + "7"
    path = tmp_path / "big.jsonl"
    path.write_text(f'{{"problem": "p", "answer": {digits}}}\n'
                    f'{{"problem": "q", "answer": -{digits}}}\n')
    rows, _ = load_dataset_rows("big", spec(f"file:{path}"))
    assert [r["answer"] for r in rows] == [digits, "-" + digits]
    (tmp_path / "big.json").write_text(f'[{{"problem": "p", "answer": {digits}}}]')
    rows, _ = load_dataset_rows("big", spec(f"file:{tmp_path}/big.json"))
    assert rows[0]["answer"] == digits
    path.write_text(f'{{"problem": {digits}, "answer": "1"}}\n')
    with pytest.raises(DataError, match=r"row 1, field 'problem': problem is not a string "
                                        r"\(an integer of 5000 digits\)"):
        load_dataset_rows("big", spec(f"file:{path}"))


def test_a_byte_order_mark_is_skipped_in_csv_and_jsonl(tmp_path):
    bom = b"\xef\xbb\xbf"
    (tmp_path / "b.csv").write_bytes(bom + b"id,problem,answer\nx1,What is 1+1?,2\n")
    (tmp_path / "b.jsonl").write_bytes(
        bom + b'{"id": "x1", "problem": "What is 1+1?", "answer": "2"}\n')
    (tmp_path / "b.json").write_bytes(
        bom + b'[{"id": "x1", "problem": "What is 1+1?", "answer": "2"}]')
    for suffix in ("csv", "jsonl", "json"):
        rows, _ = load_dataset_rows("b", spec(f"file:{tmp_path}/b.{suffix}",
                                              fields={"id": "id"}))
        assert rows[0]["id"] == "x1" and rows[0]["answer"] == "2", suffix


def test_a_byte_that_is_not_utf8_names_its_row_and_field(tmp_path):
    """Latin-1 'é' (0xe9) deep in a file: the error names the row and the field, not a
    position inside an 8 KB read buffer."""
    good = [{"problem": f"What is {i}+{i}?" + " pad" * 40, "answer": str(2 * i)}
            for i in range(300)]
    lines = [json.dumps(r).encode() + b"\n" for r in good]
    lines[250] = b'{"problem": "caf\xe9 problem", "answer": "1"}\n'
    (tmp_path / "l.jsonl").write_bytes(b"".join(lines))
    with pytest.raises(DataError, match=r"l.jsonl, row 251, field 'problem': not UTF-8 text: "
                                        r"byte 0xe9"):
        load_dataset_rows("l", spec(f"file:{tmp_path}/l.jsonl"))

    rows = b"".join(f"What is {i}+{i}?,{2 * i}\n".encode() for i in range(300))
    csv = (b'problem,answer\n' + rows + b'"two\nlines",1\n' + b"sixty,6\xe9\n")
    (tmp_path / "l.csv").write_bytes(csv)
    # header row 1, 300 rows, one record spanning two lines (row 302), then row 303
    with pytest.raises(DataError, match=r"l.csv, row 303, field 'answer': not UTF-8 text: "
                                        r"byte 0xe9"):
        load_dataset_rows("l", spec(f"file:{tmp_path}/l.csv"))
