"""LocalTrainer's explicit memory layout: channels-last for conv models on the CPU, same math."""

from __future__ import annotations

import numpy as np
import torch

from algorithms.base import ClientJob
from harness.engine.training import LocalTrainer
from harness.models import build_model
from partitions import build_federated_dataset
from protocol.params import ParamSpec, model_to_vector
from tests.conftest import small_config


def _grey_config(tmp_path, model: str = "avgcnn"):
    gen = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 60)
    x = (gen.integers(0, 60, size=(240, 16, 16)) + 40 * y[:, None, None]).astype(np.uint8)
    np.savez(tmp_path / "grey.npz", x=x, y=y)
    return small_config(tmp_path, "data.source=arrays", f"data.root={tmp_path}/grey.npz", f"model.name={model}",
                        "model.options={}", "partition.num_clients=4", "partition.min_samples=20")


def _trainer(cfg, data, channels_last: bool | None = None) -> LocalTrainer:
    torch.manual_seed(0)
    model = build_model(cfg.model.name, data.input_shape, data.num_classes)
    trainer = LocalTrainer(model, ParamSpec.of(model), data, cfg.train, torch.device("cpu"), cfg.seed)
    if channels_last is False:  # the plain NCHW reference
        trainer.channels_last = False
        trainer.model = trainer.model.to(memory_format=torch.contiguous_format)
    return trainer


def test_conv_models_train_channels_last_on_cpu_and_mlps_do_not(tmp_path):
    cfg = _grey_config(tmp_path)
    data = build_federated_dataset(cfg.data, cfg.partition, cfg.seed)
    trainer = _trainer(cfg, data)
    assert trainer.channels_last
    conv = trainer.model.body[3].weight  # 32 -> 64 channels (with 1 input channel both layouts coincide)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x, _ = trainer.tensors(data.train_of(0)[:8])
    assert x.stride() == (16 * 16, 1, 16, 1)  # NHWC strides even for one channel
    (tmp_path / "mlp").mkdir()
    mlp_cfg = _grey_config(tmp_path / "mlp", model="mlp")
    assert not _trainer(mlp_cfg, build_federated_dataset(mlp_cfg.data, mlp_cfg.partition, mlp_cfg.seed)).channels_last


def test_channels_last_round_trips_vectors_exactly_and_trains_the_same_model(tmp_path):
    cfg = _grey_config(tmp_path)
    data = build_federated_dataset(cfg.data, cfg.partition, cfg.seed)
    fast, plain = _trainer(cfg, data), _trainer(cfg, data, channels_last=False)
    start = model_to_vector(plain.model, plain.spec)
    fast.set_vector(start)
    np.testing.assert_array_equal(fast.get_vector(), start)  # flat order is the logical (NCHW) one
    job = ClientJob(cid=1, round=0, payload={}, state={})
    for trainer in (fast, plain):
        trainer.set_vector(start)
        trainer.start(job)
        trainer.train(job)
    moved = np.abs(plain.get_vector() - start).max()
    assert moved > 1e-3  # training changed the model ...
    np.testing.assert_allclose(fast.get_vector(), plain.get_vector(), rtol=0, atol=1e-5)  # ... the same way


def test_batches_do_not_depend_on_the_strides_the_array_arrived_with(tmp_path):
    cfg = _grey_config(tmp_path)
    data = build_federated_dataset(cfg.data, cfg.partition, cfg.seed)
    a = _trainer(cfg, data)
    index = data.train_of(0)[:16]
    x_c, _ = a.tensors(index)
    data.x = np.lib.stride_tricks.as_strided(data.x[:, 0], shape=data.x.shape,
                                             strides=(data.x.strides[0], 0, *data.x.strides[2:]))  # x[:, None]
    x_zero, _ = a.tensors(index)
    assert x_zero.stride() == x_c.stride()
    torch.testing.assert_close(x_zero, x_c, rtol=0, atol=0)
