"""What a finished run leaves in MLflow beyond its metrics: a readable name, the experiment kind the UI
needs, and (tracking.log_model) the final global model in a form that loads without unpickling."""

from __future__ import annotations

import json

import numpy as np
import torch
from mlflow.tracking import MlflowClient

from harness.engine import run
from harness.models import build_model
from protocol.params import ParamSpec, model_to_vector
from tests.conftest import small_config


def test_log_model_writes_a_vector_a_spec_and_a_weights_only_state_dict(tmp_path):
    cfg = small_config(tmp_path, "tracking.enabled=true", "tracking.log_model=true", "rounds=2")
    result = run(cfg, progress=False)
    client = MlflowClient(cfg.tracking.uri)
    assert client.get_run(result.run_id).info.run_name == "fedavg · s0 · digits · dirichlet(alpha=0.5)"
    folder = client.download_artifacts(result.run_id, "model", str(tmp_path / "out"))
    vec = np.load(f"{folder}/global.npy", allow_pickle=False)
    np.testing.assert_array_equal(vec, result.global_vec)
    spec = json.loads(open(f"{folder}/param_spec.json").read())
    assert spec["size"] == vec.size and spec["slots"][-1]["stop"] == vec.size
    state = torch.load(f"{folder}/global_state_dict.pt", weights_only=True)
    model = build_model("mlp", (1, 8, 8), 10, hidden=32)
    model.load_state_dict(state)
    np.testing.assert_array_equal(model_to_vector(model, ParamSpec.of(model)), result.global_vec)


def test_without_log_model_no_model_is_logged(tmp_path):
    cfg = small_config(tmp_path, "tracking.enabled=true", "rounds=1")
    result = run(cfg, progress=False)
    assert "model" not in {a.path for a in MlflowClient(cfg.tracking.uri).list_artifacts(result.run_id)}
