"""Leaderboards: rank the runs of an MLflow experiment and export Markdown, CSV, LaTeX, HTML, plots.

    fedharness leaderboard --experiment demo [--metric final|best|worst10|tta|bytes] [--target 0.8]

Reading: every FINISHED run of the experiment that carries a fedharness config hash (search_runs ->
pandas). Per run, from MLflow:
  final    personal_acc at the last logged step (MLflow's latest value)
  best     max of personal_acc over its metric history (every evaluated round)
  worst10  personal_acc_worst10 at the last logged step
  tta      sim_time at the first step where personal_acc >= target (inf: never reached)
  bytes    bytes_up_total + bytes_down_total at the last logged step

Grouping: (data set, partition, budget, algorithm) from the run tags, refined by every other
config value except the seed, so two hyperparameter settings of one algorithm are two rows (the
differing values are shown) instead of being averaged as if they were seeds. Per group and seed
the newest run counts once (a rerun does not double a seed). Rows show mean +- sample std over
seeds and n; rank is within each (data set, partition, budget) block by the chosen metric.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import math
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

GROUP = ["dataset", "partition", "budget", "algorithm", "variant"]
BLOCK = ["dataset", "partition", "budget"]
# config values that do not change what a run computes: not part of a group's identity
NEUTRAL_PARAMS = ("name", "seed", "checkpoint_dir", "checkpoint_every", "partition.cache_dir", "data.root",
                  "data.download")
NEUTRAL_PREFIXES = ("workers.", "tracking.", "store.")


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


@dataclass
class RunData:
    runs: pd.DataFrame     # one row per counted run
    curves: pd.DataFrame   # run_id, step, personal_acc, sim_time
    dropped: int = 0       # older duplicates of (group, seed)


# ----- reading MLflow -----------------------------------------------------------------------------
def load_runs(tracking_uri: str | None, experiment: str, study: str | None = None, target: float = 0.8) -> RunData:
    from mlflow.tracking import MlflowClient

    from harness.tracking import tracking_uri as resolve

    client = MlflowClient(resolve(tracking_uri))
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
        clock = _history(client, run.info.run_id, "sim_time")
        curve = acc.rename("personal_acc").to_frame().join(clock.rename("sim_time"), how="left")
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
            "best_personal_acc": float(acc.max()),
            "personal_acc_worst10": float(metrics.get("personal_acc_worst10", math.nan)),
            "time_to_acc": float(reached["sim_time"].iloc[0]) if len(reached) else math.inf,
            "bytes_total": float(metrics.get("bytes_up_total", math.nan) + metrics.get("bytes_down_total", math.nan)),
        })
    runs = pd.DataFrame(records)
    curves = pd.concat(curve_frames, ignore_index=True) if curve_frames else \
        pd.DataFrame(columns=["run_id", "step", "personal_acc", "sim_time"])
    if runs.empty:
        return RunData(runs, curves)
    runs = _label_variants(runs)
    before = len(runs)
    runs = runs.sort_values("end_time").drop_duplicates(["variant_key", "seed"], keep="last")
    runs = runs.sort_values([*GROUP, "seed"]).reset_index(drop=True)
    curves = curves[curves["run_id"].isin(runs["run_id"])].reset_index(drop=True)
    return RunData(runs, curves, before - len(runs))


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


# ----- aggregation and ranking --------------------------------------------------------------------
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


# ----- formatting ---------------------------------------------------------------------------------
def format_value(d: MetricDef, mean: float, std: float, n: int, reached: int | None = None) -> str:
    if d.unit == "seconds" and reached is not None and reached < n:
        return "not reached" if reached == 0 else f"not reached by {n - reached} of {n} seeds"
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    scale, digits = {"acc": (100.0, 2), "seconds": (1.0, 2), "bytes": (1e-6, 2)}[d.unit]
    text = f"{mean * scale:.{digits}f}"
    if std is not None and not math.isnan(std):
        text += f" ± {std * scale:.{digits}f}"
    return text


SHARED_COLUMNS = {"Data set": "dataset", "Budget": "budget"}


def display_frame(table: pd.DataFrame, metric: str, target: float) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Formatted cells, a same-shaped mask of cells to bold, and the columns left out because every
    row holds the same value (data set, budget: the caption names them instead)."""
    defs = metric_defs(target)
    order = [metric, *[m for m in defs if m != metric]]
    shown = pd.DataFrame({
        "Data set": table["dataset"], "Partition": table["partition"], "Budget": table["budget"],
        "Rank": table["rank"].astype(str), "Algorithm": table["label"], "n": table["n"].astype(str),
    })
    shared = {c: str(table[k].iloc[0]) for c, k in SHARED_COLUMNS.items() if table[k].nunique() == 1}
    shown = shown.drop(columns=list(shared))
    bold = pd.DataFrame(False, index=shown.index, columns=shown.columns)
    for m in order:
        d = defs[m]
        header = d.header + (" ▼" if m == metric else "")
        shown[header] = [
            format_value(d, r[f"{d.key}_mean"], r[f"{d.key}_std"], r["n"],
                         r["time_to_acc_reached"] if d.key == "time_to_acc" else None)
            for _, r in table.iterrows()
        ]
        bold[header] = best_mask(table, d).to_numpy()
    return shown, bold, shared


