"""``skipnet export``: the chosen trial of a search as a training config that reproduces it
(or, for a trial PBT changed, its final config beside its checkpoint and schedule).

The file is the trial's whole ``TrainConfig`` (what ``skipnet train --config`` reads) plus one
``export`` section that training ignores: the trial's metrics, where it came from (MLflow run,
search, code version) and where its checkpoint is. A trial stops at its last report, possibly
early (ASHA, MOASHA): the exported schedule ends where the trial's training ended, and
evaluates once at the end of each stage, so the trained model is the one the trial reported; it
also fixes torch's CPU thread count to the trial's, since float sums (and so a model near a
decision boundary) change with it. A threshold-sweep point (``TRIAL@T``) is the trial's config
with ``model.gate_threshold: T``: training ignores the threshold, so the retrained model is the
trial's and its evaluation at T is the point's.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import yaml

from skipnet.core.config import load_train_config, to_dict
from skipnet.errors import ConfigError, SkipNetError
from skipnet.fronts.analysis import TrialPoint, reproducibility

EXPORT_KEY = "export"       # the section load_train_config skips
_REPORTED = ("val_top1", "val_top5", "val_computation_pct", "val_block_count_pct", "val_executed_gflops",
             "val_distinct_paths", "val_difficulty_spearman", "test_top1", "test_top5", "test_computation_pct",
             "test_block_count_pct", "training_iteration", "iteration", "alpha", "gate_threshold")


def reproducing_config(cfg: dict[str, Any], iteration: int) -> dict[str, Any]:
    """``cfg`` cut at ``iteration`` training iterations (both stages counted), evaluating once
    at the end of each stage, so that ``fit`` keeps exactly the model the trial reported."""
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg.items()}
    sp, hrl = cfg.setdefault("sp", {}), cfg.setdefault("hrl", {})
    stage = cfg.get("stage", "pipeline")
    if iteration > 0:
        if stage == "pipeline" and iteration <= sp["iterations"]:
            cfg["stage"], sp["iterations"] = "sp", iteration      # stopped before HRL began
        elif stage == "pipeline":
            hrl["iterations"] = min(hrl["iterations"], iteration - sp["iterations"])
        elif stage in ("sp", "base"):
            sp["iterations"] = min(sp["iterations"], iteration)
        else:
            hrl["iterations"] = min(hrl["iterations"], iteration)
    sp["eval_every"] = max(1, int(sp.get("iterations") or 1))
    hrl["eval_every"] = max(1, int(hrl.get("iterations") or 1))
    return cfg


def export_document(point: TrialPoint, train_config: dict[str, Any], *, selected_by: str, experiment: str,
                    tracking_uri: str, checkpoint_uri: str | None, code_version: str,
                    scheduler: str | None = None, schedule: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The exported file's content (validated: ``skipnet train --config`` accepts it).

    ``schedule``: the trial's ``hyperparameter_schedule`` (PBT, MO-PBT). With more than one
    segment the weights changed hyperparameters (or came from another trial) during the search:
    the config then holds the last segment's values, the schedule goes into the ``export``
    section and the file says ``reproducible: false`` (retraining does not replay a schedule;
    the checkpoint is the model). ``provenance.note`` is :func:`skipnet.fronts.analysis.reproducibility`'s
    sentence, which ``skipnet export`` prints and the parent run's description repeats."""
    cfg = reproducing_config(train_config, point.iteration)
    verdict = reproducibility(scheduler, schedule)
    if schedule:
        last = schedule[-1]
        cfg["hrl"] = dict(cfg.get("hrl", {}), alpha=last["hrl.alpha"], lr=last["hrl.lr"])
    if point.swept:                           # the trial's model at another gate threshold: evaluate at it
        cfg["model"] = dict(cfg.get("model", {}), gate_threshold=point.gate_threshold)
    cfg["output_dir"] = f"runs/{point.search_id}/{point.trial_id}"
    if cfg.get("threads") is None and point.metrics.get("threads"):
        cfg["threads"] = int(point.metrics["threads"])          # float sums differ with the thread count
    # validated, in the config's own key order; the architecture name is the one the trial trained
    # (checking it against the model registry would import torch, 2-3 s of a 4-s command)
    cfg = to_dict(load_train_config(None, base=dict(cfg), check_model=False))
    cfg[EXPORT_KEY] = {
        "selected_by": selected_by,
        "trial_id": point.trial_id,
        "metrics": {k: point.metrics[k] for k in _REPORTED if k in point.metrics},
        "provenance": {"mlflow_run_id": point.run_id, "mlflow_parent_run_id": point.parent_run_id,
                       "search_id": point.search_id, "mlflow_experiment": experiment,
                       "tracking_uri": tracking_uri, "code_version": code_version,
                       "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                       "reproducible": verdict.reproducible, "note": verdict.sentence},
        "checkpoint": {"mlflow": f"runs:/{point.run_id}/checkpoint", "artifact_uri": checkpoint_uri,
                       "tune_path": point.checkpoint_path},
    }
    if schedule:
        cfg[EXPORT_KEY]["schedule"] = schedule
    return cfg


def write_export(doc: dict[str, Any], path: str | Path) -> Path:
    """Write atomically: the file appears whole or not at all."""
    from skipnet.core.files import write_text_atomic
    path = Path(path)
    if not path.parent.is_dir():
        raise ConfigError("-o", str(path), "a file path in an existing directory")
    p = doc[EXPORT_KEY]["provenance"]
    how = (f"# Reproduce it: skipnet train --config {path.name}   (the '{EXPORT_KEY}' section is not read)\n"
           if p["reproducible"] else
           f"# {p['note']}\n# The checkpoint: {doc[EXPORT_KEY]['checkpoint']['mlflow']} (see '{EXPORT_KEY}').\n")
    header = (f"# Trial {doc[EXPORT_KEY]['trial_id']} of search {p['search_id']} (MLflow run {p['mlflow_run_id']}),\n"
              f"# exported by skipnet export ({doc[EXPORT_KEY]['selected_by']}).\n" + how)
    write_text_atomic(path, header + yaml.safe_dump(doc, sort_keys=False))
    return path


def register(client, point: TrialPoint, name: str, alias: str, checkpoint_uri: str | None) -> dict[str, str]:
    """Register the trial's checkpoint artifact (``checkpoint_uri``) as a version of MLflow model
    ``name``, under ``alias``."""
    from mlflow.exceptions import MlflowException
    if checkpoint_uri is None:
        raise SkipNetError(f"--register: run {point.run_id} (trial {point.trial_id}) has no checkpoint artifact; "
                           "run skipnet sync-mlflow on the search directory first")
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="SkipNet checkpoints exported by skipnet export")
    version = client.create_model_version(name, checkpoint_uri, run_id=point.run_id,
                                          tags={"trial_id": point.trial_id, "search_id": point.search_id,
                                                "val_top1": f"{point.accuracy:.4f}",
                                                "val_computation_pct": f"{point.computation:.4f}"})
    client.set_registered_model_alias(name, alias, version.version)
    return {"name": name, "version": str(version.version), "alias": alias, "uri": f"models:/{name}@{alias}"}
