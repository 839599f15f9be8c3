"""Accuracy/computation fronts of searches: trials -> non-dominated rank, front, hypervolume, knee.

A trial is the point its last report gives (validation top-1 %, higher is better; computation %
of the plain ResNet's FLOPs, lower is better). ``analyse`` ranks a search's trials with
:mod:`skipnet.fronts.pareto` and measures the front against a reference point: by default 100 %
computation and chance accuracy (100 / classes %), so a front that beats guessing at full cost
scores 0. ``select`` picks the trial an export names and ``export_selector`` the option that
names exactly one trial; ``front_csv`` and ``front_markdown`` write a front out (the latter for
the parent run's description, :mod:`skipnet.tracking.ui`). Pure data: MLflow reading lives in
:mod:`skipnet.tracking.runs`, plots in :mod:`skipnet.fronts.plots`.

Every trained model is a curve: a trial whose final report holds a threshold curve (metrics
``threshold_curve/<t>/val_top1`` ..., ``eval.gate_thresholds``) adds one candidate point per
threshold that moves it (``with_threshold_points``), named ``<trial id>@<t>`` and marked
``swept``; exporting one writes ``model.gate_threshold: t``.

Under PBT and MO-PBT a trial's hyperparameters change while it trains: its ``schedule`` (the
``hyperparameter_schedule`` it reports, :mod:`skipnet.tune.trainable`) says which, and
``final_config`` gives the values its last report was trained with, which is what every table of
a front lists (beside the schedule). ``reproducibility`` is the one description of whether
retraining an exported trial gives its model, which the export file, ``skipnet export`` and the
parent run's description all use. Trials with the same point (copies of one member, a common
sight under PBT) are one point on the front: the first of them in the trials' order stands for
them and ``SearchFront.copies`` names the others.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field, replace
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

import numpy as np

from skipnet.errors import SkipNetError
from skipnet.fronts import pareto

DIRECTIONS = ("maximize", "minimize")       # (accuracy, computation)
PBT_SCHEDULERS = {"pbt": "PBT", "mopbt": "MO-PBT"}     # schedulers that change a trial's hyperparameters
SCHEDULED_KEYS = ("hrl.alpha", "hrl.lr")    # what a schedule segment records (skipnet.tune.trainable)


def parse_schedule(text: str | None) -> list[dict[str, Any]]:
    """A ``hyperparameter_schedule`` (JSON, as reported and tagged) as a list; [] when absent."""
    import json
    if not text:
        return []
    try:
        schedule = json.loads(text)
    except ValueError:
        return []
    return schedule if isinstance(schedule, list) else []


def final_config(config: dict[str, str], schedule: list[dict[str, Any]]) -> dict[str, str]:
    """``config`` (flat, strings) with the scheduled keys at their values in the last segment of
    ``schedule``: what the trial's weights last trained with. A config logged as the trial
    started holds its starting values, which PBT may have changed since."""
    last = schedule[-1] if schedule else {}
    return {**config, **{k: str(last[k]) for k in SCHEDULED_KEYS if k in last}}


def schedule_text(schedule: list[dict[str, Any]]) -> str:
    """A schedule that changed something, in one line: alpha / lr from each training iteration
    on, and whose weights were copied there (``10.3 / 0.0161 (it. 200) → 2.68 / 0.00374 (it. 300,
    copied t2)``); "" when the trial trained with one setting throughout."""
    if len(schedule) <= 1:
        return ""
    parts = []
    for segment in schedule:
        copied = f", copied {segment['cloned_from']}" if segment.get("cloned_from") else ""
        parts.append(f"{_g(segment.get('hrl.alpha'))} / {_g(segment.get('hrl.lr'))} "
                     f"(it. {segment.get('iteration', '?')}{copied})")
    return " → ".join(parts)


def _g(value: Any) -> str:
    try:
        return f"{float(value):.3g}"
    except (TypeError, ValueError):
        return "?"


@dataclass(frozen=True)
class Reproducibility:
    """Whether ``skipnet train --config`` of a trial's export gives the trial's model, in one
    sentence that every place saying it repeats (export file, ``skipnet export``, MLflow)."""

    reproducible: bool
    sentence: str


def reproducibility(scheduler: str | None, schedule: list[dict[str, Any]] | None) -> Reproducibility:
    """A trial whose schedule has one segment trained with one setting from its own start:
    retraining its config reproduces it. More segments (or, lacking a schedule, a PBT search)
    mean its hyperparameters or weights changed during the search: its config holds the final
    values, retraining does not replay the changes, and its model is its checkpoint."""
    changed = len(schedule) > 1 if schedule else scheduler in PBT_SCHEDULERS
    if not changed:
        return Reproducibility(True, "Retraining reproduces it: `skipnet train --config` of its export trains "
                                     "this model again (same seed, same hyperparameters throughout).")
    name = PBT_SCHEDULERS.get(scheduler or "", scheduler or "the scheduler")
    return Reproducibility(False, f"Retraining does not reproduce it: {name} changed its hyperparameters or weights "
                                  "during the search (see its schedule), and `skipnet train --config` of its export "
                                  "trains with the final values throughout; its model is its checkpoint.")


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
    schedule: list[dict[str, Any]] = field(default_factory=list)   # hyperparameter_schedule (PBT: >1 segment)
    scheduler: str | None = None             # the search's scheduler (tag ``scheduler``), if known

    @property
    def valid(self) -> bool:
        return math.isfinite(self.accuracy) and math.isfinite(self.computation)

    @property
    def reproducibility(self) -> Reproducibility:
        return reproducibility(self.scheduler, self.schedule)


CURVE_PREFIX = "threshold_curve/"          # + "<threshold>/val_<metric>" (skipnet.core.train.evaluate.curve_key)
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
    copies: dict[str, list[str]] = field(default_factory=dict)   # front point's trial -> trials with its point

    @property
    def front(self) -> list[TrialPoint]:
        """The front's points, cheapest first (ties: most accurate first): each non-dominated
        (accuracy, computation) once, as the first of its trials (the others: ``copies``)."""
        copied = {c for others in self.copies.values() for c in others}
        members = [t for t, r in zip(self.trials, self.rank) if r == 0 and t.trial_id not in copied]
        return sorted(members, key=lambda t: (t.computation, -t.accuracy, t.trial_id))

    def best_first(self) -> list[TrialPoint]:
        """The front's points, the knee first, then by the hypervolume each alone adds (its
        exclusive contribution; ties: most accurate first): the trade-offs that matter most lead."""
        front = self.front
        if not front:
            return []
        alone = pareto.hypervolume_contribution([[t.accuracy, t.computation] for t in front], self.reference,
                                                DIRECTIONS)
        knee = self.knee.trial_id if self.knee is not None else None
        order = sorted(range(len(front)), key=lambda i: (front[i].trial_id != knee, -alone[i], -front[i].accuracy,
                                                        front[i].computation))
        return [front[i] for i in order]

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
    knee = trials[pareto.knee_point(points, DIRECTIONS)]      # of equal points the first, as ``copies`` keeps
    first: dict[tuple[float, float], str] = {}
    copies: dict[str, list[str]] = {}
    for t, r in zip(trials, rank):
        if r == 0:
            key = (t.accuracy, t.computation)
            if key in first:
                copies.setdefault(first[key], []).append(t.trial_id)
            else:
                first[key] = t.trial_id
    return SearchFront(search_id, parent_run_id, trials, rank, ref, hv, knee, copies)


def front_csv(front: SearchFront) -> str:
    """The front as CSV: one row per non-dominated point, cheapest first; ``gate_threshold`` is
    the threshold the point was measured at, ``swept`` says it is a threshold-sweep point, the
    config is the one the trial ended with; ``same_point`` names the other trials with the point
    (space-separated) and ``schedule`` the trial's hyperparameter schedule when it changed."""
    out = io.StringIO()
    writer = csv.writer(out)
    keys = sorted({k for t in front.front for k in t.config if k.startswith(("hrl.", "sp.lr", "model.", "seed"))
                   and k != "model.gate_threshold"})
    writer.writerow(["search_id", "trial_id", "run_id", "val_top1", "val_computation_pct", "steps", "knee",
                     "gate_threshold", "swept", *keys, "same_point", "schedule"])
    for t in front.front:
        writer.writerow([t.search_id, t.trial_id, t.run_id, f"{t.accuracy:.4f}", f"{t.computation:.4f}", t.steps,
                         str(front.knee is not None and t.trial_id == front.knee.trial_id).lower(),
                         "" if t.gate_threshold is None else repr(t.gate_threshold), str(t.swept).lower(),
                         *[t.config.get(k, "") for k in keys], " ".join(front.copies.get(t.trial_id, [])),
                         schedule_text(t.schedule)])
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
             "swept": t.swept, "same_point": front.copies.get(t.trial_id, [])} for t in front.front]


