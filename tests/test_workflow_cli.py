"""The real Snakemake CLI: config validation, dry-run DAGs, lint, and the data rules."""

from __future__ import annotations

import json

import pytest
import yaml
from confagg.config import ConfigError, load_config
from conftest import BASE_CONFIGS, REPO, job_counts, run_snakemake


def overlay(tmp_path, name, data) -> list:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return [*BASE_CONFIGS, path]


@pytest.mark.parametrize("data, message", [
    ({"generation": {"n": "many"}}, "config key 'generation.n': 'many' is not of type 'integer'"),
    ({"generation": {"temprature": 0.7}},
     "config key 'generation': Additional properties are not allowed ('temprature' was "
     "unexpected)"),
    ({"datasets": {"extra": {"split": "test"}}},
     "config key 'datasets.extra': 'source' is a required property"),
    ({"datasets": {"extra": {"source": "ftp://x"}}},
     "config key 'datasets.extra.source': 'ftp://x' does not match"),
    ({"benchmarks": ["arith_test", "nope"]},
     "config key 'benchmarks[1]': dataset 'nope' is not defined under 'datasets'"),
    ({"solver": "gpt-9"}, "config key 'solver': model 'gpt-9' is not defined under 'models'"),
])
def test_bad_config_fails_before_any_job_naming_the_key(tmp_path, data, message):
    proc = run_snakemake(tmp_path, "-n", configfiles=overlay(tmp_path, "bad.yaml", data),
                         check=False)
    assert proc.returncode != 0
    assert message in proc.stdout, proc.stdout[-2000:]
    assert not (tmp_path / "resources").exists()


@pytest.mark.parametrize("data, message", [
    # JSON Schema counts 4.0 as an integer; it used to fail in merge on range(4.0)
    ({"generation": {"n": 4.0}}, "config key 'generation.n': 4.0 is not of type 'integer'"),
    ({"training": {"trl": {"max_steps": 2.0}}},
     "config key 'training.trl.max_steps': 2.0 is not of type 'integer'"),
    # single braces in \boxed{} used to fail only once the vLLM engine had started
    ({"models": {"smollm2-135m": {"prompt_template": "{problem} Put it in \\boxed{}."}}},
     "config key 'models.smollm2-135m.prompt_template': '{problem} Put it in \\\\boxed{}.' "
     "is not a str.format template with {problem} only (placeholder(s) {} besides {problem}); "
     "write literal braces doubled, e.g. \\boxed{{}}"),
    ({"models": {"smollm2-135m": {"prompt_template": "{problem} {answer}"}}},
     "config key 'models.smollm2-135m.prompt_template': '{problem} {answer}' is not a "
     "str.format template with {problem} only (placeholder(s) {answer} besides {problem})"),
    ({"models": {"smollm2-135m": {"prompt_template": "{problem} }"}}},
     "config key 'models.smollm2-135m.prompt_template': '{problem} }' is not a str.format "
     "template with {problem} only (Single '}' encountered in format string)"),
    # k larger than the training pool's samples used to fail in curation
    ({"curation": {"k_values": [1, 2, 8]}},
     "config key 'curation.k_values': [8] exceed the 4 samples per problem of train_dataset "
     "'arith_train' (generation.n)"),
    ({"datasets": {"arith_train": {"n_samples": 1}}},
     "config key 'curation.k_values': [2] exceed the 1 samples per problem of train_dataset "
     "'arith_train' (datasets.arith_train.n_samples)"),
    # TRL's own check (generation batch in whole groups) used to fire inside the trainer
    ({"training": {"trl": {"per_device_batch_size": 6}}},
     "config key 'training.trl.per_device_batch_size': 6 x gradient_accumulation_steps 1 = 6 "
     "completions per generation batch is not a multiple of training.group_size 4"),
    ({"benchmarks": ["arith_test", "arith_test"]},
     "config key 'benchmarks[1]': 'arith_test' is listed twice (first at benchmarks[0])"),
    ({"benchmarks": ["arith_test", "arith_train"]},
     "config key 'benchmarks[1]': 'arith_train' is also the train_dataset"),
])
def test_cross_key_rules_are_checked_at_validation(tmp_path, data, message):
    with pytest.raises(ConfigError) as err:
        load_config(*overlay(tmp_path, "bad.yaml", data))
    assert str(err.value).startswith(message), str(err.value)


def test_cross_key_rules_accept_what_works(tmp_path):
    """TRL's rule is on the product with gradient accumulation; a trainer that is not TRL
    does not read trl.*; a doubled brace is a literal."""
    cfg = load_config(*overlay(tmp_path, "ok.yaml", {
        "training": {"trl": {"per_device_batch_size": 2, "gradient_accumulation_steps": 2}},
        "models": {"smollm2-135m": {"prompt_template": "{problem}\nAnswer in \\boxed{{}}."}},
        "curation": {"k_values": [1, 4]}}))
    assert cfg["training"]["trl"]["per_device_batch_size"] == 2
    load_config(*overlay(tmp_path, "ok2.yaml", {
        "training": {"trainer": "openrlhf", "trl": {"per_device_batch_size": 6}}}))


