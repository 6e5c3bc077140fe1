"""Progress of a search, one line per change: trials done / running / pruned / failed, best validation so far."""

from __future__ import annotations

import math
import sys
import time

from ray.tune import Callback

from harness.tuning.spec import METRIC


class SearchProgress(Callback):
    """A Ray Tune callback; pickled with the experiment's state, so it holds only plain values."""

    def __init__(self, label: str, rounds: int, total: int, enabled: bool = True):
        self.label, self.rounds, self.total, self.enabled = label, rounds, total, enabled
        self.best = -math.inf
        self.best_trial = ""
        self.t0 = time.time()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(METRIC)
        if value is not None and value > self.best:
            self.best, self.best_trial = float(value), trial.trial_id
            self._line(trials, f"new best {METRIC} {value:.4f} ({trial.trial_id}, round {result.get('round')})")

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        how = "finished" if int(last.get("round", 0) or 0) >= self.rounds else f"pruned at round {last.get('round')}"
        self._line(trials, f"{trial.trial_id} {how}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trials, f"{trial.trial_id} FAILED")

    def _line(self, trials, what: str) -> None:
        if not self.enabled:
            return
        counts = summarize(trials, self.rounds)
        best = f"{self.best:.4f}" if self.best > -math.inf else "-"
        print(f"[{self.label}] {counts['done']}/{self.total} done ({counts['pruned']} pruned, {counts['error']} "
              f"failed), {counts['running']} running; best {METRIC} {best}; {time.time() - self.t0:.0f} s: {what}",
              file=sys.stderr, flush=True)


def summarize(trials, rounds: int) -> dict[str, int]:
    out = {"done": 0, "pruned": 0, "error": 0, "running": 0}
    for t in trials:
        if t.status == "RUNNING":
            out["running"] += 1
        elif t.status == "ERROR":
            out["error"] += 1
            out["done"] += 1
        elif t.status == "TERMINATED":
            out["done"] += 1
            out["pruned"] += int(int((t.last_result or {}).get("round", 0) or 0) < rounds)
    return out
