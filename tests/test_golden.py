"""Bit-identical numbers across the architecture redesign: every algorithm on the quickstart and FedOBP
on CIFAR-10 give exactly the per-round metrics recorded before it (tests/golden/record.py, commit 31dad36)."""

from __future__ import annotations

import json
import math

import pytest

from harness.config import load_config
from harness.engine import run
from tests.conftest import ROOT, shared_data
from tests.golden.record import ALGORITHMS, cifar_overrides, cifar_small_overrides, history, quickstart_overrides

GOLDEN = ROOT / "tests" / "golden"


def _same(recorded: list[dict], now: list[dict]) -> None:
    assert len(recorded) == len(now)
    for old, new in zip(recorded, now, strict=True):
        assert set(old) == set(new), set(old) ^ set(new)
        for key, value in old.items():
            both_nan = isinstance(value, float) and math.isnan(value) and math.isnan(new[key])
            assert both_nan or new[key] == value, (old["round"], key, value, new[key])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_quickstart_numbers_are_those_recorded_before_the_redesign(tmp_path, algorithm):
    recorded = json.loads((GOLDEN / "quickstart.json").read_text())[algorithm]
    cfg = load_config(ROOT / "runs" / "quickstart.yaml", quickstart_overrides(algorithm, str(tmp_path)))
    _same(recorded, history(run(cfg, progress=False)))


def test_cifar10_fedobp_numbers_are_those_recorded_before_the_redesign(tmp_path):
    shared_data("cifar10/cifar10_jpeg_blob.npz")
    recorded = json.loads((GOLDEN / "cifar10_fedobp.json").read_text())
    cfg = load_config(ROOT / "runs" / "paper" / "cifar10_dir0.1.yaml", cifar_overrides(str(tmp_path)))
    _same(recorded, history(run(cfg, progress=False)))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_cifar10_conv_numbers_of_every_algorithm_are_those_recorded_before_the_redesign(tmp_path, algorithm):
    """The avgcnn trains channels-last: custom loss terms (FedProx, Ditto) and custom loops (APFL, FedALA,
    FedRoD) must compute the same floats through the trainer API as they did on trainer internals."""
    shared_data("cifar10/cifar10_jpeg_blob.npz")
    recorded = json.loads((GOLDEN / "cifar10_all.json").read_text())[algorithm]
    cfg = load_config(ROOT / "runs" / "paper" / "cifar10_dir0.1.yaml", cifar_small_overrides(algorithm, str(tmp_path)))
    _same(recorded, history(run(cfg, progress=False)))
