"""Build and run a search: experiment file -> Ray Tune ``Tuner`` -> MLflow runs -> best trials.

``run_search`` starts a new search, ``resume_search`` continues an interrupted one from its
storage directory (``Tuner.restore``); both return a ``SearchSummary``. The search directory
holds ``skipnet_search.json`` (the experiment, the MLflow parent run id and what each part of
the search cost: ``skipnet.tune.cost``), so a resume logs into the same parent and child runs. A pipeline search that can share SP runs its SP phase
first, in ``<search>/sp`` (``skipnet.tune.sharing``); a resume reuses every finished SP and
continues an interrupted one from its checkpoint. Making MLflow hold what a search's storage
holds, afterwards, is ``skipnet.tune.sync``.
"""
from __future__ import annotations

import json
import os
import re
import socket
import time
from dataclasses import dataclass
from typing import Any

from skipnet.core import storage
from skipnet.core.config import from_dict, to_dict
from skipnet.errors import ConfigError, SkipNetError
from skipnet.fronts.analysis import parse_schedule
from skipnet.tune.cost import SEARCH_FILE
from skipnet.tune.experiment import PBT_TYPES, ExperimentConfig
from skipnet.tune.sharing import SP_DIR, SPPlan, plan_sharing, sp_key
from skipnet.tune.spaces import (SearchSpace, constants, to_optuna_distributions,
                                 to_pbt_mutations, to_tune_space)

MO_METRICS, MO_MODES = ["val_top1", "val_computation_pct"], ["max", "min"]


