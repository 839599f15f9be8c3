"""What SP then HRL learn on the synthetic data set in a short CPU run, with the default recipe,
for both gate types (a SkipNet-20 at quickstart size: its SP, HRL 200 iterations):

* SP is within 3 points of the plain ResNet trained the same way, executing most blocks;
* at a mid alpha HRL routes: computation between 30 % and 70 %, and harder images (the data
  set's known difficulty) execute more: the Spearman correlation of per-image executed FLOPs
  with difficulty is at least 0.3 (measured 0.66 feedforward at alpha 5 at 64.9 % computation,
  0.49 recurrent at 2.5 at 54.4 %, one thread a run; at two threads 0.59 and 0.60;
  before the robust SP 0.55 and 0.39 at 2.5, feedforward 0.42-0.55 over seeds 0-2; before the
  straight-through gradient and the random-path loss -0.09 to 0.41 over seeds), and
  computation falls as alpha rises;
* every trained model is a curve: sweeping the execute threshold passes through at least 3
  distinct computation levels between 20 % and 90 % (a constant or saturated policy does not).
"""
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from scipy.stats import spearmanr

from skipnet.core.config import load_train_config
from skipnet.core.train import Engine

BASE = {"data.synthetic_size": 4000, "data.synthetic_test_size": 500, "data.val_size": 500,
        "sp.batch_size": 64, "sp.iterations": 200, "sp.lr_milestones": [150], "sp.gate_warmup": 50,
        "hrl.batch_size": 32, "hrl.iterations": 200, "hrl.lr": 0.01, "hrl.skip_compute": True, "eval.batch_size": 250,
        "eval.gate_thresholds": [0.05, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 0.95]}
GATES = ("feedforward_conv", "recurrent")
# a mid alpha per gate type: at the same alpha the feedforward gate skips less (alpha 2.5:
# 72.9 % computation, rho 0.67, 99.4 %; the recurrent one 60.6 %)
MID_ALPHA = {"feedforward_conv": 5.0, "recurrent": 2.5}
LOW_ALPHA = 1.0
MIN_SPEARMAN = 0.3       # a constant or statically pruned policy gives 0


def arch(gate: str) -> str:
    return f"cifar10_skipnet_20_{gate}"


def train_lane(jobs: list[tuple[str, str, float | None]], out_dir: str) -> dict:
    """One process's share of the runs, in order: ``(stage, gate, alpha)`` with stage ``sp``
    (saves its checkpoint), ``hrl`` (starts from that gate's SP checkpoint of this lane) or
    ``base`` (the plain ResNet). One thread each: the module took 310 s in two such processes
    against 352 s for the same runs in one process on two threads (2 cores, back to back)."""
    import torch
    torch.set_num_threads(1)
    torch.manual_seed(0)
    out = {}
    for stage, gate, alpha in jobs:
        overrides = {**BASE, "stage": stage, "model.arch": arch(gate) if gate else "cifar10_resnet_20"}
        if stage == "hrl":
            overrides.update({"hrl.alpha": alpha, "hrl.init_checkpoint": str(Path(out_dir) / f"{gate}.pt")})
        engine = Engine(load_train_config(None, overrides))
        engine.train(BASE["hrl.iterations" if stage == "hrl" else "sp.iterations"])
        if stage == "sp":
            engine.save(Path(out_dir) / f"{gate}.pt")
        metrics = engine.evaluate("val", per_sample=stage == "hrl")
        if stage == "hrl":
            metrics["curve"] = engine.threshold_curve(metrics)
        out[stage, gate, alpha] = metrics
    return out


