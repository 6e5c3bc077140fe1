"""Leaderboards: numbers equal MLflow's, aggregation over seeds, ranking, every export parses, plots,
the HTML renders in a headless browser; `fedharness ui` binds 127.0.0.1 only."""

from __future__ import annotations

import base64
import math
import shutil
import subprocess
import urllib.request
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

from harness import reports as lb

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A finished study: 2 algorithms x 2 partitions x 2 seeds, in-process workers, 3 rounds."""
    from harness.studies import load_study, run_study

    tmp = tmp_path_factory.mktemp("lb")
    uri = f"sqlite:///{tmp}/mlflow.db"
    spec = {
        "name": "lbtest",
        "base": {"rounds": 3, "join_ratio": 0.5, "eval_every": 1, "data": {"source": "digits"},
                 "partition": {"scheme": "dirichlet", "num_clients": 10, "alpha": 0.5},
                 "model": {"name": "mlp", "options": {"hidden": 16}},
                 "train": {"local_epochs": 1, "batch_size": 16, "lr": 0.05},
                 "workers": {"num_workers": 2, "use_ray": False}},
        "grid": {"partition.alpha": [0.1, 0.5], "algorithm.name": ["fedavg", "local"], "seed": [0, 1]},
    }
    study = load_study(spec, [f"checkpoint_dir={tmp}/ckpt", f"partition.cache_dir={tmp}/cache"], tracking_uri=uri)
    outcome = run_study(study, progress=False)
    assert len(outcome.ran) == 8 and not outcome.failed
    return uri, tmp


@pytest.fixture(scope="module")
def exported(store):
    uri, tmp = store
    return lb.export(uri, "lbtest", tmp / "export", metric="final", target=0.3)


def _truth(uri: str, target: float) -> pd.DataFrame:
    """Per-run numbers recomputed straight from MLflow (not through harness.reports)."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("lbtest")
    rows = []
    for run in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'"):
        if "fedharness.config_hash" not in run.data.tags:
            continue
        acc = sorted(client.get_metric_history(run.info.run_id, "personal_acc"), key=lambda m: m.step)
        clock = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "sim_time")}
        up = client.get_metric_history(run.info.run_id, "bytes_up_total")
        down = client.get_metric_history(run.info.run_id, "bytes_down_total")
        reached = [m.step for m in acc if m.value >= target]
        rows.append({
            "partition": run.data.tags["fedharness.partition"], "algorithm": run.data.tags["fedharness.algorithm"],
            "seed": int(run.data.tags["fedharness.seed"]),
            "final": acc[-1].value, "best": max(m.value for m in acc),
            "worst10": max(client.get_metric_history(run.info.run_id, "personal_acc_worst10"),
                           key=lambda m: m.step).value,
            "tta": clock[reached[0]] if reached else math.inf,
            "bytes": max(up, key=lambda m: m.step).value + max(down, key=lambda m: m.step).value,
        })
    return pd.DataFrame(rows)


# ----- numbers ---------------------------------------------------------------------------------
def test_leaderboard_numbers_equal_mlflow(store, exported):
    uri, _ = store
    truth = _truth(uri, target=0.3)
    csv = pd.read_csv(exported.paths["csv"])
    assert len(csv) == 4 and set(csv["n"]) == {2}
    columns = {"final": "personal_acc", "best": "best_personal_acc", "worst10": "personal_acc_worst10",
               "tta": "time_to_acc", "bytes": "bytes_total"}
    md = exported.paths["md"].read_text()
    for _, row in csv.iterrows():
        runs = truth[(truth["partition"] == row["partition"]) & (truth["algorithm"] == row["algorithm"])]
        assert sorted(runs["seed"]) == [0, 1]
        for name, key in columns.items():
            values = runs[name].to_numpy()
            if np.isinf(values).any():
                assert math.isinf(row[f"{key}_mean"])
                continue
            assert row[f"{key}_mean"] == pytest.approx(values.mean(), rel=1e-12, abs=1e-12)
            assert row[f"{key}_std"] == pytest.approx(values.std(ddof=1), rel=1e-9, abs=1e-12)
            low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values)) \
                if values.std() > 0 else (values.mean(), values.mean())
            assert row[f"{key}_ci"] == pytest.approx((high - low) / 2, rel=1e-9, abs=1e-12)
        final = runs["final"].to_numpy()
        half = stats.t.ppf(0.975, 1) * final.std(ddof=1) / np.sqrt(2)
        printed = f"{100 * final.mean():.2f} ± {100 * half:.2f}" if round(100 * half, 2) > 0 \
            else f"{100 * final.mean():.2f}"
        assert printed in md  # as printed: mean ± 95% CI half-width
    assert f"{exported.table['n'].sum()} finished runs" in exported.caption


