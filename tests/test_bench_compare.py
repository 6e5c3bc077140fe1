"""bench/bench_compare.py without its bench environment: the modules import with neither Flower nor pfl
installed, the table arithmetic, the process-tree memory poller, the FEMNIST copy with more writers, and
the plain-loop ways of the quick workload on sklearn digits. No timing is asserted; the Flower and pfl
sides are only exercised by the benchmark itself (they need .venv-bench)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_compare as bc  # noqa: E402
import compare_pfl  # noqa: E402
import compare_runner as cr  # noqa: E402


def test_modules_import_without_flower_or_pfl():
    # compare_pfl imports pfl only inside main(); Flower is imported only inside bench_throughput's Flower side
    assert callable(compare_pfl.main) and callable(bc.main)
    assert "pfl" not in sys.modules and "flwr" not in sys.modules


def test_replay_sampler_replays_in_order_and_cycles():
    s = compare_pfl.ReplaySampler([(0, 5), (0, 2), (1, 7)])
    assert [s() for _ in range(5)] == [(0, 5), (0, 2), (1, 7), (0, 5), (0, 2)]


def test_summarize_ratios_are_per_repetition_medians():
    runs = {"harness per-client": [{"round_s": [1.0, 1.0, 3.0]}, {"round_s": [2.0, 2.0]}],
            "plain 2 procs": [{"round_s": [2.0]}, {"round_s": [2.0]}],
            "pfl": [{"round_s": [4.0], "startup_s": 5.0, "eval_s": 0.5,
                     "peak_mib": {"driver": 10.0, "workers": 20.0, "ray": 0.0, "total_pss": 25.0}},
                    {"round_s": [8.0], "startup_s": 7.0, "eval_s": None,
                     "peak_mib": {"driver": 12.0, "workers": 18.0, "ray": 0.0, "total_pss": 26.0}}],
            "Flower": []}
    rows = {r["way"]: r for r in bc.summarize("w", 100, runs)}
    assert set(rows) == {"harness per-client", "plain 2 procs", "pfl"}  # a way without runs has no row
    h, p = rows["harness per-client"], rows["pfl"]
    assert h["round_s"] == pytest.approx(2.0) and h["ups"] == pytest.approx(50.0)  # pooled rounds [1, 1, 3, 2, 2]
    assert h["round_s_per_repeat"] == [1.0, 2.0]
    assert h["x_plain2"] == pytest.approx(np.median([2.0 / 1.0, 2.0 / 2.0]))
    assert h["x_pfl"] == pytest.approx(np.median([4.0, 4.0]))
    assert h["x_flower"] != h["x_flower"]  # no Flower runs: nan
    assert p["x_plain2"] == pytest.approx(np.median([0.5, 0.25]))
    assert p["startup_s"] == pytest.approx(6.0) and p["eval_s"] == pytest.approx(0.5)
    assert (p["driver_mib"], p["workers_mib"], p["pss_mib"]) == (12.0, 20.0, 26.0)


def test_monitored_groups_the_process_tree(tmp_path):
    code = ("import subprocess, sys, time; "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; x = b\"1\" * (150 * 2**20); time.sleep(2)']); "
            "time.sleep(1.5); c.wait()")
    got = cr.monitored([sys.executable, "-c", code], dict(os.environ), tmp_path / "log", interval=0.1)
    assert got["rc"] == 0 and got["wall_s"] >= 1.5
    peak = got["peak_mib"]
    assert peak["driver"] > 1 and peak["workers"] > 150  # the child holds its 150 MiB bytearray
    assert peak["ray"] == 0 and peak["total_pss"] > 150
    assert cr.group_of(1, 1, "python x") == "driver"
    assert cr.group_of(2, 1, "ray::ActorWorker.train") == "workers"
    assert cr.group_of(3, 1, "/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --x") == "ray"


def test_checked_reports_the_log_tail(tmp_path):
    log = tmp_path / "log"
    log.write_text("boom: the reason")
    with pytest.raises(RuntimeError, match="the reason"):
        cr.checked({"rc": 1}, tmp_path / "missing.json", log, "pfl")
    out = tmp_path / "out.json"
    out.write_text(json.dumps({"a": 1}))
    assert cr.checked({"rc": 0}, out, log, "pfl") == {"a": 1}


@pytest.mark.skipif(not bc.bb.FEMNIST.exists(), reason="needs ../shared/data/femnist")
def test_tiled_femnist_has_new_writers_with_the_same_data(tmp_path):
    path = bc.tiled_femnist(tmp_path, copies=2)
    got, src = np.load(path, allow_pickle=False), np.load(bc.bb.FEMNIST, allow_pickle=False)
    n = len(src["y_train"])
    assert np.array_equal(got["x_train"][n:], src["x_train"]) and np.array_equal(got["y_test"][: len(src["y_test"])],
                                                                                  src["y_test"])
    writers = np.unique(np.concatenate([got["writer_train"], got["writer_test"]]))
    assert len(writers) == 2 * len(np.unique(src["writer_train"]))


def test_plain_ways_of_the_quick_workload(tmp_path):
    args = argparse.Namespace(rounds=None, workers=2, pfl_procs=2, frameworks=False, worker_niceness="same")
    p = bc.prepare("quick-mlp", tmp_path, args)
    assert p["k"] == 10 and len(p["rounds"]) == bc.WORKLOADS["quick-mlp"] + 2
    assert p["batched"] is not None and p["batched"].train.batched == "on"  # the MLP has no convolutions
    pools: dict = {}
    try:
        for way in ("plain 1 proc", "plain 2 procs"):
            got = bc.run_way(way, p, tmp_path, args, pools, "quick-mlp")
            assert len(got["round_s"]) == bc.WORKLOADS["quick-mlp"] and all(t > 0 for t in got["round_s"])
            assert got["steps"] > 0
        # without the bench environment the framework ways are skipped, not failed
        assert bc.run_way("Flower", p, tmp_path, args, pools, "quick-mlp") is None
        assert bc.run_way("pfl", p, tmp_path, args, pools, "quick-mlp") is None
    finally:
        for pool in pools.values():
            pool.terminate()


@pytest.mark.slow
def test_quick_run_writes_the_table(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_compare.py"), "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "bench_compare.json").read_text())
    rows = {r["way"]: r for r in result["tables"]["Round time, start-up, evaluation, memory"]}
    assert set(rows) == {"harness per-client", "harness batched", "plain 1 proc", "plain 2 procs"}
    for way in ("harness per-client", "harness batched"):
        assert rows[way]["startup_s"] > 0 and rows[way]["eval_s"] > 0 and rows[way]["workers_mib"] > 0
    assert rows["plain 2 procs"]["x_plain2"] == pytest.approx(1.0)
    assert result["failures"] == [] and "Machine: " in (tmp_path / "bench_compare.md").read_text()
