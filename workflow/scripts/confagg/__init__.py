"""Conf-AggLLM: confidence-aware aggregation of sampled math solutions.

The library behind the Snakemake workflow; each rule's entry script in
workflow/scripts/ is a thin wrapper around one function here.
"""

__version__ = "0.1.0"
