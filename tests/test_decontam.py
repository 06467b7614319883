"""Decontamination: training problems that overlap a benchmark problem are dropped; the
built-in generator's train and test splits never overlap."""

from __future__ import annotations

import json

import pytest
from confagg.builtin_arith import generate_problems
from confagg.decontam import decontaminate, ngrams, normalize, report_markdown

BENCH = {"b": [{"id": "b1", "problem": "Compute 1 + 9."},
               {"id": "b2", "problem": "Let x be the largest prime factor of 2024 such that "
                                       "x divides the sum of its digits. Find x."}]}


def test_same_text_and_shared_words_are_caught():
    train = [
        {"id": "spacing", "problem": "compute   1+9 ."},              # same text, other form
        {"id": "minus", "problem": "Compute 1 - 9."},                  # another problem
        {"id": "eight", "problem": "Note: the largest prime factor of 2024 such that x "
                                   "divides 7."},                      # 8 shared words
        {"id": "seven", "problem": "Find a largest prime factor of 2024 such that y."},
    ]
    rep = decontaminate(train, BENCH, n=8)
    got = {d["id"]: d for d in rep["dropped"]}
    assert set(got) == {"spacing", "eight"}
    assert got["spacing"]["reason"] == "same text" and got["spacing"]["benchmark_id"] == "b1"
    assert got["eight"]["reason"] == "shared 8-gram"
    assert got["eight"]["ngram"] == "the largest prime factor of 2024 such that"
    assert rep["kept"] == 2 and rep["train_problems"] == 4 and rep["benchmarks"] == {"b": 2}
    # 7 words shared: caught at n=7, not at n=8
    assert {d["id"] for d in decontaminate(train, BENCH, n=7)["dropped"]} == \
        {"spacing", "eight", "seven"}
    md = report_markdown(rep, "mytrain")
    assert "4 problems of `mytrain`" in md and "| eight | shared 8-gram | b | b2 |" in md
    assert normalize("Compute 1+9.") == normalize("compute 1 + 9 .") != normalize("1 - 9")


def test_index_lookups_agree_with_comparing_every_pair(shared_data):
    """On the public excerpts (benchmarks as they are, training problems from the MATH
    train excerpt, GSM8K and edited copies of benchmark problems), the hash lookups drop
    exactly what comparing every training problem with every benchmark problem drops."""
    bench = {}
    for path in sorted((shared_data / "benchmarks").glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        bench[path.stem] = [{"id": r.get("id", r.get("unique_id", i)), "problem": r["problem"]}
                            for i, r in enumerate(rows)]
    train = []
    for path in sorted((shared_data / "train").glob("*.jsonl")):
        for i, line in enumerate(path.read_text().splitlines()):
            r = json.loads(line)
            train.append({"id": f"{path.stem}-{i}", "problem": r.get("problem", r.get("question"))})
    for i, r in enumerate(bench["math500"][:20]):
        words = r["problem"].split()
        edited = {0: r["problem"].upper(),                       # same text, other case
                  1: "Hint: " + " ".join(words[:9]) + " and so on.",  # a 9-word excerpt
                  2: " ".join(words[:5]) + " something else",     # 5 words only
                  3: " ".join(reversed(words))}.get(i % 4)
        train.append({"id": f"edit-{i}", "problem": edited})
    for n in (5, 8, 12):
        got = {d["id"] for d in decontaminate(train, bench, n=n)["dropped"]}
        expected = set()
        for t in train:
            grams = set(ngrams(t["problem"], n))
            for rows in bench.values():
                for b in rows:
                    if normalize(t["problem"]) == normalize(b["problem"]) or \
                            grams & set(ngrams(b["problem"], n)):
                        expected.add(t["id"])
        assert got == expected, n
        assert {"edit-0", "edit-4"} <= got                       # copies are always caught
        assert (n <= 9) == ("edit-1" in got)


@pytest.mark.parametrize("knobs", [dict(max_operands=2, max_value=10),
                                   dict(max_operands=4, max_value=20, word_fraction=0.3)])
def test_builtin_train_and_test_splits_share_no_problem(knobs):
    train = list(generate_problems(n_problems=600, seed=0, split="train", **knobs))
    test = list(generate_problems(n_problems=600, seed=1, split="test", **knobs))
    rep = decontaminate(train, {"test": test}, n=8)
    assert rep["dropped"] == []
    assert not {normalize(r["problem"]) for r in train} & {normalize(r["problem"]) for r in test}
    # without the split the same seeds do overlap (the defect the split removes)
    whole = decontaminate(generate_problems(n_problems=600, seed=0, **knobs),
                          {"test": list(generate_problems(n_problems=600, seed=1, **knobs))})
    assert whole["dropped"]
    # both kinds of problem in both splits, and the same arguments give the same rows
    assert any(r["problem"].startswith("Compute") for r in test)
    assert any(r["problem"].endswith("now?") for r in test)
    assert train == list(generate_problems(n_problems=600, seed=0, split="train", **knobs))
    with pytest.raises(ValueError, match="split must be train, test or null, got 'val'"):
        next(generate_problems(split="val"))


def test_a_benchmark_not_cleaned_against_is_reported_with_its_overlap(tmp_path):
    """A benchmark added after training (not in curation.decontaminate_against) is checked
    against the training problems kept; its overlap reaches summary.md."""
    import importlib.util
    from pathlib import Path
    from types import SimpleNamespace

    from confagg.report import overlap_markdown

    def jsonl(name, rows):
        path = tmp_path / name
        path.write_text("".join(json.dumps({**r, "answer": "1"}) + "\n" for r in rows))
        return str(path)

    train = jsonl("train.jsonl", [{"id": "t1", "problem": "Compute 1 + 9."},
                                  {"id": "t2", "problem": "Compute 2 + 2."},
                                  {"id": "t3", "problem": "Compute 5 + 5."}])
    decon = tmp_path / "decon.json"  # t3 was dropped when training was cleaned
    decon.write_text(json.dumps({"dropped": [{"id": "t3"}]}))
    bench = jsonl("late.jsonl", [{"id": "x1", "problem": "compute 1+9 ."},
                                 {"id": "x2", "problem": "Compute 5 + 5."},
                                 {"id": "x3", "problem": "Compute 7 + 1."}])
    script = Path(__file__).resolve().parents[1] / "workflow/scripts/curate_benchmark_overlap.py"
    spec = importlib.util.spec_from_file_location("overlap_script", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "late.json"
    mod.main(SimpleNamespace(
        input=SimpleNamespace(train=train, decontamination=str(decon), benchmark=bench),
        output=[str(out)], params=SimpleNamespace(ngram=8),
        wildcards=SimpleNamespace(benchmark="late"), log=[str(tmp_path / "log")]))
    rep = json.loads(out.read_text())
    # x2 matches only the dropped t3, so it is clean; x1 matches the kept t1
    assert rep["overlapping_benchmark_ids"] == ["x1"]
    assert rep["training_problems"] == 2 and rep["benchmark_problems"] == 3
    md = overlap_markdown([rep])
    assert "late: of 3 problems, **1 overlap**" in md and "x1" in md
    assert "none overlaps" in overlap_markdown([{**rep, "overlapping_benchmark_ids": []}])
