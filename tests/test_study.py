"""Studies: expansion + validation of a spec, one MLflow run per cell, resumability, parallel cells."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from harness.config import ConfigError
from harness.studies import Cell, load_study, run_study

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "runs" / "studies" / "tiny.yaml"


def _paths(tmp_path: Path) -> tuple[str, list[str]]:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    return uri, [f"checkpoint_dir={tmp_path}/ckpt", f"partition.cache_dir={tmp_path}/cache"]


def _spec(**changes) -> dict:
    spec = {
        "name": "t",
        "base": {"rounds": 2, "join_ratio": 0.5, "data": {"source": "digits"},
                 "partition": {"scheme": "dirichlet", "num_clients": 10, "alpha": 0.5},
                 "model": {"name": "mlp", "options": {"hidden": 16}},
                 "train": {"local_epochs": 1, "batch_size": 16, "lr": 0.05},
                 "workers": {"num_workers": 2, "use_ray": False}},
        "grid": {"algorithm.name": ["fedavg", "local"], "seed": [0, 1]},
    }
    spec.update(changes)
    return spec


def _runs(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.`fedharness.config_hash` != ''", max_results=1000)


# ----- expansion and validation -----------------------------------------------------------------
def test_grid_times_cells_expand_in_order_and_set_experiment(tmp_path):
    uri, extra = _paths(tmp_path)
    study = load_study(_spec(cells=[{"partition.alpha": 0.1}, {"partition.scheme": "iid"}],
                             grid={"algorithm.name": ["fedavg", "local"], "seed": [0, 1, 2]}),
                       extra, tracking_uri=uri)
    assert len(study.cells) == 2 * 2 * 3
    first, last = study.cells[0], study.cells[-1]
    assert first.values == {"partition.alpha": 0.1, "algorithm.name": "fedavg", "seed": 0}
    assert last.values == {"partition.scheme": "iid", "algorithm.name": "local", "seed": 2}
    assert (first.config.partition.alpha, first.config.algorithm.name, first.config.seed) == (0.1, "fedavg", 0)
    assert last.config.partition.scheme == "iid" and last.config.seed == 2
    assert {c.config.tracking.experiment for c in study.cells} == {"t"}
    assert {c.config.tracking.uri for c in study.cells} == {uri}
    assert len({c.hash for c in study.cells}) == 12
    tags = study.tags(first)
    assert tags["fedharness.study"] == "t"
    assert tags["fedharness.cell.partition.alpha"] == "0.1"
    assert tags["fedharness.cell.algorithm.name"] == "fedavg"
    assert tags["mlflow.runName"] == "fedavg · s0 · digits · dirichlet(alpha=0.1)"
    assert tags["fedharness.cell"] == "alpha=0.1, algorithm=fedavg, seed=0"


def test_base_path_is_relative_to_the_study_file_and_demo_expands():
    study = load_study(ROOT / "runs" / "studies" / "demo.yaml")
    assert study.name == "demo" and study.experiment == "demo"
    assert len(study.cells) == 6 * 2 * 3
    cfg = study.cells[0].config
    assert cfg.data.source == "digits" and cfg.partition.num_clients == 50  # from runs/quickstart.yaml
    assert cfg.rounds == 20  # the study's override of the base
    assert {c.config.algorithm.name for c in study.cells} == {"fedavg", "local", "fedper", "fedrep", "fedala",
                                                              "fedobp"}


def test_study_hash_ignores_where_results_go(tmp_path):
    a = load_study(_spec(), ["checkpoint_dir=/x"], tracking_uri=f"sqlite:///{tmp_path}/a.db")
    b = load_study(_spec(), ["checkpoint_dir=/y"], tracking_uri=f"sqlite:///{tmp_path}/b.db")
    assert [c.hash for c in a.cells] == [c.hash for c in b.cells]


@pytest.mark.parametrize(("change", "message"), [
    ({"gird": {"seed": [0]}}, "unknown key 'gird'; allowed keys: name, base"),
    ({"grid": {"seed": []}}, "grid.seed is an empty list"),
    ({"grid": {"seed": 3}}, "grid.seed: Input should be a valid list"),
    ({"grid": {"algorithm.name": ["fedavg", "fedx"]}},
     "cell 2 (algorithm.name=fedx): algorithm: unknown algorithm 'fedx'"),
    ({"grid": {"partition.alpah": [0.1]}}, "cell 1 (partition.alpah=0.1): unknown key 'partition.alpah'"),
    ({"grid": {"seed": [0, -1]}}, "cell 2 (seed=-1): seed: Input should be greater than or equal to 0"),
    ({"grid": {"seed": [0, 0]}}, "cells 1 and 2 (seed=0) are the same experiment"),
    ({"base": "nope.yaml"}, "base 'nope.yaml' does not exist"),
    ({"overrides": ["rounds=0"]}, "base + overrides: rounds: Input should be greater than or equal to 1"),
    ({"name": "a b"}, "name: String should match pattern"),
    ({"cells": [{"seed": 1}], "grid": {"seed": [0]}}, "appear in both cells and grid"),
])
def test_bad_study_spec_is_one_line_error(change, message):
    with pytest.raises(ConfigError) as err:
        load_study(_spec(**change))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_cli_reports_spec_errors_with_exit_code_2(tmp_path, capsys):
    from harness.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nbase: {rounds: 1}\ngrid: {algorithm.name: [fedavg, nope]}\n")
    assert main(["study", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedharness: config error: study spec") and "unknown algorithm 'nope'" in err


# ----- running, skipping, rerunning -------------------------------------------------------------
def test_study_runs_each_cell_once_then_skips_finished(tmp_path, capsys):
    uri, extra = _paths(tmp_path)
    study = load_study(TINY, extra, tracking_uri=uri)
    first = run_study(study, progress=False)
    assert sorted(first.ran) == [0, 1, 2, 3] and not first.failed and not first.skipped
    runs = _runs(uri, "tiny")
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    by_hash = {r.data.tags["fedharness.config_hash"]: r for r in runs}
    for cell in study.cells:
        run = by_hash[cell.hash]
        assert run.data.tags["fedharness.study"] == "tiny"
        assert run.data.tags["fedharness.cell.algorithm.name"] == cell.config.algorithm.name
        assert run.data.tags["fedharness.cell.seed"] == str(cell.config.seed)
        assert run.info.run_id == first.run_ids[cell.index]
    # MLflow's artifacts of the study stay beside its database (not in ./mlruns)
    location = MlflowClient(uri).get_experiment_by_name("tiny").artifact_location
    assert location.startswith((tmp_path / "artifacts").as_uri())
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[")]
    assert [ln.split()[0] for ln in lines] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    assert all(" FINISHED " in ln and "personal_acc=" in ln for ln in lines)

    again = run_study(load_study(TINY, extra, tracking_uri=uri), progress=False)
    assert sorted(again.skipped) == [0, 1, 2, 3] and not again.ran
    assert len(_runs(uri, "tiny")) == 4


def test_rerun_completes_only_failed_and_deleted_cells(tmp_path):
    uri, extra = _paths(tmp_path)
    study = load_study(TINY, extra, tracking_uri=uri)
    done = run_study(study, progress=False)
    client = MlflowClient(uri)
    client.set_terminated(done.run_ids[1], status="FAILED")
    client.delete_run(done.run_ids[2])

    again = run_study(load_study(TINY, extra, tracking_uri=uri), progress=False)
    assert sorted(again.ran) == [1, 2] and sorted(again.skipped) == [0, 3] and not again.resumed
    assert again.run_ids[0] == done.run_ids[0] and again.run_ids[3] == done.run_ids[3]
    runs = _runs(uri, "tiny")
    statuses = sorted(r.info.status for r in runs)
    assert statuses == ["FAILED", "FINISHED", "FINISHED", "FINISHED", "FINISHED"]  # the FAILED record is kept
    finished = {r.data.tags["fedharness.config_hash"] for r in runs if r.info.status == "FINISHED"}
    assert finished == {c.hash for c in study.cells}


def test_cli_study_prints_progress_and_leaderboard(tmp_path, capsys):
    from harness.cli import main

    uri, extra = _paths(tmp_path)
    assert main(["study", str(TINY), *extra, "--tracking-uri", uri, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "study tiny: 0 already finished, 4 run, 0 resumed, 0 failed, 0 not run" in out
    assert "| dirichlet(alpha=0.5),n=10" in out and "Ranked by final personalized accuracy" in out
    assert main(["study", str(TINY), *extra, "--tracking-uri", uri, "--dry-run"]) == 0
    plan = [ln.split() for ln in capsys.readouterr().out.splitlines()[1:]]
    assert [p[1] for p in plan] == ["done"] * 4


# ----- killing a study mid-way ------------------------------------------------------------------
def _start_study(tmp_path: Path, spec: Path, extra: list[str], uri: str) -> subprocess.Popen:
    MlflowClient(uri).search_experiments()  # create the store now: two processes migrating one new DB collide
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "harness.cli", "study", str(spec), *extra, "--tracking-uri", uri,
                             "--quiet", "--no-table"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


KILL_ROUNDS = 80  # long enough for a cell to be seen mid-way


def _wait_mid_study(proc: subprocess.Popen, ckpt: Path, rounds: int = KILL_ROUNDS, timeout: float = 120) -> None:
    """Until one cell has checkpointed its last round and another is mid-way (>= 2 rounds done,
    >= 2 to go). Reads the small checkpoint files every 20 ms: polling MLflow took up to a second
    per look, and a fast study could finish between two looks. A cell that finished removes its
    checkpoint folder (keep_checkpoint: false), so "one cell finished" is remembered from the look
    that saw its last round, or from its folder vanishing."""
    deadline = time.monotonic() + timeout
    finished, seen = False, set()
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        done, present = [], set()
        for meta in ckpt.glob("*/meta.json"):
            present.add(meta.parent.name)
            try:
                done.append(json.loads(meta.read_text())["done_round"])
            except (json.JSONDecodeError, OSError):
                pass  # being replaced right now
        finished = finished or rounds - 1 in done or bool(seen - present)
        seen |= present
        if finished and any(1 <= d <= rounds - 3 for d in done):
            return
        time.sleep(0.02)
    raise AssertionError("the study did not reach the middle in time")


def _kill_spec(tmp_path: Path) -> Path:
    spec = tmp_path / "kill.yaml"
    spec.write_text(TINY.read_text().replace("name: tiny", "name: kill")
                    .replace("rounds: 3", f"rounds: {KILL_ROUNDS}")
                    .replace("algorithm.name: [fedavg, local]", "algorithm.name: [fedavg]")
                    .replace("seed: [0, 1]", "seed: [0, 1, 2]"))
    return spec


@pytest.mark.slow  # a real multi-process scenario (~30-100 s): CI runs it after the default suite
def test_hard_killed_study_reruns_only_missing_cells_and_resumes_the_cut_one(tmp_path):
    from harness.engine import run

    uri, extra = _paths(tmp_path)
    spec = _kill_spec(tmp_path)
    proc = _start_study(tmp_path, spec, extra, uri)
    try:
        _wait_mid_study(proc, tmp_path / "ckpt")
        proc.send_signal(signal.SIGKILL)  # no chance to clean up: its run stays RUNNING
    finally:
        proc.wait(timeout=30)
    before = {r.info.run_id: r.info.status for r in _runs(uri, "kill")}
    finished_before = {k for k, s in before.items() if s == "FINISHED"}
    cut = [k for k, s in before.items() if s == "RUNNING"]
    assert finished_before and len(cut) == 1

    study = load_study(spec, extra, tracking_uri=uri)
    outcome = run_study(study, progress=False)
    assert {outcome.run_ids[i] for i in outcome.skipped} == finished_before
    assert [outcome.run_ids[i] for i in outcome.resumed] == cut  # continued in the same MLflow run
    assert len(outcome.skipped) + len(outcome.resumed) + len(outcome.ran) == 3 and not outcome.failed
    runs = _runs(uri, "kill")
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    # the resumed cell ends with exactly the numbers of an uninterrupted run
    cell = study.cells[outcome.resumed[0]]
    resumed = next(r for r in runs if r.info.run_id == cut[0])
    cfg = cell.config.model_copy(deep=True)
    cfg.tracking.enabled = False
    cfg.checkpoint_dir = str(tmp_path / "ref")
    reference = run(cfg, progress=False)
    assert resumed.data.metrics["personal_acc"] == reference.final["personal_acc"]
    assert resumed.data.metrics["sim_time"] == reference.final["sim_time"]


@pytest.mark.slow  # a real multi-process scenario (~30-100 s): CI runs it after the default suite
def test_ctrl_c_keeps_finished_runs_and_rerun_can_start_the_cut_cell_afresh(tmp_path):
    uri, extra = _paths(tmp_path)
    spec = _kill_spec(tmp_path)
    proc = _start_study(tmp_path, spec, extra, uri)
    try:
        _wait_mid_study(proc, tmp_path / "ckpt")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert "study interrupted; finished runs are kept" in out
    before = {r.info.run_id: r.info.status for r in _runs(uri, "kill")}
    assert "KILLED" in before.values() and "RUNNING" not in before.values()

    outcome = run_study(load_study(spec, extra, tracking_uri=uri), progress=False, resume=False)
    assert {outcome.run_ids[i] for i in outcome.skipped} == {k for k, s in before.items() if s == "FINISHED"}
    assert not outcome.resumed and len(outcome.skipped) + len(outcome.ran) == 3
    after = _runs(uri, "kill")
    assert len(after) == len(before) + len(outcome.ran)
    assert sorted(r.info.status for r in after).count("FINISHED") == 3


# ----- Ray and parallel cells -------------------------------------------------------------------
def _reference(cell: Cell, tmp_path: Path) -> dict[str, float]:
    from harness.engine import run

    cfg = cell.config.model_copy(deep=True)
    cfg.tracking.enabled = False
    cfg.workers.use_ray = False
    cfg.checkpoint_dir = str(tmp_path / "ref")
    return run(cfg, progress=False).final


@pytest.mark.slow  # a real multi-process scenario (~30-100 s): CI runs it after the default suite
def test_ray_study_sequential_and_parallel_match_in_process_runs(tmp_path, ray_session):
    uri, extra = _paths(tmp_path)
    spec = _spec(grid={"seed": [0, 1]})
    seq = load_study(spec, [*extra, "workers.use_ray=true"], tracking_uri=uri)
    out = run_study(seq, progress=False)
    assert sorted(out.ran) == [0, 1] and not out.failed
    par_spec = _spec(name="p", grid={"seed": [0, 1]}, parallel_cells=2)
    par = load_study(par_spec, [*extra, "workers.use_ray=true", "workers.num_workers=1"], tracking_uri=uri)
    out_par = run_study(par, progress=False)
    assert sorted(out_par.ran) == [0, 1] and not out_par.failed
    client = MlflowClient(uri)
    runs = [client.get_run(out_par.run_ids[i]).info for i in (0, 1)]
    assert runs[0].start_time < runs[1].end_time and runs[1].start_time < runs[0].end_time  # they overlapped
    for study, outcome in ((seq, out), (par, out_par)):
        for cell in study.cells:
            metrics = client.get_run(outcome.run_ids[cell.index]).data.metrics
            ref = _reference(cell, tmp_path)
            assert metrics["personal_acc"] == ref["personal_acc"]
            assert metrics["global_acc"] == ref["global_acc"]


@pytest.mark.parametrize(("cpus", "overlap"), [(2.0, False), (1.0, True)])
def test_parallel_cells_start_only_when_their_cpus_fit(tmp_path, monkeypatch, cpus, overlap):
    """Capacity 2 CPUs: cells needing 2 run one at a time (no half-placed actor sets), cells needing 1 pair up."""
    import harness.studies.runner as runner_mod

    monkeypatch.setattr(runner_mod, "_cluster_capacity", lambda: (2.0, 0.0))
    monkeypatch.setattr(Cell, "cpus", property(lambda self: cpus))
    uri, extra = _paths(tmp_path)
    study = load_study(_spec(grid={"seed": [0, 1, 2, 3]}, parallel_cells=4), [*extra, "rounds=4"],
                       tracking_uri=uri)
    outcome = run_study(study, progress=False)
    assert sorted(outcome.ran) == [0, 1, 2, 3]
    infos = sorted((MlflowClient(uri).get_run(r).info for r in outcome.run_ids.values()), key=lambda i: i.start_time)
    overlaps = [a.end_time > b.start_time for a, b in zip(infos, infos[1:], strict=False)]
    assert any(overlaps) is overlap
    seq = run_study(load_study(_spec(name="s", grid={"seed": [0, 1, 2, 3]}), [*extra, "rounds=4"],
                               tracking_uri=uri), progress=False)
    client = MlflowClient(uri)
    for i in range(4):  # the same numbers as in sequence
        assert client.get_run(outcome.run_ids[i]).data.metrics["personal_acc"] == \
            client.get_run(seq.run_ids[i]).data.metrics["personal_acc"]


def test_until_round_takes_cells_breadth_first_with_the_numbers_of_an_uninterrupted_study(tmp_path):
    uri, extra = _paths(tmp_path / "a")
    spec = _spec(base={**_spec()["base"], "rounds": 4}, grid={"algorithm.name": ["fedavg", "fedper"]})
    first = run_study(load_study(spec, extra, tracking_uri=uri), progress=False, until_round=2)
    assert sorted(first.ran) == [0, 1] and not first.failed
    runs = _runs(uri, "t")
    assert {r.info.status for r in runs} == {"RUNNING"}  # paused, resumable
    client = MlflowClient(uri)
    assert all(len(client.get_metric_history(r.info.run_id, "train_loss")) == 2 for r in runs)
    same = run_study(load_study(spec, extra, tracking_uri=uri), progress=False, until_round=2)
    assert sorted(same.skipped) == [0, 1] and not same.ran and not same.resumed  # nothing to do at round 2
    rest = run_study(load_study(spec, extra, tracking_uri=uri), progress=False)
    assert sorted(rest.resumed) == [0, 1]
    runs = _runs(uri, "t")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}

    uri_b, extra_b = _paths(tmp_path / "b")
    whole = run_study(load_study(spec, extra_b, tracking_uri=uri_b), progress=False)
    for cell_index, run_id in rest.run_ids.items():
        paused = [m.value for m in client.get_metric_history(run_id, "personal_acc")]
        straight = [m.value for m in MlflowClient(uri_b).get_metric_history(whole.run_ids[cell_index],
                                                                           "personal_acc")]
        assert len(paused) == 4 and paused == straight


def test_cells_option_runs_only_the_chosen_cells_with_their_full_study_hashes(tmp_path, capsys):
    from harness.cli import main

    uri, extra = _paths(tmp_path)
    assert main(["study", str(TINY), *extra, "--tracking-uri", uri, "--cells", "2,4", "--quiet", "--no-table"]) == 0
    whole = load_study(TINY, extra, tracking_uri=uri)
    ran = {r.data.tags["fedharness.config_hash"] for r in _runs(uri, "tiny")}
    assert ran == {whole.cells[1].hash, whole.cells[3].hash}
    capsys.readouterr()
    assert main(["study", str(TINY), *extra, "--tracking-uri", uri, "--cells", "fedmagic", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no cell 'fedmagic'" in err[0]


def test_a_failed_cell_chosen_by_cells_is_reported_by_its_own_number(tmp_path, capsys, monkeypatch):
    # failures are keyed by the cell's number in the whole study: `--cells 4` failing used to end in an IndexError
    from harness.cli import main
    from harness.studies.runner import StudyRunner

    def broken(self, cell, state):
        raise RuntimeError("worker killed (out of memory)")

    monkeypatch.setattr(StudyRunner, "_engine", broken)
    uri, extra = _paths(tmp_path)
    assert main(["study", str(TINY), *extra, "--tracking-uri", uri, "--cells", "4", "--quiet", "--no-table"]) == 1
    err = capsys.readouterr().err
    assert "cell 4 (" in err and "failed: RuntimeError: worker killed (out of memory)" in err
    assert "unexpected error" not in err
