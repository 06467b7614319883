"""The shared aggregation prompt and the confidence scale."""

import numpy as np
import pytest
from confagg.prompts import (
    TRUNCATION_MARKER,
    ConfidenceCalibration,
    build_aggregation_prompt,
    confidence_values,
)
from transformers import AutoTokenizer


@pytest.fixture(scope="module")
def tokenizer(bundled_model):
    return AutoTokenizer.from_pretrained(bundled_model)


def test_prompt_holds_problem_candidates_confidences_and_instruction():
    p = build_aggregation_prompt("What is 2+3?", ["2+3=5 so \\boxed{5}", "It is \\boxed{6}"],
                                 [91.6, 12.0])
    assert p.startswith("Problem:\nWhat is 2+3?\n")
    assert "Candidate solution 1 (confidence: 92/100):\n2+3=5 so \\boxed{5}" in p
    assert "Candidate solution 2 (confidence: 12/100):\nIt is \\boxed{6}" in p
    assert p.index("Candidate solution 1") < p.index("Candidate solution 2")
    assert p.rstrip().endswith("End with the final answer in \\boxed{}.")
    assert "percentile" in p


def test_the_prompt_says_which_scale_its_numbers_are_on():
    cal = ConfidenceCalibration.fit(np.arange(1.0, 11.0), "conf_bottom10")
    raw = np.array([9.5, 2.0, np.nan])
    assert confidence_values(raw, cal, "percentile") == [pytest.approx(94.44, abs=0.01),
                                                         pytest.approx(11.11, abs=0.01), None]
    assert confidence_values(raw, cal, "raw") == [9.5, 2.0, None]
    cands = ["\\boxed{5}", "\\boxed{6}", "\\boxed{7}"]
    pct = build_aggregation_prompt("Q", cands, confidence_values(raw, cal, "percentile"))
    assert "confidence: 94/100" in pct and "percentile" in pct and "raw" not in pct
    p = build_aggregation_prompt("Q", cands, confidence_values(raw, cal, "raw"), scale="raw")
    assert "Candidate solution 1 (confidence: 9.50):" in p
    assert "Candidate solution 2 (confidence: 2.00):" in p
    assert "Candidate solution 3 (confidence: not available):" in p
    assert "/100" not in p and "percentile" not in p
    assert "raw confidence" in p and "no fixed range" in p
    with pytest.raises(ValueError, match="unknown confidence scale 'rank'"):
        build_aggregation_prompt("Q", cands, [1.0, 2.0, 3.0], scale="rank")
    with pytest.raises(ValueError, match="unknown confidence scale 'rank'"):
        confidence_values(raw, cal, "rank")


def test_confidence_can_be_hidden():
    p = build_aggregation_prompt("Q", ["a", "b"], [50.0, 60.0], show_confidence=False)
    assert "confidence" not in p.lower()
    assert "Candidate solution 2:\nb" in p


def test_brief_style_is_short_and_keeps_what_the_aggregator_needs(tokenizer):
    cands, conf = ["2+3=5 so \\boxed{5}", "It is \\boxed{6}"], [91.6, 12.0]
    brief = build_aggregation_prompt("What is 2+3?", cands, conf, style="brief")
    assert brief.startswith("Problem:\nWhat is 2+3?\n")
    assert "Solution 1 (confidence: 92/100):\n2+3=5 so \\boxed{5}" in brief
    assert "Solution 2 (confidence: 12/100):\nIt is \\boxed{6}" in brief
    assert "higher confidence" in brief.lower() and brief.rstrip().endswith("\\boxed{answer}.")
    hidden = build_aggregation_prompt("What is 2+3?", cands, conf, style="brief",
                                      show_confidence=False)
    assert "confidence" not in hidden.lower() and "Solution 2:\nIt is" in hidden
    agglm = build_aggregation_prompt("What is 2+3?", cands, conf)

    def n(s):
        return len(tokenizer.encode(s, add_special_tokens=False))

    assert n(brief) < n(agglm) - 50  # the instruction is most of a short prompt
    long_a = " ".join(f"step{i} of the reasoning" for i in range(400)) + " so \\boxed{17}"
    cut = build_aggregation_prompt("Find x.", [long_a, "\\boxed{5}"], [10.0, 50.0],
                                   token_budget=256, tokenizer=tokenizer, style="brief")
    assert n(cut) <= 256 and "\\boxed{17}" in cut and TRUNCATION_MARKER in cut
    with pytest.raises(ValueError, match="unknown prompt style 'terse'"):
        build_aggregation_prompt("Q", ["a"], [1.0], style="terse")


def test_mismatched_inputs_are_errors():
    with pytest.raises(ValueError, match="2 candidates but 1 confidences"):
        build_aggregation_prompt("Q", ["a", "b"], [1.0])
    with pytest.raises(ValueError, match="needs the aggregator's tokenizer"):
        build_aggregation_prompt("Q", ["a" * 10000], [1.0], token_budget=300)


def test_truncation_keeps_each_candidates_ending(tokenizer):
    long_a = " ".join(f"step{i} of the reasoning" for i in range(400)) + " so \\boxed{17}"
    long_b = " ".join(f"idea{i} here" for i in range(300)) + " hence \\boxed{23}"
    short = "Quick: \\boxed{5}"
    p = build_aggregation_prompt("Find x.", [long_a, short, long_b], [10.0, 50.0, 90.0],
                                 token_budget=600, tokenizer=tokenizer)
    assert len(tokenizer.encode(p, add_special_tokens=False)) <= 600
    assert p.count(TRUNCATION_MARKER) == 2
    assert "\\boxed{17}" in p and "\\boxed{23}" in p and short in p  # endings survive
    assert "step0 of" not in p and "step399 of the reasoning so" in p
    untouched = build_aggregation_prompt("Find x.", [short], [1.0], token_budget=600,
                                         tokenizer=tokenizer)
    assert TRUNCATION_MARKER not in untouched


def test_calibration_percentiles_roundtrip(tmp_path):
    values = np.arange(1.0, 101.0)
    cal = ConfidenceCalibration.fit(np.concatenate([values, [np.nan]]), "conf_tail")
    assert cal.n == 100
    assert cal([1.0, 50.5, 100.0, -5.0, 1e9]).tolist() == pytest.approx([0, 50, 100, 0, 100])
    cal.to_json(tmp_path / "c.json")
    again = ConfidenceCalibration.from_json(tmp_path / "c.json")
    assert again.metric == "conf_tail"
    assert again([25.75]).tolist() == pytest.approx(cal([25.75]).tolist())
