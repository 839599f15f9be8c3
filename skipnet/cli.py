"""The ``skipnet`` command line: thin handlers over library calls.

Every user error becomes one line on stderr and exit code 2, without a traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from skipnet.errors import CheckpointError, SkipNetError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:      # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _table(rows: list[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in rows)
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)   # noqa: E731
    return "\n".join(f"  {k.ljust(width)}  {fmt(v)}" for k, v in rows)


_SUMMARY = ["val_top1", "val_top5", "val_computation_pct", "val_block_count_pct", "val_executed_gflops",
            "val_computation_p10", "val_computation_p50", "val_computation_p90", "val_distinct_paths",
            "val_difficulty_spearman", "val_difficulty_source", "test_top1", "test_top5", "test_computation_pct",
            "test_block_count_pct", "iteration", "checkpoint"]


def _curve_table(metrics: dict[str, Any]) -> str | None:
    """The threshold curve of a final evaluation (``threshold_curve/<t>/val_*``) as a table, or None."""
    from skipnet.fronts.analysis import threshold_curve
    curve = threshold_curve(metrics)
    if not curve:
        return None
    lines = [f"  {'threshold':>9} {'val_top1':>8} {'comp%':>6} {'blocks%':>7} {'rho':>6} {'paths':>5}"]
    for t, m in curve.items():
        lines.append(f"  {t:>9g} {_num(m.get('val_top1'), 8, 2)} {_num(m.get('val_computation_pct'), 6, 1)} "
                     f"{_num(m.get('val_block_count_pct'), 7, 1)} {_num(m.get('val_difficulty_spearman'), 6, 2)} "
                     f"{_num(m.get('val_distinct_paths'), 5, 0)}")
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from skipnet.core.config import load_train_config, parse_overrides
    from skipnet.core.train.run import fit

    cfg = load_train_config(args.config, parse_overrides(args.set))
    sp_steps = cfg.sp.iterations if cfg.stage in ("base", "sp", "pipeline") else 0
    total = sp_steps + (cfg.hrl.iterations if cfg.stage in ("hrl", "pipeline") else 0)
    terminal = sys.stderr.isatty()
    bar = tqdm(total=total, desc="train", unit="it", dynamic_ncols=True, disable=args.quiet or not terminal)
    lines = None if args.quiet or terminal else _ProgressLines(
        total, lambda i: cfg.sp.batch_size if i < sp_steps else cfg.hrl.batch_size, args.progress_interval)

    def on_step(m):
        bar.update(1)
        bar.set_postfix(loss=f"{m.loss:.3f}", acc=f"{m.accuracy:.1f}", exec=f"{m.executed_fraction:.2f}")
        if lines is not None:
            lines.step(m)

    def on_eval(m):
        bar.write(f"[{m['stage']} {m['iteration']}] val top1 {m['val_top1']:.2f}  "
                  f"computation {m['val_computation_pct']:.1f}%  blocks {m['val_block_count_pct']:.1f}%  "
                  f"{m['train_images_per_s']:.0f} img/s")

    def on_finished_already(last, iteration):
        print(f"skipnet train: {last} had already finished (iteration {iteration} of {total}): nothing left "
              "to train; its final evaluation follows", file=sys.stderr)

    final = fit(cfg, resume=args.resume, on_step=on_step, on_eval=on_eval, on_finished_already=on_finished_already)
    bar.close()
    print(f"\n{cfg.model.arch} ({cfg.stage}) -> {cfg.output_dir}")
    print(_table([(k, final[k]) for k in _SUMMARY if k in final]))
    curve = _curve_table(final)
    if curve:
        print(f"validation at each gate threshold (eval.gate_thresholds; this model runs at "
              f"model.gate_threshold {cfg.model.gate_threshold:g}):\n{curve}")
    return 0


class _ProgressLines:
    """Progress for logs and pipes (no terminal, so no bar): a line after the first step, then
    one every ``interval_s`` seconds and at the end: iteration, images/s since the last line, ETA."""

    def __init__(self, total: int, batch_of, interval_s: float) -> None:
        import time
        self.clock, self.total, self.batch_of, self.interval_s = time.monotonic, total, batch_of, interval_s
        self.done = self.done_at_last = 0
        self.last = self.clock()

    def step(self, m) -> None:
        self.done += 1
        now = self.clock()
        if self.done not in (1, self.total) and now - self.last < self.interval_s:
            return
        elapsed = max(now - self.last, 1e-9)
        images = sum(self.batch_of(i) for i in range(self.done_at_last, self.done)) / elapsed
        eta = (self.total - self.done) * elapsed / (self.done - self.done_at_last)
        print(f"train: iteration {self.done}/{self.total}  {images:.0f} img/s  loss {m.loss:.3f}  "
              f"ETA {int(eta) // 60}:{int(eta) % 60:02d}", flush=True)
        self.last, self.done_at_last = now, self.done


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from skipnet.core.checkpoint import is_authors_layout, load_checkpoint, read_checkpoint, recorded_model
    from skipnet.core.config import DataConfig, from_dict
    from skipnet.core.data import build_splits
    from skipnet.core.flops import block_costs
    from skipnet.core.models import create_model
    from skipnet.core.train.engine import resolve_device
    from skipnet.core.train.evaluate import evaluate

    try:
        ckpt = read_checkpoint(args.checkpoint)
        if not ("model" in ckpt or is_authors_layout(ckpt)):
            keys = ", ".join(sorted(map(str, ckpt))[:6])
            raise CheckpointError(f"checkpoint {args.checkpoint}: no 'model' or 'state_dict' entry (keys: {keys}); "
                                  "expected a .pt file written by skipnet or one of the authors' .pth.tar files")
    except CheckpointError as e:
        raise CheckpointError(f"--checkpoint: {e}") from None
    saved = ckpt.get("config") or {}
    recorded_arch, recorded = recorded_model(ckpt)
    arch = args.arch or recorded_arch
    if not arch:
        from skipnet.errors import ConfigError
        raise ConfigError("--arch", None, "an architecture name: this checkpoint does not record one "
                                          "(the authors' files need e.g. --arch cifar10_rnn_gate_rl_110)")
    data = dict(saved.get("data") or {})
    if args.data:
        data = {"name": args.data}
    if args.data_root:
        data["root"] = args.data_root
    dc = from_dict(DataConfig, data, "data")
    splits = build_splits(dc.name, dc.root, val_size=dc.val_size, seed=saved.get("seed", 0),
                          image_size=dc.image_size, synthetic_size=dc.synthetic_size,
                          synthetic_test_size=dc.synthetic_test_size,
                          synthetic_difficulty=dc.synthetic_difficulty)
    # the checkpoint's own gates unless --arch names another network (then its gates, checked below)
    overrides = recorded if not args.arch else {k: v for k, v in recorded.items() if k != "gate"}
    model = create_model(arch, num_classes=splits.num_classes, **overrides)
    model.gate_threshold = _eval_threshold(args.gate_threshold, saved)
    try:
        load_checkpoint(model, args.checkpoint, checkpoint=ckpt)       # read once (an s3:// file: fetched once)
    except CheckpointError as e:
        raise CheckpointError(f"--checkpoint: {e}") from None
    device = resolve_device(args.device)
    model.to(device)
    costs = block_costs(model, (splits.image_size, splits.image_size))
    dataset = splits.test if args.split == "test" else splits.val
    metrics = evaluate(model, dataset, costs, split=args.split, batch_size=args.batch_size, device=device,
                       top5=splits.name == "imagenet", num_workers=dc.num_workers)
    skip = metrics.pop(f"{args.split}_skip_ratio", None)
    at = f", gate threshold {model.gate_threshold:g}" if model.gate_spec is not None else ""
    print(f"{model.arch} on {splits.name}/{args.split} ({len(dataset)} images{at})")
    print(_table(list(metrics.items())))
    if skip is not None:
        print("  skip ratio per gate: " + " ".join(f"{s:.2f}" for s in skip))
    return 0


def _eval_threshold(given: float | None, saved: dict) -> float:
    """The gate threshold ``skipnet eval`` decides with: ``--gate-threshold``, else the
    checkpoint's config's ``model.gate_threshold``, else 0.5."""
    from skipnet.errors import ConfigError
    if given is not None:
        if not 0 < given < 1:
            raise ConfigError("--gate-threshold", given, "a number strictly between 0 and 1")
        return given
    value = (saved.get("model") or {}).get("gate_threshold", 0.5)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ConfigError("--checkpoint", value, "a checkpoint whose config has model.gate_threshold in (0, 1)")
    return float(value)


def _print_summary(summary) -> None:
    from skipnet.tracking.runs import default_tracking_uri, ui_hint
    rows = sorted(summary.trials, key=lambda r: (r["error"], -(r.get("objective") or r.get("val_top1") or -1e9)))
    print(f"\nsearch {summary.search_id}: {len(rows)} trials, {summary.errors} failed")
    # rho: Spearman of per-image FLOPs with difficulty; paths: distinct execution paths (1 = static pruning)
    print(f"  {'trial':<12} {'steps':>5} {'val_top1':>8} {'comp%':>6} {'rho':>5} {'paths':>5} {'objective':>9}  config")
    shown = [r for r in rows if not r["error"]][:10] + [r for r in rows if r["error"]]
    for r in shown:
        cfg = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in _flat(r["config"]).items())
        print(f"  {r['trial_id']:<12} {r['training_iteration'] or 0:>5} {_num(r['val_top1'], 8, 2)} "
              f"{_num(r['val_computation_pct'], 6, 1)} {_num(r.get('val_difficulty_spearman'), 5, 2)} "
              f"{_num(r.get('val_distinct_paths'), 5, 0)} {_num(r['objective'], 9, 2)}  {cfg}"
              f"{'   FAILED' if r['error'] else ''}")
    print("  (rho: rank correlation of per-image computation with difficulty; paths: distinct execution paths, "
          "1 = a static network)")
    if len(rows) - summary.errors > 10:
        print(f"  ... {len(rows) - summary.errors - 10} more trials in MLflow")
    for r in rows:
        if r["error"]:
            print(f"  FAILED {r['trial_id']}: {r['error_message']}\n         error file: {r['error_file']}")
    if summary.sp_runs:
        print(f"  SP trained once per SP configuration: {summary.sp_runs} SP runs shared by {len(rows)} trials")
    knee = _print_front(summary)
    print(f"\nstored in {summary.path}   (continue an interrupted search: skipnet resume {summary.path})")
    print(f"MLflow parent run {summary.parent_run_id} at {summary.tracking_uri}")
    print(f"  {ui_hint(summary.tracking_uri)}")
    for label, link in _ui_links(summary):
        print(f"  {label}: {link}")
    uri = "" if summary.tracking_uri == default_tracking_uri() else f" --tracking-uri {summary.tracking_uri}"
    print(f"compare fronts: skipnet pareto {summary.search_id}{uri}   (this search's front; with another search "
          f"overlaid: skipnet pareto {summary.search_id} OTHER_SEARCH_ID{uri})")
    if knee is not None:
        then = ("then: skipnet train --config best.yaml" if knee.reproducibility.reproducible else
                "retraining it does not replay its schedule: its model is its checkpoint, which the export names")
        print(f"export the knee: skipnet export {summary.search_id}{uri} --knee -o best.yaml   ({then})")


def _ui_links(summary) -> list[tuple[str, str]]:
    """Where the MLflow UI shows this search: its trials (front first) and its front with the
    export commands (the parent run's description); none if MLflow does not answer."""
    from skipnet.tracking import runs, ui
    base = "http://127.0.0.1:5000/" if summary.tracking_uri.startswith("sqlite:") else summary.tracking_uri.rstrip("/") + "/"
    try:
        experiment = runs.open_store(summary.tracking_uri).get_run(summary.parent_run_id).info.experiment_id
    except Exception:          # the summary stands without links
        return []
    return [("trials, front first", base + ui.trials_link(experiment, summary.search_id)),
            ("front and export commands", base + ui.run_link(experiment, summary.parent_run_id))]


def _num(value, width: int, digits: int) -> str:
    return f"{value:>{width}.{digits}f}" if isinstance(value, (int, float)) else f"{'-':>{width}}"


def _end_ray() -> None:
    """Shut Ray down before the summary is printed: its workers' last words (a SIGTERM handler's
    traceback at exit) then come before the summary, never after it."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def _search_status(summary, verb: str) -> int:
    """Exit status of a search: 0, or 1 with one line on stderr when trials failed."""
    if not summary.errors:
        return 0
    print(f"skipnet {verb}: {summary.errors} of {len(summary.trials)} trials failed (listed above with their "
          "error files)", file=sys.stderr)
    return 1


def _print_front(summary):
    """The search's accuracy/computation front as a table; returns its knee trial (or None)."""
    from skipnet.errors import SkipNetError
    from skipnet.fronts import analysis
    trials = [analysis.TrialPoint(run_id="", trial_id=r["trial_id"], search_id=summary.search_id,
                                  parent_run_id=summary.parent_run_id, accuracy=float(r["val_top1"]),
                                  computation=float(r["val_computation_pct"]), steps=int(r["training_iteration"] or 0),
                                  iteration=0, num_classes=int(r["num_classes"]) if r.get("num_classes") else None,
                                  status="error" if r["error"] else "done", config=_flat(r["config"] or {}),
                                  metrics={**r.get("curve", {}), **({"gate_threshold": r["gate_threshold"]}
                                                                    if r.get("gate_threshold") is not None else {})},
                                  schedule=r.get("schedule") or [], scheduler=summary.scheduler)
              for r in summary.trials if r.get("val_top1") is not None and r.get("val_computation_pct") is not None]
    points = [p for t in trials for p in analysis.with_threshold_points(t)]
    try:
        front = analysis.analyse(summary.search_id, summary.parent_run_id, points)
    except SkipNetError:
        return None
    swept = len(points) - len(trials)
    print(f"\nfront: {len(front.front)} of {len(points)} points ({len(trials)} trials"
          f"{f' + {swept} at other gate thresholds, named TRIAL@THRESHOLD' if swept else ''}); "
          f"hypervolume {front.hypervolume_pct:.1f} % "
          f"(reference: {front.reference[0]:.1f} % accuracy, {front.reference[1]:.0f} % computation)")
    width = max([12, *(len(t.trial_id) for t in front.front)])
    print(f"  {'trial':<{width}} {'val_top1':>8} {'comp%':>6}  config")
    for t in front.front:
        config = {k: v for k, v in t.config.items() if k != "model.gate_threshold"}
        cfg = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items())
        print(f"  {t.trial_id:<{width}} {t.accuracy:>8.2f} {t.computation:>6.1f}  {cfg}"
              f"{'   <- knee' if t.trial_id == front.knee.trial_id else ''}{_same_point(front.copies, t.trial_id)}")
    return front.knee


