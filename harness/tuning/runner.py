"""A whole tune: every algorithm's search on the harness's Ray session, then the chosen and the default
configurations on fresh seeds (a study), then the side-by-side leaderboard.

Why it works the way it does:
- Tune runs on the Ray session the harness makes (harness.engine.cluster.init_ray): a loopback-only local
  cluster with CPUs for `parallel_trials` trials, or the cluster of `workers.address`. A session that is
  already up (a test's, a notebook's) is used as it is.
- Algorithms are searched one after another, each with the same budget (harness.tuning.spec enforces it);
  the trials of one search run in parallel.
- The final runs are a study (harness.studies): cells = algorithm x {default, tuned} x final_seeds, in the
  tune's MLflow experiment, tagged with their role. Re-running the tune skips what is done: finished
  searches are read back from MLflow, finished cells are skipped, interrupted ones resumed (the study
  runner's rules).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from harness.studies.spec import Study, load_study
from harness.tuning.search import SearchResult, search
from harness.tuning.spec import Tune
from harness.tuning.trial import ROLE_TAG, TUNE_TAG


@dataclass
class TuneOutcome:
    searches: dict[str, SearchResult] = field(default_factory=dict)
    study: Study | None = None
    roles: dict[str, tuple[str, str]] = field(default_factory=dict)  # config hash -> (algorithm, role)
    failed: dict[int, str] = field(default_factory=dict)
    interrupted: bool = False


@dataclass
class TuneStudy(Study):
    """The final runs' study: its runs carry the tune's name and their role (default / tuned) as tags."""

    roles: dict[int, str] = field(default_factory=dict)
    tune: str = ""

    def tags(self, cell) -> dict[str, str]:
        return {**super().tags(cell), TUNE_TAG: self.tune, ROLE_TAG: self.roles[cell.index]}


def start_ray(t: Tune) -> bool:
    """Join the spec's cluster or start the local one, with CPUs for the parallel trials; True if started here."""
    import ray

    from harness.engine.cluster import init_ray

    if ray.is_initialized():
        return False
    cfg = next(iter(t.configs.values())).model_copy(deep=True)
    if not cfg.workers.address:
        per_trial = t.spec.trial_cpus if t.spec.trial_workers == "inprocess" else (
            cfg.workers.num_workers * cfg.workers.num_cpus + 0.01)
        cfg.workers.num_workers = max(1, int(round(t.spec.parallel_trials * per_trial + 0.49)))
        cfg.workers.num_cpus = 1.0
        cfg.workers.num_gpus = 0.0
    init_ray(cfg)
    return True


def run_tune(t: Tune, progress: bool = True, search_only: bool = False) -> TuneOutcome:
    from harness.engine.executor import shutdown_ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    outcome = TuneOutcome()
    started = False

    def ray_needed() -> None:
        nonlocal started
        started = start_ray(t) or started

    try:
        for algorithm in t.configs:
            outcome.searches[algorithm] = search(t, algorithm, progress=progress, start_ray=ray_needed)
            r = outcome.searches[algorithm]
            print(f"[{t.name}/{algorithm}] selected {json.dumps(r.selected, sort_keys=True)} "
                  f"(personal_val_acc {r.best_val:.4f}; {len(r.trials)} trials, {r.pruned} pruned)", flush=True)
        if search_only:
            return outcome
        outcome.study = final_study(t, {a: r.selected for a, r in outcome.searches.items()})
        outcome.roles = {c.hash: (c.config.algorithm.name, outcome.study.roles[c.index]) for c in outcome.study.cells}
        if started:  # the study runner starts its own session with the cells' resources
            shutdown_ray()
            started = False
        from harness.studies.runner import run_study

        done = run_study(outcome.study, progress=progress)
        outcome.failed, outcome.interrupted = done.failed, done.interrupted
        return outcome
    finally:
        if started:
            shutdown_ray()


def final_study(t: Tune, selected: dict[str, dict[str, Any]]) -> TuneStudy:
    """algorithm x {default, tuned} x final_seeds. A tuned configuration equal to the defaults is one cell."""
    cells, roles = [], []
    for algorithm, values in selected.items():
        cells.append({"algorithm.name": algorithm})
        roles.append("default")
        if t.trial_config(algorithm, values).config_hash() != t.configs[algorithm].config_hash():
            cells.append({"algorithm.name": algorithm, **values})
            roles.append("tuned")
    spec = {"name": t.name, "base": t.base_tree, "overrides": t.fixed, "cells": cells,
            "grid": {"seed": list(t.spec.final_seeds)}, "parallel_cells": t.spec.parallel_trials,
            "experiment": t.experiment}
    study = load_study(spec)
    per_cell = len(t.spec.final_seeds)
    return TuneStudy(study.name, study.experiment, study.cells, study.parallel_cells, t.source,
                     roles={c.index: roles[c.index // per_cell] for c in study.cells}, tune=t.name)
