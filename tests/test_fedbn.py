"""FedBN: BatchNorm weights and statistics never leave the client; everything else is FedAvg."""

from __future__ import annotations

import numpy as np
import pytest

from harness.engine import run
from harness.models import build_model
from protocol.params import ParamSpec
from tests.conftest import metrics_history, small_config

BN = ("model.name=avgcnn_bn", "model.options={}")


def _images(tmp_path):
    """16x16 grey images of 4 classes (avgcnn_bn needs at least 16x16), 400 samples."""
    gen = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 100)
    x = (gen.integers(0, 60, size=(400, 16, 16)) + 40 * y[:, None, None]).astype(np.uint8)
    np.savez(tmp_path / "grey.npz", x=x, y=y)
    return ["data.source=arrays", f"data.root={tmp_path}/grey.npz", "partition.num_clients=8",
            "partition.min_samples=20", *BN]


def test_batchnorm_tensors_are_found_by_module_type():
    spec = ParamSpec.of(build_model("avgcnn_bn", (3, 32, 32), 10))
    bn_float = {s.name for s in spec.slots if s.name in spec.batchnorm_names}
    assert bn_float == {f"body.{i}.{t}" for i in (1, 5, 10) for t in ("weight", "bias", "running_mean", "running_var")}
    assert sum(spec.slot(n).size for n in bn_float) == 2 * (32 + 64 + 512) * 2  # affine + statistics
    assert not ParamSpec.of(build_model("avgcnn", (3, 32, 32), 10)).batchnorm_names


def test_batchnorm_never_leaves_the_client(tmp_path):
    cfg = small_config(tmp_path, "algorithm.name=fedbn", "rounds=3", *_images(tmp_path))
    result = run(cfg, progress=False)
    spec = ParamSpec.of(build_model("avgcnn_bn", (1, 16, 16), 4))
    bn = spec.mask(spec.batchnorm_names)
    init = run(small_config(tmp_path / "init", "algorithm.name=fedbn", "rounds=1", *_images(tmp_path)),
               progress=False, stop_after=1)
    # the server's BatchNorm elements are exactly the initial ones: nothing was averaged into them
    np.testing.assert_array_equal(result.global_vec[bn], init.global_vec[bn])
    assert not np.array_equal(result.global_vec[~bn], init.global_vec[~bn])
    # bytes: each upload carries only the non-BN elements
    log = result.client_log
    kept = log[log["outcome"] == "kept"]
    assert (kept["bytes_up"] == 4 * int((~bn).sum())).all()


def test_fedbn_differs_from_fedavg_only_through_the_batchnorm_layers(tmp_path):
    common = ("rounds=3", "join_ratio=1.0", *_images(tmp_path))
    fedbn = run(small_config(tmp_path / "bn", "algorithm.name=fedbn", *common), progress=False)
    fedavg = run(small_config(tmp_path / "avg", "algorithm.name=fedavg", *common), progress=False)
    bn, avg = metrics_history(fedbn), metrics_history(fedavg)
    assert bn[0]["train_loss"] == avg[0]["train_loss"]  # round 1: everybody starts from the same model
    assert bn[1]["train_loss"] != avg[1]["train_loss"]  # round 2: FedBN clients start from their own BN layers


def test_fedbn_refuses_a_model_without_batchnorm(tmp_path):
    with pytest.raises(ValueError, match="fedbn: this model leaves the personal part empty"):
        run(small_config(tmp_path, "algorithm.name=fedbn", "rounds=1"), progress=False)


def test_mlp_batchnorm_option_adds_batchnorm_and_leaves_the_default_mlp_unchanged():
    import torch

    torch.manual_seed(0)
    plain = build_model("mlp", (1, 8, 8), 10, hidden=16)
    torch.manual_seed(0)
    bn = build_model("mlp", (1, 8, 8), 10, hidden=16, batchnorm=True)
    assert not ParamSpec.of(plain).batchnorm_names
    assert ParamSpec.of(bn).batchnorm_names == {f"body.{i}.{t}" for i in (2, 5)
                                                for t in ("weight", "bias", "running_mean", "running_var",
                                                          "num_batches_tracked")}
    assert [n for n, _ in plain.named_parameters()] == ["body.1.weight", "body.1.bias", "body.3.weight",
                                                         "body.3.bias", "head.weight", "head.bias"]


def test_a_batchnorm_model_skips_a_trailing_batch_of_one_sample(tmp_path):
    from harness.engine.worker import Worker
    from partitions import build_federated_dataset
    from protocol.messages import ClientJob

    cfg = small_config(tmp_path, "algorithm.name=fedbn", "model.options.batchnorm=true", "train.batch_size=16")
    data = build_federated_dataset(cfg.data, cfg.partition, cfg.seed)
    cid = next(c for c in range(data.num_clients) if len(data.train_of(c)) % 16 == 1)
    worker = Worker(cfg.model_dump(mode="json"), data)
    job = ClientJob(cid, 0, {"model": worker.trainer.get_vector()}, {})
    update = worker.train([job])[0]
    assert update.finite and update.steps == len(data.train_of(cid)) // 16  # the one-sample batch is skipped