def caption(experiment: str, table: pd.DataFrame, metric: str, target: float, study: str | None,
            dropped: int, shared: dict | None = None) -> str:
    defs = metric_defs(target)
    d = defs[metric]
    others = "; ".join(defs[m].definition for m in defs if m != metric)
    runs = int(table["n"].sum()) if not table.empty else 0
    scope = f"study {study!r} in experiment {experiment!r}" if study else f"experiment {experiment!r}"
    where = "; ".join(f"{k.lower()} = {v}" for k, v in (shared or {}).items())
    where = f"; all rows: {where}" if where else ""
    text = (f"Leaderboard of {scope} ({runs} finished runs{where}). Ranked by {d.definition} (▼ column). "
            f"Values are mean ± sample standard deviation over seeds (n = number of seeds); the best mean per "
            f"(data set, partition, budget) is in bold. Other columns: {others}.")
    if dropped:
        text += f" {dropped} older duplicate run(s) of the same setting and seed were not counted."
    return text


def to_markdown(shown: pd.DataFrame, bold: pd.DataFrame, cap: str) -> str:
    cells = shown.copy()
    for col in cells.columns:
        cells[col] = [f"**{v}**" if b else v for v, b in zip(cells[col], bold[col], strict=True)]
        cells[col] = cells[col].str.replace("|", "\\|", regex=False)
    table = cells.to_markdown(index=False, disable_numparse=True)
    return f"Table: {cap}\n\n{table}\n"


def _numeric(column: str) -> bool:
    return column not in ("Data set", "Partition", "Budget", "Algorithm")


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    return out.replace("±", r"$\pm$").replace("▼", r"$\blacktriangledown$").replace("–", "--")


def to_latex(shown: pd.DataFrame, bold: pd.DataFrame, cap: str, table: pd.DataFrame) -> str:
    cols = list(shown.columns)
    spec = "".join("r" if _numeric(c) else "l" for c in cols)
    lines = [r"% fedharness leaderboard; needs \usepackage{booktabs} and \usepackage{amssymb}",
             r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{latex_escape(cap)}}}",
             r"\label{tab:leaderboard}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(rf"\textbf{{{latex_escape(c)}}}" for c in cols) + r" \\", r"\midrule"]
    previous = None
    for i in shown.index:
        block = tuple(table.loc[i, BLOCK])
        if previous is not None and block != previous:
            lines.append(r"\midrule")
        previous = block
        cells = [rf"\textbf{{{latex_escape(v)}}}" if bold.loc[i, c] else latex_escape(v)
                 for c, v in shown.loc[i].items()]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1200px;
