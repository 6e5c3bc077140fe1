"""The tuned leaderboard: per algorithm, the default and the tuned configuration on the same fresh seeds, side by
side, with the budget, the search space and the selected values; the gain and whether the ranking changes.

Runs are read with harness.reports.load_runs (FINISHED runs of the tune's study; the test accuracy those runs
report, "best" chosen on validation) and told apart by the role tag the tune gave them.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from harness.tuning.runner import TuneOutcome
from harness.tuning.spec import Tune

COLUMNS = ["algorithm", "n", "default_acc", "default_std", "default_rank", "tuned_acc", "tuned_std", "tuned_rank",
           "gain_pp", "default_best_acc", "tuned_best_acc", "selected", "best_val_acc", "trials", "pruned",
           "client_updates", "search_space"]


def leaderboard(t: Tune, outcome: TuneOutcome) -> pd.DataFrame:
    from harness.reports import load_runs

    runs = load_runs(next(iter(t.configs.values())).tracking.uri, t.experiment, study=t.name).runs
    if runs.empty:
        raise ValueError(f"tune {t.name}: no finished final runs in experiment {t.experiment!r} yet")
    runs = runs[runs["config_hash"].isin(outcome.roles)].copy()
    runs["role"] = [outcome.roles[h][1] for h in runs["config_hash"]]
    rows = []
    for algorithm in t.configs:
        mine = runs[runs["algorithm"] == algorithm]
        default = mine[mine["role"] == "default"]
        tuned = mine[mine["role"] == "tuned"]
        tuned = default if tuned.empty else tuned  # the search chose the defaults: one set of runs
        r = outcome.searches[algorithm]
        rows.append({
            "algorithm": algorithm, "n": min(len(default), len(tuned)),
            "default_acc": _mean(default["personal_acc"]), "default_std": _std(default["personal_acc"]),
            "tuned_acc": _mean(tuned["personal_acc"]), "tuned_std": _std(tuned["personal_acc"]),
            "default_best_acc": _mean(default["best_personal_acc"]),
            "tuned_best_acc": _mean(tuned["best_personal_acc"]),
            "selected": ", ".join(f"{_short(k)}={_fmt(v)}" for k, v in sorted(r.selected.items())),
            "best_val_acc": r.best_val, "trials": len(r.trials), "pruned": r.pruned,
            "client_updates": r.client_updates,
            "search_space": "; ".join(f"{_short(k)}: {_dist(d)}" for k, d in t.spaces[algorithm].items()),
        })
    table = pd.DataFrame(rows)
    table["gain_pp"] = 100 * (table["tuned_acc"] - table["default_acc"])
    table["default_rank"] = table["default_acc"].rank(ascending=False, method="min").astype(int)
    table["tuned_rank"] = table["tuned_acc"].rank(ascending=False, method="min").astype(int)
    return table.sort_values(["tuned_rank", "algorithm"]).reset_index(drop=True)[COLUMNS]


def ranking_sentence(table: pd.DataFrame) -> str:
    before = list(table.sort_values(["default_rank", "algorithm"])["algorithm"])
    after = list(table.sort_values(["tuned_rank", "algorithm"])["algorithm"])
    if before == after:
        return f"The ranking does not change with tuning: {' > '.join(after)}."
    moved = [f"{a} {int(r.default_rank)}→{int(r.tuned_rank)}" for a, r in table.set_index("algorithm").iterrows()
             if r.default_rank != r.tuned_rank]
    return (f"The ranking changes with tuning: {' > '.join(before)} at defaults, {' > '.join(after)} tuned "
            f"({', '.join(moved)}).")


def to_markdown(t: Tune, table: pd.DataFrame) -> str:
    from harness.tracking import partition_label

    cfg = next(iter(t.configs.values()))
    k = cfg.sampled_per_round(cfg.partition.num_clients)
    sched = t.spec.scheduler
    data = Path(cfg.data.root).stem if cfg.data.source == "arrays" and cfg.data.root else cfg.data.source
    head = (f"Tuned vs default hyperparameters, tune `{t.name}` ({data}, {partition_label(cfg)}, "
            f"{cfg.rounds} rounds, {k} clients per round). Budget, the same for "
            f"every algorithm: {t.trials} trials of at most {cfg.rounds} rounds x {k} clients = "
            f"{t.trials * cfg.rounds * k} client-updates; "
            + (f"ASHA on rounds (grace {sched.grace_rounds}, reduction factor {sched.reduction_factor:g}); "
               if sched.kind == "asha" else "no early stopping; ")
            + f"selection on personal_val_acc at the last round (validation split, "
              f"{cfg.partition.val_fraction:g} of each client's data; search runs read no test split). Search "
              f"seed {cfg.seed} (sampler seed {t.spec.search_seed}); final accuracies are test accuracies "
              f"(personal_acc at the last round), mean ± sample std over the fresh seeds "
              f"{', '.join(map(str, t.spec.final_seeds))}; 'best' = the test accuracy of the round with the best "
              f"validation accuracy. Gain = tuned − default, in percentage points.")
    lines = [head, "", ranking_sentence(table), "",
             "| Algorithm | n | Default acc. (%) | Rank | Tuned acc. (%) | Rank | Gain (pp) | Default best (%) | "
             "Tuned best (%) | Selected values | Val. acc. of selected (%) | Trials (pruned) | Client-updates used |",
             "|:--|--:|--:|--:|--:|--:|--:|--:|--:|:--|--:|--:|--:|"]
    for r in table.itertuples():
        lines.append(f"| {r.algorithm} | {r.n} | {_pct(r.default_acc, r.default_std)} | {r.default_rank} | "
                     f"{_pct(r.tuned_acc, r.tuned_std)} | {r.tuned_rank} | {r.gain_pp:+.2f} | "
                     f"{100 * r.default_best_acc:.2f} | {100 * r.tuned_best_acc:.2f} | {r.selected} | "
                     f"{100 * r.best_val_acc:.2f} | {r.trials} ({r.pruned}) | {r.client_updates} |")
    lines += ["", "Search spaces (algorithms/search_spaces.py, narrowed by the tune spec where it says so):", ""]
    lines += [f"- **{r.algorithm}**: {r.search_space}" for r in table.itertuples()]
    return "\n".join(lines) + "\n"


def write(t: Tune, table: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, csv = out / "leaderboard.md", out / "leaderboard.csv"
    md.write_text(to_markdown(t, table))
    table.to_csv(csv, index=False)
    return [md, csv]


def _mean(s: pd.Series) -> float:
    return float(s.mean()) if len(s) else math.nan


def _std(s: pd.Series) -> float:
    return float(s.std(ddof=1)) if len(s) > 1 else math.nan


def _pct(mean: float, std: float) -> str:
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if not math.isnan(std) else "")


def _short(key: str) -> str:
    return key.split(".", 2)[-1] if key.startswith("algorithm.") else key.removeprefix("train.")


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _dist(d: tuple) -> str:
    return f"{{{', '.join(_fmt(v) for v in d[1])}}}" if d[0] == "choice" else f"{d[0]}[{_fmt(d[1])}, {_fmt(d[2])}]"
