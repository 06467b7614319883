# Input and parameter functions of the evaluation rules (rules/evaluate.smk).
from confagg.methods import model_run


def agg_model_path(wc):
    """The method's model (confagg/methods.py): the confidence run's (the evaluation's
    {run}), the AggLM run's (training.agglm_run) or the base aggregator."""
    run = model_run(wc.method, run=wc.run, agglm_run=AGGLM_RUN)
    return model_path(AGGREGATOR) if run is None else f"results/train/{run}/model"


def agg_model_input(wc):
    """The input behind agg_model_path: the trained model folder, or the base model's."""
    run = model_run(wc.method, run=wc.run, agglm_run=AGGLM_RUN)
    return model_input(AGGREGATOR) if run is None else [f"results/train/{run}/model"]