def test_aggregation_ranking_and_best_on_synthetic_runs():
    def run(alg, seed, acc, tta=1.0, part="p", variant=""):
        return {"dataset": "d", "partition": part, "budget": "b", "algorithm": alg, "variant": variant,
                "label": alg, "seed": seed, "run_id": f"{alg}{seed}{part}", "personal_acc": acc,
                "best_personal_acc": acc, "personal_acc_worst10": acc / 2, "time_to_acc": tta,
                "bytes_total": 10.0}

    runs = pd.DataFrame([run("a", 0, 0.5), run("a", 1, 0.75), run("a", 2, 1.0),  # binary-exact: a true tie
                         run("b", 0, 0.75, math.inf), run("b", 1, 0.75, 2.0),
                         run("c", 0, 0.75, 3.0), run("c", 1, 0.75, 3.0),
                         run("z", 0, 0.1, part="q")])
    table = lb.aggregate(runs, "final").set_index("algorithm")
    assert table.loc["a", "n"] == 3 and table.loc["a", "seeds"] == "0 1 2"
    assert table.loc["a", "personal_acc_mean"] == 0.75
    assert table.loc["a", "personal_acc_std"] == pytest.approx(0.25)  # sample std (ddof=1)
    assert math.isnan(table.loc["z", "personal_acc_std"])  # one seed: no std
    assert table.loc[["a", "b", "c"], "rank"].tolist() == [1, 1, 1]  # ties share the rank
    assert table.loc["z", "rank"] == 1  # ranks are per (data set, partition, budget)
    tta = lb.aggregate(runs, "tta").set_index("algorithm")
    assert math.isinf(tta.loc["b", "time_to_acc_mean"]) and tta.loc["b", "time_to_acc_reached"] == 1
    assert tta.loc[["a", "c", "b"], "rank"].tolist() == [1, 2, 3]  # lower is better; not reached is last
    view = lb.display_frame(lb.aggregate(runs, "tta"), "tta", 0.8)
    shown, bold = view.shown, view.bold
    assert view.shared == {"Data set": "d", "Budget": "b"} and "Data set" not in shown.columns
    header = next(c for c in shown.columns if c.startswith("Time to 80%"))
    assert header.endswith("▼")
    b_row = shown.index[shown["Algorithm"] == "b"][0]
    assert shown.loc[b_row, header] == "not reached by 1 of 2 seeds" and not bold.loc[b_row, header]
    a_row = shown.index[shown["Algorithm"] == "a"][0]
    assert bold.loc[a_row, header] and shown.loc[a_row, header] == "1.00"  # seeds agree: no "± 0.00"
    c_row = shown.index[shown["Algorithm"] == "c"][0]
    assert view.second.loc[c_row, header] and not view.second.loc[a_row, header]  # 3.0: the second best
    with pytest.raises(ValueError, match="unknown metric 'speed'"):
        lb.aggregate(runs, "speed")


def test_one_run_per_setting_and_seed_and_variants_are_separate_rows(store, tmp_path):
    """A rerun of a finished seed is counted once; another hyperparameter value is its own row."""
    from harness.engine import run
    from harness.studies import load_study

    _, tmp = store
    shutil.copy(tmp / "mlflow.db", tmp_path / "mlflow.db")  # leave the shared store as it is
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    study = load_study({"name": "lbtest", "base": {"rounds": 3, "join_ratio": 0.5, "eval_every": 1,
                                                   "data": {"source": "digits"},
                                                   "partition": {"scheme": "dirichlet", "num_clients": 10,
                                                                 "alpha": 0.5},
                                                   "model": {"name": "mlp", "options": {"hidden": 16}},
                                                   "train": {"local_epochs": 1, "batch_size": 16, "lr": 0.05},
                                                   "workers": {"num_workers": 2, "use_ray": False}},
                        "grid": {"algorithm.name": ["fedavg"], "seed": [0]}},
                       [f"checkpoint_dir={tmp_path}/ckpt", f"partition.cache_dir={tmp}/cache"], tracking_uri=uri)
    cfg = study.cells[0].config
    run(cfg, tags={"fedharness.study": "other"}, progress=False)  # same setting + seed again
    cfg2 = cfg.model_copy(deep=True)
    cfg2.train.lr = 0.1
    run(cfg2, progress=False)  # a second lr for fedavg
    data = lb.load_runs(uri, "lbtest", target=0.3)
    assert data.dropped == 1
    block = data.runs[(data.runs["algorithm"] == "fedavg") & data.runs["partition"].str.contains("alpha=0.5")]
    assert set(block["label"]) == {"fedavg (train.lr=0.05)", "fedavg (train.lr=0.1)"}
    other = data.runs[(data.runs["algorithm"] == "fedavg") & data.runs["partition"].str.contains("alpha=0.1")]
    assert set(other["label"]) == {"fedavg"}  # one setting in that block: no label needed
    table = lb.aggregate(data.runs, "final")
    assert table["n"].sum() == len(data.runs) == 9
    only_study = lb.load_runs(uri, "lbtest", study="lbtest", target=0.3)
    assert len(only_study.runs) == 8  # --study keeps the study's own runs


