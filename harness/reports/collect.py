"""Collecting runs for a leaderboard: every FINISHED fedharness run of an MLflow experiment, one
row per run (search_runs -> pandas), plus each run's accuracy curve.

Per run, from MLflow:
  final    personal_acc at the last logged step (MLflow's latest value)
  best     personal_acc at the round of the best personal_val_acc (runs with a validation split), else
           the max of personal_acc over its evaluated rounds
  worst10  personal_acc_worst10 at the last logged step
  tta      sim_time at the first step where personal_acc >= target (inf: never reached)
  bytes    bytes_up_total + bytes_down_total at the last logged step

Why rows are identified the way they are:
- A run's group is (data set, partition, budget, algorithm) from its tags, refined by every other
  config value except the seed and the values that do not change what a run computes (where it
  logs, how many workers): two hyperparameter settings of one algorithm are two rows (labelled by
  the values that differ) instead of being averaged as if they were seeds.
- Per setting and seed the newest run counts once, so a rerun does not double a seed; how many
  were dropped is kept for the caption.
- Runs without a fedharness config hash (e.g. the leaderboard's own run) are not results.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import pandas as pd

from harness.reports.rank import GROUP

# config values that do not change what a run computes: not part of a group's identity
NEUTRAL_PARAMS = ("name", "seed", "checkpoint_dir", "checkpoint_every", "keep_checkpoint", "partition.cache_dir",
                  "data.root", "data.download")
NEUTRAL_PREFIXES = ("workers.", "tracking.", "store.")


#: per-round series a leaderboard's figures draw (bytes_total = bytes_up_total + bytes_down_total)
CURVE_KEYS = ("personal_acc", "global_acc", "personal_acc_worst10", "sim_time")
CURVE_COLUMNS = ["run_id", "step", *CURVE_KEYS, "bytes_total"]


@dataclass
class RunData:
    runs: pd.DataFrame     # one row per counted run
    curves: pd.DataFrame   # CURVE_COLUMNS
    dropped: int = 0       # older duplicates of (group, seed)
    clients: pd.DataFrame | None = None  # run_id, client, personal_acc, ...: each run's clients_final.csv


def load_runs(tracking_uri: str | None, experiment: str, study: str | None = None, target: float = 0.8,
              clients: bool = False) -> RunData:
    """`clients=True` also reads each counted run's clients_final.csv artifact (the fairness figure)."""
    from harness.tracking import mlflow_client
    from harness.tracking import tracking_uri as resolve

    client = mlflow_client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise ValueError(f"no MLflow experiment {experiment!r} at {resolve(tracking_uri)}; experiments: {names}")
    filt = "attributes.status = 'FINISHED'"
    if study:
        filt += f" and tags.`fedharness.study` = '{study}'"
    rows, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], filt, max_results=1000, page_token=token)
        rows.extend(page)
        token = page.token
        if not token:
            break
    records, curve_frames = [], []
    for run in rows:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        if "fedharness.config_hash" not in tags or "personal_acc" not in metrics:
            continue
        acc = _history(client, run.info.run_id, "personal_acc")
        series = {k: acc if k == "personal_acc" else _history(client, run.info.run_id, k) for k in CURVE_KEYS}
        series["bytes_total"] = _history(client, run.info.run_id, "bytes_up_total").add(
            _history(client, run.info.run_id, "bytes_down_total"), fill_value=0.0)
        curve = acc.rename("personal_acc").to_frame()
        for key, values in series.items():
            if key != "personal_acc":
                curve = curve.join(values.rename(key), how="left")
        curve = curve.reset_index().rename(columns={"index": "step"})
        curve.insert(0, "run_id", run.info.run_id)
        curve_frames.append(curve)
        reached = curve[curve["personal_acc"] >= target].sort_values("step")
        records.append({
            "run_id": run.info.run_id,
            "run_name": tags.get("mlflow.runName", ""),
            "dataset": tags.get("fedharness.dataset", params.get("data.source", "?")),
            "partition": tags.get("fedharness.partition", "?"),
            "budget": tags.get("fedharness.budget", "?"),
            "algorithm": tags.get("fedharness.algorithm", params.get("algorithm.name", "?")),
            "seed": int(tags.get("fedharness.seed", params.get("seed", 0))),
            "study": tags.get("fedharness.study", ""),
            "config_hash": tags["fedharness.config_hash"],
            "variant_key": _variant_key(params),
            "params": params,
            "end_time": run.info.end_time or 0,
            # wall-clock seconds of the run (a resumed run: from its first start to its last end)
            "wall_s": ((run.info.end_time or 0) - (run.info.start_time or 0)) / 1000.0,
            "rounds": int(acc.index.max()) if len(acc) else 0,
            "personal_acc": float(metrics["personal_acc"]),
            "best_personal_acc": best_round_accuracy(acc, _history(client, run.info.run_id, "personal_val_acc")),
            "best_selected_on": "validation" if "personal_val_acc" in metrics else "test",
            "personal_acc_worst10": float(metrics.get("personal_acc_worst10", math.nan)),
            "time_to_acc": float(reached["sim_time"].iloc[0]) if len(reached) else math.inf,
            "bytes_total": float(metrics.get("bytes_up_total", math.nan) + metrics.get("bytes_down_total", math.nan)),
        })
    runs = pd.DataFrame(records)
    curves = pd.concat(curve_frames, ignore_index=True) if curve_frames else pd.DataFrame(columns=CURVE_COLUMNS)
    if runs.empty:
        return RunData(runs, curves)
    runs = _label_variants(runs)
    before = len(runs)
    runs = runs.sort_values("end_time").drop_duplicates(["variant_key", "seed"], keep="last")
    runs = runs.sort_values([*GROUP, "seed"]).reset_index(drop=True)
    curves = curves[curves["run_id"].isin(runs["run_id"])].reset_index(drop=True)
    per_client = _clients_final(client, runs["run_id"]) if clients else None
    return RunData(runs, curves, before - len(runs), per_client)


