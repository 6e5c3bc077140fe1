"""One algorithm's search: a Ray Tune experiment (resumable from its folder), its MLflow tuning run, selection.

Why it works the way it does:
- The search is Ray Tune's (Tuner, BasicVariantGenerator, ASHAScheduler); this module only declares it. The
  sampler is seeded with the spec's search_seed, so one seed gives the same trial configurations. (Shared
  keys such as lr often get the same draws across algorithms, but not always: an algorithm with more keys
  consumes the random stream differently.)
- Tune's experiment folder (<storage>/<tune>/<algorithm>) is the resumable state: a search that was killed
  is continued with Tuner.restore, which keeps the finished trials' results and reruns only the trials that
  had not finished. A search whose MLflow tuning run is FINISHED is not started at all: its selection is
  read back from that run.
- Selection reads validation only: the trials report personal_val_acc and nothing else about accuracy (their
  workers have no test split, harness.tuning.trial). The chosen trial is the one with the highest
  personal_val_acc at the last round among those that ran every round (ASHA-stopped trials did not);
  ties go to the earlier trial.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from typing import Any

from harness.tuning.progress import SearchProgress
from harness.tuning.spec import METRIC, Tune
from harness.tuning.trial import PARENT_TAG, ROLE_TAG, TRIAL_TAG, TUNE_TAG, TrialContext, run_trial

ALGO_TAG = "fedharness.tune.algorithm"


@dataclass
class SearchResult:
    algorithm: str
    selected: dict[str, Any]
    best_val: float
    trials: list[dict[str, Any]] = field(default_factory=list)  # trial_id, config, rounds, val, status
    parent_run_id: str | None = None
    client_updates: int = 0

    @property
    def pruned(self) -> int:
        return sum(t["status"] == "pruned" for t in self.trials)


def ray_space(space: dict[str, tuple]) -> dict[str, Any]:
    """algorithms.search_spaces' plain data -> Ray Tune sampling domains."""
    from ray import tune

    make = {"loguniform": lambda d: tune.loguniform(d[1], d[2]), "uniform": lambda d: tune.uniform(d[1], d[2]),
            "choice": lambda d: tune.choice(list(d[1]))}
    return {key: make[dist[0]](dist) for key, dist in space.items()}


def trial_resources(t: Tune, algorithm: str):
    """What a trial reserves: `trial_cpus` CPUs, or (actors) a small bundle plus one per worker actor."""
    from ray import tune

    if t.spec.trial_workers == "inprocess":
        return {"cpu": t.spec.trial_cpus}
    w = t.configs[algorithm].workers
    bundles = [{"CPU": 0.01}] + [{"CPU": w.num_cpus, **({"GPU": w.num_gpus} if w.num_gpus else {})}] * w.num_workers
    return tune.PlacementGroupFactory(bundles)


def search(t: Tune, algorithm: str, progress: bool = True, start_ray=lambda: None) -> SearchResult:
    """The algorithm's search, run or resumed (or read back, when its tuning run is FINISHED: no Ray then;
    `start_ray` is called before Tune needs the cluster)."""
    tracked = t.configs[algorithm].tracking.enabled  # off: no MLflow at all; Tune's state alone resumes
    client, parent = tuning_run(t, algorithm) if tracked else (None, None)
    if tracked:
        run = client.get_run(parent)
        if run.info.status == "FINISHED" and "fedharness.tune.selected" in run.data.tags:
            return _read_back(client, run, algorithm)
    start_ray()
    grid = _fit(t, algorithm, parent, progress)
    result = select(algorithm, grid, t.configs[algorithm].rounds)
    result.parent_run_id = parent
    if tracked:
        _close_trial_runs(client, t, parent, result)
        _record(client, t, result)
    return result


def _fit(t: Tune, algorithm: str, parent: str, progress: bool):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    cfg = t.configs[algorithm]
    ctx = TrialContext(t.name, algorithm, t.base_tree, t.fixed, parent if cfg.tracking.enabled else None,
                       str(t.storage / "checkpoints"), t.spec.trial_workers, os.getcwd(), list(cfg.plugins))
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), trial_resources(t, algorithm))
    folder = t.storage / algorithm
    if tune.Tuner.can_restore(str(folder)):
        tuner = tune.Tuner.restore(str(folder), trainable, resume_unfinished=True, resume_errored=True)
    else:
        sched = t.spec.scheduler
        scheduler = (ASHAScheduler(time_attr="round", max_t=cfg.rounds, grace_period=sched.grace_rounds,
                                   reduction_factor=sched.reduction_factor)
                     if sched.kind == "asha" else FIFOScheduler())
        tuner = tune.Tuner(
            trainable, param_space=ray_space(t.spaces[algorithm]),
            tune_config=tune.TuneConfig(metric=METRIC, mode="max", scheduler=scheduler, num_samples=t.trials,
                                        reuse_actors=t.spec.reuse_actors,
                                        search_alg=BasicVariantGenerator(random_state=t.spec.search_seed,
                                                                         max_concurrent=t.spec.parallel_trials)),
            run_config=tune.RunConfig(name=algorithm, storage_path=str(t.storage), verbose=0,
                                      callbacks=[SearchProgress(f"{t.name}/{algorithm}", cfg.rounds, t.trials,
                                                                enabled=progress)],
                                      failure_config=tune.FailureConfig(max_failures=0)))
    return tuner.fit()


