"""Exporting a leaderboard: collect -> rank -> render, written to files and logged to MLflow.

    exports/<experiment>/leaderboard.{md,csv,tex,html}, runs.csv, plots/<slug>.{png,pdf,svg}

Why:
- leaderboard.csv holds every aggregated column (means, stds, CI half-widths, n, seeds, run ids, the
  paired comparison with the baseline) and runs.csv one row per counted run, so any other table
  (e.g. docs/offline_study/table.py) can be derived without going back to MLflow.
- The export is also logged to one `leaderboard` run, reused on each export, in an experiment of
  its own (`<experiment> leaderboards`): the MLflow UI shows the current leaderboard without
  putting it among the runs it ranks. That run carries no config hash, so studies ignore it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from harness.reports.collect import load_runs
from harness.reports.plots import CAPTION
from harness.reports.rank import aggregate
from harness.reports.render import caption, display_frame, to_html, to_latex, to_markdown

#: the experiment that holds an experiment's leaderboard run
LEADERBOARD_SUFFIX = " leaderboards"


@dataclass
class Export:
    table: pd.DataFrame
    markdown: str
    paths: dict[str, Path]
    plots: list[Path]
    caption: str


def export(tracking_uri: str | None, experiment: str, out_dir: str | Path, metric: str = "final",
           target: float = 0.8, study: str | None = None, formats: tuple[str, ...] = ("md", "csv", "tex", "html"),
           plots: bool = True, log_to_mlflow: bool = True, baseline: str | None = "fedavg",
           band: str = "ci") -> Export:
    """`baseline`: the algorithm each row is compared with, per block (paired over seeds; None: no comparison;
    a block without it gets none). `band`: ci (95% t interval over seeds) or minmax, for the figures."""
    from harness.tracking import tracking_uri as resolve

    data = load_runs(tracking_uri, experiment, study=study, target=target, clients=plots)
    if data.runs.empty:
        raise ValueError(f"experiment {experiment!r} has no FINISHED fedharness runs"
                         + (f" of study {study!r}" if study else ""))
    table = aggregate(data.runs, metric, target, baseline=_present(baseline, data.runs))
    view = display_frame(table, metric, target)
    cap = caption(experiment, table, metric, target, study, data.dropped, view.shared)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_paths: list[Path] = []
    if plots:
        from harness.reports.plots import plot_study_curves

        plot_paths = plot_study_curves(data.curves, data.runs, out / "plots", band_kind=band, clients=data.clients)
    md = to_markdown(view, cap)
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
        paths["tex"].write_text(to_latex(view, cap))
    if "html" in formats:
        paths["html"] = out / "leaderboard.html"
        captions = {p.stem: FIGURE_CAPTION + CAPTION[band] for p in plot_paths}
        paths["html"].write_text(to_html(view, cap, plot_paths, f"Leaderboard: {experiment}", resolve(tracking_uri),
                                         captions), encoding="utf-8")
    if log_to_mlflow:
        vectors = [q for p in plot_paths for q in (p.with_suffix(".pdf"), p.with_suffix(".svg")) if q.is_file()]
        log_export(resolve(tracking_uri), experiment, metric, list(paths.values()), [*plot_paths, *vectors])
    return Export(table, md, paths, plot_paths, cap)


FIGURE_CAPTION = ("accuracy (personalized, global, worst-10% clients) vs round, personalized accuracy vs simulated "
                  "time and vs MB communicated, and the CDF of final per-client accuracy; ")


def _present(baseline: str | None, runs: pd.DataFrame) -> str | None:
    """The baseline if any block holds it (else no comparison: nothing to pair with)."""
    return baseline if baseline and (runs["algorithm"] == baseline).any() else None


def log_export(uri: str, experiment: str, metric: str, files: list[Path], plots: list[Path]) -> str:
    """Tables and plots go to one `leaderboard` run in the experiment `<experiment> leaderboards` (reused on
    each export; it has no config hash, and being in its own experiment it stays out of the ranked runs' list)."""
    from harness.tracking import ensure_experiment, mlflow_client

    client = mlflow_client(uri)
    exp_id = ensure_experiment(client, uri, experiment + LEADERBOARD_SUFFIX)
    client.set_experiment_tag(exp_id, "fedharness.leaderboard_of", experiment)
    found = client.search_runs([exp_id], "tags.`fedharness.kind` = 'leaderboard'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        run_id = client.create_run(exp_id, tags={"mlflow.runName": f"leaderboard of {experiment}",
                                                 "fedharness.kind": "leaderboard"}).info.run_id
    client.set_tag(run_id, f"fedharness.leaderboard.{metric}", datetime.now(timezone.utc).isoformat())
    for f in files:
        client.log_artifact(run_id, str(f), f"leaderboard/{metric}")
    for p in plots:
        client.log_artifact(run_id, str(p), "plots")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def print_leaderboard(tracking_uri: str | None, experiment: str, metric: str = "final", target: float = 0.8,
                      study: str | None = None, baseline: str | None = "fedavg") -> str:
    """The Markdown table on stdout only (what `fedharness study` prints at its end); writes no file."""
    data = load_runs(tracking_uri, experiment, study=study, target=target)
    if data.runs.empty:
        print(f"(no finished runs in experiment {experiment!r})")
        return ""
    table = aggregate(data.runs, metric, target, baseline=_present(baseline, data.runs))
    view = display_frame(table, metric, target)
    md = to_markdown(view, caption(experiment, table, metric, target, study, data.dropped, view.shared))
    print(md)
    return md