#: the six runs in two lanes of about equal length (SP, then what starts from it)
LANES = ([("sp", "feedforward_conv", None), ("hrl", "feedforward_conv", MID_ALPHA["feedforward_conv"]),
          ("base", None, None)],
         [("sp", "recurrent", None), ("hrl", "recurrent", MID_ALPHA["recurrent"]), ("hrl", "recurrent", LOW_ALPHA)])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Every run's validation metrics, ``(stage, gate, alpha) -> metrics``: the two lanes train
    side by side in two fresh processes (the same data and batches as in one: both are a
    function of the seed)."""
    out_dir = tmp_path_factory.mktemp("learning")
    with ProcessPoolExecutor(max_workers=len(LANES), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(train_lane, lane, str(out_dir)) for lane in LANES]
        return {key: value for future in futures for key, value in future.result().items()}


@pytest.fixture(scope="module")
def sp_runs(runs):
    return {gate: runs["sp", gate, None] for gate in GATES}


@pytest.fixture(scope="module")
def plain_resnet(runs):
    """The plain ResNet-20 trained as long, on the same data and batches."""
    return runs["base", None, None]


@pytest.fixture(scope="module")
def hrl_runs(runs):
    """(gate, alpha) -> validation metrics with per-image outcomes and the threshold curve."""
    return {(gate, alpha): metrics for (stage, gate, alpha), metrics in runs.items() if stage == "hrl"}


@pytest.mark.slow
@pytest.mark.parametrize("gate", GATES)
def test_sp_is_as_accurate_as_the_plain_resnet_and_executes_most_blocks(sp_runs, plain_resnet, gate):
    metrics = sp_runs[gate]
    print(f"SP {gate}: val {metrics['val_top1']:.2f} % at {metrics['val_block_count_pct']:.1f} % of blocks; "
          f"plain ResNet-20: {plain_resnet['val_top1']:.2f} %")
    assert metrics["val_top1"] >= plain_resnet["val_top1"] - 3.0
    # the gates did not collapse into skipping (collapsed: 13-50 %); feedforward measured 84.8 % of
    # blocks on one machine and 78.7 % on another (same code, seed and threads: the CPU's float
    # kernels differ), so the bound leaves room for that spread
    assert metrics["val_block_count_pct"] >= 70.0


@pytest.mark.slow
@pytest.mark.parametrize("gate", GATES)
def test_a_mid_alpha_routes_harder_images_through_more_blocks(hrl_runs, gate):
    run = hrl_runs[gate, MID_ALPHA[gate]]
    rho = spearmanr(run["difficulty"].numpy(), run["executed_blocks"].numpy()).correlation
    print(f"{gate} alpha {MID_ALPHA[gate]}: val {run['val_top1']:.2f} % at {run['val_computation_pct']:.1f} %, "
          f"executed-FLOPs rho {run['val_difficulty_spearman']:.3f} (blocks {rho:.3f}), "
          f"{run['val_distinct_paths']} paths, skip ratios {run['val_skip_ratio']}")
    assert 30.0 <= run["val_computation_pct"] <= 70.0
    assert run["val_difficulty_spearman"] >= MIN_SPEARMAN
    assert rho >= MIN_SPEARMAN
    assert run["val_distinct_paths"] >= 5                 # not a statically pruned network
    assert run["val_top1"] >= 90.0


@pytest.mark.slow
def test_computation_falls_as_alpha_rises(hrl_runs):
    low, mid = hrl_runs["recurrent", LOW_ALPHA], hrl_runs["recurrent", MID_ALPHA["recurrent"]]
    assert low["val_computation_pct"] > mid["val_computation_pct"] + 5.0


@pytest.mark.slow
@pytest.mark.parametrize("key", [(g, MID_ALPHA[g]) for g in GATES] + [("recurrent", LOW_ALPHA)])
def test_a_threshold_sweep_is_a_curve_not_a_step(hrl_runs, key):
    curve = hrl_runs[key]["curve"]
    levels = sorted(v for k, v in curve.items() if k.endswith("/val_computation_pct"))
    print(key, [round(v, 1) for v in levels])
    inside = [v for v in levels if 20.0 <= v <= 90.0]
    distinct = [v for i, v in enumerate(inside) if i == 0 or v - inside[i - 1] >= 1.0]
    assert len(distinct) >= 3, levels