@dataclass
class SearchSummary:
    search_id: str
    path: str
    parent_run_id: str
    tracking_uri: str
    trials: list[dict[str, Any]]         # one row per trial: id, status, config, last metrics
    errors: int
    sp_runs: int = 0                     # SP trials of the SP phase (0: every trial trained its own SP)
    scheduler: str | None = None         # the experiment's scheduler type (PBT ones change a trial's config)
    finished_already: bool = False       # a resume found nothing left to train (``finished_search``)


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` or start a local Ray that listens on 127.0.0.1 only.

    Ray 2.60 moves ``_node_ip_address=127.0.0.1`` to the routable address unless clusters are
    off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), so the local default sets that first.
    A cluster's token authentication is matched first (``skipnet.cluster.auth``); a local Ray has
    it on, as Ray 2.60 starts it. A local Ray prestarts no idle workers for the driver
    (``RAY_prestart_worker_first_driver=0``): Tune's trial actors start workers of their own, so
    the prestarted ones only took a second of CPU each, and memory, while the trials started.
    """
    import ray
    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):       # a cluster (inside a Ray job: RAY_ADDRESS)
        check_ray_address(address)
        if address and address not in ("auto", "local") and "://" not in address:
            from skipnet.cluster.auth import match_gcs
            match_gcs(address)                         # token mode if the cluster asks for it, in seconds
        try:
            ray.init(address=address or None, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as e:   # Ray's own refusal, in one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError("--address" if address else "RAY_ADDRESS", address or os.environ.get("RAY_ADDRESS"),
                              f"the address of a running Ray cluster ({first})") from None
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")      # read by the raylet it starts
    from ray._private import ray_constants
    ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=True)


_ADDRESSES = "auto, HOST:PORT (the head's GCS port, 6379 by default) or ray://HOST:PORT (Ray Client, 10001)"


def check_ray_address(address: str | None, timeout: float = 3.0) -> None:
    """Refuse a malformed ``address`` and fail in seconds when nothing listens there.

    ``auto``, ``local`` and other schemes (Ray Client plug-ins) are left to Ray; a
    dashboard URL (``http://HEAD:8265``) is for ``skipnet submit``, not for a search.
    """
    if not address or address in ("auto", "local"):
        return
    if address.startswith(("http://", "https://")):
        raise ConfigError("--address", address, f"{_ADDRESSES}; a dashboard URL is for skipnet submit")
    hostport = address[len("ray://"):] if address.startswith("ray://") else address
    if "://" in hostport:
        return
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("--address", address, _ADDRESSES)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        raise ConfigError("--address", address, f"the address of a running Ray cluster: {_ADDRESSES} "
                                                f"(connecting failed: {reason})") from None


def load_space(exp: ExperimentConfig) -> SearchSpace:
    if isinstance(exp.search_space, str):
        return SearchSpace.from_yaml(exp.resolve(exp.search_space))
    return SearchSpace.from_dict(exp.search_space, source="search_space")


def check_search(exp: ExperimentConfig) -> SearchSpace:
    """Refuse what would fail the search before it starts anything (ConfigError): its search
    space and its scheduler (a PBT mutations file). Returns the space. ``run_search`` starts with
    it, and ``skipnet submit`` runs it before a job reaches the cluster."""
    space = load_space(exp)
    build_scheduler(exp)
    return space


def build_scheduler(exp: ExperimentConfig):
    """The Tune scheduler the experiment names (raises ConfigError on a bad PBT mutations file)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from skipnet.tune.moasha import MOASHA
    s = exp.scheduler
    if s.type == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=exp.budget.max_steps,
                             grace_period=s.grace_period, reduction_factor=s.reduction_factor)
    if s.type == "moasha":
        return MOASHA(MO_METRICS, MO_MODES, max_t=exp.budget.max_steps, grace_period=s.grace_period,
                      reduction_factor=s.reduction_factor)
    if s.type in PBT_TYPES:
        from skipnet.tune.pbt import MOPBT, SkipNetPBT, WithinBounds
        from skipnet.tune.spaces import pbt_bounds
        mutations = SearchSpace.from_yaml(exp.resolve(s.mutations))
        common = dict(time_attr="training_iteration", perturbation_interval=s.perturbation_interval,
                      hyperparam_mutations=to_pbt_mutations(mutations), quantile_fraction=s.quantile_fraction,
                      custom_explore_fn=WithinBounds(pbt_bounds(mutations)))
        if s.type == "mopbt":
            return MOPBT(MO_METRICS, MO_MODES, diversity=s.diversity, **common)
        return SkipNetPBT(**common)
    return FIFOScheduler()


def changing_keys(exp: ExperimentConfig) -> frozenset[str]:
    """The flat config keys whose value a trial can change while it trains: under PBT and MO-PBT
    its mutations, and any searched key (an exploit copies the donor's whole config), except
    the gate type (members copy only their own gate family). None under other schedulers. Their
    MLflow params are logged as the trial ends (``SearchTracker.log_final_params``)."""
    if exp.scheduler.type not in PBT_TYPES:
        return frozenset()
    from skipnet.tune.pbt import SkipNetPBT
    family = SkipNetPBT.FAMILY_KEY
    try:
        mutated = SearchSpace.from_yaml(exp.resolve(exp.scheduler.mutations)).params
    except SkipNetError:                  # the file moved since the search (sync-mlflow): the scheduled keys
        mutated = {"hrl.alpha": None, "hrl.lr": None}
    return frozenset({*mutated, *load_space(exp).params} - {family})


def _search(exp: ExperimentConfig, space: SearchSpace) -> tuple[Any, dict[str, Any]]:
    """(search algorithm or None, param space) for the experiment's searcher."""
    if exp.searcher.type in ("optuna-tpe", "optuna-mo"):
        import optuna
        from ray.tune.search.optuna import OptunaSearch
        multi = exp.searcher.type == "optuna-mo"
        search = OptunaSearch(space=to_optuna_distributions(space), sampler=optuna.samplers.TPESampler(seed=exp.seed),
                              metric=MO_METRICS if multi else exp.scheduler.metric,
                              mode=MO_MODES if multi else "max")
        return search, constants(space)
    # Tune's default generator draws from numpy's global state, which ASHA also draws from:
    # seeded, a search samples the same trials under every scheduler and on every run.
    import numpy as np
    from ray.tune.search.basic_variant import BasicVariantGenerator
    rng = np.random.default_rng(exp.seed)
    if exp.scheduler.type in PBT_TYPES:
        # the whole population from the start (resources decide how many members run), and a
        # paused member's actor kept for the next one
        from skipnet.tune.pbt import PopulationGenerator
        return PopulationGenerator(max_concurrent=0, random_state=rng), to_tune_space(space)
    return BasicVariantGenerator(max_concurrent=exp.max_concurrent_trials, random_state=rng), to_tune_space(space)


def _limits_itself(search_alg) -> bool:
    from ray.tune.search.basic_variant import BasicVariantGenerator
    return isinstance(search_alg, BasicVariantGenerator)


def _metric_mode(exp: ExperimentConfig) -> tuple[str | None, str | None]:
    if exp.searcher.type == "optuna-mo" or exp.scheduler.type in ("moasha", "mopbt"):
        return None, None
    return exp.scheduler.metric, "max"


def search_tags(exp: ExperimentConfig, search_id: str) -> dict[str, str]:
    """The tags of every run of the search (its id, architecture, gate, data set, scheduler, searcher)."""
    train = exp.train
    return {"search_id": search_id, "architecture": str(train.get("model", {}).get("arch", "")),
            "gate": str(train.get("model", {}).get("gate", "") or ""),
            "data_set": str(train.get("data", {}).get("name", "synthetic")),
            "scheduler": exp.scheduler.type, "searcher": exp.searcher.type}


def _trainable(exp: ExperimentConfig, *, sp_phase: bool = False, sp_results: dict[str, str] | None = None):
    from ray import tune

    from skipnet.tune.trainable import SkipNetTrainable
    trainable = tune.with_parameters(SkipNetTrainable, base=exp.base_train(), iterations_per_step=exp.budget.iterations_per_step,
                                      objective_weight=exp.scheduler.objective_weight, sp_phase=sp_phase,
                                      sp_results=sp_results or {})
    resources = {"cpu": exp.resources.cpu, "gpu": exp.resources.gpu}
    return tune.with_resources(trainable, resources)


def _storage(exp: ExperimentConfig) -> str:
    return storage.resolve(exp.storage_path)


def build_tuner(exp: ExperimentConfig, search_id: str, parent_run_id: str, tracking_uri: str, *,
                plan: SPPlan | None = None, shared: "SharedSP | None" = None):
    """The searched trials' Tuner; with ``plan`` they start from the SP phase's results."""
    import dataclasses

    from ray import tune

    from skipnet.tune.mlflow_callback import MLflowSearchCallback
    from skipnet.tune.result_logs import result_loggers
    if plan is not None:                      # trials train HRL only: the budget counts HRL reports
        exp = dataclasses.replace(exp, budget=dataclasses.replace(exp.budget, max_steps=plan.hrl_steps))
    space = load_space(exp)
    search_alg, param_space = _search(exp, space)
    metric, mode = _metric_mode(exp)
    tags = search_tags(exp, search_id)
    if shared is not None:
        tags["role"] = "hrl"
    callback = MLflowSearchCallback(tracking_uri, exp.mlflow.experiment_name, parent_run_id,
                                    tags, exp.budget.max_steps, exp.base_train(),
                                    search_path=_search_path(exp, search_id),
                                    sp_runs=shared.runs if shared else None,
                                    # live front: its step is compute spent, the SP phase's included
                                    front_interval_s=exp.mlflow.front_interval_s,
                                    front_offset=_sp_iterations(exp, search_id) if shared else 0.0,
                                    later=changing_keys(exp))
    score, pbt = exp.scheduler.metric, exp.scheduler.type in PBT_TYPES
    return tune.Tuner(
        _trainable(exp, sp_results=shared.checkpoints if shared else None), param_space=param_space,
        tune_config=tune.TuneConfig(metric=metric, mode=mode, scheduler=build_scheduler(exp), search_alg=search_alg,
                                    num_samples=exp.num_samples,
                                    max_concurrent_trials=None if _limits_itself(search_alg) else exp.max_concurrent_trials,
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=search_id, storage_path=_storage(exp), stop={"training_iteration": exp.budget.max_steps},
            # PBT exploits other trials' checkpoints: keep them all there (Ray warns below 3); the
            # scheduler saves every member at each perturbation, Tune's own saves would race it
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None if pbt else 2,
                                                    checkpoint_frequency=0 if pbt else 1, checkpoint_at_end=True,
                                                    checkpoint_score_attribute=score, checkpoint_score_order="max"),
            failure_config=tune.FailureConfig(max_failures=exp.max_failures),
            callbacks=[callback, *result_loggers()], verbose=1))


@dataclass
class SharedSP:
    """What the SP phase produced: per SP key, the end-of-SP checkpoint and its MLflow run."""

    checkpoints: dict[str, str]          # SP key -> checkpoint path or URI
    runs: dict[str, str]                 # SP key -> MLflow run id of the SP trial


def build_sp_tuner(exp: ExperimentConfig, search_id: str, parent_run_id: str, tracking_uri: str, plan: SPPlan):
    """The SP phase: one trial per distinct SP configuration, each trained to the end of SP."""
    from ray import tune

    from skipnet.tune.mlflow_callback import MLflowSearchCallback
    from skipnet.tune.result_logs import result_loggers
    callback = MLflowSearchCallback(tracking_uri, exp.mlflow.experiment_name, parent_run_id,
                                    dict(search_tags(exp, search_id), role="sp"), plan.steps, exp.base_train(),
                                    search_path=_search_path(exp, search_id), ends_search=False)
    return tune.Tuner(
        _trainable(exp, sp_phase=True), param_space=plan.param_space(),
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=exp.max_concurrent_trials, reuse_actors=True),
        run_config=tune.RunConfig(
            name=SP_DIR, storage_path=_search_path(exp, search_id),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_frequency=1, checkpoint_at_end=True),
            failure_config=tune.FailureConfig(max_failures=exp.max_failures),
            callbacks=[callback, *result_loggers()], verbose=1))


def _shared_sp(exp: ExperimentConfig, results, tracking_uri: str, parent_run_id: str) -> SharedSP:
    """Map each SP trial's configuration to its final checkpoint and MLflow run."""
    from skipnet.core.config import flatten, load_train_config
    from skipnet.tracking.runs import SearchTracker
    failed = [r for r in results if r.error is not None or r.checkpoint is None]
    if failed:
        raise SkipNetError(f"the SP phase failed ({len(failed)} of {len(results)} SP trials): "
                           f"{str(failed[0].error).strip().splitlines()[0] if failed[0].error else 'no checkpoint'}")
    checkpoints, runs = {}, {}
    try:
        tracker = SearchTracker(tracking_uri, exp.mlflow.experiment_name)
        tracker.parent_run_id = parent_run_id
    except Exception:                                  # MLflow down: the lineage tags are left out
        tracker = None
    for r in results:
        key = sp_key(load_train_config(None, flatten(r.config), base=exp.base_train()))
        checkpoints[key] = storage.uri_of(r.checkpoint.path, r.checkpoint.filesystem)   # any node reads it
        run_id = tracker.find_child(r.metrics.get("trial_id", "")) if tracker else None
        if run_id:
            runs[key] = run_id
    return SharedSP(checkpoints, runs)


def _run_phases(exp: ExperimentConfig, search_id: str, path: str, parent: str, uri: str, *,
                plan: SPPlan | None, resume: bool) -> SearchSummary:
    """The SP phase (when ``plan`` shares SP), then the searched trials; new or resumed. What this
    part of the search costs is added to the search's (``skipnet.tune.cost``), however it ends."""
    from skipnet.tune import cost
    from skipnet.tune.stopping import SearchInterrupted
    cost.start_part(path, parent, uri)
    try:
        summary = _phases(exp, search_id, path, parent, uri, plan=plan, resume=resume)
    except SearchInterrupted:
        cost.end_part("stopped")
        raise
    except BaseException:
        cost.end_part("failed")
        raise
    cost.end_part("finished")
    return summary


def _phases(exp: ExperimentConfig, search_id: str, path: str, parent: str, uri: str, *,
            plan: SPPlan | None, resume: bool) -> SearchSummary:
    from ray import tune

    from skipnet.tune import stopping
    shared = None
    if plan is not None:
        sp_path = f"{path.rstrip('/')}/{SP_DIR}"
        stopping.check(path)                          # stopped before the phase: it does not start
        if resume and tune.Tuner.can_restore(sp_path):
            sp_tuner = tune.Tuner.restore(sp_path, trainable=_trainable(exp, sp_phase=True),
                                          resume_unfinished=True, resume_errored=True)
        else:
            sp_tuner = build_sp_tuner(exp, search_id, parent, uri, plan)
        sp_results = sp_tuner.fit()
        stopping.check(path)
        shared = _shared_sp(exp, sp_results, uri, parent)
    if resume and tune.Tuner.can_restore(path):
        search_alg, param_space = _search(exp, load_space(exp))
        tuner = tune.Tuner.restore(path, trainable=_trainable(exp, sp_results=shared.checkpoints if shared else None),
                                   param_space=param_space, resume_unfinished=True, resume_errored=True)
    else:
        tuner = build_tuner(exp, search_id, parent, uri, plan=plan, shared=shared)
    stopping.check(path)
    results = tuner.fit()
    stopping.check(path)
    summary = _summary(results, search_id, path, parent, uri)
    summary.sp_runs = len(shared.checkpoints) if shared else 0
    summary.scheduler = exp.scheduler.type
    return summary


def run_search(exp: ExperimentConfig, *, address: str | None = None) -> SearchSummary:
    """Run the experiment to the end; trials land in MLflow under one parent run.

    Nothing is created (no MLflow run, no search directory) before Ray has accepted the
    connection; a stopped search raises ``SearchInterrupted`` (``skipnet.tune.stopping``)."""
    from skipnet.tracking.runs import SearchTracker, check_store, resolve_uri
    from skipnet.tracking.ui import prepare_ui
    from skipnet.tune.stopping import on_stop_signals
    space = check_search(exp)                      # fail on a bad space before starting anything
    check_ray_address(address)                     # an unreachable cluster: fail in seconds
    check_store(resolve_uri(exp.mlflow.tracking_uri))
    init_ray(address, num_cpus=None)
    search_id = f"{exp.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    tracker = SearchTracker(exp.mlflow.tracking_uri, exp.mlflow.experiment_name)
    parent = tracker.start_search(search_id, to_dict(exp), space.to_dict())
    prepare_ui(tracker.client, tracker.experiment_id, search_id, parent)     # its saved view and descriptions
    path = _search_path(exp, search_id)
    try:
        _write_meta(path, exp, search_id, parent, tracker.uri)
    except SkipNetError:                           # storage refused: the parent run says the search failed
        tracker.end_search("FAILED")
        raise
    with on_stop_signals(tracker, path, before_exit=_stopped_at_once):
        return _run_phases(exp, search_id, path, parent, tracker.uri, plan=plan_sharing(exp, space)[0], resume=False)


def resume_search(path: str, *, address: str | None = None) -> SearchSummary:
    """Continue the interrupted search stored at ``path`` (the directory ``run_search`` printed).

    A search stopped on purpose (its MLflow runs ``KILLED``) has its parent run reopened; the
    callback reopens each trial's run as the trial continues. Resuming a finished search trains
    nothing and leaves MLflow as it was: the parent run keeps its end time and the search's
    cost is not logged again (``MLflowSearchCallback`` sees that no trial ran, ``skipnet.tune.cost``
    that nothing trained). A stopped search's cost adds up over its run and every resume."""
    from ray import tune

    from skipnet.tracking.runs import SearchTracker
    from skipnet.tune.stopping import on_stop_signals
    path = storage.resolve(path)                  # Tune's restore reads a URI: a relative path has no scheme
    meta, exp = read_search_meta(path)
    finished = finished_search(path, meta, exp)
    if finished is not None:
        return finished
    init_ray(address)
    plan, _ = plan_sharing(exp, load_space(exp))
    if plan is None and not tune.Tuner.can_restore(path):
        raise SkipNetError(f"resume: {path}: Tune has no experiment state to restore there yet")
    tracker = None
    try:
        tracker = SearchTracker(meta["tracking_uri"], exp.mlflow.experiment_name)
        tracker.parent_run_id = meta["parent_run_id"]
        tracker.reopen_search()
    except Exception as e:                         # MLflow down: the search goes on, sync-mlflow later
        import logging
        logging.getLogger(__name__).warning("MLflow unreachable (%s): the resumed runs are not reopened", e)
    with on_stop_signals(tracker, str(path), before_exit=_stopped_at_once):
        return _run_phases(exp, meta["search_id"], str(path), meta["parent_run_id"], meta["tracking_uri"],
                           plan=plan, resume=True)


def finished_search(path: str, meta: dict[str, Any], exp: ExperimentConfig) -> SearchSummary | None:
    """The summary of a search that has nothing left to train, read from its storage: its last
    part finished (``skipnet.tune.cost``) and no trial failed. No Ray starts and MLflow is left
    alone, as a resume through Tune leaves it (``skipnet resume`` of the quickstart's search: 6 s
    instead of 13, Ray's start and two Tune restores saved). None for any other search: a stopped
    or failed part continues, and a failed trial is retried, through Tune."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    from skipnet.tune import cost
    if cost.last_part_ended(meta) != "finished":
        return None
    try:
        results = ResultGrid(ExperimentAnalysis(path))
    except Exception:                                  # Tune's files unreadable: the resume through Tune says why
        return None
    summary = _summary(results, meta["search_id"], path, meta["parent_run_id"], meta["tracking_uri"])
    if summary.errors or not summary.trials:
        return None
    plan, _ = plan_sharing(exp, load_space(exp))
    summary.sp_runs = len(plan.variants) if plan else 0
    summary.scheduler, summary.finished_already = exp.scheduler.type, True
    return summary


def search_cost(path: str) -> dict[str, float]:
    """Training iterations a search ran, by stage, read from every result Tune stored (SP phase
    included; a step redone after a restore counts again, since it was paid again). What the
    parent run logs as the search's cost is ``skipnet.tune.cost``'s ledger, summed over the
    search's parts: Tune's files can lose rows that were paid for (see there)."""
    cost = {"sp": 0.0, "hrl": 0.0}
    for text in storage.read_all(path, "result.json").values():
        for line in text.splitlines():
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                continue                              # a line cut by a crash
            stage = "hrl" if result.get("stage") == "hrl" else "sp"
            cost[stage] += float(result.get("iterations_trained", 0))
    return cost


def _sp_iterations(exp: ExperimentConfig, search_id: str) -> float:
    """Training iterations the search's shared SP phase ran (0 where they cannot be read)."""
    try:
        return sum(search_cost(f"{_search_path(exp, search_id).rstrip('/')}/{SP_DIR}").values())
    except Exception:                                  # bookkeeping never fails a search
        return 0.0


def _stopped_at_once() -> None:
    """A second Ctrl-C or SIGTERM: the running part's cost, recorded before the driver exits."""
    from skipnet.tune import cost
    cost.end_part("stopped")


def read_search_meta(path: str) -> tuple[dict[str, Any], ExperimentConfig]:
    """What ``run_search`` wrote into the search directory (a local one or a URI): ids, tracking
    URI and experiment."""
    accepted = f"a search directory or URI holding {SEARCH_FILE} (printed by skipnet search)"
    try:
        text = storage.read_text(storage.join(path, SEARCH_FILE))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise ConfigError("PATH", path, accepted) from None
    except OSError as e:                               # a bucket refused: credentials, endpoint
        raise ConfigError("PATH", path, f"{accepted}; reading it failed ({_first_line(e)})") from None
    try:
        meta = json.loads(text)
        exp = from_dict(ExperimentConfig, meta["experiment"]).validate()
        meta = {k: meta[k] for k in ("search_id", "parent_run_id", "tracking_uri", "experiment")} | \
               {"cost": meta.get("cost") or {}}
    except (json.JSONDecodeError, KeyError, TypeError, ConfigError) as e:
        raise ConfigError("PATH", path, f"{accepted}; its {SEARCH_FILE} is damaged ({e.__class__.__name__}: {e})") from None
    return meta, exp


def _search_path(exp: ExperimentConfig, search_id: str) -> str:
    return storage.join(_storage(exp), search_id)


def _write_meta(path: str, exp: ExperimentConfig, search_id: str, parent: str, uri: str) -> None:
    """``skipnet_search.json`` in the search directory, a bucket's too: what resume and sync read."""
    meta = {"search_id": search_id, "parent_run_id": parent, "tracking_uri": uri, "experiment": to_dict(exp)}
    try:
        storage.write_text(storage.join(path, SEARCH_FILE), json.dumps(meta, indent=2))
    except OSError as e:                               # read-only directory, no such bucket, no credentials
        raise ConfigError("storage_path", exp.storage_path,
                          f"a directory or URI the search can write to ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _summary(results, search_id: str, path: str, parent: str, uri: str) -> SearchSummary:
    rows = []
    for r in results:
        m = r.metrics or {}
        trial_dir = storage.uri_of(r.path, r.filesystem) if r.path else ""     # keeps s3://
        rows.append({"trial_id": m.get("trial_id") or _trial_id_of(trial_dir), "config": r.config or {},
                     "error": r.error is not None, "error_message": error_line(r.error) if r.error else None,
                     "error_file": f"{trial_dir.rstrip('/')}/error.txt" if r.error and trial_dir else None,
                     **{k: m.get(k) for k in ("training_iteration", "val_top1", "val_computation_pct",
                                              "val_block_count_pct", "objective", "test_top1", "num_classes",
                                              "val_difficulty_spearman", "val_distinct_paths", "gate_threshold")},
                     "curve": {k: v for k, v in m.items() if k.startswith("threshold_curve/")},
                     "schedule": parse_schedule(m.get("hyperparameter_schedule"))})
    return SearchSummary(search_id, path, parent, uri, rows, sum(row["error"] for row in rows))


def _trial_id_of(trial_dir: str) -> str:
    """Tune's trial id from its directory name (``SkipNetTrainable_1a2b3_00004_4_...``)."""
    found = re.search(r"_([0-9a-f]{5}_\d{5})(?:_|$)", trial_dir.rstrip("/").rsplit("/", 1)[-1])
    return found.group(1) if found else ""


def error_line(error: BaseException) -> str:
    """The line of a trial's error a user needs: the original exception (``ConfigError: ...``),
    not Ray's wrapper (``ray::SkipNetTrainable.train() (pid=...)`` and a traceback)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b:?", line)]
    return (raised[-1] if raised else lines[0] if lines else type(error).__name__)[:300]
