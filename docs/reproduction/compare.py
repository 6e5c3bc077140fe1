"""Our paper-protocol runs next to the FedOBP authors' logged runs: tables, comparison.csv, plots.

    python docs/reproduction/compare.py --study runs/paper/study_cifar10_dir0.1.yaml \
        --tracking-uri sqlite:///mlruns/mlflow.db --out docs/reproduction/cifar10_dir0.1

Reads every cell of the study from MLflow (finished or still running: what has been logged so far),
completed by the history CSVs already in --out for cells this store lacks or has fewer rounds of (runs of
earlier sessions), and the authors' figures from ../shared/reference/fedobp_logged/. Writes into --out:
- history/<algorithm>.csv   our per-round history (all logged metrics)
- comparison.csv            algorithm,round,ours,logged,diff: all-client accuracy (%) at every
                            evaluated round both sides have
- table.md                  that table by round, the sampled-client curve's last-50-round means,
                            ranks and Kendall's tau, wall time per run
- comparison.png / .pdf     all-client evaluations vs round, and both sampled-client curves
                            (smoothed over 20 rounds)
With sampling=flbench (the paper presets) every round samples the clients the authors' run sampled, so
table.md also compares the two sampled-client curves round by round (same clients, same round).
The authors' figures: CIFAR-10 from ../shared/reference/fedobp_logged/, other data sets from the
transcriptions in docs/reproduction/flbench_logged/ (<data set>_a<alpha>_periodic_evals.csv, _curves.csv).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT.parent / "shared" / "reference" / "fedobp_logged"
TRANSCRIBED = ROOT / "docs" / "reproduction" / "flbench_logged"
DATASET_NAMES = {"cifar10": "CIFAR-10", "mnist": "MNIST"}
#: our cell name -> the logged run's algorithm (None: not in the logs)
LOGGED_NAME = {"fedobp": "FedOBP", "fedobp_scheduled": "FedOBP", "fedavg": "fedavg", "local": "local",
               "fedper": "fedper", "fedrep": "fedrep", "lgfedavg": "lgfedavg", "apfl": "apfl", "fedrod": "fedrod",
               "feddpa": "feddpa", "floco": "floco", "flute": "flute", "pfedfda": "pfedfda",
               "ditto": None, "fedala": None, "fedbabu": None, "apfl_flbench": "apfl"}
#: second cells of an algorithm in the logs (another variant of it): out of the ranks, its logged curve drawn once
VARIANTS = {"fedobp_scheduled", "apfl_flbench"}
#: pFedFDA: the README says to use the 2025-01-22 runs (the 2025-01-19 one predates an upstream fix)
PFEDFDA_RUN = "2025-01-22-10-08-39"


def load_ours(uri: str, experiment: str) -> dict[str, dict]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no experiment {experiment!r} at {uri}")
    out = {}
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        name = run.data.tags.get("fedharness.cell.name") or run.data.params.get("name")
        if not name or run.info.status in ("FAILED",):
            continue
        keys = [k for k in run.data.metrics if not k.startswith("best_")]
        series = {k: {m.step: m.value for m in client.get_metric_history(run.info.run_id, k)} for k in keys}
        frame = pd.DataFrame(series).sort_index()
        if frame.empty:  # started, no round logged yet
            continue
        frame.index.name = "round"
        previous = out.get(name)
        if previous is None or len(frame) > len(previous["history"]):
            out[name] = {"history": frame, "status": run.info.status, "run_id": run.info.run_id}
    return out


def merge_committed(ours: dict[str, dict], history_dir: Path) -> dict[str, dict]:
    """Runs of earlier sessions, from the committed history/<name>.csv, where this store has no run of that cell
    or a shorter one: a session's MLflow store ends with it, the committed histories do not."""
    merged = dict(ours)
    for path in sorted(history_dir.glob("*.csv")):
        frame = pd.read_csv(path, index_col="round")
        mine = merged.get(path.stem)
        if frame.empty:
            continue
        if mine is None or len(frame) > len(mine["history"]):
            merged[path.stem] = {"history": frame, "status": "earlier session (history CSV)", "run_id": ""}
    return merged


