"""The MLflow layer: ``runs`` (one parent run per search, one child run per trial, reading
searches back), ``sync`` (MLflow made to hold what a search's storage holds of its trials:
``skipnet sync-mlflow``) and ``ui`` (what MLflow's UI shows of them: saved views, run colours,
descriptions, Pareto rank tags). Built on the fronts layer and the core; never imports the
search layer (``skipnet.tune``)."""
