"""Training: pure step functions (``steps``) and the ``Engine`` loop that runs them."""
from skipnet.core.train.engine import Engine
from skipnet.core.train.steps import StepMetrics, gate_returns, hrl_step, reinforce_loss, supervised_step

__all__ = ["Engine", "StepMetrics", "gate_returns", "hrl_step", "reinforce_loss", "supervised_step"]
