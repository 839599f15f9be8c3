"""The ``skipnet`` command line: thin handlers over library calls.

Every user error becomes one line on stderr and exit code 2, without a traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from skipnet.errors import SkipNetError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:      # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _table(rows: list[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in rows)
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)   # noqa: E731
    return "\n".join(f"  {k.ljust(width)}  {fmt(v)}" for k, v in rows)


_SUMMARY = ["val_top1", "val_top5", "val_computation_pct", "val_block_count_pct", "val_executed_gflops",
            "test_top1", "test_top5", "test_computation_pct", "test_block_count_pct", "iteration", "checkpoint"]


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from skipnet.config import load_train_config, parse_overrides
    from skipnet.train.run import fit

    cfg = load_train_config(args.config, parse_overrides(args.set))
    total = (cfg.sp.iterations if cfg.stage in ("base", "sp", "pipeline") else 0) + \
            (cfg.hrl.iterations if cfg.stage in ("hrl", "pipeline") else 0)
    bar = tqdm(total=total, desc="train", unit="it", dynamic_ncols=True, disable=args.quiet or None)

    def on_step(m):
        bar.update(1)
        bar.set_postfix(loss=f"{m.loss:.3f}", acc=f"{m.accuracy:.1f}", exec=f"{m.executed_fraction:.2f}")

    def on_eval(m):
        bar.write(f"[{m['stage']} {m['iteration']}] val top1 {m['val_top1']:.2f}  "
                  f"computation {m['val_computation_pct']:.1f}%  blocks {m['val_block_count_pct']:.1f}%  "
                  f"{m['train_images_per_s']:.0f} img/s")

    final = fit(cfg, resume=args.resume, on_step=on_step, on_eval=on_eval)
    bar.close()
    print(f"\n{cfg.model.arch} ({cfg.stage}) -> {cfg.output_dir}")
    print(_table([(k, final[k]) for k in _SUMMARY if k in final]))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from skipnet.checkpoint import load_checkpoint, read_checkpoint
    from skipnet.config import DataConfig, from_dict
    from skipnet.data import build_splits
    from skipnet.flops import block_costs
    from skipnet.models import create_model
    from skipnet.train.engine import resolve_device
    from skipnet.train.evaluate import evaluate

    ckpt = read_checkpoint(args.checkpoint)
    saved = ckpt.get("config") or {}
    arch = args.arch or (ckpt.get("info") or {}).get("arch") or saved.get("model", {}).get("arch")
    if not arch:
        from skipnet.errors import ConfigError
        raise ConfigError("--arch", None, "an architecture name: this checkpoint does not record one "
                                          "(the authors' files need e.g. --arch cifar10_rnn_gate_rl_110)")
    data = dict(saved.get("data") or {})
    if args.data:
        data = {"name": args.data}
    if args.data_root:
        data["root"] = args.data_root
    dc = from_dict(DataConfig, data)
    splits = build_splits(dc.name, dc.root, val_size=dc.val_size, seed=saved.get("seed", 0),
                          image_size=dc.image_size, synthetic_size=dc.synthetic_size,
                          synthetic_test_size=dc.synthetic_test_size)
    model = create_model(arch, num_classes=splits.num_classes)
    load_checkpoint(model, args.checkpoint)
    device = resolve_device(args.device)
    model.to(device)
    costs = block_costs(model, (splits.image_size, splits.image_size))
    dataset = splits.test if args.split == "test" else splits.val
    metrics = evaluate(model, dataset, costs, split=args.split, batch_size=args.batch_size, device=device,
                       top5=splits.name == "imagenet", num_workers=dc.num_workers)
    skip = metrics.pop(f"{args.split}_skip_ratio", None)
    print(f"{arch} on {splits.name}/{args.split} ({len(dataset)} images)")
    print(_table(list(metrics.items())))
    if skip is not None:
        print("  skip ratio per gate: " + " ".join(f"{s:.2f}" for s in skip))
    return 0


def _print_summary(summary) -> None:
    from skipnet.tracking import ui_hint
    rows = sorted(summary.trials, key=lambda r: -(r.get("objective") or r.get("val_top1") or float("-inf")))
    print(f"\nsearch {summary.search_id}: {len(rows)} trials, {summary.errors} errors")
    print(f"  {'trial':<12} {'steps':>5} {'val_top1':>8} {'comp%':>6} {'objective':>9}  config")
    for r in rows[:10]:
        cfg = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in _flat(r["config"]).items())
        print(f"  {r['trial_id']:<12} {r['training_iteration'] or 0:>5} {r['val_top1'] or 0:>8.2f} "
              f"{r['val_computation_pct'] or 0:>6.1f} {r['objective'] or 0:>9.2f}  {cfg}")
    print(f"\nstored in {summary.path}   (continue an interrupted search: skipnet resume {summary.path})")
    print(f"MLflow parent run {summary.parent_run_id} at {summary.tracking_uri}")
    print(f"  {ui_hint(summary.tracking_uri)}")


def _flat(config: dict) -> dict:
    from skipnet.config import flatten
    return flatten(config)


def cmd_search(args: argparse.Namespace) -> int:
    from skipnet.config import parse_overrides
    from skipnet.tune.experiment import load_experiment
    from skipnet.tune.runner import run_search

    exp = load_experiment(args.experiment, parse_overrides(args.set))
    _print_summary(run_search(exp, address=args.address))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from skipnet.tune.runner import resume_search
    _print_summary(resume_search(args.path, address=args.address))
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from skipnet import cluster
    job_id = cluster.submit(args.experiment, args.address, working_dir=args.working_dir, overrides=args.set)
    print(job_id)
    print(f"follow it: skipnet status {job_id} --address {args.address}; skipnet logs {job_id} --address {args.address}",
          file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from skipnet import cluster
    print(cluster.status(args.job_id, args.address))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from skipnet import cluster
    print(cluster.logs(args.job_id, args.address), end="")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from skipnet import cluster
    print("stopping" if cluster.stop(args.job_id, args.address) else "not running")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="skipnet", description="Train, evaluate and search SkipNet models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("--config", required=True, help="YAML file (see experiments/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue output_dir/last.pt if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint (ours or the authors')")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--arch", help="architecture (needed for the authors' files)")
    p.add_argument("--data", help="data set name (default: the one the checkpoint was trained on)")
    p.add_argument("--data-root", help="data directory")
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("search", help="run a search from an experiment file (local Ray or --address)")
    p.add_argument("experiment", help="experiment YAML (see experiments/)")
    p.add_argument("--address", help="Ray cluster address (default: a local Ray on 127.0.0.1)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override an experiment key (repeatable)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("resume", help="continue an interrupted search")
    p.add_argument("path", help="the search directory printed by skipnet search")
    p.add_argument("--address", help="Ray cluster address")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("submit", help="submit a search as a Ray job (Jobs API); prints the job id")
    p.add_argument("experiment")
    p.add_argument("--address", required=True, help="Ray dashboard URL, e.g. http://HEAD:8265")
    p.add_argument("--working-dir", default=".", help="directory uploaded with the job (default: .)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override an experiment key (repeatable)")
    p.set_defaults(func=cmd_submit)
    for verb, fn, text in (("status", cmd_status, "status of a submitted search"),
                           ("logs", cmd_logs, "logs of a submitted search"),
                           ("stop", cmd_stop, "stop a submitted search")):
        p = sub.add_parser(verb, help=text)
        p.add_argument("job_id")
        p.add_argument("--address", required=True, help="Ray dashboard URL")
        p.set_defaults(func=fn)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SkipNetError as e:
        print(f"skipnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"skipnet {args.command}: interrupted", file=sys.stderr)
        return 130
