"""Smoke tests of the benchmark scripts: each runs in --quick mode into a tmp dir and writes
its results files with the structure the docs quote. No timing is asserted, ever: the
numbers depend on the machine; only their presence, consistency and units are checked."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run_script(name: str, out: Path, *extra: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / name), "--quick", "--out", str(out), *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    stem = name.removesuffix(".py")
    md = (out / f"{stem}.md").read_text()
    assert md.startswith("# ") and "Machine: " in md and "\n|---|" in md
    result = json.loads((out / f"{stem}.json").read_text())
    assert result["name"] == stem
    for key in ("date", "cpus", "ram_gib", "torch", "ray", "loadavg_start", "loadavg_end"):
        assert key in result["machine"], key
    assert result["settings"]["quick"] is True
    return result


def positive(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def test_bench_scale_quick(tmp_path):
    result = run_script("bench_scale.py", tmp_path / "results", "--workdir", str(tmp_path / "work"))
    tables = list(result["tables"].values())
    state, rounds, heads = tables
    kib = result["model_params"] * 4 / 1024
    assert {(r["clients"], r["backend"]) for r in state} == {(100, "disk"), (300, "disk"), (100, "memory")}
    for row in state:
        assert row["state_kib"] == pytest.approx(kib)
        assert row["state_total_mib"] == pytest.approx(row["clients"] * kib / 1024)
        assert positive(row["peak_driver_rss_mib"]) and positive(row["peak_workers_rss_mib"])
        assert positive(row["eval_all_s"])
        if row["backend"] == "disk":  # one .npy per client, each at least its raw bytes
            assert row["files"] == row["clients"]
            assert row["disk_apparent_mib"] >= row["state_total_mib"]
    assert {(r["clients"], r["per_round"]) for r in rounds} == {(100, 20), (300, 20)}
    for row in rounds:
        assert positive(row["round_s"]) and positive(row["clients_per_s"])
        assert row["clients_per_s"] == pytest.approx(row["per_round"] / row["round_s"])
    assert {(r["clients"], r["backend"]) for r in heads} == {(n, b) for n in (1000, 5000) for b in ("disk", "memory")}
    for row in heads:
        assert row["state_kib"] == pytest.approx(result["head_params"] * 4 / 1024)
        assert positive(row["cycle_ms_k20"])
        assert row["files" if row["backend"] == "disk" else "snapshot_s"] > 0
    assert not list((tmp_path / "work").glob("full-*")), "stores are removed unless --keep"


def test_bench_throughput_quick(tmp_path):
    result = run_script("bench_throughput.py", tmp_path)
    rows = result["tables"]["Client updates per second"]
    assert result["tables"]["Where a harness round goes (medians)"] == rows
    (row,) = rows
    assert row["workload"] == "quick-mlp" and row["per_round"] == 20
    for key in ("compute_ups", "harness_ups", "steps_per_client"):
        assert positive(row[key]), key
    assert row["harness_overhead_pct"] == pytest.approx(100 * (1 - row["harness_ups"] / row["compute_ups"]))
    assert len(row["round_s"]["harness"]) == result["settings"]["rounds"]
    assert len(row["round_s"]["compute"]) == result["settings"]["rounds"]
    assert row["round_s"]["flower"] == []  # Flower is not part of the quick mode


def test_bench_scale_1m_quick(tmp_path):
    if not (ROOT.parent / "shared" / "data" / "femnist" / "femnist_300writers.npz").exists():
        pytest.skip("real FEMNIST (../shared/data/femnist) is absent")
    result = run_script("bench_scale_1m.py", tmp_path / "results", "--workdir", str(tmp_path / "work"))
    (rows,) = result["tables"].values()
    assert {(r["algorithm"], r["clients"]) for r in rows} == {(a, n) for a in ("fedavg", "fedper")
                                                                 for n in (10_000, 20_000)}
    for row in rows:
        assert row["virtual_arrays_mib"] == pytest.approx(row["clients"] * 12 / 2**20)  # int32 + int64 per client
        assert 0 < row["participants"] <= row["per_round"] * result["settings"]["rounds"]
        # state only for participants: FedPer one head file each, FedAvg none
        assert row["store_files"] == (row["participants"] if row["algorithm"] == "fedper" else 0)
        assert positive(row["round_s"]) and positive(row["peak_driver_rss_mib"])
