"""Plugins from outside the package (docs/examples/): an algorithm with server state and a model, named in a
spec or on the command line, run end to end in-process and on Ray with identical numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.config import ConfigError, load_config
from harness.engine import resume, run
from tests.conftest import ROOT, metrics_history, small_config

ALGO = str(ROOT / "docs" / "examples" / "my_fedavgm.py")
MODEL = str(ROOT / "docs" / "examples" / "my_lenet5.py")


@pytest.fixture(autouse=True)
def _clean_registries():
    """Plugins register into process-wide registries: leave them as the test found them."""
    from algorithms import registry
    from harness import models, plugins

    registry.names()  # the built-ins are loaded before the snapshot
    algos, nets, loaded = dict(registry._REGISTRY), dict(models.MODELS), set(plugins._loaded)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(algos)
    models.MODELS.clear()
    models.MODELS.update(nets)
    plugins._loaded.clear()
    plugins._loaded.update(loaded)


def _plugin_config(tmp_path, *overrides):
    return small_config(tmp_path, "algorithm.name=my_fedavgm", "model.name=my_lenet5", "model.options={}",
                        *overrides, plugins=[ALGO, MODEL])


def test_unknown_model_and_algorithm_are_config_errors_without_the_plugin(tmp_path):
    with pytest.raises(ConfigError, match="unknown model .my_lenet5.; choose one of: avgcnn, avgcnn_bn, char_lstm, "
                                          "dnn"):
        small_config(tmp_path, "model.name=my_lenet5")
    with pytest.raises(ConfigError, match="plugin file .*nope.py.* does not exist"):
        small_config(tmp_path, plugins=["nope.py"])
    with pytest.raises(ConfigError, match="plugin module 'no_such_module_xyz' not found"):
        small_config(tmp_path, plugins=["no_such_module_xyz"])


def test_plugin_algorithm_and_model_run_in_process_and_on_ray_with_identical_numbers(tmp_path, ray_session):
    common = ("rounds=6", "train.local_epochs=2")
    local = run(_plugin_config(tmp_path / "local", *common), progress=False)
    on_ray = run(_plugin_config(tmp_path / "ray", *common, "workers.use_ray=true"), progress=False)
    assert metrics_history(local) == metrics_history(on_ray)
    assert np.array_equal(local.global_vec, on_ray.global_vec)
    assert local.final["personal_acc"] > 0.4  # it learns (10 classes: chance is 0.1; 0.60 when written)


def test_plugin_algorithm_mechanism_beta_zero_is_fedavg_and_momentum_changes_the_model(tmp_path):
    fedavg = run(small_config(tmp_path / "a", "model.name=my_lenet5", "model.options={}", plugins=[MODEL]),
                 progress=False)
    m0 = run(_plugin_config(tmp_path / "b", "algorithm.beta=0.0"), progress=False)
    m9 = run(_plugin_config(tmp_path / "c", "algorithm.beta=0.9"), progress=False)
    assert np.array_equal(fedavg.global_vec, m0.global_vec)
    assert not np.array_equal(m0.global_vec, m9.global_vec)


def test_plugin_server_state_survives_a_resume_bit_for_bit(tmp_path):
    cfg = _plugin_config(tmp_path / "a", "rounds=4")
    whole = run(cfg, progress=False)
    cut = _plugin_config(tmp_path / "b", "rounds=4")
    first = run(cut, progress=False, stop_after=2)
    resumed = resume(first.run_id, cut.checkpoint_dir, progress=False)
    assert metrics_history(resumed) == metrics_history(whole)


def test_cli_plugin_option_lists_and_runs_the_plugin(tmp_path, capsys):
    from harness.cli import main

    assert main(["algorithms", "--plugin", ALGO]) == 0
    assert "my_fedavgm" in capsys.readouterr().out
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(_plugin_config(tmp_path, "rounds=2").model_dump(mode="json") | {"plugins": []}))
    assert main(["validate", str(spec), "--plugin", ALGO, "--plugin", MODEL, "algorithm.name=my_fedavgm",
                 "model.name=my_lenet5"]) == 0
    out = capsys.readouterr().out
    assert "my_fedavgm" in out and "my_lenet5" in out


def test_a_spec_file_can_name_plugins(tmp_path):
    cfg = load_config(ROOT / "runs" / "quickstart.yaml", ["model.name=my_lenet5", "algorithm.name=my_fedavgm"],
                      plugins=[ALGO, MODEL])
    assert cfg.plugins == [ALGO, MODEL] and cfg.model.name == "my_lenet5"


def test_readme_shows_exactly_the_tested_examples():
    import re

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Extending fedharness")[1].split("\n## ")[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks[0] == (ROOT / "docs" / "examples" / "my_fedavgm.py").read_text()
    assert blocks[1] == (ROOT / "docs" / "examples" / "my_lenet5.py").read_text()
    doc = (ROOT / "docs" / "partitions.md").read_text().split("## Adding a scheme or a data source")[1]
    assert blocks[2:4] == re.findall(r"```python\n(.*?)```", doc.split("\n## ")[0], flags=re.S)


def test_a_model_that_leaves_the_shared_part_empty_is_a_clear_error_for_split_algorithms(tmp_path):
    from torch import nn

    from harness.models import BodyHead, model

    @model("test_head_only")
    def head_only(input_shape, num_classes):
        return BodyHead(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), num_classes))  # the body has no tensors

    run(small_config(tmp_path / "a", "model.name=test_head_only", "model.options={}", "rounds=1"), progress=False)
    for algorithm in ("fedper", "fedrep", "lgfedavg", "fedbabu"):  # FedRoD splits head vs phead: fine
        cfg = small_config(tmp_path / algorithm, "model.name=test_head_only", "model.options={}",
                           f"algorithm.name={algorithm}", "rounds=1")
        with pytest.raises(ValueError, match=f"{algorithm}: this model leaves the (shared|personal) part empty"):
            run(cfg, progress=False)


def test_installed_packages_register_through_the_entry_point_group(monkeypatch, tmp_path):
    """A package that declares `[project.entry-points."fedharness.plugins"]` is loaded once, before validation."""
    import importlib.metadata
    import sys

    from harness import plugins

    module = tmp_path / "third_party_plugin.py"
    module.write_text("from harness.models import model\nfrom docs_examples_lenet import my_lenet5\n"
                      "model('third_party_lenet')(my_lenet5)\n")
    (tmp_path / "docs_examples_lenet.py").write_text(open(MODEL).read().replace('@model("my_lenet5")', ""))
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint("lenet", "third_party_plugin", plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugins.importlib.metadata, "entry_points",
                        lambda group: [ep] if group == plugins.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(plugins, "_installed_done", False)
    cfg = small_config(tmp_path / "run", "model.name=third_party_lenet", "model.options={}")
    assert cfg.model.name == "third_party_lenet"
    broken = importlib.metadata.EntryPoint("broken", "no_such_module_abc", plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugins.importlib.metadata, "entry_points", lambda group: [broken])
    monkeypatch.setattr(plugins, "_installed_done", False)
    with pytest.raises(ConfigError, match="plugin entry point 'broken' .* failed to load"):
        small_config(tmp_path / "run2")
    sys.modules.pop("third_party_plugin", None)
    sys.modules.pop("docs_examples_lenet", None)