def select(algorithm: str, grid, rounds: int) -> SearchResult:
    """The configuration with the best last-round personal_val_acc among trials that ran every round."""
    trials = []
    for i, res in enumerate(grid):
        metrics = res.metrics or {}
        done = int(metrics.get("round", 0) or 0)
        status = "error" if res.error else ("finished" if done >= rounds else "pruned")
        trials.append({"index": i, "trial_id": metrics.get("trial_id", ""), "config": dict(res.config or {}),
                       "rounds": done, "val": float(metrics.get(METRIC, math.nan)), "status": status,
                       "client_updates": int(metrics.get("client_updates", 0) or 0)})
    trials.sort(key=lambda r: r["trial_id"])
    full = [r for r in trials if r["status"] == "finished" and not math.isnan(r["val"])]
    if not full:
        raise RuntimeError(f"{algorithm}: no trial ran all {rounds} rounds "
                           f"({', '.join(r['status'] for r in trials) or 'no trials'}); see the trials' errors")
    best = min(full, key=lambda r: (-r["val"], r["trial_id"]))
    return SearchResult(algorithm, best["config"], best["val"], trials,
                        client_updates=sum(r["client_updates"] for r in trials))


def tuning_run(t: Tune, algorithm: str) -> tuple[Any, str]:
    """(client, id) of the algorithm's MLflow tuning run: the one this tune made before, or a new one."""
    from mlflow.entities import Param

    from harness.tracking import ensure_experiment, mlflow_client, tracking_uri

    uri = tracking_uri(t.configs[algorithm].tracking.uri)
    client = mlflow_client(uri)
    exp_id = ensure_experiment(client, uri, t.experiment)
    found = client.search_runs([exp_id], f"tags.`{TUNE_TAG}` = '{t.name}' and tags.`{ROLE_TAG}` = 'search' and "
                                         f"tags.`{ALGO_TAG}` = '{algorithm}'", max_results=1)
    if found:
        if found[0].info.status != "FINISHED":
            client.update_run(found[0].info.run_id, status="RUNNING")
        return client, found[0].info.run_id
    run = client.create_run(exp_id, tags={TUNE_TAG: t.name, ROLE_TAG: "search", ALGO_TAG: algorithm,
                                          "mlflow.runName": f"tune {algorithm}"})
    cfg = t.configs[algorithm]
    params = {"algorithm": algorithm, "budget.trials": t.trials,
              "budget.client_updates_per_trial": t.updates_per_trial(algorithm),
              "budget.client_updates": t.trials * t.updates_per_trial(algorithm), "rounds": cfg.rounds,
              "scheduler": t.spec.scheduler.model_dump_json(), "search_seed": t.spec.search_seed,
              "search_space": json.dumps(t.spaces[algorithm])[:6000]}
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return client, run.info.run_id


def _close_trial_runs(client, t: Tune, parent: str, result: SearchResult) -> None:
    """A trial whose process Tune ended before the trial could say why (ASHA's stops, a killed tune's unfinished
    trials) is RUNNING in MLflow, or KILLED as if by Ctrl-C: mark it KILLED, pruned (with the round) or
    superseded (a rerun of the same trial id finished after it)."""
    trials = {r["trial_id"]: r for r in result.trials}
    runs = client.search_runs([client.get_run(parent).info.experiment_id],
                              f"tags.`{PARENT_TAG}` = '{parent}' and attributes.status != 'FINISHED'")
    for run in runs:
        trial = trials.get(run.data.tags.get(TRIAL_TAG, ""), {})
        pruned = trial.get("status") == "pruned"
        client.set_tag(run.info.run_id, "fedharness.tune.pruned", str(pruned).lower())
        if pruned:
            client.set_tag(run.info.run_id, "fedharness.failure",
                           f"stopped by the tuning scheduler after round {trial.get('rounds')}")
        else:
            client.set_tag(run.info.run_id, "fedharness.tune.superseded", "true")
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status="KILLED")
        shutil.rmtree(t.storage / "checkpoints" / run.info.run_id, ignore_errors=True)  # never resumed: rerun


def _record(client, t: Tune, r: SearchResult) -> None:
    from mlflow.entities import Metric, Param

    done = sum(x["status"] == "finished" for x in r.trials)
    metrics = {"best_personal_val_acc": r.best_val, "trials_finished": done, "trials_pruned": r.pruned,
               "trials_error": sum(x["status"] == "error" for x in r.trials), "client_updates_used": r.client_updates}
    client.log_batch(r.parent_run_id, metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()],
                     params=[Param(f"selected.{k}", str(v)) for k, v in r.selected.items()])
    client.set_tag(r.parent_run_id, "fedharness.tune.selected", json.dumps(r.selected, sort_keys=True))
    client.set_tag(r.parent_run_id, "fedharness.tune.trials", json.dumps(r.trials)[:60000])
    client.set_terminated(r.parent_run_id, status="FINISHED")


def _read_back(client, run, algorithm: str) -> SearchResult:
    tags, metrics = run.data.tags, run.data.metrics
    trials = json.loads(tags.get("fedharness.tune.trials", "[]"))
    return SearchResult(algorithm, json.loads(tags["fedharness.tune.selected"]),
                        float(metrics.get("best_personal_val_acc", math.nan)), trials, run.info.run_id,
                        int(metrics.get("client_updates_used", 0)))
