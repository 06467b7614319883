"""Grading with real math-verify: extraction, gold-first verification, equivalence
clusters, hard timeouts and the cache."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from confagg.grading import (
    Grade,
    Grader,
    cluster_answers,
    extract_answer,
    last_boxed,
    split_by_verdict,
    verify_one,
)
from confagg.workerpool import wall_backstop


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
        grades = g.grade([("1.5", "10^{10^{10^{10^{10^{10}}}}}"), ("2", "2")])
        elapsed = time.monotonic() - start
    assert grades == [Grade(False, "timeout"), Grade(True, "ok")]
    # The CPU-time limit ended it (not the wall-clock backstop), never a hang; its wall
    # time depends on the machine's load.
    assert g.stats["timeouts"] == 1 and g.pool.stats["wall_timeouts"] == 0
    assert elapsed < wall_backstop(2.0)


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


def test_a_cluster_is_split_by_its_members_verdicts(grader):
    """Equivalence (each answer against the first of its cluster) can join answers that
    grading against the gold tells apart: with gold 10, "10\\%", "10" and "0.1" form
    one cluster graded right, right, wrong. The wrong members get an id of their own."""
    answers = ["10\\%", "10", "0.1", "7", None, "0.1"]
    clusters = cluster_answers(answers, grader)
    correct = [g.correct for g in grader.grade([("10", a) for a in answers])]
    assert clusters.tolist() == [0, 0, 0, 1, -1, 0]
    assert correct == [True, True, False, False, False, False]
    assert split_by_verdict(clusters, correct).tolist() == [0, 0, 2, 1, -1, 2]
    pure = [0, 0, 1, -1]
    assert split_by_verdict(pure, [True, True, False, False]).tolist() == pure


def test_verify_one_never_raises():
    assert verify_one("4", r"\boxed{4}".replace(r"\boxed{", "").rstrip("}")) == Grade(True, "ok")
    assert verify_one("4", None) == Grade(False, "no_answer")
    assert verify_one("1.5", "10^{10^{10^{10^{10^{10}}}}}", timeout_s=1.0).status == "timeout"


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
    items.insert(4, ("1.5", hang))
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


# ----------------------------------------------------------------------------- faults

HANG = "10^{10^{10^{10^{10^{10}}}}}"  # math-verify's verify never returns on it
# (graded against non-integer golds: against an integer it is a computation, wrong unseen)


def _gone(pid: int) -> bool:
    """Exited (a zombie counts: nothing of it runs any more)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


OWNER = """
import multiprocessing.forkserver as fs, multiprocessing.resource_tracker as rt
import sys, threading, time
from confagg.grading import Grader
if __name__ == "__main__":
    g = Grader(workers=2, timeout_s=600)
    threading.Thread(target=g.grade, args=([("1.5", sys.argv[1]), ("2.5", sys.argv[1] + "+1")],),
                     daemon=True).start()
    while len(g.worker_pids()) < 2:
        time.sleep(0.1)
    time.sleep(1.0)  # both workers are inside math-verify now
    print("PIDS", *g.worker_pids(), fs._forkserver._forkserver_pid, rt._resource_tracker._pid,
          flush=True)
    time.sleep(600)
"""


def test_workers_fork_server_and_tracker_die_with_a_killed_owner(tmp_path):
    # SIGKILL to the owner alone (as the OOM killer sends it): before, both workers
    # stayed inside sympy at full CPU, with the fork server and resource tracker.
    script = tmp_path / "owner.py"
    script.write_text(OWNER)
    proc = subprocess.Popen([sys.executable, str(script), HANG], stdout=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("PIDS"), line
        pids = [int(x) for x in line.split()[1:]]
        assert len(pids) == 4 and not any(_gone(p) for p in pids)
    finally:
        proc.kill()  # the owner's PID only
        proc.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(_gone(p) for p in pids):
        time.sleep(0.2)
    assert [p for p in pids if not _gone(p)] == []


def test_a_worker_killed_mid_batch_has_its_batch_requeued():
    # The worker holds a whole batch when it is killed (stopped first, so that it has
    # not answered any of it): before, the head was marked an error and the rest was
    # lost (KeyError on the first of them).
    import os
    import signal
    import threading

    items = [("1/2", f"{i}/{2 * i}") for i in range(1, 9)] + [("2/3", "0.5")]
    with Grader(workers=1, timeout_s=5.0) as g:
        g.grade([("1/4", "0.25")])  # the worker is up
        (pid,) = g.worker_pids()
        os.kill(pid, signal.SIGSTOP)
        out = {}
        t = threading.Thread(target=lambda: out.update(grades=g.grade(items)))
        t.start()
        time.sleep(1.0)  # the batch is in the stopped worker's pipe
        os.kill(pid, signal.SIGKILL)
        t.join(120)
        assert not t.is_alive()
        assert g.stats["worker_deaths"] == 1 and g.worker_pids() != [pid]
    assert out["grades"] == [Grade(True, "ok")] * 8 + [Grade(False, "ok")]


def test_a_worker_killed_while_idle_is_replaced_on_the_next_call():
    import os
    import signal

    with Grader(workers=1, timeout_s=5.0) as g:
        g.grade([("1/4", "0.25")])
        (pid,) = g.worker_pids()
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        assert g.grade([("1/3", r"\frac{2}{6}")]) == [Grade(True, "ok")]
        assert g.worker_pids() != [pid]


def test_an_item_whose_worker_dies_twice_is_an_error_not_a_hang():
    import os
    import signal
    import threading

    with Grader(workers=1, timeout_s=600) as g:
        g.grade([("1/4", "0.25")])
        out = {}
        t = threading.Thread(target=lambda: out.update(grades=g.grade([("1.5", HANG)])))
        t.start()
        killed = []
        deadline = time.monotonic() + 60
        while len(killed) < 2 and time.monotonic() < deadline:
            pids = g.worker_pids()
            if pids and pids[0] not in killed:
                time.sleep(0.5)  # it has the item
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)
        t.join(60)
        assert not t.is_alive() and len(killed) == 2
    assert out["grades"] == [Grade(False, "error")]