def _same_point(copies: dict[str, list[str]], trial_id: str) -> str:
    """``   (same point: t2 t3)`` for a front point that other trials share (PBT copies), else ""."""
    others = copies.get(trial_id, [])
    return f"   (same point: {' '.join(others)})" if others else ""


def _flat(config: dict) -> dict:
    from skipnet.core.config import flatten
    return flatten(config)


def cmd_search(args: argparse.Namespace) -> int:
    from skipnet.core.config import parse_overrides
    from skipnet.tune.experiment import load_experiment
    from skipnet.tune.runner import run_search

    exp = load_experiment(args.experiment, parse_overrides(args.set))
    summary = run_search(exp, address=args.address)
    _end_ray()
    _print_summary(summary)
    return _search_status(summary, "search")


def cmd_resume(args: argparse.Namespace) -> int:
    from skipnet.tune.runner import resume_search
    summary = resume_search(args.path, address=args.address)
    _end_ray()
    if summary.finished_already:
        print(f"skipnet resume: {summary.search_id} had already finished: nothing left to train; its summary "
              "follows", file=sys.stderr)
    _print_summary(summary)
    return _search_status(summary, "resume")


def cmd_submit(args: argparse.Namespace) -> int:
    from skipnet.cluster import jobs
    from skipnet.core.config import parse_overrides
    from skipnet.tune.experiment import load_experiment
    from skipnet.tune.runner import check_search
    check_search(load_experiment(args.experiment, parse_overrides(args.set)))   # bad input: refused before the cluster
    job_id = jobs.submit(args.experiment, args.address, working_dir=args.working_dir, overrides=args.set,
                         env=args.env)
    print(job_id)
    print(f"follow it: skipnet status {job_id} --address {args.address}; skipnet logs {job_id} --address {args.address}",
          file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from skipnet.cluster import jobs
    print(jobs.status(args.job_id, args.address))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from skipnet.cluster import jobs
    print(jobs.logs(args.job_id, args.address), end="")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from skipnet.cluster import jobs
    print("stopping" if jobs.stop(args.job_id, args.address) else "not running")
    return 0


def _searches(client, specs: list[str]) -> list:
    from skipnet.tracking.runs import find_searches
    runs, seen = [], set()
    for spec in specs:
        for run in find_searches(client, spec):
            if run.info.run_id not in seen:
                seen.add(run.info.run_id)
                runs.append(run)
    return runs


def cmd_pareto(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from skipnet.fronts import analysis, plots
    from skipnet.tracking import runs, ui

    if args.output:
        try:
            Path(args.output).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            from skipnet.errors import ConfigError
            raise ConfigError("--output", args.output, f"a directory that can be created ({e.strerror})") from None
    client = runs.open_store(args.tracking_uri)
    reference = (args.reference_accuracy, args.reference_computation)
    results = [analysis.analyse(run.data.tags.get("search_id", run.info.run_name), run.info.run_id,
                                runs.search_trials(client, run), reference)
               for run in _searches(client, args.searches)]
    overlay = len(results) > 1               # a comparison: each parent's own front stays as it is
    with tempfile.TemporaryDirectory(prefix="skipnet-pareto-") as tmp:
        out = Path(args.output or tmp)
        files = [plots.front_png(results, out / "front.png"), plots.front_html(results, out / "front.html")]
        for f in results:
            csv = out / (f"front-{f.search_id}.csv" if overlay else "front.csv")
            csv.write_text(analysis.front_csv(f))
            files.append(csv)
        if not args.no_log and overlay:
            logged_to = runs.log_overlay(client, results, files)
            for f in results:                # each trial's rank in its own search
                ui.tag_ranks(client, f.trials, f.rank)
        elif not args.no_log:
            runs.log_front(client, results[0], files)
            ui.show_front(client, results[0], when="as `skipnet pareto` computed it")
            logged_to = "pareto"
    for f in results:
        print(f"\nsearch {f.search_id} (MLflow parent run {f.parent_run_id}): {len(f.trials)} trials, "
              f"{len(f.front)} on the front")
        print(f"  hypervolume {f.hypervolume:.1f} %^2 = {f.hypervolume_pct:.2f} % of the box from the reference "
              f"point (accuracy {f.reference[0]:.2f} %, computation {f.reference[1]:.1f} %)")
        rows = analysis.table(f)
        width = max([14, *(len(row["trial"]) for row in rows)])
        print(f"  {'trial':<{width}} {'val_top1':>8} {'comp%':>7} {'steps':>5}  run")
        for row in rows:
            print(f"  {row['trial']:<{width}} {row['val_top1']:>8.2f} {row['computation_pct']:>7.2f} {row['steps']:>5}"
                  f"  {row['run_id']}{'  <- knee' if row['knee'] else ''}{_same_point(f.copies, row['trial'])}")
        if any(t.swept for t in f.trials):
            print("  (TRIAL@T: that trial's model at gate threshold T; skipnet export writes model.gate_threshold: T)")
    if not args.no_log and overlay:
        print(f"\ntagged pareto=true / pareto_rank on the trials' runs; logged the comparison (front.png, "
              f"front.html, each front's CSV) to {logged_to}/ of each parent run; their own fronts are unchanged")
    elif not args.no_log:
        print(f"\ntagged pareto=true / pareto_rank on the trials' runs; logged {logged_to}/front.png, front.html, "
              "front.csv and the front's hypervolume to the parent run")
    if args.output:
        print(f"wrote {', '.join(p.name for p in sorted(Path(args.output).glob('front*')))} to {args.output}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from skipnet import export
    from skipnet.errors import ConfigError
    from skipnet.fronts import analysis
    from skipnet.tracking import runs

    for flag, value in (("--max-computation", args.max_computation), ("--min-accuracy", args.min_accuracy)):
        if value is not None and not 0 < value <= 100:
            raise ConfigError(flag, value, "a percentage in (0, 100]")
    if not Path(args.output).resolve().parent.is_dir():
        raise ConfigError("-o", args.output, "a file path in an existing directory")
    client = runs.open_store(args.tracking_uri)
    parents = {run.info.run_id: run for run in _searches(client, [args.search])}
    trials = [t for run in parents.values() for t in runs.search_trials(client, run)]
    point = analysis.select(trials, max_computation=args.max_computation, min_accuracy=args.min_accuracy,
                            knee=args.knee, trial_id=args.trial, label=f"search {args.search}")
    selected_by = ("knee of the front" if args.knee else "named by --trial" if args.trial else
                   f"most accurate at <= {args.max_computation:g} % computation" if args.max_computation is not None
                   else f"cheapest at >= {args.min_accuracy:g} % validation top-1")
    parent, run = parents[point.parent_run_id], client.get_run(point.run_id)
    with tempfile.TemporaryDirectory(prefix="skipnet-export-") as tmp:
        train_config = runs.download_train_config(client, point.run_id, tmp)
    checkpoint_uri = f"{run.info.artifact_uri}/checkpoint" if client.list_artifacts(point.run_id, "checkpoint") else None
    doc = export.export_document(
        point, train_config, selected_by=selected_by, experiment=runs.experiment_name(client, parent),
        tracking_uri=runs.resolve_uri(args.tracking_uri), checkpoint_uri=checkpoint_uri,
        code_version=parent.data.tags.get("skipnet.version") or runs.code_version(),
        scheduler=run.data.tags.get("scheduler"), schedule=_schedule(run))
    if args.register:
        doc[export.EXPORT_KEY]["registered_model"] = export.register(client, point, args.register, args.alias, checkpoint_uri)
    path = export.write_export(doc, args.output)
    at = f" at gate threshold {point.gate_threshold!r}" if point.swept else ""
    print(f"trial {point.trial_id} of {point.search_id} ({selected_by}{at}): val top1 {point.accuracy:.2f} %, "
          f"computation {point.computation:.2f} %  -> {path}")
    if args.register:
        print(f"registered as {doc[export.EXPORT_KEY]['registered_model']['uri']}")
    provenance = doc[export.EXPORT_KEY]["provenance"]
    print(provenance["note"])                    # the sentence the file and the parent run's description hold
    if provenance["reproducible"]:
        print(f"reproduce it: skipnet train --config {path}")
    else:
        print(f"its model: {doc[export.EXPORT_KEY]['checkpoint']['mlflow']}   ({path} holds its final "
              "hyperparameters and, in its export section, the schedule)")
    return 0


def _schedule(run) -> list | None:
    """The trial's hyperparameter schedule (PBT, MO-PBT), as its MLflow run's tag holds it."""
    from skipnet.fronts.analysis import parse_schedule
    return parse_schedule(run.data.tags.get("hyperparameter_schedule")) or None


def cmd_sync_mlflow(args: argparse.Namespace) -> int:
    from skipnet.tune.sync import sync_mlflow
    counts = sync_mlflow(args.path)
    if any(counts.values()):
        print("MLflow updated: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()))
    else:
        print("MLflow already holds everything Tune's storage has for this search")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="skipnet", description="Train, evaluate and search SkipNet models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("--config", required=True, help="YAML file (see experiments/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue output_dir/last.pt if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    p.add_argument("--progress-interval", type=float, default=30.0, metavar="SECONDS",
                   help="without a terminal (a log, a pipe): a progress line every SECONDS (default 30)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint (ours or the authors')")
    p.add_argument("--checkpoint", required=True,
                   help="a .pt file, a Tune trial's checkpoint directory, or either as a storage URI (s3://...)")
    p.add_argument("--arch", help="architecture (needed for the authors' files)")
    p.add_argument("--data", help="data set name (default: the one the checkpoint was trained on)")
    p.add_argument("--data-root", help="data directory")
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--gate-threshold", type=float, metavar="T",
                   help="execute a block when its gate's probability exceeds T (default: the checkpoint's "
                        "model.gate_threshold, else 0.5)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("search", help="run a search from an experiment file (local Ray or --address)")
    p.add_argument("experiment", help="experiment YAML (see experiments/)")
    p.add_argument("--address", help="Ray cluster address (default: a local Ray on 127.0.0.1)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override an experiment key (repeatable)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("resume", help="continue an interrupted search")
    p.add_argument("path", help="the search directory or URI (s3://...) printed by skipnet search")
    p.add_argument("--address", help="Ray cluster address")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("submit", help="submit a search as a Ray job (Jobs API); prints the job id")
    p.add_argument("experiment")
    p.add_argument("--address", required=True, help="Ray dashboard URL, e.g. http://HEAD:8265")
    p.add_argument("--working-dir", default=".", help="directory uploaded with the job (default: .)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override an experiment key (repeatable)")
    p.add_argument("--env", action="append", metavar="NAME", default=[],
                   help="pass this variable from your environment to the job, e.g. AWS_SECRET_ACCESS_KEY "
                        "(repeatable; its value is never printed or logged to MLflow)")
    p.set_defaults(func=cmd_submit)
    for verb, fn, text in (("status", cmd_status, "status of a submitted search"),
                           ("logs", cmd_logs, "logs of a submitted search"),
                           ("stop", cmd_stop, "stop a submitted search")):
        p = sub.add_parser(verb, help=text)
        p.add_argument("job_id")
        p.add_argument("--address", required=True, help="Ray dashboard URL")
        p.set_defaults(func=fn)

    p = sub.add_parser("pareto", help="accuracy/computation fronts of searches, from MLflow")
    p.add_argument("searches", nargs="+", metavar="SEARCH",
                   help="MLflow parent run id, search id or experiment name (several: compared)")
    p.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.add_argument("--reference-accuracy", type=float, help="hypervolume reference accuracy %% (default: chance)")
    p.add_argument("--reference-computation", type=float, help="hypervolume reference computation %% (default: 100)")
    p.add_argument("--output", help="also write the plots and CSVs into this directory")
    p.add_argument("--no-log", action="store_true", help="do not tag runs or log artifacts to MLflow")
    p.set_defaults(func=cmd_pareto)

    p = sub.add_parser("export", help="write the training config of a search's chosen trial")
    p.add_argument("search", metavar="SEARCH", help="MLflow parent run id, search id or experiment name")
    pick = p.add_mutually_exclusive_group(required=True)
    pick.add_argument("--max-computation", type=float, metavar="PCT", help="most accurate trial at or under PCT %%")
    pick.add_argument("--min-accuracy", type=float, metavar="PCT", help="cheapest trial at or above PCT %% top-1")
    pick.add_argument("--knee", action="store_true", help="the knee of the front")
    pick.add_argument("--trial", metavar="TRIAL_ID", help="the trial of this id (the run name of its MLflow run; "
                                                        "TRIAL_ID@T: that trial at gate threshold T)")
    p.add_argument("-o", "--output", required=True, help="the YAML file to write (e.g. best.yaml)")
    p.add_argument("--register", metavar="NAME", help="also register the checkpoint as MLflow model NAME")
    p.add_argument("--alias", default="best", help="alias of the registered version (default: best)")
    p.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("sync-mlflow", help="copy into MLflow what a search's Tune storage holds and MLflow lacks")
    p.add_argument("path", help="the search directory or URI (s3://...) printed by skipnet search")
    p.set_defaults(func=cmd_sync_mlflow)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from skipnet.tune import stopping
    stopping.PROGRAM["name"] = f"skipnet {args.command}"     # the line a second Ctrl-C prints
    try:
        return args.func(args)
    except SkipNetError as e:
        stopped = getattr(e, "signum", None)            # SearchInterrupted: stopped on purpose, resumable
        if stopped:
            try:
                _end_ray()
            except KeyboardInterrupt:                   # a second Ctrl-C while Ray shuts down: stop now
                pass
            print(f"skipnet {args.command}: {e}", file=sys.stderr)
            return 128 + stopped
        print(f"skipnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        mlflow_errors = sys.modules.get("mlflow.exceptions")
        if mlflow_errors is None or not isinstance(e, mlflow_errors.MlflowException):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"skipnet {args.command}: error: MLflow refused the request: {first}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"skipnet {args.command}: interrupted", file=sys.stderr)
        return 130
