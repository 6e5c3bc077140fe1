"""Every registered algorithm, two rounds on digits: in-process, on Ray and with the disk store give identical
numbers (the registry's promise: determinism whatever the executor or the store)."""

from __future__ import annotations

import numpy as np
import pytest

from algorithms import registry
from harness.engine import run
from tests.conftest import NEEDS_ON_DIGITS, metrics_history, small_config

ALGORITHMS = registry.names()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_in_process_ray_and_disk_store_agree(tmp_path, ray_session, algorithm):
    common = (f"algorithm.name={algorithm}", "rounds=2", "eval_every=2", *NEEDS_ON_DIGITS.get(algorithm, ()))
    local = run(small_config(tmp_path / "local", *common), progress=False)
    on_ray = run(small_config(tmp_path / "ray", *common, "workers.use_ray=true"), progress=False)
    disk = run(small_config(tmp_path / "disk", *common, "store.backend=disk"), progress=False)
    assert metrics_history(local) == metrics_history(on_ray) == metrics_history(disk)
    assert np.array_equal(local.global_vec, on_ray.global_vec) and np.array_equal(local.global_vec, disk.global_vec)
    assert 0.0 <= local.final["personal_acc"] <= 1.0


def test_the_registry_lists_every_builtin_module():
    import pkgutil

    import algorithms

    helpers = {"base", "registry", "functional", "clusters", "pool", "search_spaces"}  # shared code, no algorithm
    modules = {m.name for m in pkgutil.iter_modules(algorithms.__path__)} - helpers
    defined = {registry.get(n).__module__.rsplit(".", 1)[1] for n in ALGORITHMS}
    assert modules == defined  # every algorithm module registers at least one algorithm
