"""The search summary as ``skipnet search`` prints it, for a hand-made PBT search: trials that
share a point are one front row naming the others, and the knee's export hint says what the
export does (retrain it, or use its checkpoint when PBT changed it)."""
from __future__ import annotations

import json

import pytest

from skipnet import cli
from skipnet.tune.runner import SearchSummary

ONE_SEGMENT = [{"iteration": 0, "hrl.alpha": 1.0, "hrl.lr": 0.01}]
EXPLOITED = [{"iteration": 0, "hrl.alpha": 8.0, "hrl.lr": 0.02},
             {"iteration": 40, "hrl.alpha": 1.5, "hrl.lr": 0.004, "cloned_from": "t0"}]


def row(trial_id: str, accuracy: float, computation: float, schedule: list, alpha: float) -> dict:
    return {"trial_id": trial_id, "config": {"hrl": {"alpha": alpha, "lr": 0.01}}, "error": False,
            "error_message": None, "error_file": None, "training_iteration": 4, "val_top1": accuracy,
            "val_computation_pct": computation, "val_block_count_pct": computation, "objective": accuracy,
            "test_top1": None, "num_classes": 10, "val_difficulty_spearman": 0.3, "val_distinct_paths": 5,
            "gate_threshold": 0.5, "curve": {}, "schedule": schedule}


def summary_of(rows: list[dict], tmp_path, scheduler: str) -> SearchSummary:
    # a real (empty) MLflow store: the summary's UI links are left out when its parent run is not there
    return SearchSummary("pbt-x", str(tmp_path / "search"), "no-such-run", f"sqlite:///{tmp_path}/mlflow.db",
                         rows, errors=0, scheduler=scheduler)


@pytest.mark.parametrize("knee_schedule, retrains", [(EXPLOITED, False), (ONE_SEGMENT, True)])
def test_summary_names_copies_and_says_what_exporting_the_knee_gives(tmp_path, capsys, knee_schedule, retrains):
    rows = [row("t0", 99.0, 90.0, ONE_SEGMENT, 1.0),          # the accurate end
            row("t1", 97.0, 50.0, knee_schedule, 1.5),        # the knee ...
            row("t2", 97.0, 50.0, knee_schedule, 1.5),        # ... and a copy of it (PBT cloned t1's weights)
            row("t3", 60.0, 20.0, ONE_SEGMENT, 9.0)]          # the cheap end
    cli._print_summary(summary_of(rows, tmp_path, "pbt"))
    out = capsys.readouterr().out
    front = out.split("\nfront: ")[1].split("\nstored in")[0].splitlines()
    assert front[0].startswith("3 of 4 points (4 trials)"), out
    listed = [line.split()[0] for line in front[2:] if line.strip()]
    assert listed == ["t3", "t1", "t0"], out                  # cheapest first, t2 only beside t1
    (knee,) = [line for line in front if "<- knee" in line]
    assert knee.split()[0] == "t1" and knee.endswith("(same point: t2)"), knee
    (hint,) = [line for line in out.splitlines() if line.startswith("export the knee:")]
    assert ("then: skipnet train --config best.yaml" in hint) is retrains, hint
    assert ("its model is its checkpoint" in hint) is not retrains, hint
    json.dumps(rows)                                          # rows stay plain data (what the summary holds)