def load_logged(dataset: str, alpha: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    if dataset == "cifar10":
        curves = pd.read_csv(REFERENCE / f"curves_cifar10_alpha{alpha}.csv")
        evals = pd.read_csv(REFERENCE / "periodic_evals.csv")
    else:
        curve_file, eval_file = (TRANSCRIBED / f"{dataset}_a{alpha}_{kind}.csv"
                                 for kind in ("curves", "periodic_evals"))
        curves = pd.read_csv(curve_file) if curve_file.exists() else pd.DataFrame(
            columns=["algorithm", "round", "acc_before", "acc_after", "run_folder"])
        evals = pd.read_csv(eval_file) if eval_file.exists() else pd.DataFrame(
            columns=["algorithm", "run_folder", "alpha", "dataset", "eval_round_log", "acc_before_finetune"])
    evals = evals[(evals["alpha"] == alpha) & (evals["dataset"] == dataset)]
    keep = (evals["algorithm"] != "pfedfda") | (evals["run_folder"] == PFEDFDA_RUN)
    curves_keep = (curves["algorithm"] != "pfedfda") | (curves["run_folder"] == PFEDFDA_RUN)
    return curves[curves_keep], evals[keep]


def comparison_rows(ours: dict[str, dict], evals: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for name, run in sorted(ours.items()):
        logged_name = LOGGED_NAME.get(name)
        h = run["history"]
        if "personal_acc" not in h:
            continue
        for rnd, acc in h["personal_acc"].dropna().items():
            logged = evals[(evals["algorithm"] == logged_name) & (evals["eval_round_log"] == rnd)]
            value = float(logged["acc_before_finetune"].iloc[0]) if len(logged) else np.nan
            rows.append({"algorithm": name, "round": int(rnd), "ours": round(100 * acc, 2),
                         "logged": value, "diff": round(100 * acc - value, 2) if value == value else np.nan})
    return pd.DataFrame(rows, columns=["algorithm", "round", "ours", "logged", "diff"])


def curve_means(ours: dict[str, dict], curves: pd.DataFrame) -> pd.DataFrame:
    """Mean of the sampled-client accuracy before local training over the last 50 rounds we have, and the
    logged curve's mean over the same rounds (the logs count rounds from 0)."""
    rows = []
    for name, run in sorted(ours.items()):
        h = run["history"]
        if "sampled_acc_before" not in h:
            continue
        last = int(h.index.max())
        window = h.loc[max(1, last - 49):last]
        logged = curves[(curves["algorithm"] == LOGGED_NAME.get(name))
                        & curves["round"].between(window.index.min() - 1, last - 1)]
        ours_mean = 100 * window["sampled_acc_before"].mean()
        logged_mean = logged["acc_before"].mean() if len(logged) else np.nan
        rows.append({"algorithm": name, "rounds": f"{int(window.index.min())}-{last}",
                     "ours_before": round(ours_mean, 2), "logged_before": round(logged_mean, 2),
                     "diff": round(ours_mean - logged_mean, 2) if logged_mean == logged_mean else np.nan,
                     "ours_after": round(100 * window["sampled_acc_after"].mean(), 2),
                     "logged_after": round(logged["acc_after"].mean(), 2) if len(logged) else np.nan})
    return pd.DataFrame(rows)


def logged_by_round(curves: pd.DataFrame, name: str) -> pd.DataFrame:
    """The logged curve of our cell `name`, acc_before / acc_after indexed by our round number (the logs count
    rounds from 0, we from 1)."""
    logged = curves[curves["algorithm"] == LOGGED_NAME.get(name)]
    return logged.set_index(logged["round"] + 1)[["acc_before", "acc_after"]]


def same_client_agreement(ours: dict[str, dict], curves: pd.DataFrame) -> pd.DataFrame:
    """Round by round over every round we ran (sampling=flbench: the same 10 clients as the logged round):
    mean of ours and logged, mean absolute difference and correlation of the per-round accuracies."""
    rows = []
    for name, run in sorted(ours.items()):
        h = run["history"]
        theirs = logged_by_round(curves, name)
        if "sampled_acc_before" not in h or theirs.empty:
            continue
        both = pd.DataFrame({"ours": 100 * h["sampled_acc_before"], "ours_after": 100 * h["sampled_acc_after"]})
        both = both.join(theirs, how="inner").dropna()
        if len(both) < 2:
            continue
        row = {"algorithm": name, "rounds": f"{int(both.index.min())}-{int(both.index.max())}"}
        for ours_col, log_col, tag in (("ours", "acc_before", "before"), ("ours_after", "acc_after", "after")):
            diff = both[ours_col] - both[log_col]
            row.update({f"ours_{tag}": round(both[ours_col].mean(), 2), f"logged_{tag}": round(both[log_col].mean(), 2),
                        f"mean_abs_diff_{tag}": round(diff.abs().mean(), 2),
                        f"r_{tag}": round(float(np.corrcoef(both[ours_col], both[log_col])[0, 1]), 3)})
        rows.append(row)
    return pd.DataFrame(rows)


def rank_agreement(comp: pd.DataFrame, at_round: int) -> tuple[pd.DataFrame, float, float]:
    """Ranks of the algorithms both sides have at `at_round` (FedOBP: the fixed-q variant), Kendall's tau."""
    both = comp[(comp["round"] == at_round) & comp["logged"].notna() & ~comp["algorithm"].isin(VARIANTS)]
    both = both.assign(rank_ours=both["ours"].rank(ascending=False).astype(int),
                       rank_logged=both["logged"].rank(ascending=False).astype(int))
    if len(both) < 3:
        return both.sort_values("rank_ours"), float("nan"), float("nan")
    tau, p = kendalltau(both["ours"], both["logged"])
    return both.sort_values("rank_ours"), float(tau), float(p)


def plot(ours: dict[str, dict], curves: pd.DataFrame, evals: pd.DataFrame, path: Path, title: str,
         same_clients: bool = False) -> None:
    """All-client evaluations and the smoothed sampled-client curves; with same_clients (sampling=flbench) a third
    panel puts each round's sampled-client accuracy before training, ours against logged (the same 10 clients)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(n for n, run in ours.items() if {"personal_acc", "sampled_acc_before"} & set(run["history"]))
    colors = {n: plt.cm.tab20(i % 20) for i, n in enumerate(names)}
    fig, axes = plt.subplots(1, 3 if same_clients else 2, figsize=(19 if same_clients else 13, 4.6))
    for name in names:
        h = ours[name]["history"]
        acc = h["personal_acc"].dropna() if "personal_acc" in h else pd.Series(dtype=float)
        axes[0].plot(acc.index, 100 * acc.values, "o-", color=colors[name], label=f"{name} (ours)")
        logged = evals[evals["algorithm"] == LOGGED_NAME.get(name)].sort_values("eval_round_log")
        if len(logged) and name not in VARIANTS:
            axes[0].plot(logged["eval_round_log"], logged["acc_before_finetune"], "x--", color=colors[name])
        if "sampled_acc_before" in h:
            smooth = (100 * h["sampled_acc_before"]).rolling(20, min_periods=1).mean()
            axes[1].plot(smooth.index, smooth.values, "-", color=colors[name], label=f"{name} (ours)")
        log_curve = curves[curves["algorithm"] == LOGGED_NAME.get(name)].sort_values("round")
        if len(log_curve) and name not in VARIANTS:
            last = int(h.index.max())
            part = log_curve[log_curve["round"] < max(last, 100)]
            axes[1].plot(part["round"] + 1, part["acc_before"].rolling(20, min_periods=1).mean(), ":",
                         color=colors[name])
            if same_clients and "sampled_acc_before" in h:
                both = pd.concat([100 * h["sampled_acc_before"], logged_by_round(curves, name)["acc_before"]], axis=1,
                                 join="inner").dropna()
                axes[2].plot(both.iloc[:, 1], both.iloc[:, 0], ".", ms=3, alpha=0.6, color=colors[name], label=name)
    axes[0].set_title("all clients, personalized model (o ours, x logged)", fontsize=10)
    axes[1].set_title("sampled clients, before local training (20-round mean; solid ours, dotted logged)",
                      fontsize=10)
    for ax in axes[:2]:
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if same_clients:
        axes[2].plot([0, 100], [0, 100], "k-", lw=0.6)
        axes[2].set_xlabel("logged, the same round's 10 clients (%)")
        axes[2].set_ylabel("ours (%)")
        axes[2].set_title("sampled clients before local training, each round", fontsize=10)
        axes[2].grid(alpha=0.3)
        axes[2].legend(fontsize=7, markerscale=3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=110)
    fig.savefig(path.with_suffix(".pdf"))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", required=True, help="the study spec (runs/paper/study_*.yaml)")
    p.add_argument("--tracking-uri", default="sqlite:///mlruns/mlflow.db")
    p.add_argument("--out", required=True)
    p.add_argument("--dataset", help="the logged data set (default: from the spec's file name, "
                                      "study_<data set>_dir...)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from harness.studies import load_study

    study = load_study(args.study, tracking_uri=args.tracking_uri)
    cfg = study.cells[0].config
    alpha = float(cfg.partition.alpha)
    dataset = args.dataset or re.match(r"study_(.+?)_dir", Path(args.study).name).group(1)
    out = Path(args.out)
    (out / "history").mkdir(parents=True, exist_ok=True)
    ours = merge_committed(load_ours(args.tracking_uri, study.experiment), out / "history")
    curves, evals = load_logged(dataset, alpha)
    for name, run in ours.items():
        run["history"].to_csv(out / "history" / f"{name}.csv")
    comp = comparison_rows(ours, evals)
    comp.to_csv(out / "comparison.csv", index=False)
    means = curve_means(ours, curves)
    lines = [f"# {study.name}: ours vs the FedOBP authors' logged runs ({DATASET_NAMES.get(dataset, dataset)}, "
             f"Dirichlet {alpha})", "",
             f"Study spec: `{args.study}`; exact commands: `docs/reproduction/run_all.sh`. All-client accuracy of the "
             "personalized models (%), before fine-tuning, at each evaluated round; logged = the authors' "
             "`acc_before_finetune` at the same round.", ""]
    if not comp.empty:
        wide = comp.pivot_table(index="algorithm", columns="round", values=["ours", "logged", "diff"])
        table = pd.DataFrame(index=wide.index)
        for rnd in sorted(comp["round"].unique()):
            table[f"ours@{rnd}"] = wide[("ours", rnd)]
            table[f"logged@{rnd}"] = wide[("logged", rnd)]
            table[f"diff@{rnd}"] = wide[("diff", rnd)]
        lines += [table.to_markdown(floatfmt=".2f"), ""]
        last_common = int(comp.dropna()["round"].max()) if comp["logged"].notna().any() else None
        if last_common:
            ranks, tau, pval = rank_agreement(comp, last_common)
            lines += [f"Ranks at round {last_common} (algorithms in both; FedOBP = fixed q, APFL = the paper's): "
                      f"Kendall's tau = {tau:.3f} (p = {pval:.3f}, n = {len(ranks)})", "",
                      ranks[["algorithm", "ours", "rank_ours", "logged", "rank_logged"]].to_markdown(index=False), ""]
    if not means.empty:
        lines += ["Sampled clients' accuracy before / after local training (FL-bench's accuracy_test_before/after), "
                  "mean over the last 50 rounds we ran, logged curve over the same rounds:", "",
                  means.to_markdown(index=False), ""]
    if cfg.sampling == "flbench":
        agree = same_client_agreement(ours, curves)
        if not agree.empty:
            lines += ["Round by round, the same clients on both sides (sampling=flbench draws the logged run's 10 "
                      "clients every round; partition flbench_dirichlet gives them the logged data): means of the "
                      "per-round sampled-client accuracy, mean absolute per-round difference and correlation:", "",
                      agree.to_markdown(index=False), ""]
    walls = {n: r["history"]["wall_round_time"].sum() for n, r in ours.items() if "wall_round_time" in r["history"]}
    status = pd.DataFrame({"rounds": {n: int(r["history"].index.max()) for n, r in ours.items()},
                           "status": {n: r["status"] for n, r in ours.items()},
                           "wall_s": {n: round(walls.get(n, np.nan)) for n in ours}})
    lines += ["Runs (status RUNNING = paused at --until-round, resumable while its session's store exists; "
              "'earlier session' = read from the committed history CSV):", "",
              status.to_markdown(), ""]
    (out / "table.md").write_text("\n".join(lines))
    plot(ours, curves, evals, out / "comparison", f"{study.name}: ours vs logged", cfg.sampling == "flbench")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