# ----- exports ---------------------------------------------------------------------------------
class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.rows = 0
        self.in_tbody = False
        self.caption = ""
        self._in_caption = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self.in_tbody |= tag == "tbody"
        self.rows += tag == "tr" and self.in_tbody
        self._in_caption |= tag == "caption"

    def handle_endtag(self, tag):
        self.in_tbody &= tag != "tbody"
        self._in_caption &= tag != "caption"

    def handle_data(self, data):
        if self._in_caption:
            self.caption += data


def test_exports_parse_and_bold_the_best(exported):
    table = exported.table
    csv = pd.read_csv(exported.paths["csv"])
    assert list(csv["rank"]) == list(table["rank"]) and set(csv["ranked_by"]) == {"final"}
    runs_csv = pd.read_csv(exported.paths["runs_csv"])
    assert len(runs_csv) == 8 and runs_csv["run_id"].is_unique

    md = exported.paths["md"].read_text()
    assert md.startswith("Table: Leaderboard of experiment 'lbtest'")
    assert "Ranked by final personalized accuracy" in md
    assert all(f"](plots/{p.name})" in md for p in exported.plots)

    tex = exported.paths["tex"].read_text()
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 1
    assert tex.count("{") == tex.count("}")
    assert all(rule in tex for rule in (r"\toprule", r"\midrule", r"\bottomrule"))  # booktabs
    body = [ln for ln in tex.splitlines() if ln.endswith(r"\\") and not ln.startswith(r"\textbf{Partition}")]
    assert len(body) == len(table)
    ncols = tex.split(r"\begin{tabular}{")[1].split("}")[0]
    assert all(ln.count(" & ") == len(ncols) - 1 for ln in body)

    def cell(row) -> str:
        text = f"{100 * row['personal_acc_mean']:.2f}"
        return text + (f" $\\pm$ {100 * row['personal_acc_ci']:.2f}" if round(100 * row["personal_acc_ci"], 2) else "")

    for _, row in table[table["rank"] == 1].iterrows():  # the winner's accuracy is bold in its block
        assert rf"\textbf{{{cell(row)}" in tex
    for _, row in table[table["rank"] == 2].iterrows():  # two algorithms per block: the other is second
        assert rf"\underline{{{cell(row)}" in tex and rf"\textbf{{{cell(row)}" not in tex

    page = _Page()
    page.feed(exported.paths["html"].read_text(encoding="utf-8"))
    assert ("table", {"id": "T_leaderboard"}) in page.tags
    assert page.rows == len(table)
    assert "Ranked by final personalized accuracy" in page.caption
    images = [a["src"] for t, a in page.tags if t == "img"]
    assert len(images) == len(exported.plots) == 2
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    external = [a for _, a in page.tags for k in ("src", "href") if k in a and not a[k].startswith("data:")]
    assert external == []  # self-contained: no request leaves the page
    assert sum(1 for t, a in page.tags if t == "td" and "best" in a.get("class", "")) >= 2


def test_plots_one_per_partition_and_logged_to_mlflow(store, exported):
    import matplotlib.image as mpimg

    uri, _ = store
    assert sorted(p.name for p in exported.plots) == ["digits-dirichlet-alpha-0-1-n-10.png",
                                                       "digits-dirichlet-alpha-0-5-n-10.png"]
    for p in exported.plots:
        img = mpimg.imread(p)
        assert img.shape[0] > 400 and img.shape[1] > 900 and img.std() > 0.01
        assert p.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
        svg = ET.parse(p.with_suffix(".svg")).getroot()
        assert svg.tag.endswith("svg") and "CreationDate" not in p.with_suffix(".pdf").read_text("latin-1")
        texts = "".join(svg.itertext())  # text stays text (svg.fonttype none): the panels are all there
        for label in ("global-model accuracy", "worst-10% clients", "simulated time", "MB communicated",
                      "fraction of clients (CDF)"):
            assert label in texts, label
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("lbtest")
    assert not client.search_runs([exp.experiment_id], "tags.`fedharness.kind` = 'leaderboard'")  # kept apart
    board = client.get_experiment_by_name("lbtest leaderboards")
    assert board.tags["fedharness.leaderboard_of"] == "lbtest"
    assert board.tags["mlflow.experimentKind"] == exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([board.experiment_id], "tags.`fedharness.kind` = 'leaderboard'")
    assert len(runs) == 1
    logged = {a.path for a in client.list_artifacts(runs[0].info.run_id, "plots")}
    assert logged == {f"plots/{p.stem}{s}" for p in exported.plots for s in (".png", ".pdf", ".svg")}
    tables = {a.path for a in client.list_artifacts(runs[0].info.run_id, "leaderboard/final")}
    assert "leaderboard/final/leaderboard.html" in tables


