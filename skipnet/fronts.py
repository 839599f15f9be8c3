"""Accuracy/computation fronts of searches: trials -> non-dominated rank, front, hypervolume, knee.

A trial is the point its last report gives (validation top-1 %, higher is better; computation %
of the plain ResNet's FLOPs, lower is better). ``analyse`` ranks a search's trials with
:mod:`skipnet.pareto` and measures the front against a reference point: by default 100 %
computation and chance accuracy (100 / classes %), so a front that beats guessing at full cost
scores 0. ``select`` picks the trial an export names and ``export_selector`` the option that
names exactly one trial; ``front_csv`` and ``front_markdown`` write a front out (the latter for
the parent run's description, :mod:`skipnet.mlflow_ui`). Pure data: MLflow reading lives in
:mod:`skipnet.tracking`, plots in :mod:`skipnet.plots`.

Every trained model is a curve: a trial whose final report holds a threshold curve (metrics
``threshold_curve/<t>/val_top1`` ..., ``eval.gate_thresholds``) adds one candidate point per
threshold that moves it (``with_threshold_points``), named ``<trial id>@<t>`` and marked
``swept``; exporting one writes ``model.gate_threshold: t``.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field, replace
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

import numpy as np

from skipnet import pareto
from skipnet.errors import SkipNetError

DIRECTIONS = ("maximize", "minimize")       # (accuracy, computation)


@dataclass(frozen=True)
class TrialPoint:
    """One trial of a search as its MLflow run holds it."""

    run_id: str
    trial_id: str
    search_id: str
    parent_run_id: str
    accuracy: float               # val_top1 at the last report, %
    computation: float            # val_computation_pct at the last report, %
    steps: int                    # Tune reports (training_iteration)
    iteration: int                # training iterations done (both stages)
    num_classes: int | None
    status: str
    checkpoint_path: str | None = None       # where Tune keeps the trial's last checkpoint
    config: dict[str, str] = field(default_factory=dict)     # the run's params (flat)
    metrics: dict[str, float] = field(default_factory=dict)
    gate_threshold: float | None = None      # the gate threshold its val metrics were measured at, if known
    swept: bool = False                      # a threshold-sweep point: the trial's model at another threshold

    @property
    def valid(self) -> bool:
        return math.isfinite(self.accuracy) and math.isfinite(self.computation)


CURVE_PREFIX = "threshold_curve/"          # + "<threshold>/val_<metric>" (skipnet.train.evaluate.curve_key)
SWEEP_SEPARATOR = "@"                      # a threshold point's id: <trial id>@<threshold>


def own_threshold(metrics: dict[str, float], config: dict[str, str]) -> float | None:
    """The threshold a trial's own val metrics were measured at: reported (``gate_threshold``)
    or configured (``model.gate_threshold``); None when neither says (a plain ResNet, older runs)."""
    value = metrics.get("gate_threshold", config.get("model.gate_threshold"))
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


def threshold_curve(metrics: dict[str, float]) -> dict[float, dict[str, float]]:
    """``{threshold: {"val_top1": ..., "val_computation_pct": ...}}`` from ``threshold_curve/`` metrics."""
    curve: dict[float, dict[str, float]] = {}
    for key, value in metrics.items():
        if key.startswith(CURVE_PREFIX) and key.count("/") == 2:
            _, threshold, name = key.split("/")
            try:
                curve.setdefault(float(threshold), {})[name] = value
            except ValueError:
                continue                         # not a threshold: not ours
    return dict(sorted(curve.items()))


def with_threshold_points(trial: TrialPoint) -> list[TrialPoint]:
    """``trial`` (with its own threshold), then one swept point per threshold of its curve that
    moves it: id ``<trial id>@<t>``, config with ``model.gate_threshold`` = t, metrics the
    curve's val metrics at t (no test metrics: the sweep measures val only). A threshold giving
    the same (accuracy, computation) as the trial's own point, or as a threshold nearer its
    own, adds nothing and is left out."""
    own = own_threshold(trial.metrics, trial.config)
    points, seen = [replace(trial, gate_threshold=own)], {(trial.accuracy, trial.computation)}
    kept = {k: v for k, v in trial.metrics.items() if not k.startswith(("val_", "test_", CURVE_PREFIX))}
    centre = 0.5 if own is None else own
    curve = {t: v for t, v in threshold_curve(trial.metrics).items() if "val_top1" in v and "val_computation_pct" in v}
    swept = []
    for t in sorted(curve, key=lambda t: (abs(t - centre), t)):
        values = curve[t]
        point = (float(values["val_top1"]), float(values["val_computation_pct"]))
        if t == centre or point in seen:
            continue                             # the trial's own point, or a copy of a nearer one
        seen.add(point)
        swept.append(replace(trial, trial_id=f"{trial.trial_id}{SWEEP_SEPARATOR}{t!r}", accuracy=point[0],
                             computation=point[1], config={**trial.config, "model.gate_threshold": repr(t)},
                             metrics={**kept, **values, "gate_threshold": t}, gate_threshold=t, swept=True))
    return points + sorted(swept, key=lambda p: p.gate_threshold)


@dataclass(frozen=True)
class SearchFront:
    search_id: str
    parent_run_id: str
    trials: list[TrialPoint]           # every trial, in the order of ``rank``
    rank: np.ndarray                   # non-dominated rank per trial (0 = front, NAN_RANK = no metrics)
    reference: tuple[float, float]     # (accuracy %, computation %)
    hypervolume: float                 # area in %^2 dominated by the front inside the reference box
    knee: TrialPoint | None

    @property
    def front(self) -> list[TrialPoint]:
        """The non-dominated trials, cheapest first (ties: most accurate first)."""
        members = [t for t, r in zip(self.trials, self.rank) if r == 0]
        return sorted(members, key=lambda t: (t.computation, -t.accuracy, t.trial_id))

    @property
    def hypervolume_pct(self) -> float:
        """Hypervolume as a % of the whole reference box (100 = a perfect, free model)."""
        box = (100.0 - self.reference[0]) * self.reference[1]
        return 100.0 * self.hypervolume / box if box > 0 else float("nan")


def chance_accuracy(trials: list[TrialPoint]) -> float:
    classes = {t.num_classes for t in trials if t.num_classes}
    return 100.0 / max(classes) if classes else 0.0


def analyse(search_id: str, parent_run_id: str, trials: list[TrialPoint],
            reference: tuple[float | None, float | None] = (None, None)) -> SearchFront:
    """Rank ``trials``, find the front, its hypervolume against ``reference`` and its knee."""
    if not any(t.valid for t in trials):
        raise SkipNetError(f"search {search_id} has no trial that reported val_top1 and val_computation_pct yet")
    ref = (chance_accuracy(trials) if reference[0] is None else float(reference[0]),
           100.0 if reference[1] is None else float(reference[1]))
    points = np.array([[t.accuracy, t.computation] for t in trials], dtype=float)
    rank = pareto.nondominated_rank(points, DIRECTIONS)
    hv = pareto.hypervolume_2d(points, ref, DIRECTIONS)
    knee = trials[pareto.knee_point(points, DIRECTIONS)]
    return SearchFront(search_id, parent_run_id, trials, rank, ref, hv, knee)


def front_csv(front: SearchFront) -> str:
    """The front as CSV: one row per non-dominated point, cheapest first; ``gate_threshold`` is
    the threshold the point was measured at, ``swept`` says it is a threshold-sweep point."""
    out = io.StringIO()
    writer = csv.writer(out)
    keys = sorted({k for t in front.front for k in t.config if k.startswith(("hrl.", "sp.lr", "model.", "seed"))
                   and k != "model.gate_threshold"})
    writer.writerow(["search_id", "trial_id", "run_id", "val_top1", "val_computation_pct", "steps", "knee",
                     "gate_threshold", "swept", *keys])
    for t in front.front:
        writer.writerow([t.search_id, t.trial_id, t.run_id, f"{t.accuracy:.4f}", f"{t.computation:.4f}", t.steps,
                         str(front.knee is not None and t.trial_id == front.knee.trial_id).lower(),
                         "" if t.gate_threshold is None else repr(t.gate_threshold), str(t.swept).lower(),
                         *[t.config.get(k, "") for k in keys]])
    return out.getvalue()


def select(trials: list[TrialPoint], *, max_computation: float | None = None,
           min_accuracy: float | None = None, knee: bool = False, trial_id: str | None = None,
           label: str = "the search") -> TrialPoint:
    """The trial an export names: the most accurate one at or under ``max_computation`` %, the
    cheapest one at or above ``min_accuracy`` %, the knee of the front, or the trial ``trial_id``.
    Ties go to the first of ``trials``.

    Raises:
        SkipNetError: no trial meets the constraint; the message names the closest one.
    """
    valid = [t for t in trials if t.valid]
    if trial_id is not None:
        named = [t for t in trials if t.trial_id == trial_id]
        if len(named) != 1 or not named[0].valid:
            problem = ("has no such trial" if not named else "has several (name the search by its parent run id)"
                       if len(named) > 1 else "has it, but it reported no val_top1 and val_computation_pct")
            raise SkipNetError(f"--trial {trial_id}: {label} {problem}; its trials: "
                               + ", ".join(sorted(t.trial_id for t in valid)[:20]))
        return named[0]
    if not valid:
        raise SkipNetError(f"{label} has no trial that reported val_top1 and val_computation_pct")
    if knee:
        points = np.array([[t.accuracy, t.computation] for t in valid])
        return valid[pareto.knee_point(points, DIRECTIONS)]
    if max_computation is not None:
        ok = [t for t in valid if t.computation <= max_computation]
        if not ok:
            near = min(valid, key=lambda t: (t.computation, -t.accuracy))
            raise SkipNetError(f"--max-computation {max_computation:g}: no trial of {label} runs at or under it; "
                               f"the closest is trial {near.trial_id} ({near.search_id}) at "
                               f"{near.computation:.2f} % computation, {near.accuracy:.2f} % accuracy")
        return max(ok, key=lambda t: (t.accuracy, -t.computation))
    if min_accuracy is not None:
        ok = [t for t in valid if t.accuracy >= min_accuracy]
        if not ok:
            near = max(valid, key=lambda t: (t.accuracy, -t.computation))
            raise SkipNetError(f"--min-accuracy {min_accuracy:g}: no trial of {label} reaches it; "
                               f"the closest is trial {near.trial_id} ({near.search_id}) at "
                               f"{near.accuracy:.2f} % accuracy, {near.computation:.2f} % computation")
        return min(ok, key=lambda t: (t.computation, -t.accuracy))
    raise ValueError("select needs max_computation, min_accuracy, knee or trial_id")


def export_selector(trials: list[TrialPoint], point: TrialPoint) -> str:
    """The ``skipnet export`` option that selects exactly ``point`` among ``trials`` (checked
    with :func:`select`): ``--max-computation C``, C its computation rounded up to the fewest
    decimals (two at least) that still select it; else ``--min-accuracy A`` (a front trial
    above 100 % computation); else ``--trial ID`` (a copy of another trial's point)."""
    def picks(**how) -> bool:
        try:
            return select(trials, **how) is point
        except SkipNetError:
            return False

    for flag, value, key, rounding in (("--max-computation", point.computation, "max_computation", ROUND_CEILING),
                                       ("--min-accuracy", point.accuracy, "min_accuracy", ROUND_FLOOR)):
        if not 0 < value <= 100:
            continue                                   # skipnet export takes percentages in (0, 100]
        for decimals in range(2, 8):
            text = str(Decimal(repr(value)).quantize(Decimal(1).scaleb(-decimals), rounding=rounding))
            if 0 < float(text) <= 100 and picks(**{key: float(text)}):
                return f"{flag} {text}"
        if picks(**{key: value}):
            return f"{flag} {value!r}"
    return f"--trial {point.trial_id}"


def table(front: SearchFront) -> list[dict[str, Any]]:
    return [{"trial": t.trial_id, "val_top1": t.accuracy, "computation_pct": t.computation, "steps": t.steps,
             "knee": front.knee is not None and t.trial_id == front.knee.trial_id, "run_id": t.run_id,
             "swept": t.swept} for t in front.front]


#: Columns of :func:`front_markdown` taken from a trial's config: (header, flat config key).
MARKDOWN_CONFIG = (("alpha", "hrl.alpha"), ("lr", "hrl.lr"), ("gate", "model.gate"))
_SEARCHED = ("hrl.", "sp.", "model.", "data.", "seed")      # other keys shown when they vary across trials


def front_markdown(front: SearchFront, *, tracking_uri: str | None = None, run_link: str | None = None,
                   trials_link: str | None = None, when: str = "", max_chars: int = 8000) -> str:
    """The front as markdown for the description of the search's MLflow parent run.

    One table row per front trial, cheapest first: its config (alpha, lr, gate and any other
    searched key that varies across the search's trials), validation top-1 %, computation % and
    the ``skipnet export`` option that selects exactly it (:func:`export_selector`); the knee is
    marked. Above, in one line (MLflow shows the first 150 pixels of a description): the
    front's size and hypervolume; below: what they mean, then a code block with each front
    trial's whole ``skipnet export`` command, one a line, ending in ``# <trial id>``.

    Args:
        tracking_uri: added to the commands as ``--tracking-uri`` (None: the default store).
        run_link: link to a trial's run, formatted with ``{run_id}`` (None: plain trial ids).
        trials_link: link to a table of all the search's trials (None: no link).
        when: how current the front is (e.g. ``after 1600 training iterations``).
        max_chars: at most this long (MLflow keeps 8000 characters of a tag): rows past it are
            left out and counted.
    """
    trials = front.trials
    keys = [(h, k) for h, k in MARKDOWN_CONFIG if any(k in t.config for t in trials)]
    varying = sorted(k for k in {k for t in trials for k in t.config}
                     if k.startswith(_SEARCHED) and k not in dict(keys).values()
                     and len({t.config.get(k) for t in trials}) > 1)
    keys += [(k, k) for k in varying]
    uri = f" --tracking-uri {tracking_uri}" if tracking_uri else ""
    head = [f"**Front: {len(front.front)} of {len(trials)} trials**{' (' + when + ')' if when else ''}, "
            f"hypervolume {front.hypervolume_pct:.2f} %",        # one line: MLflow shows 150 px before "Show more"
            "",
            "| " + " | ".join(["trial", *(h for h, _ in keys), "val_top1", "val_computation_pct", "export option"])
            + " |",
            "|---|" + "---|" * len(keys) + "--:|--:|---|"]
    rows, commands = [], []
    for t in front.front:
        name = f"[{t.trial_id}]({run_link.format(run_id=t.run_id)})" if run_link and t.run_id else t.trial_id
        knee = " (knee)" if front.knee is not None and t.trial_id == front.knee.trial_id else ""
        option = export_selector(trials, t)
        cells = [name + knee, *(_cell(t.config.get(k, "")) for _, k in keys), f"{t.accuracy:.2f}",
                 f"{t.computation:.2f}", f"`{option}`"]
        rows.append("| " + " | ".join(cells) + " |")
        commands.append(f"skipnet export {front.search_id} {option} -o best.yaml{uri}   # {t.trial_id}{knee}")

    sweep = (f" A point `TRIAL{SWEEP_SEPARATOR}T` is that trial's model evaluated at gate threshold T (the others at "
             "their own, normally 0.5); its export sets `model.gate_threshold: T`." if any(t.swept for t in trials) else "")

    def text(n: int) -> str:
        more = len(rows) - n
        cut = [f"| ... {more} more: `skipnet pareto {front.search_id}{uri}` |"] if more else []
        return "\n".join(head + rows[:n] + cut + [
            "",
            "Validation top-1 % against computation (% of the plain ResNet's FLOPs) at each trial's last report, "
            "cheapest first." + sweep + " Hypervolume: the area the front dominates, as a % of the box from the "
            f"reference point ({front.reference[0]:.1f} % accuracy, {front.reference[1]:.0f} % computation) to a "
            "perfect free model.",
            "",
            "Export a front trial (its training config; then `skipnet train --config best.yaml` retrains it):",
            "", "```", *commands[:n], "```", "",
            "Plots: artifacts `pareto/front.html` and `pareto/front.png`."
            + (f" [All trials of this search, front first]({trials_link})." if trials_link else "")])

    n = len(rows)
    while n and len(text(n)) > max_chars:
        n -= 1
    return text(n)


def _cell(value: str) -> str:
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return str(value).replace("|", "\\|")
