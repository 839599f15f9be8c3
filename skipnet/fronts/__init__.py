"""Accuracy/computation fronts: ``pareto`` (the non-dominated ranks, crowding and hypervolume
maths, numpy only), ``analysis`` (a search's trials as points: front, hypervolume, knee, the
trial an export names, the front's CSV and markdown) and ``plots`` (its PNG and HTML). Pure
data: imports only the core's errors, never ray, mlflow, optuna or a layer above."""