def test_a_key_given_twice_in_a_config_file_is_refused(tmp_path):
    """PyYAML (and so Snakemake) keeps the last of two equal keys without a word."""
    dup = tmp_path / "dup.yaml"
    dup.write_text("generation:\n  n: 4\n  shards: 2\n  n: 8\n")
    with pytest.raises(ConfigError, match=r"dup.yaml, line 4: duplicate key 'n' \(first at "
                                          r"line 2\)"):
        load_config(*BASE_CONFIGS, dup)
    proc = run_snakemake(tmp_path, "-n", configfiles=[*BASE_CONFIGS, dup], check=False,
                         lock=False)  # a dry run starts no engine
    assert proc.returncode != 0
    assert f"{dup}, line 4: duplicate key 'n' (first at line 2)" in proc.stdout, \
        proc.stdout[-2000:]


def test_schema_defaults_fill_the_config():
    cfg = load_config(REPO / "config.yaml")
    assert cfg["generation"]["top_p"] == 0.95 and cfg["generation"]["top_k"] == 20
    assert cfg["generation"]["min_p"] == 0.0 and cfg["generation"]["logprobs"] == 20
    assert cfg["generation"]["shards"] == 4
    assert cfg["datasets"]["deepscaler"]["fields"] == {"id": None, "problem": "problem",
                                                      "answer": "answer"}
    assert cfg["models"]["qwen3-1.7b"]["chat_template_kwargs"] == {"enable_thinking": True}
    assert cfg["models"]["qwen2.5-1.5b"]["path"] == "Qwen/Qwen2.5-1.5B-Instruct"


def test_missing_required_key_is_named(tmp_path):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    del cfg["solver"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="config key '<top level>': 'solver' is a required "
                                          "property"):
        load_config(tmp_path / "c.yaml")


def test_gpu4_dry_run_prints_the_full_scale_dag_without_a_gpu(tmp_path):
    proc = run_snakemake(tmp_path, "-n", profile="gpu4", configfiles=[])
    counts = job_counts(proc.stdout)
    # deepscaler + the four benchmarks, each normalized once, from the Hub.
    assert counts["prepare_dataset"] == 5
    assert "prepare_bundled_model" not in counts  # Hub models need no preparation rule
    for name in ("deepscaler", "aime24", "aime25", "hmmt24", "hmmt25"):
        assert f"resources/datasets/{name}.jsonl" in proc.stdout


def test_study_profile_plans_the_study_of_docs_study_md(tmp_path):
    """profiles/study (make study): two training runs, three aggregators, a held-out
    benchmark of 100 problems from the builtin set's test half."""
    proc = run_snakemake(tmp_path, "-n", profile="study", configfiles=[], lock=False)
    counts = job_counts(proc.stdout)
    assert counts["train_trl"] == 2 and counts["aggregate"] == 3
    for run in ("confagg-grpo", "agglm-grpo"):
        assert f"results/train/{run}/model" in proc.stdout
    study = yaml.safe_load((REPO / "profiles/study/study.yaml").read_text())
    held_out = study["datasets"][study["benchmarks"][0]]["builtin"]
    assert held_out["n_problems"] >= 100 and held_out["split"] == "test"


def test_rulegraph_and_dag_render(tmp_path):
    proc = run_snakemake(tmp_path, "--rulegraph", profile=None)
    assert "digraph snakemake_dag" in proc.stdout
    assert 'label = "prepare_dataset"' in proc.stdout
    assert 'label = "prepare_bundled_model"' in proc.stdout
    proc = run_snakemake(tmp_path, "--dag", profile=None)
    assert "digraph snakemake_dag" in proc.stdout


def test_lint_is_clean(tmp_path):
    proc = run_snakemake(tmp_path, "--lint", profile=None, check=False)
    assert proc.returncode == 0, proc.stdout
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout, proc.stdout


def test_prepare_dataset_rule_on_shared_files_and_bad_rows(tmp_path, shared_data):
    """A bad dataset fails its own job with the file/row/field in the log; the good
    dataset finished beside it stays."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem": "p", "answer": 27.0}) + "\n")
    files = overlay(tmp_path, "o.yaml", {"datasets": {
        "hmmt25": {"source": f"file:{shared_data}/benchmarks/hmmt_feb_2025.jsonl",
                   "fields": {"id": "id"}},
        "mathtrain": {"source": f"file:{shared_data}/train/math_train.jsonl",
                      "on_bad_rows": "skip"},
        "broken": {"source": f"file:{bad}"},
    }})
    run_snakemake(tmp_path, "resources/datasets/hmmt25.jsonl",
                  "resources/datasets/mathtrain.jsonl", configfiles=files)
    rows = [json.loads(line) for line in open(tmp_path / "resources/datasets/hmmt25.jsonl")]
    assert len(rows) == 4 and rows[2]["answer"] == r"2^{25} \cdot 26!"
    log = (tmp_path / "logs/data/prepare_dataset/mathtrain.log").read_text()
    assert "kept 7 rows, skipped 4 (2 answer is missing, 2 answer is empty)" in log

    proc = run_snakemake(tmp_path, "resources/datasets/broken.jsonl", configfiles=files,
                         check=False)
    assert proc.returncode != 0
    log = (tmp_path / "logs/data/prepare_dataset/broken.log").read_text()
    assert f"{bad}, row 1, field 'answer': answer is not a string (float 27.0)" in log
    assert not (tmp_path / "resources/datasets/broken.jsonl").exists()
    assert (tmp_path / "resources/datasets/hmmt25.jsonl").exists()


def test_bundled_model_rule_makes_a_plain_hf_folder(bundled_model):
    cfg = json.loads((bundled_model / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in cfg
    assert (bundled_model / "model.safetensors").stat().st_size > 500e6  # float32, 134.5M
    tok_cfg = (bundled_model / "chat_template.jinja").read_text()
    assert "<|im_start|>" in tok_cfg
