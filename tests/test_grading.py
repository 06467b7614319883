"""Grading with real math-verify: extraction, gold-first verification, equivalence
clusters, hard timeouts and the cache."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from confagg.grading import Grade, Grader, cluster_answers, extract_answer, last_boxed, verify_one


@pytest.fixture(scope="module")
def grader():
    with Grader(workers=2, timeout_s=3.0) as g:
        yield g


@pytest.mark.parametrize("text, expected", [
    (r"so \boxed{42}.", "42"),
    (r"first \boxed{1} then \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"\boxed{\sqrt{\frac{a}{b}}}", r"\sqrt{\frac{a}{b}}"),
    (r"\boxed {7}", "7"),
    (r"\fbox{3}", "3"),
    (r"cut off \boxed{12", None),
    (r"empty \boxed{}", None),
    ("no box at all", None),
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_extraction_falls_back_to_math_verify(grader):
    texts = [r"We get \boxed{\frac{3}{4}}.", "7 + 5 = 12, so Ben has 12 apples.", "", "no math"]
    assert grader.extract(texts) == [r"\frac{3}{4}", "12", None, None]
    assert extract_answer("The total is 29.") == "29"


def test_known_truths(grader, shared_data):
    import json

    hmmt = {json.loads(line)["id"]: json.loads(line)["answer"]
            for line in open(shared_data / "benchmarks" / "hmmt_feb_2024.jsonl")}
    items = [
        ("0.5", r"\frac{1}{2}"),                 # equivalent forms
        (r"\frac{1}{2}", "0.5"),
        ("70", "71"),                            # wrong
        (hmmt["hmmt_feb_2024_9"], r"0, -i\sqrt{6}, i\sqrt{6}"),   # a set in another order
        (hmmt["hmmt_feb_2024_9"], r"0, i\sqrt{6}"),                # a missing element
        (hmmt["hmmt_feb_2024_18"], r"\frac{4^{2024}}{\binom{4048}{2024}} - 2"),
        (r"2^{25} \cdot 26!", r"26! \cdot 2^{25}"),
        ("3", None),                             # a missing box and no extraction
    ]
    assert grader.grade(items) == [
        Grade(True, "ok"), Grade(True, "ok"), Grade(False, "ok"), Grade(True, "ok"),
        Grade(False, "ok"), Grade(True, "ok"), Grade(True, "ok"), Grade(False, "no_answer")]


def test_non_ascii_and_garbage_answers_do_not_crash(grader):
    grades = grader.grade([("5", "cinq ✓ 答案"), ("5", "}{"), ("5", r"5 \text{ élèves}")])
    assert [g.status for g in grades] == ["ok", "ok", "ok"]
    assert [g.correct for g in grades] == [False, False, True]


def test_pathological_input_times_out_within_the_limit():
    with Grader(workers=1, timeout_s=2.0) as g:
        start = time.monotonic()
        grades = g.grade([("1", "10^{10^{10^{10^{10^{10}}}}}"), ("2", "2")])
        elapsed = time.monotonic() - start
    assert grades == [Grade(False, "timeout"), Grade(True, "ok")]
    assert elapsed < 2.0 + 8.0  # the limit plus a worker restart, never a hang
    assert g.stats["timeouts"] == 1


def test_cache_computes_each_pair_once():
    with Grader(workers=1, timeout_s=5.0) as g:
        items = [(r"\frac{1}{2}", "0.5"), (r"\frac{1}{2}", "1/3"), (r"\frac{1}{2}", "2/4")] * 50
        grades = g.grade(items)
        assert g.stats["computed"] == 3 and g.stats["cache_hits"] == 147
        assert [x.correct for x in grades[:3]] == [True, False, True]
        g.grade([(r"\frac{1}{2}", "1/3")])
        assert g.stats["computed"] == 3


def test_plain_integers_skip_math_verify_with_its_verdict():
    from math_verify import parse, verify

    pairs = [("12", "12"), ("12", " 12 "), ("12", "012"), ("-3", "-3"), ("-3", "3"),
             ("0", "-0"), ("999", "998"), ("7", "7" * 150)]
    with Grader(workers=1, timeout_s=5.0) as g:
        grades = g.grade(pairs)
        assert g.stats["computed"] == 1  # only the 150-digit answer goes to a worker
    expected = [verify(parse(f"\\boxed{{{a}}}"), parse(f"\\boxed{{{b}}}")) for a, b in pairs]
    assert [x.correct for x in grades] == expected
    assert all(x.status == "ok" for x in grades)


def test_clusters_group_equivalent_forms(grader):
    answers = ["1/2", "0.5", None, r"\frac{1}{2}", "3", "3.0", "x", "0.5"]
    assert cluster_answers(answers, grader).tolist() == [0, 0, -1, 0, 1, 1, 2, 0]


def test_verify_one_never_raises():
    assert verify_one("4", r"\boxed{4}".replace(r"\boxed{", "").rstrip("}")) == Grade(True, "ok")
    assert verify_one("4", None) == Grade(False, "no_answer")
    assert verify_one("1", "10^{10^{10^{10^{10^{10}}}}}", timeout_s=1.0).status == "timeout"


def test_surrounding_whitespace_shares_one_cache_entry_with_math_verifys_verdict():
    from math_verify import parse, verify

    items = [(r"\frac{1}{2}", "0.5"), (r" \frac{1}{2}", " 0.5\n"), (r"\frac{1}{2} ", "0.5 "),
             ("x^2+1", " x^2 + 1 "), ("x^2+1", "x^2+1")]
    with Grader(workers=1, timeout_s=5.0) as g:
        grades = g.grade(items)
        assert g.stats["computed"] == 3  # ("1/2", "0.5"), ("x^2+1", "x^2 + 1"), its exact copy
    expected = [verify(parse(f"\\boxed{{{a}}}"), parse(f"\\boxed{{{b}}}")) for a, b in items]
    assert [x.correct for x in grades] == expected == [True] * 5


def test_a_hang_inside_a_batch_costs_only_its_own_item():
    hang = "10^{10^{10^{10^{10^{10}}}}}"
    items = [("1/2", f"{i}/{2 * i}") for i in range(1, 9)]
    items.insert(4, ("1", hang))
    with Grader(workers=1, timeout_s=2.0) as g:
        grades = g.grade(items)
        assert g.stats["timeouts"] == 1
        assert g.grade([("3/4", "6/8")]) == [Grade(True, "ok")]  # the replacement worker works
    assert grades[4] == Grade(False, "timeout")
    assert [x for i, x in enumerate(grades) if i != 4] == [Grade(True, "ok")] * 8


SLOW_MAIN = """
import os
import sys
import time
with open(sys.argv[1], "a") as f:  # one line per import of this module, by any process
    f.write(f"{__name__} {os.getpid()}\\n")
time.sleep(3)  # a main module that is slow to import, as one that imports vLLM is
from confagg.grading import Grader
if __name__ == "__main__":
    with Grader(workers=1, timeout_s=0.5) as g:
        print("EXTRACTED", g.extract(["So the answer is 7."])[0], g.stats["timeouts"])
"""


def test_workers_start_without_the_main_module_and_outside_the_time_limit(tmp_path):
    # multiprocessing's fork-server children import the parent's main module again
    # unless it is hidden: seconds for a script that imports vLLM, and with the start-up
    # counted against the first item every extraction timed out (reward 0 for every
    # response). The fork server's own import of math-verify takes longer than 0.5 s.
    script, imports = tmp_path / "slow_main.py", tmp_path / "imports.txt"
    script.write_text(SLOW_MAIN)
    proc = subprocess.run([sys.executable, str(script), str(imports)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert imports.read_text().split()[0::2] == ["__main__"], imports.read_text()
    assert "EXTRACTED 7 0" in proc.stdout, proc.stdout + proc.stderr[-2000:]