color:#1b1f23;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.9rem}
.scroll{overflow-x:auto}
caption{caption-side:top;text-align:left;padding:.5rem 0;color:#444;line-height:1.4;white-space:normal}
th,td{padding:.3rem .6rem;border-bottom:1px solid #ddd;text-align:left;white-space:nowrap}
th{background:#f3f4f6;border-bottom:2px solid #999}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.block-start td{border-top:2px solid #999}
td.best{font-weight:bold;background:#eef7ee}
figure{margin:1.5rem 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{color:#555;font-size:.85rem}
.meta{color:#777;font-size:.8rem;margin-top:2rem}
"""


def to_html(shown: pd.DataFrame, bold: pd.DataFrame, cap: str, table: pd.DataFrame, plots: list[Path],
            title: str, source: str) -> str:
    """One self-contained page: inline CSS, plots embedded as base64 PNG, no external requests."""
    esc = html.escape
    numeric = {c for c in shown.columns if _numeric(c)}
    head = "".join(f"<th>{esc(c)}</th>" for c in shown.columns)
    body, previous = [], None
    for i in shown.index:
        block = tuple(table.loc[i, BLOCK])
        cls = ' class="block-start"' if previous is not None and block != previous else ""
        previous = block
        tds = []
        for c, v in shown.loc[i].items():
            classes = [k for k, on in (("num", c in numeric), ("best", bool(bold.loc[i, c]))) if on]
            attr = f' class="{" ".join(classes)}"' if classes else ""
            inner = f"<b>{esc(v)}</b>" if bold.loc[i, c] else esc(v)
            tds.append(f"<td{attr}>{inner}</td>")
        body.append(f"<tr{cls}>{''.join(tds)}</tr>")
    figures = []
    for p in plots:
        data = base64.b64encode(Path(p).read_bytes()).decode("ascii")
        figures.append(f'<figure><img alt="{esc(p.stem)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{esc(p.stem)}: personalized accuracy vs round and vs simulated time; "
                       f"line = mean over seeds, band = min–max over seeds.</figcaption></figure>")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{esc(title)}</title>\n'
            f"<style>{_CSS}</style>\n</head>\n<body>\n<h1>{esc(title)}</h1>\n"
            f'<div class="scroll"><table id="leaderboard">\n<caption>{esc(cap)}</caption>\n'
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table></div>\n"
            + (f"<h2>Curves</h2>\n{''.join(figures)}\n" if figures else "")
            + f'<p class="meta">fedharness leaderboard, {esc(stamp)}, from {esc(source)}</p>\n</body>\n</html>\n')


# ----- export -------------------------------------------------------------------------------------
@dataclass
class Export:
    table: pd.DataFrame
    markdown: str
    paths: dict[str, Path]
    plots: list[Path]
    caption: str


def export(tracking_uri: str | None, experiment: str, out_dir: str | Path, metric: str = "final",
           target: float = 0.8, study: str | None = None, formats: tuple[str, ...] = ("md", "csv", "tex", "html"),
           plots: bool = True, log_to_mlflow: bool = True) -> Export:
    from harness.tracking import tracking_uri as resolve

    data = load_runs(tracking_uri, experiment, study=study, target=target)
    if data.runs.empty:
        raise ValueError(f"experiment {experiment!r} has no FINISHED fedharness runs"
                         + (f" of study {study!r}" if study else ""))
    table = aggregate(data.runs, metric, target)
    shown, bold, shared = display_frame(table, metric, target)
    cap = caption(experiment, table, metric, target, study, data.dropped, shared)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_paths: list[Path] = []
    if plots:
        from harness.study_plots import plot_study_curves

        plot_paths = plot_study_curves(data.curves, data.runs, out / "plots")
    md = to_markdown(shown, bold, cap)
    paths: dict[str, Path] = {}
    if "md" in formats:
        figs = "".join(f"\n![{p.stem}](plots/{p.name})\n" for p in plot_paths)
        paths["md"] = out / "leaderboard.md"
        paths["md"].write_text(md + figs)
    if "csv" in formats:
        paths["csv"] = out / "leaderboard.csv"
        table.to_csv(paths["csv"], index=False)
        paths["runs_csv"] = out / "runs.csv"
        data.runs.drop(columns=["params"]).to_csv(paths["runs_csv"], index=False)
    if "tex" in formats:
        paths["tex"] = out / "leaderboard.tex"
        paths["tex"].write_text(to_latex(shown, bold, cap, table))
    if "html" in formats:
        paths["html"] = out / "leaderboard.html"
        paths["html"].write_text(to_html(shown, bold, cap, table, plot_paths, f"Leaderboard: {experiment}",
                                         resolve(tracking_uri)), encoding="utf-8")
    if log_to_mlflow:
        log_export(resolve(tracking_uri), experiment, metric, list(paths.values()), plot_paths)
    return Export(table, md, paths, plot_paths, cap)


def log_export(uri: str, experiment: str, metric: str, files: list[Path], plots: list[Path]) -> str:
    """Tables and plots go to one `leaderboard` run of the experiment (reused on each export, so
    the experiment holds one current leaderboard; it has no config hash, so studies ignore it)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    found = client.search_runs([exp.experiment_id], "tags.`fedharness.kind` = 'leaderboard'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        run_id = client.create_run(exp.experiment_id, tags={"mlflow.runName": "leaderboard",
                                                            "fedharness.kind": "leaderboard"}).info.run_id
    client.set_tag(run_id, f"fedharness.leaderboard.{metric}", datetime.now(timezone.utc).isoformat())
    for f in files:
        client.log_artifact(run_id, str(f), f"leaderboard/{metric}")
    for p in plots:
        client.log_artifact(run_id, str(p), "plots")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def print_leaderboard(tracking_uri: str | None, experiment: str, metric: str = "final", target: float = 0.8,
                      study: str | None = None) -> str:
    data = load_runs(tracking_uri, experiment, study=study, target=target)
    if data.runs.empty:
        print(f"(no finished runs in experiment {experiment!r})")
        return ""
    table = aggregate(data.runs, metric, target)
    shown, bold, shared = display_frame(table, metric, target)
    md = to_markdown(shown, bold, caption(experiment, table, metric, target, study, data.dropped, shared))
    print(md)
    return md


# ----- CLI ----------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedharness leaderboard",
                                description="rank the finished runs of an MLflow experiment; export tables + plots")
    p.add_argument("--experiment", required=True, help="MLflow experiment (a study's name)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlruns/mlflow.db)")
    p.add_argument("--study", help="only runs tagged fedharness.study=STUDY")
    p.add_argument("--metric", default="final", choices=list(metric_defs(0.8)),
                   help="rank by: final / best personalized accuracy, worst10 (worst-10%% clients), "
                        "tta (simulated time to --target), bytes (communicated)")
    p.add_argument("--target", type=float, default=0.8, help="accuracy target of tta, in [0, 1] (default 0.8)")
    p.add_argument("--out", help="export folder (default exports/<experiment>)")
    p.add_argument("--formats", default="md,csv,tex,html", help="comma-separated subset of md,csv,tex,html")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-log", action="store_true", help="do not log the export to MLflow")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not 0 < args.target <= 1:
        raise ValueError(f"--target must be in (0, 1], got {args.target}")
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    unknown = sorted(set(formats) - {"md", "csv", "tex", "html"})
    if unknown:
        raise ValueError(f"unknown format(s) {unknown}; choose from md, csv, tex, html")
    out = args.out or str(Path("exports") / args.experiment)
    result = export(args.tracking_uri, args.experiment, out, metric=args.metric, target=args.target,
                    study=args.study, formats=formats, plots=not args.no_plots, log_to_mlflow=not args.no_log)
    print(result.markdown)
    for kind, path in result.paths.items():
        print(f"{kind:>8}: {path}", file=sys.stderr)
    for path in result.plots:
        print(f"    plot: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
