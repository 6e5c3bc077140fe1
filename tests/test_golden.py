"""Bit-identical numbers across the architecture redesign: every algorithm on the quickstart and FedOBP
on CIFAR-10 give exactly the per-round metrics recorded before it (tests/golden/record.py, commit 31dad36).

PyTorch's CPU kernels differ in the last bits of float32 reductions from one instruction set to another
(the losses of the first recording's machine and of an AVX512 one differ by ~1e-8 relative), so
the numbers are recorded per CPU capability (tests/golden/<capability>/, torch's get_cpu_capability()):
on a machine whose capability has a recording the comparison is exact, bit for bit; elsewhere it
compares with the first recording (tests/golden/*.json, made on another machine) to 1e-4 relative (the
largest cross-machine drift seen: FedBABU's fine-tuned loss, 1.3e-5).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from harness.config import load_config
from harness.engine import run
from tests.conftest import ROOT, shared_data
from tests.golden.record import ALGORITHMS, cifar_overrides, cifar_small_overrides, history, quickstart_overrides

GOLDEN = ROOT / "tests" / "golden"
HERE = GOLDEN / torch.backends.cpu.get_cpu_capability()
EXACT = HERE.is_dir()  # a recording of this machine's kind: bit for bit


def _recorded(name: str):
    return json.loads(((HERE if EXACT else GOLDEN) / name).read_text())


def _same(recorded: list[dict], now: list[dict]) -> None:
    assert len(recorded) == len(now)
    for old, new in zip(recorded, now, strict=True):
        assert set(old) == set(new), set(old) ^ set(new)
        for key, value in old.items():
            both_nan = isinstance(value, float) and math.isnan(value) and math.isnan(new[key])
            close = EXACT or not isinstance(value, float) or new[key] == pytest.approx(value, rel=1e-4, abs=1e-12)
            assert both_nan or (new[key] == value if EXACT else close), (old["round"], key, value, new[key])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_quickstart_numbers_are_those_recorded_before_the_redesign(tmp_path, algorithm):
    recorded = _recorded("quickstart.json")[algorithm]
    cfg = load_config(ROOT / "runs" / "quickstart.yaml", quickstart_overrides(algorithm, str(tmp_path)))
    _same(recorded, history(run(cfg, progress=False)))


def test_cifar10_fedobp_numbers_are_those_recorded_before_the_redesign(tmp_path):
    shared_data("cifar10/cifar10_jpeg_blob.npz")
    recorded = _recorded("cifar10_fedobp.json")
    cfg = load_config(ROOT / "runs" / "paper" / "cifar10_dir0.1.yaml", cifar_overrides(str(tmp_path)))
    _same(recorded, history(run(cfg, progress=False)))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_cifar10_conv_numbers_of_every_algorithm_are_those_recorded_before_the_redesign(tmp_path, algorithm):
    """The avgcnn trains channels-last: custom loss terms (FedProx, Ditto) and custom loops (APFL, FedALA,
    FedRoD) must compute the same floats through the trainer API as they did on trainer internals."""
    shared_data("cifar10/cifar10_jpeg_blob.npz")
    recorded = _recorded("cifar10_all.json")[algorithm]
    cfg = load_config(ROOT / "runs" / "paper" / "cifar10_dir0.1.yaml", cifar_small_overrides(algorithm, str(tmp_path)))
    _same(recorded, history(run(cfg, progress=False)))
