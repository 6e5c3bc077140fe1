"""One Tune trial: a harness run of the sampled configuration, reported to Tune round by round, blind to test data.

Why it works the way it does:
- A trial is a whole harness run (harness.engine.open_run + loop) built inside the Tune trial's process, an
  MLflow run of its own, nested under the algorithm's tuning run (the `mlflow.parentRunId` tag).
- The workers of a search run get the data with every client's test split emptied (`without_test`): the
  engine's evaluation then computes validation metrics only (personal_val_acc), and nothing in the trial can
  read a test example, by construction rather than by convention. The engine's own data object keeps the
  split's sizes (for balancing evaluation waves), and the checkpoint's partition digest is the full one.
- After each evaluated round the trial reports personal_val_acc, the round (ASHA's time axis) and the
  client-updates trained so far to Tune. When ASHA stops the trial, Tune's report raises SystemExit in the
  trial's thread; the Reporter turns it into TrialStopped (a KeyboardInterrupt: the engine ends the run as
  KILLED, not FINISHED), and the trial tags the run fedharness.tune.pruned=true and drops its checkpoint.
  A trial whose process Tune ends before that is marked the same way by the tuning driver afterwards.
- `inprocess` trials run the clients in the trial's process (one CPU); `actors` trials start the run's
  worker actors inside the trial's placement group. docs/tuning.md has the measured difference.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.engine.listeners import RoundListener, RoundRecord
from harness.tuning.spec import METRIC

PARENT_TAG = "mlflow.parentRunId"
TUNE_TAG = "fedharness.tune"
ROLE_TAG = "fedharness.tune.role"
TRIAL_TAG = "fedharness.tune.trial_id"


@dataclass
class TrialContext:
    """What every trial of one algorithm's search shares (shipped once through Ray's object store)."""

    tune: str
    algorithm: str
    base_tree: dict[str, Any]
    fixed: list[str]
    parent_run_id: str | None
    checkpoint_dir: str
    trial_workers: str
    cwd: str  # the driver's working folder: relative paths of the spec (data, tracking) mean the same here
    plugins: list[str] = dataclasses.field(default_factory=list)


def without_test(data):
    """The same FederatedDataset with every client's test split empty: what a search run's workers get."""
    empty = np.zeros(0, dtype=np.int64)
    offsets = np.zeros(data.num_clients + 1, dtype=np.int64)
    return dataclasses.replace(data, index={**data.index, "test": empty}, offsets={**data.offsets, "test": offsets})


class TrialStopped(KeyboardInterrupt):
    """Tune's scheduler stopped the trial after `round` (the engine ends a run so interrupted as KILLED)."""

    def __init__(self, round: int):
        super().__init__(f"stopped by the tuning scheduler after round {round}")
        self.round = round


class Reporter(RoundListener):
    """personal_val_acc of every evaluated round to Tune (and nothing read from a test split: there is none).
    The last round's is held back (`final`) and reported once the run has ended FINISHED: Tune stops a trial
    that reaches max_t at that report, which must not cut the run short of its end."""

    def __init__(self, report, rounds: int):
        self.report, self.rounds = report, rounds
        self.updates = 0
        self.final: dict | None = None

    def on_round(self, record: RoundRecord) -> None:
        self.updates += int(record.metrics.get("clients_trained", 0))
        if METRIC not in record.metrics:
            return
        result = {METRIC: float(record.metrics[METRIC]), "round": record.round, "client_updates": self.updates}
        if record.round >= self.rounds:
            self.final = result
            return
        try:
            self.report(result)
        except SystemExit:  # Tune's way of ending a stopped trial's thread
            raise TrialStopped(record.round) from None


def trial_overrides(ctx: TrialContext, values: dict[str, Any]) -> list[str]:
    out = [*ctx.fixed, f"algorithm.name={ctx.algorithm}", *(f"{k}={json.dumps(v)}" for k, v in sorted(values.items()))]
    out += [f"checkpoint_dir={json.dumps(ctx.checkpoint_dir)}", "keep_checkpoint=false"]
    if ctx.trial_workers == "inprocess":
        out.append("workers.use_ray=false")
    return out


def run_trial(values: dict[str, Any], ctx: TrialContext) -> None:
    """The Tune trainable (through tune.with_parameters): one harness run of `values`, reported per round."""
    from ray import tune

    from harness import plugins
    from harness.config import load_config
    from harness.engine import open_run
    from harness.engine.executor import make_executor

    if os.path.isdir(ctx.cwd):  # Tune starts a trial in its own folder (another node may lack the driver's)
        os.chdir(ctx.cwd)
    plugins.load(ctx.plugins)
    cfg = load_config(ctx.base_tree, trial_overrides(ctx, values))
    cfg = cfg.model_copy(update={"checkpoint_every": cfg.rounds})  # a trial is rerun, not resumed, after a kill
    trial_id = tune.get_context().get_trial_id() or ""
    tags = {TUNE_TAG: ctx.tune, ROLE_TAG: "trial", TRIAL_TAG: trial_id,
            "mlflow.runName": f"{ctx.algorithm} trial {trial_id}"}
    if ctx.parent_run_id:
        tags[PARENT_TAG] = ctx.parent_run_id
    reporter = Reporter(tune.report, cfg.rounds)
    engine = open_run(cfg, tags=tags, progress=False, listeners=[reporter])
    try:
        engine.loop(executor_factory=lambda c, data: make_executor(c, without_test(data)))
    except TrialStopped as stop:
        engine.discard_checkpoint()  # a stopped trial is never resumed
        if cfg.tracking.enabled:
            from harness.tracking import mlflow_client

            client = mlflow_client(cfg.tracking.uri)
            client.set_tag(engine.run_id, "fedharness.tune.pruned", "true")
            client.set_tag(engine.run_id, "fedharness.failure", str(stop))
        sys.exit(0)  # what Tune expects of a stopped trial's thread
    if reporter.final is not None:
        tune.report(reporter.final)
