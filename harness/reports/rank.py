"""Ranking: what each leaderboard metric means, mean and spread over seeds, rank per block.

Why:
- Each metric is defined once (MetricDef), with the sentence the captions print, so a table never
  shows a number whose definition is not stated next to it.
- Rows show mean +- *sample* std over seeds and n: with 2-5 seeds the population std would
  understate the spread. One seed has no std (NaN, printed as no spread), not 0.
- Ranks are within each (data set, partition, budget) block: comparing accuracies across data
  sets or budgets means nothing. Ties share a rank (method="min"); time-to-accuracy that some
  seed never reached is inf and ranks last.
- Each mean also gets its 95% t confidence interval over seeds (<key>_ci: the half-width;
  harness.reports.stats.mean_ci), and each row a paired comparison with a baseline algorithm of its
  block on the seeds both have (<key>_diff, <key>_p: paired t, <key>_wilcoxon_p, <key>_dz: Cohen's
  d_z): seeds share the partition and the data order, so pairing removes the seed-to-seed spread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.reports.stats import mean_ci, paired_comparison

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
        "best": MetricDef("best_personal_acc", "Best acc. (%)", "best personalized accuracy: personal_acc at the "
                          "evaluated round with the highest validation accuracy (personal_val_acc) where runs have "
                          "a validation split (partition.val_fraction), else the max of personal_acc over evaluated "
                          "rounds (chosen on test data: optimistic)", True, "acc"),
        "worst10": MetricDef("personal_acc_worst10", "Worst-10% acc. (%)", "worst-10% accuracy: mean "
                             "personalized accuracy of the worst 10% of clients at the last evaluated round",
                             True, "acc"),
        "tta": MetricDef("time_to_acc", f"Time to {pct} (sim. s)", f"time-to-accuracy: simulated seconds "
                         f"(sim_time) until personal_acc first reaches {pct}; 'not reached' if never",
                         False, "seconds"),
        "bytes": MetricDef("bytes_total", "Comm. (MB)", "bytes communicated: bytes_up_total + "
                           "bytes_down_total over the whole run, in MB (1 MB = 1,000,000 bytes)", False, "bytes"),
    }


def aggregate(runs: pd.DataFrame, metric: str = "final", target: float = 0.8,
              baseline: str | None = None) -> pd.DataFrame:
    """One row per group: <key>_mean, <key>_std (sample std, NaN for one seed), <key>_ci (95% t half-width,
    0 when every seed gave the same value), n, rank by `metric`; with `baseline` (an algorithm name) each
    other row of a block holding it gains the paired comparison with it (see the module docstring)."""
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
            complete = len(finite) == len(values)
            row[f"{d.key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 and complete else math.nan
            row[f"{d.key}_ci"] = mean_ci(values).half_width if len(values) > 1 and complete else math.nan
            if d.key == "time_to_acc":
                row["time_to_acc_reached"] = int(len(finite))
        row["run_ids"] = " ".join(group["run_id"])
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["baseline"] = baseline or ""
    if baseline:
        table = _compare_with(table, runs, baseline, defs)
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


def _compare_with(table: pd.DataFrame, runs: pd.DataFrame, baseline: str, defs: dict[str, MetricDef]) -> pd.DataFrame:
    """Paired comparison of every row with the baseline algorithm's (first) row of its block, seed by seed."""
    table = table.copy()
    for d in defs.values():
        for col in ("diff", "p", "wilcoxon_p", "dz"):
            table[f"{d.key}_{col}"] = math.nan
    by_group = {key: group.set_index("seed") for key, group in runs.groupby(GROUP, sort=True)}
    for i, row in table.iterrows():
        block = tuple(row[b] for b in BLOCK)
        base = table[(table["algorithm"] == baseline) & (table[BLOCK].apply(tuple, axis=1) == block)]
        if base.empty or base.index[0] == i:
            continue
        mine = by_group[tuple(row[g] for g in GROUP)]
        theirs = by_group[tuple(base.iloc[0][g] for g in GROUP)]
        seeds = sorted(set(mine.index) & set(theirs.index))
        for d in defs.values():
            a, b = mine.loc[seeds, d.key].to_numpy(float), theirs.loc[seeds, d.key].to_numpy(float)
            if not seeds or not (np.isfinite(a).all() and np.isfinite(b).all()):
                continue
            cmp = paired_comparison(a, b)
            table.loc[i, [f"{d.key}_diff", f"{d.key}_p", f"{d.key}_wilcoxon_p", f"{d.key}_dz"]] = (
                cmp.mean_diff, cmp.t_p, cmp.wilcoxon_p, cmp.effect)
    return table


def second_mask(table: pd.DataFrame, d: MetricDef) -> pd.Series:
    """True where a row holds the second-best distinct mean of its block for this metric."""
    col = f"{d.key}_mean"
    usable = table[col].astype(float).where(np.isfinite(table[col].astype(float)))
    best = best_mask(table, d)
    rest = usable.where(~best)
    second = rest.groupby([table[b] for b in BLOCK]).transform("max" if d.higher_is_better else "min")
    return (rest == second) & rest.notna()