def _clients_final(client, run_ids) -> pd.DataFrame:
    """Each run's final per-client results (clients_final.csv); runs without the artifact are left out."""
    import os
    import tempfile

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per run would flood stderr
    frames = []
    with tempfile.TemporaryDirectory() as tmp:
        for run_id in run_ids:
            try:
                path = client.download_artifacts(run_id, "clients_final.csv", tmp)
            except Exception:  # noqa: BLE001 - an older run without the artifact: no fairness data for it
                continue
            frame = pd.read_csv(path)
            frame.insert(0, "run_id", run_id)
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run_id", "personal_acc"])


def best_round_accuracy(test: pd.Series, val: pd.Series) -> float:
    """The 'best' test accuracy of a run, chosen without peeking: at the evaluated round with the highest
    validation accuracy (the first such round) where the run has a validation split; otherwise the maximum
    over the evaluated test rounds (optimistic: the test data chose the round; the caption says which)."""
    val = val.reindex(test.index).dropna()
    if val.empty:
        return float(test.max())
    return float(test[val.idxmax()])


def _history(client, run_id: str, key: str) -> pd.Series:
    """Metric history as step -> value; a step logged twice (a resumed run re-logs the round after
    its last checkpoint) keeps its latest value."""
    hist = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    return pd.Series({m.step: m.value for m in hist}, dtype=float)


def _neutral(key: str) -> bool:
    return key in NEUTRAL_PARAMS or key.startswith(NEUTRAL_PREFIXES)


def _variant_key(params: dict[str, str]) -> str:
    body = json.dumps({k: v for k, v in sorted(params.items()) if not _neutral(k)}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _label_variants(runs: pd.DataFrame) -> pd.DataFrame:
    """Where one algorithm has several settings in a block, name them by the values that differ."""
    runs = runs.copy()
    runs["variant"] = ""
    for _, block in runs.groupby(["dataset", "partition", "budget", "algorithm"]):
        keys = block["variant_key"].unique()
        if len(keys) < 2:
            continue
        firsts = {k: block[block["variant_key"] == k].iloc[0]["params"] for k in keys}
        names = sorted({p for ps in firsts.values() for p in ps if not _neutral(p)})
        differing = [p for p in names if len({firsts[k].get(p) for k in keys}) > 1]
        for k in keys:
            label = ", ".join(f"{p.removeprefix('algorithm.')}={firsts[k].get(p)}" for p in differing)
            runs.loc[block.index[block["variant_key"] == k], "variant"] = label
    runs["label"] = [f"{a} ({v})" if v else a for a, v in zip(runs["algorithm"], runs["variant"], strict=True)]
    return runs
