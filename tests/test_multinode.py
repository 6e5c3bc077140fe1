"""The same run on a two-node Ray cluster gives the same numbers as in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness.engine import run
from tests.conftest import ROOT, small_config


@pytest.mark.slow  # a real multi-process scenario (~30-100 s): CI runs it after the default suite
def test_two_node_cluster_run_matches_single_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "tests.multinode_run"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["nodes"] == 2
    assert report["actor_nodes"] == 2  # one worker actor per node (1 CPU each)
    local = run(small_config(tmp_path, "workers.use_ray=false", "rounds=2"), progress=False)
    expected = [{k: v for k, v in h.items() if k != "wall_round_time"} for h in local.history]
    assert report["history"] == expected