def test_the_limit_is_cpu_time_so_a_starved_worker_keeps_its_verdict():
    # A worker that gets no CPU for longer than the limit (a busy machine; here it is
    # stopped) still finishes: before, an equivalent form scored as a timeout under load.
    import os
    import signal

    with Grader(workers=1, timeout_s=1.0) as g:
        g.grade([("1/4", "0.25")])
        (pid,) = g.worker_pids()
        os.kill(pid, signal.SIGSTOP)
        timer = __import__("threading").Timer(3.0, os.kill, (pid, signal.SIGCONT))
        timer.start()
        start = time.monotonic()
        grades = g.grade([("42", r"\frac{84}{2}")])
        elapsed = time.monotonic() - start
        timer.join()
    assert grades == [Grade(True, "ok")]
    assert elapsed >= 2.5  # the wall clock passed the limit


def test_concurrent_callers_get_sequential_verdicts():
    from concurrent.futures import ThreadPoolExecutor

    items = [(r"\frac{1}{2}", "0.5"), ("3/4", "0.75"), ("2", "2.0"), (r"\sqrt{2}", "1.41"),
             ("x^2+1", "1+x^2"), ("12", "12"), ("7", "8"), (r"\pi", r"\pi")] * 8
    with Grader(workers=2, timeout_s=5.0) as g:
        expected = [g.grade([it])[0] for it in items[:8]] * 8
    with Grader(workers=2, timeout_s=5.0) as g, ThreadPoolExecutor(64) as ex:
        got = list(ex.map(lambda it: g.grade([it])[0], items, timeout=120))
    assert got == expected and all(x.status == "ok" for x in got)


def test_the_cache_is_bounded_and_a_call_larger_than_it_still_answers():
    items = [("1/2", f"{i}/{2 * i + 1}") for i in range(1, 41)] + [("1/2", "5/10")]
    with Grader(workers=1, timeout_s=5.0, cache_size=10) as g:
        grades = g.grade(items)
        assert len(g._cache) == 10
    assert [x.correct for x in grades] == [False] * 40 + [True]


def test_clusters_of_many_slow_answers_are_bounded_and_say_so():
    # 16 distinct answers on which verify hangs, after a few normal ones: before, each
    # was compared with every cluster, each comparison waiting out the limit (12 such
    # answers: 37 s at 1 s; these 16: about 150 comparisons at the limit).
    slow = [f"{b}^{{{b}^{{{b}^{{{b}^{{{b}^{{{b}}}}}}}}}}}" for b in range(2, 18)]
    answers = ["1/2", "0.5", r"\frac{2}{4}", "x+1", "1+x", *slow, "3"]
    with Grader(workers=2, timeout_s=1.0) as g:
        start = time.monotonic()
        ids = cluster_answers(answers, g)  # default caps
        elapsed = time.monotonic() - start
        stats = dict(g.stats)
    assert ids[:5].tolist() == [0, 0, 0, 1, 1]
    assert len(set(ids[5:-1].tolist())) == len(slow)  # unresolved ones stand alone
    assert stats["cluster_timeouts"] <= 4 + 1  # the default cap, plus the rest of a round
    assert stats["cluster_unresolved"] >= len(slow) - stats["cluster_timeouts"] - 1
    assert g.pool.stats["wall_timeouts"] == 0
    assert elapsed < 90, elapsed


def test_cheap_keys_join_equal_numbers_only():
    from confagg.grading import cheap_key

    same = [("1/2", "0.5"), (r"\frac{1}{2}", r"\dfrac{1}{2}"), ("-3", r"-\frac{6}{2}"),
            ("12", "12.0"), ("x^2 + 1", "x^2+1"), (r"\left(1,2\right)", "(1,2)")]
    different = [("1/2", "0.50001"), (r"\pi r", r"\pir"), ("10\\%", "10"), ("0.1", "10\\%")]
    assert all(cheap_key(a) == cheap_key(b) for a, b in same)
    assert all(cheap_key(a) != cheap_key(b) for a, b in different)


def test_an_unevaluated_computation_is_not_an_integer_answer(grader):
    """Restating the problem ("3 - 2" for 1) is not an answer: math-verify evaluates it
    and calls it right, and the study's trained aggregator learned to do just that
    (209 of its 214 right answers). Where the gold is an integer, an answer that still
    holds an operation between numbers is wrong; plain forms of the number stay right."""
    restated = [("1", "3 - 2"), ("32", "8 * 4"), ("15", "8 + 7"), ("1", "3/3"),
                ("1000", "10^{3}"), ("6", r"2 \cdot 3"), ("12", r"3 \times 4"), ("12", "15 \n- 3")]
    assert grader.grade(restated) == [Grade(False, "ok")] * len(restated)
    plain = [("1", "1"), ("-3", "-3"), ("5", "5.0"), ("1000", "1000"), ("2", r"\frac{4}{2}"),
             ("12", "+12")]
    assert [g.correct for g in grader.grade(plain)] == [True] * len(plain)
    # not an integer gold: expressions are answers (HMMT's gold is one)
    assert grader.grade([(r"2^{25} \cdot 26!", r"26! \cdot 2^{25}"), ("0.5", "1/2")]) == [
        Grade(True, "ok")] * 2
