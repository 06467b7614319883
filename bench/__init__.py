"""`make bench`: how fast the pipeline does its work, each figure against a baseline.

Run: ``python -m bench`` (``make bench``), ``--quick`` for small sizes and one
run without the vLLM engine (the test suite's mode). Every figure is a ratio of two
timings taken in the same run, project and baseline interleaved (their order
alternates from round to round), and the median over rounds, so it holds on a noisy
machine. Each stage runs in its own process: its peak RSS is its own.

Stages and figures (docs/performance.md explains them):
- generation: the generate rule's shard function (`generation.generate_shard`, given
  the started engine) against a bare ``LLM.generate`` on the same prompts and
  sampling parameters -> ``gen_overhead_ratio``; throughput with and without
  ``logprobs=20``. Before each timed call the engine's worker is reseeded, so every
  variant samples the very same tokens (checked).
- confidence: the project's per-completion path (``completion_confidence`` +
  ``trace_stats``, as the generate rule calls them) against a per-token Python loop
  written like DeepConf's reference (``helper.py``: a mean per position, a mean per
  sliding window), on the same log-probs in vLLM's flat layout ->
  ``confidence_speedup`` (their statistics must agree).
- grading: ``Grader.grade`` against naive serial math-verify (parse gold and answer
  for every sample, no cache of its own) on a pool built from MATH-500's answers ->
  ``grading_speedup``, ``grading_agreement``. Each timed run is a fresh process and
  both are timed from a cold start (the naive one's import of math-verify, the
  project's fork server importing it and starting its workers).
- storage: ``samples.parquet`` made by the project's writers (shards -> merge -> grade)
  -> ``conf_bytes_per_token`` (the token_conf column's bytes on disk per token).
- evaluation: Stage 4's model-free estimators on a 30-problem x 128-sample pool at
  every budget -> ``eval_seconds``.
- online: DeepConf online (``generation.online``, consensus 0.95 unless set) against
  offline sampling of the same built-in problems, same n, same engine reseeded alike ->
  ``online_token_ratio`` (tokens online / offline) and ``online_accuracy_delta`` (the
  online vote over the traces not stopped early minus the offline weighted vote over
  all n; both weighted by ``curation.confidence_metric``, graded by math-verify).
- train: GRPO steps of the TRL job's ``train`` on the bundled model, full-parameter and
  LoRA (``training.lora``), one process each -> ``train_lora_step_ratio`` (wall), CPU
  seconds per step, trainable parameters, peak RSS (``--only train`` runs it alone).
"""
# One module per concern: common (sizes, targets, shared data, the vLLM lock), data
# (synthetic inputs), baselines (what the project is timed against), stages (the CPU
# stages), engine and online (the stages that start vLLM), runner (one process per
# stage), cli (arguments, report, table). Outside the `confagg` job library on purpose.