#: Columns of :func:`front_markdown` taken from a trial's config: (header, flat config key).
MARKDOWN_CONFIG = (("alpha", "hrl.alpha"), ("lr", "hrl.lr"), ("gate", "model.gate"),
                   ("threshold", "model.gate_threshold"))
_SEARCHED = ("hrl.", "sp.", "model.", "data.", "seed")      # other keys shown when they vary across trials
#: MLflow 3.17 draws a description's table without any cell padding ("0.01feedforward_conv77.60"):
#: each cell ends in these non-breaking spaces (an entity: a raw U+00A0 is trimmed as whitespace).
CELL_GAP = "&nbsp;" * 3
RETRAIN = {True: "yes", False: "no"}                        # the "retrains" column, by reproducibility
SCHEDULES_HEAD = ("Schedules of the front trials whose hyperparameters changed (alpha / lr from a training "
                  "iteration on; copied: the trial whose weights it continued there):")


def front_markdown(front: SearchFront, *, tracking_uri: str | None = None, run_link: str | None = None,
                   trials_link: str | None = None, when: str = "", max_chars: int = 8000) -> str:
    """The front as markdown for the description of the search's MLflow parent run.

    MLflow 3.17 shows the first 150 pixels of a description before "Show more", in a pane about
    660 pixels wide beside the run's details (1400-pixel window, assistant panel open), and
    renders tables without cell padding and headings as plain text. So: one short first line
    with the front's size and hypervolume, then one table row per front point, best first
    (:meth:`SearchFront.best_first`: the knee, in bold, then by the hypervolume each point alone
    adds), each cell padded with ``CELL_GAP``: the trial (trials with the same point named
    beside it), validation top-1 %, computation %, its config as it ended (alpha, lr,
    gate, threshold and any other searched key that varies across the trials;
    :func:`final_config`), whether retraining its export reproduces it; short cells, so that a
    row stays one line in MLflow's narrow pane. Right below the table, the schedule of each front
    trial whose hyperparameters changed (:func:`schedule_text`; in a table cell it wrapped into
    one line per segment). Then what "retrains" means (:func:`reproducibility`'s sentences, word for word), what the numbers mean,
    then a code block with each front point's whole ``skipnet export`` command (the option that
    selects exactly it, :func:`export_selector`), each under a ``# <trial id>`` line. The block
    sets the store once (``export MLFLOW_TRACKING_URI=...``): a code block's lines do not wrap,
    and one wider than the pane (a command ending in ``--tracking-uri URL   # trial``) widened the
    whole description past the pane's edge, cutting off every paragraph's right end.

    Args:
        tracking_uri: the store the commands read (None: the default store, nothing to set).
        run_link: link to a trial's run, formatted with ``{run_id}`` (None: plain trial ids).
        trials_link: link to a table of all the search's trials (None: no link).
        when: how current the front is (e.g. ``after 1600 training iterations``).
        max_chars: at most this long (MLflow keeps 8000 characters of a tag): the last rows
            (the least important) past it are left out and counted.
    """
    trials = front.trials
    keys = [(h, k) for h, k in MARKDOWN_CONFIG if any(k in t.config for t in trials)
            and (k != "model.gate_threshold" or len({t.config.get(k) for t in trials}) > 1)]
    varying = sorted(k for k in {k for t in trials for k in t.config}
                     if k.startswith(_SEARCHED) and k not in dict(keys).values()
                     and len({t.config.get(k) for t in trials}) > 1)
    keys += [(k, k) for k in varying]
    best = front.best_first()
    scheduled = any(len(t.schedule) > 1 for t in best)
    uri = f" --tracking-uri {tracking_uri}" if tracking_uri else ""      # in one-line hints
    by_id = {t.trial_id: t for t in trials}

    def link(t: TrialPoint) -> str:
        return f"[{t.trial_id}]({run_link.format(run_id=t.run_id)})" if run_link and t.run_id else t.trial_id

    headers = ["trial", "val_top1", "comp.&nbsp;%", *(h for h, _ in keys), "retrains"]
    aligns = ["---", "--:", "--:", *("---" for _ in keys), "---"]
    # one short line, then the rows: MLflow shows the first 150 px before "Show more"
    head = [f"**Front: {len(front.front)} of {len(trials)} points**, hypervolume {front.hypervolume_pct:.2f} %; "
            "first row, in bold: the knee",
            "",
            "| " + " | ".join(h + CELL_GAP for h in headers) + " |",
            "|" + "|".join(aligns) + "|"]
    rows, commands, schedules = [], [], []
    for t in best:
        knee = " (knee)" if front.knee is not None and t.trial_id == front.knee.trial_id else ""
        same = front.copies.get(t.trial_id, [])
        name = (f"**{link(t)}**" if knee else link(t)) + (" · same point: " + ", ".join(link(by_id[c]) for c in same)
                                                          if same else "")
        option = export_selector(trials, t)
        cells = [name, f"{t.accuracy:.2f}", f"{t.computation:.2f}", *(_cell(t.config.get(k, "")) for _, k in keys),
                 RETRAIN[t.reproducibility.reproducible]]
        rows.append("| " + " | ".join(c + CELL_GAP for c in cells) + " |")
        own = t.trial_id.split(SWEEP_SEPARATOR)[0]              # a threshold point has its trial's schedule
        schedules.append((own, f"- {link(replace(t, trial_id=own))}: {schedule_text(t.schedule)}")
                         if len(t.schedule) > 1 else None)
        commands.append([f"# {t.trial_id}{knee}", f"skipnet export {front.search_id} {option} -o best.yaml"])
    verdicts = {}
    for t in best:
        verdicts.setdefault(t.reproducibility.reproducible, t.reproducibility.sentence)
    retrains = " ".join(f"**{RETRAIN[r]}**: {verdicts[r]}" for r in (True, False) if r in verdicts)

    sweep = (f" A point `TRIAL{SWEEP_SEPARATOR}T` is that trial's model evaluated at gate threshold T (the others at "
             "their own, normally 0.5); its export sets `model.gate_threshold: T`." if any(t.swept for t in trials) else "")
    copies = (" Trials with the same point are one point, under the first of them (\"same point\": the others)."
              if front.copies else "")
    hyper = " Alpha and lr: the values each trial ended with." if scheduled else ""

    def text(n: int) -> str:
        more = len(rows) - n
        cut = [f"| ... {more} more: `skipnet pareto {front.search_id}{uri}` |"] if more else []
        listed = {}
        for entry in schedules[:n]:
            if entry is not None:
                listed.setdefault(*entry)
        changed = (["", SCHEDULES_HEAD, "", *listed.values()] if listed else [])
        return "\n".join(head + rows[:n] + cut + changed + [
            "",
            f"Retrains: whether `skipnet train --config` of the trial's export gives its model. {retrains}",
            "",
            (f"This front: {when}. " if when else "")
            + "Best first: the knee, then by the hypervolume each point alone adds. Validation top-1 % against "
            "computation (comp. %: of the plain ResNet's FLOPs) at each trial's last report." + sweep
            + copies + hyper + " Hypervolume: the area the front dominates, as a % of the box from the reference "
            f"point ({front.reference[0]:.1f} % accuracy, {front.reference[1]:.0f} % computation) to a perfect free "
            "model.",
            "",
            "Export a front point (its training config, metrics, checkpoint and provenance):",
            "", "```", *([f"export MLFLOW_TRACKING_URI={tracking_uri}"] if tracking_uri else []),
            *(line for pair in commands[:n] for line in pair), "```", "",
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
