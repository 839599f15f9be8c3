"""The MLflow layer: ``runs`` (one parent run per search, one child run per trial, reading
searches back) and ``ui`` (what MLflow's UI shows of them: saved views, run colours,
descriptions, Pareto rank tags). Built on the fronts layer and the core; never imports the
search layer (``skipnet.tune``)."""