def test_cli_other_metric_states_it_in_caption(store, tmp_path, capsys):
    from harness.cli import main

    uri, _ = store
    out = tmp_path / "tta"
    assert main(["leaderboard", "--experiment", "lbtest", "--tracking-uri", uri, "--metric", "tta",
                 "--target", "0.25", "--out", str(out), "--formats", "md,csv", "--no-plots", "--no-log"]) == 0
    printed = capsys.readouterr().out
    assert "Ranked by time-to-accuracy: simulated seconds (sim_time) until personal_acc first reaches 25%" in printed
    assert "Time to 25% (sim. s) ▼" in printed
    assert sorted(p.name for p in out.iterdir()) == ["leaderboard.csv", "leaderboard.md", "runs.csv"]
    assert main(["leaderboard", "--experiment", "nope", "--tracking-uri", uri]) == 2
    assert "no MLflow experiment 'nope'" in capsys.readouterr().err


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: the HTML is checked with html.parser only "
                                              "(install with `apt-get install -y chromium` to run this)")
def test_html_renders_in_headless_chromium(exported, tmp_path):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path}/profile"]
    dom = subprocess.run([*cmd, "--dump-dom", exported.paths["html"].as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    page = _Page()
    page.feed(dom)
    assert page.rows == len(exported.table)  # the browser built the whole table
    shot = tmp_path / "shot.png"
    subprocess.run([*cmd, "--window-size=1280,1600", f"--screenshot={shot}", exported.paths["html"].as_uri()],
                   capture_output=True, timeout=120, check=True)
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img.shape[:2] == (1600, 1280) and img.std() > 0.05  # not a blank page


# ----- ui --------------------------------------------------------------------------------------
def test_ui_binds_localhost_with_one_worker_and_no_jobs(tmp_path):
    from harness.cli import ui

    cmd = ui.build_command(f"sqlite:///{tmp_path}/m.db", 5123)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--port") + 1] == "5123" and cmd[cmd.index("--workers") + 1] == "1"
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path}/m.db"
    assert "0.0.0.0" not in cmd
    assert ui.server_env()["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_ui_serves_the_store_on_a_free_port(store):
    from harness.cli import ui

    uri, _ = store
    proc, url = ui.start(uri, ui.free_port())
    try:
        assert url.startswith("http://127.0.0.1:")
        assert ui.wait_until_up(url, proc, timeout=90), "mlflow server did not answer /health"
        req = urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=lbtest")
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert b'"name": "lbtest"' in resp.read().replace(b'"name":"', b'"name": "')
    finally:
        ui.stop(proc)
    assert proc.poll() is not None


# ----- statistics in the table, figures, names ------------------------------------------------------
def _synthetic(acc: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for alg, values in acc.items():
        for seed, a in enumerate(values):
            rows.append({"dataset": "d", "partition": "p", "budget": "b", "algorithm": alg, "variant": "",
                         "label": alg, "seed": seed, "run_id": f"{alg}{seed}", "personal_acc": a,
                         "best_personal_acc": a, "personal_acc_worst10": a / 2, "time_to_acc": 1.0,
                         "bytes_total": 10.0})
    return pd.DataFrame(rows)


def test_paired_comparison_with_the_baseline_marks_significant_rows():
    acc = {"fedavg": [0.50, 0.52, 0.51, 0.49], "big": [0.70, 0.73, 0.71, 0.70], "same": [0.51, 0.50, 0.52, 0.49]}
    table = lb.aggregate(_synthetic(acc), "final", baseline="fedavg").set_index("algorithm")
    for alg in ("big", "same"):
        expected = stats.ttest_rel(acc[alg], acc["fedavg"])
        assert table.loc[alg, "personal_acc_p"] == pytest.approx(expected.pvalue, rel=1e-12)
        assert table.loc[alg, "personal_acc_wilcoxon_p"] == pytest.approx(
            stats.wilcoxon(acc[alg], acc["fedavg"]).pvalue, rel=1e-12)
        assert table.loc[alg, "personal_acc_diff"] == pytest.approx(np.mean(acc[alg]) - np.mean(acc["fedavg"]))
    assert math.isnan(table.loc["fedavg", "personal_acc_p"])  # the baseline is not compared with itself
    view = lb.display_frame(table.reset_index(), "final", 0.8)
    col = next(c for c in view.shown.columns if c.startswith("Final acc."))
    cells = dict(zip(view.shown["Algorithm"], view.shown[col], strict=True))
    assert cells["big"].endswith("†") and not cells["same"].endswith("†") and not cells["fedavg"].endswith("†")
    assert "Comm. (MB)" in view.shown and set(view.shown["Comm. (MB)"]) == {"0.00"}  # deterministic: no ±
    cap = lb.caption("e", table.reset_index(), "final", 0.8, None, 0, view.shared)
    assert "† = differs from fedavg at p < 0.05" in cap and "95% t confidence interval" in cap
    plain = lb.aggregate(_synthetic(acc), "final")  # no baseline: no comparison, no mark, no claim
    assert "personal_acc_p" not in plain and "†" not in lb.caption("e", plain, "final", 0.8, None, 0)


def test_figure_bands_are_t_intervals_or_min_max():
    from harness.reports.plots import band

    values = pd.DataFrame({"s0": [0.1, 0.5], "s1": [0.3, 0.5], "s2": [0.2, 0.5]}, index=[1, 2])
    mean, low, high = band(values, "ci")
    ci = lb.aggregate(_synthetic({"a": [0.1, 0.3, 0.2]}), "final")["personal_acc_ci"].iloc[0]
    assert mean[1] == pytest.approx(0.2) and (high[1] - low[1]) / 2 == pytest.approx(ci)
    assert low[2] == high[2] == pytest.approx(0.5)  # the seeds agree: no band
    _, low, high = band(values, "minmax")
    assert (low[1], high[1]) == (0.1, 0.3)
    with pytest.raises(ValueError, match="unknown band"):
        band(values, "std")


def test_fairness_panel_reads_every_runs_clients_final(store, tmp_path):
    uri, _ = store
    data = lb.load_runs(uri, "lbtest", clients=True)
    assert set(data.clients["run_id"]) == set(data.runs["run_id"])  # one clients_final.csv per counted run
    assert data.clients.groupby("run_id").size().eq(10).all()  # 10 clients each
    assert {"global_acc", "personal_acc_worst10", "bytes_total"} <= set(data.curves.columns)
    assert data.curves.groupby("run_id")["bytes_total"].apply(lambda b: b.is_monotonic_increasing).all()
    fedavg = data.runs.loc[data.runs["algorithm"] == "fedavg", "run_id"]
    assert (data.curves[data.curves["run_id"].isin(fedavg)]["bytes_total"] > 0).all()  # Local sends nothing


def test_runs_get_readable_names_and_experiments_open_on_the_runs_table(store):
    uri, _ = store
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("lbtest")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    names = {r.info.run_name for r in client.search_runs([exp.experiment_id])}
    assert "fedavg · s0 · digits · dirichlet(alpha=0.1)" in names and len(names) == 8


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (install with `apt-get install -y chromium`)")
def test_mlflow_ui_lands_on_the_runs_table_in_headless_chromium(store, tmp_path):
    """`fedharness ui`'s address opens MLflow 3's training view: the experiment's runs, by their readable names
    (without workflowType the UI shows its GenAI overview: "No data available")."""
    from harness.cli import ui

    uri, _ = store
    exp = MlflowClient(uri).get_experiment_by_name("lbtest")
    proc, url = ui.start(uri, ui.free_port())
    try:
        assert ui.wait_until_up(url, proc, timeout=90)
        page = ui.landing_page(url).replace("/#/?", f"/#/experiments/{exp.experiment_id}?")
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               f"--user-data-dir={tmp_path}/profile", "--virtual-time-budget=20000"]
        dom = subprocess.run([*cmd, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
        assert "fedavg · s0 · digits" in dom and "local · s1 · digits" in dom and "No data available" not in dom
        shot = tmp_path / "ui.png"
        subprocess.run([*cmd, "--window-size=1400,900", f"--screenshot={shot}", page], capture_output=True,
                       timeout=120, check=True)
        import matplotlib.image as mpimg

        assert mpimg.imread(shot).std() > 0.05  # a rendered page, not a blank one
    finally:
        ui.stop(proc)
