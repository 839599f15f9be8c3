"""Population Based Training for SkipNet searches: scalar PBT that exploits, and multi-objective PBT.

``SkipNetPBT`` is Ray Tune's ``PopulationBasedTraining`` with these changes:

- **Every member saves at each perturbation** (not only the top quantile), and Tune's own
  periodic checkpoints are off for PBT searches (the runner sets ``checkpoint_frequency=0``).
  Ray's PBT skipped exploits for want of a donor checkpoint when the donor had not been in the
  top quantile at its own last perturbation; and a periodic save scheduled right after an
  exploit (the paused trial's actor is kept for reuse) overwrote the donor's checkpoint with
  the trial's own, so the "exploited" trial silently resumed its own weights.
- **Members copy only members of their own gate family** (``model.gate``): the gate type
  travels with the weights (and the donor's config), so copies across families turned members
  into the other family and a population ranked as a whole lost whole families. Quantiles are
  taken within the family.
- **The whole population exists from the start** (the runner's searcher does not hold members
  back for ``max_concurrent_trials``): the cluster's resources decide how many members train at
  once, and a member that reaches a perturbation pauses for the waiting ones, so the
  population trains abreast. (Held back, the first members trained to the end before the others
  began, and late members copied finished ones.)
- **A trial keeps counting its own steps** after an exploit: it continues from its own
  ``training_iteration`` with the donor's weights (and the donor's training iteration, so it
  may finish its HRL early), so every trial reports steps 1, 2, ... without gaps or repeats.
- **Perturbations stay in the search space** (:class:`WithinBounds`, the runner's
  ``custom_explore_fn``): Ray multiplies by 0.8 or 1.2 without clipping.
- **A paused member's actor stays warm** (:class:`PopulationGenerator`, the runner's searcher
  for PBT): the next member to train takes it over through ``reset_config``.

``MOPBT`` (Dushatskiy et al., "Multi-Objective Population Based Training", ICML 2023) orders the
members by non-dominated rank over (val_top1 max, val_computation_pct min) and, within a rank,
by diversity (crowding distance or the paper's greedy scattered subset selection), instead of
one scalar score; a member of the lower quantile copies one of the upper that dominates it (none
dominates it: it keeps training), never one at the front's other end: the population stays
spread over the accuracy/computation front.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
from typing import TYPE_CHECKING, Any

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.schedulers.pbt import _FutureTrainingResult
from ray.tune.search.basic_variant import BasicVariantGenerator

from skipnet.fronts import pareto

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController

log = logging.getLogger(__name__)

DIVERSITY = ("crowding", "scattered")
DECISIONS_FILE = "pbt_decisions.jsonl"       # one JSON line per perturbation, in the search directory


class SkipNetPBT(PopulationBasedTraining):
    """Scalar PBT (ranks by ``metric``) with the fixes above. ``family_key``: the dotted config
    key whose value must match between a member and its donor."""

    FAMILY_KEY = "model.gate"

    def __init__(self, *, family_key: str = FAMILY_KEY, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.family_key = family_key

    # -- ranking ------------------------------------------------------------------------------
    def _ordered(self, trials: list[Trial]) -> list[Trial]:
        """``trials`` from best to worst (all have a last result)."""
        return sorted(trials, key=lambda t: self._trial_state[t].last_score, reverse=True)

    def _family(self, trial: Trial) -> Any:
        node: Any = trial.config
        if self.family_key in node:
            return node[self.family_key]
        for part in self.family_key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    def _quantiles_of(self, trials: list[Trial]) -> tuple[list[Trial], list[Trial]]:
        """(lower, upper) quantile of ``trials``, as Ray's PBT sizes them."""
        trials = [t for t in trials if self._trial_state[t].last_score is not None]
        if len(trials) <= 1:
            return [], []
        ordered = self._ordered(trials)
        n = int(math.ceil(len(ordered) * self._quantile_fraction))
        n = min(n, len(ordered) // 2)
        return (ordered[len(ordered) - n:], ordered[:n]) if n else ([], [])

    def _quantiles(self) -> tuple[list[Trial], list[Trial]]:
        return self._quantiles_of(list(self._trial_state))

    def family_quantiles(self, trial: Trial) -> tuple[list[Trial], list[Trial]]:
        family = self._family(trial)
        return self._quantiles_of([t for t in self._trial_state if self._family(t) == family])

    # -- checkpoint or exploit ----------------------------------------------------------------
    def _checkpoint_or_exploit(self, trial: Trial, tune_controller: "TuneController",
                               upper_quantile: list[Trial], lower_quantile: list[Trial]) -> None:
        lower, upper = self.family_quantiles(trial)
        state = self._trial_state[trial]
        donor, donors = None, []
        if trial in lower:
            donors = [t for t in upper if self._donor_checkpoint(t)]
            donor = self._choose_donor(trial, donors) if donors else None
            if donor is None:
                log.info("[pbt] %s keeps training: no member of %s's upper quantile it may copy has a checkpoint",
                         trial.trial_id, self._family(trial))
        self._record(trial, lower, upper, donors, donor)
        if donor is not None:
            self._exploit(tune_controller, trial, donor)
            return
        state.last_checkpoint = self._save(trial, tune_controller)
        self._num_checkpoints += 1

    def _point(self, trial: Trial) -> list[float]:
        """What the ranking compares, as recorded in the decision log."""
        return [self._trial_state[trial].last_score]

    def _choose_donor(self, trial: Trial, donors: list[Trial]) -> Trial | None:
        """The member ``trial`` copies, from the upper quantile's members with a checkpoint
        (``donors``): any of them."""
        return random.choice(donors)

    def _record(self, trial: Trial, lower: list[Trial], upper: list[Trial], donors: list[Trial],
                donor: Trial | None) -> None:
        """Append the decision to ``pbt_decisions.jsonl`` in the search directory: the family's
        members with the values they were ranked by, the quantiles, the upper members the trial
        could copy (those with a checkpoint) and the donor (if any)."""
        family = self._family(trial)
        members = [t for t in self._trial_state if self._family(t) == family
                   and self._trial_state[t].last_score is not None]
        record = {"time": self._trial_state[trial].last_train_time, "trial": trial.trial_id, "family": family,
                  "points": {t.trial_id: self._point(t) for t in members},
                  "lower": [t.trial_id for t in lower], "upper": [t.trial_id for t in upper],
                  "candidates": [t.trial_id for t in donors],
                  "donor": donor.trial_id if donor else None}
        try:
            with open(os.path.join(trial.local_experiment_path, DECISIONS_FILE), "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:                          # bookkeeping must not stop the search
            log.warning("could not record a PBT decision: %s", e)

    def _save(self, trial: Trial, tune_controller: "TuneController"):
        if trial.status == Trial.PAUSED:               # paused trials hold an in-memory checkpoint
            saving = trial.temporary_state.saving_to
            return saving if isinstance(saving, _FutureTrainingResult) else trial.checkpoint
        return tune_controller._schedule_trial_save(trial, result=self._trial_state[trial].last_result)

    def _donor_checkpoint(self, donor: Trial):
        """The donor's checkpoint from its last perturbation, waiting for a save in flight."""
        state = self._trial_state[donor]
        if isinstance(state.last_checkpoint, _FutureTrainingResult):
            result = state.last_checkpoint.resolve()
            state.last_checkpoint = result.checkpoint if result else None
            if result:
                state.last_result = result.metrics
        return state.last_checkpoint

    def _exploit(self, tune_controller: "TuneController", trial: Trial, trial_to_clone: Trial) -> None:
        state = self._trial_state[trial]
        own_time, own_perturbation = state.last_train_time, state.last_perturbation_time
        super()._exploit(tune_controller, trial, trial_to_clone)
        # the trial goes on counting its own steps from where it was, with the donor's weights
        manager = trial.run_metadata.checkpoint_manager
        cloned = manager._latest_checkpoint_result
        manager._latest_checkpoint_result = type(cloned)(
            checkpoint=cloned.checkpoint, metrics=dict(cloned.metrics or {}, **{self._time_attr: own_time}))
        state.last_train_time, state.last_perturbation_time = own_time, own_perturbation
        state.last_checkpoint = None                  # its weights are now the donor's: no donor itself


class MOPBT(SkipNetPBT):
    """Multi-objective PBT: members ordered by non-dominated rank over ``metrics``/``modes``,
    then by ``diversity`` within a rank ("crowding" distance or greedy "scattered" subset
    selection). ``metric``/``mode`` given to Tune are only its bookkeeping score."""

    def __init__(self, metrics: list[str], modes: list[str], *, diversity: str = "crowding", **kwargs: Any) -> None:
        if diversity not in DIVERSITY:
            raise ValueError(f"diversity must be one of {', '.join(DIVERSITY)} (got {diversity!r})")
        super().__init__(metric=metrics[0], mode=modes[0], **kwargs)
        self.metrics, self.modes, self.diversity = list(metrics), list(modes), diversity

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True                                   # the objectives are fixed at construction

    def _point(self, trial: Trial) -> list[float]:
        return [_value(self._trial_state[trial].last_result, m) for m in self.metrics]

    def _ordered(self, trials: list[Trial]) -> list[Trial]:
        order = population_order(np.array([self._point(t) for t in trials]), self.modes, self.diversity)
        return [trials[i] for i in order]

    def _quantiles_of(self, trials: list[Trial]) -> tuple[list[Trial], list[Trial]]:
        """PBT's quantiles, except that the first front's ends (the best member on each
        objective) are never exploited. Why: a member decides when it reaches a perturbation,
        with only the members that have reported so far; with two of them both are the front's
        ends, the quantile takes one, and the family copies the other end (measured: the
        quickstart MO-PBT's four recurrent members all copied the one at 100 % computation)."""
        lower, upper = super()._quantiles_of(trials)
        if not lower:
            return lower, upper
        ranked = [t for t in trials if self._trial_state[t].last_score is not None]
        ends = {ranked[i] for i in front_ends(np.array([self._point(t) for t in ranked]), self.modes)}
        return [t for t in lower if t not in ends], upper

    def _choose_donor(self, trial: Trial, donors: list[Trial]) -> Trial | None:
        """A donor that dominates ``trial`` (any of them); None when none does: it keeps training.

        Why: the upper quantile holds both ends of the front, and a member that copies the other
        end jumps across the trade-off with the donor's gate cost. Measured on test_search's
        MO-PBT: at the second perturbation three of the four members near 100 % computation (59-63 %)
        copied a member that had collapsed to skipping every block (13-15 % at 13.3 %), the fourth
        copied one collapsing there, and the whole population ended at 13.3 %: a one-point front.
        Copying the nearest donor when none dominates did it again: the member that dominated the
        last one near 100 % had just been exploited (no checkpoint of its own), and it copied the
        other end."""
        index = dominating_donor(self._point(trial), [self._point(d) for d in donors], self.modes)
        return None if index is None else donors[index]


class PopulationGenerator(BasicVariantGenerator):
    """Tune's variant generator for a PBT population: finished when every member is, not when
    every member has been handed out.

    Why: Tune 2.60 treats a finished search algorithm as "no trial will need an actor again"
    and, at the end of each step where no trial is staged, kills every cached actor
    (``TuneController._cleanup_cached_actors``). A population is handed out whole at the start,
    so each member that paused at a perturbation lost its warm actor, and the next member
    waited for a fresh one (a new process: Ray, torch and the trainable imported again, about
    5 s of CPU here; on a GPU a new CUDA context). When a step is shorter than that start, a
    still-running member finished first, took the next member over, and the new actor was
    dropped: measured on test_search's MO-PBT (6 members, 2 CPUs), after the first perturbation
    every member trained alone on one actor while a second one started and was dropped each
    round. A resumed search's members come back from Tune's experiment state, not from here:
    it runs as Tune alone runs it (checked by hand: an MO-PBT stopped by SIGINT mid-population
    resumes and ends with every member at its last step)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._members: list[Trial] = []

    def next_trial(self) -> Trial | None:
        if super().is_finished():
            return None
        trial = super().next_trial()
        if trial is not None:
            self._members.append(trial)
        return trial

    def is_finished(self) -> bool:
        return super().is_finished() and all(t.is_finished() for t in self._members)

    def get_state(self) -> dict | bool:
        state = super().get_state()
        if isinstance(state, dict):
            state.pop("_members", None)              # trials live in Tune's experiment state
        return state

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self._members = []


class WithinBounds:
    """``custom_explore_fn`` for PBT: its perturbation multiplies a value by 0.8 or 1.2 without
    looking at the search space, so a value can leave it; this clips each key back into
    ``bounds`` (dotted key -> (low, high))."""

    def __init__(self, bounds: dict[str, tuple[float, float]]) -> None:
        self.bounds = bounds

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for key, (low, high) in self.bounds.items():
            section, name = config, key
            if key not in config:                     # nested sections, as Tune's param space gives
                *parents, name = key.split(".")
                for part in parents:
                    section = section[part]
            value = section[name]
            section[name] = type(value)(min(max(value, low), high))
        return config


def _value(result: dict | None, metric: str) -> float:
    v = (result or {}).get(metric)
    return math.nan if v is None else float(v)


def population_order(points: Any, directions: list[str], diversity: str = "crowding") -> np.ndarray:
    """Indices of ``points`` from best to worst: by non-dominated rank, then by diversity within
    the rank (larger crowding distance first, or earlier in the greedy scattered selection);
    rows with NaN come last."""
    losses = pareto.normalize(points, directions)
    rank = pareto.nondominated_rank(losses)
    if diversity == "crowding":
        spread = pareto.crowding_distance(losses)
    else:
        spread = -scattered_position(losses, rank)
    return np.lexsort((np.arange(len(losses)), -spread, rank))


def dominating_donor(point: Any, donors: Any, directions: list[str]) -> int | None:
    """Index of a donor that dominates ``point`` (at random among them), None when none does
    (NaN never dominates nor is dominated): the donor a member copies under MO-PBT."""
    losses = pareto.normalize(np.vstack([point, donors]), directions)
    own, others = losses[0], losses[1:]
    dominating = np.flatnonzero((others <= own).all(axis=1) & (others < own).any(axis=1))
    return int(random.choice(dominating)) if len(dominating) else None


def front_ends(points: Any, directions: list[str]) -> set[int]:
    """Indices of the first non-dominated front's ends: on each objective, its best member
    (ties: all of them); NaN rows are never ends."""
    losses = pareto.normalize(points, directions)
    front = np.flatnonzero(pareto.nondominated_rank(losses) == 0)
    if not len(front):
        return set()
    best = losses[front].min(axis=0)
    return {int(i) for i in front if np.any(losses[i] == best)}


def scattered_position(losses: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Greedy scattered subset selection within each rank (the MO-PBT paper's diversity rule):
    the first pick is the member best on the first objective, each next pick the member
    farthest (Euclidean, objectives scaled to [0, 1] over the population) from those picked so
    far. Returns each point's pick position within its rank (0 = first)."""
    finite = np.where(np.isfinite(losses), losses, np.nan)
    position = np.zeros(len(losses))
    if not np.isfinite(finite).any():
        return position
    low, high = np.nanmin(finite, axis=0), np.nanmax(finite, axis=0)
    scaled = (losses - low) / np.where(high > low, high - low, 1.0)
    for r in np.unique(rank[rank != pareto.NAN_RANK]):
        members = list(np.flatnonzero(rank == r))
        first = min(members, key=lambda i: (scaled[i, 0], i))
        picked, distance = [first], np.linalg.norm(scaled[members] - scaled[first], axis=1)
        left = {i: d for i, d in zip(members, distance) if i != first}
        while left:
            far = max(left, key=lambda i: (left[i], -i))
            picked.append(far)
            del left[far]
            for i in left:
                left[i] = min(left[i], float(np.linalg.norm(scaled[i] - scaled[far])))
        for pos, i in enumerate(picked):
            position[i] = pos
    return position
