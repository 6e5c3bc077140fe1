"""Ranking: what each leaderboard metric means, mean and spread over seeds, rank per block.

Why:
- Each metric is defined once (MetricDef), with the sentence the captions print, so a table never
  shows a number whose definition is not stated next to it.
- Rows show mean +- *sample* std over seeds and n: with 2-5 seeds the population std would
  understate the spread. One seed has no std (NaN, printed as no spread), not 0.
- Ranks are within each (data set, partition, budget) block: comparing accuracies across data
  sets or budgets means nothing. Ties share a rank (method="min"); time-to-accuracy that some
  seed never reached is inf and ranks last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

GROUP = ["dataset", "partition", "budget", "algorithm", "variant"]
BLOCK = ["dataset", "partition", "budget"]


@dataclass(frozen=True)
class MetricDef:
    key: str
    header: str
    definition: str
    higher_is_better: bool
    unit: str  # acc | seconds | bytes


def metric_defs(target: float) -> dict[str, MetricDef]:
    pct = f"{100 * target:g}%"
    return {
        "final": MetricDef("personal_acc", "Final acc. (%)", "final personalized accuracy: personal_acc "
                           "(total correct / total test samples, each client with its own model) at the last "
                           "evaluated round", True, "acc"),
        "best": MetricDef("best_personal_acc", "Best acc. (%)", "best personalized accuracy: max of personal_acc "
                          "over evaluated rounds", True, "acc"),
        "worst10": MetricDef("personal_acc_worst10", "Worst-10% acc. (%)", "worst-10% accuracy: mean "
                             "personalized accuracy of the worst 10% of clients at the last evaluated round",
                             True, "acc"),
        "tta": MetricDef("time_to_acc", f"Time to {pct} (sim. s)", f"time-to-accuracy: simulated seconds "
                         f"(sim_time) until personal_acc first reaches {pct}; 'not reached' if never",
                         False, "seconds"),
        "bytes": MetricDef("bytes_total", "Comm. (MB)", "bytes communicated: bytes_up_total + "
                           "bytes_down_total over the whole run, in MB (1 MB = 1,000,000 bytes)", False, "bytes"),
    }


def aggregate(runs: pd.DataFrame, metric: str = "final", target: float = 0.8) -> pd.DataFrame:
    """One row per group: <key>_mean, <key>_std (sample std, NaN for one seed), n, rank by `metric`."""
    defs = metric_defs(target)
    if metric not in defs:
        raise ValueError(f"unknown metric {metric!r}; choose one of: {', '.join(defs)}")
    rows = []
    for key, group in runs.groupby(GROUP, sort=True):
        row = dict(zip(GROUP, key, strict=True))
        row["label"] = group["label"].iloc[0]
        row["n"] = len(group)
        row["seeds"] = " ".join(str(s) for s in sorted(group["seed"]))
        for d in defs.values():
            values = group[d.key].to_numpy(dtype=float)
            row[f"{d.key}_mean"] = float(np.mean(values)) if not np.isinf(values).any() else math.inf
            finite = values[np.isfinite(values)]
            row[f"{d.key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 and len(finite) == len(values) \
                else math.nan
            if d.key == "time_to_acc":
                row["time_to_acc_reached"] = int(len(finite))
        row["run_ids"] = " ".join(group["run_id"])
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    d = defs[metric]
    col = f"{d.key}_mean"
    table["rank"] = table.groupby(BLOCK)[col].rank(method="min", ascending=not d.higher_is_better,
                                                    na_option="bottom").astype(int)
    table["ranked_by"] = metric
    table = table.sort_values([*BLOCK, "rank", "label"]).reset_index(drop=True)
    return table


def best_mask(table: pd.DataFrame, d: MetricDef) -> pd.Series:
    """True where a row holds the best mean of its block for this metric (ties: all of them)."""
    col = f"{d.key}_mean"
    values = table[col].astype(float)
    usable = values.where(np.isfinite(values))
    best = usable.groupby([table[b] for b in BLOCK]).transform("max" if d.higher_is_better else "min")
    return (usable == best) & usable.notna()
