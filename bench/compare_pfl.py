"""pfl 0.6 side of bench_compare.py: the same FedAvg rounds in Apple's pfl simulator (PyTorch).

Runs inside .venv-bench (pfl is not a project dependency), one process per rank, started by
`python -m torch.distributed.run --standalone --nproc_per_node P bench/compare_pfl.py SPEC`
(pfl's own multi-process mode on one machine: each rank trains part of the cohort, pfl's
SimulatedBackend all-reduces the statistics over gloo) or plainly with P = 1.

pfl's own classes do the federated part: `FederatedAveraging`, `PyTorchModel` (local SGD through pfl's
SGD bridge, central SGD lr 1 on the averaged model difference = FedAvg), `SimulatedBackend` with
`WeightByDatapoints` (the harness weights updates by sample count), `FederatedDataset` with
`user_id_to_weight` (pfl's longest-first balancing of a cohort over the ranks). What is held equal to
the harness: the model and its initial weights, the clients of every round (the user sampler replays
the harness's draws), each client's data order (user (round, client) holds its training split in the
order the harness's rng gives that round; pfl iterates a user's data in order), batch size, epochs,
SGD lr/momentum, batches normalised on the fly in the model's `loss` (as the plain loop does), the
conv layout (channels-last where the harness's trainer picks it) and the allocator thresholds.
Evaluation: pfl's federated evaluation (val population = every client's test split, batch 512) at
central iteration 0 - pfl evaluates at iterations that are multiples of evaluation_frequency, so 0
is the only one short of evaluating often; iteration 0 is the dropped warm-up round anyway.

Rank 0 writes {"begin": t, "ends": [t per iteration], "eval_s": s} (time.perf_counter, which is
CLOCK_MONOTONIC on Linux, so the launcher can subtract its own start time).
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(ROOT / "bench")):
    if _p not in sys.path:
        sys.path.insert(0, _p)


class ReplaySampler:
    """pfl user sampler: yields the given user ids in order, cycling (pfl's sampler process reads ahead)."""

    def __init__(self, ids: list):
        self.ids, self.i = ids, 0

    def __call__(self):
        uid = self.ids[self.i % len(self.ids)]
        self.i += 1
        return uid


def _wrapped_model(cfg, data):
    """The harness's model with pfl's loss/metrics interface; batches are normalised as the trainer does."""
    import torch
    import torch.nn.functional as F
    from pfl.metrics import Weighted

    from harness.engine.training import channels_last_pays
    from harness.models import build_model

    net = build_model(cfg.model.name, data.input_shape, data.num_classes, **cfg.model.options)
    channels_last = channels_last_pays(net, torch.device("cpu"), tuple(data.input_shape))
    shape = (1, -1, *([1] * (data.x.ndim - 2)))
    mean = torch.tensor(data.mean, dtype=torch.float32).view(shape)
    std = torch.tensor(data.std, dtype=torch.float32).view(shape)
    raw_uint8 = data.x.dtype == np.uint8

    class PflNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net.to(memory_format=torch.channels_last) if channels_last else net
            self.steps = 0  # training batches (pfl calls `loss` once per local SGD step, `metrics` to evaluate)

        def inputs(self, x):  # pfl hands float32 tensors of the stored arrays
            x = ((x / 255.0) if raw_uint8 else x) - mean
            x = x / std
            if channels_last:
                x = torch.empty(x.shape, memory_format=torch.channels_last).copy_(x)
            return x

        def loss(self, x, y):
            self.steps += 1
            return F.cross_entropy(self.net(self.inputs(x)), y.long())

        @torch.no_grad()
        def metrics(self, x, y):
            logits = self.net(self.inputs(x))
            y = y.long()
            n = len(y)
            return {"loss": Weighted(float(F.cross_entropy(logits, y, reduction="sum")), n),
                    "accuracy": Weighted(float((logits.argmax(1) == y).sum()), n)}

    return PflNet()


def main(spec_path: str) -> None:
    import torch

    torch.set_num_threads(1)
    from harness.config import validate
    from harness.engine.allocator import keep_freed_memory

    keep_freed_memory()
    spec = json.loads(Path(spec_path).read_text())
    cfg = validate(json.loads(Path(spec["cfg"]).read_text()))
    from partitions import build_federated_dataset
    from protocol.rng import rng

    data = build_federated_dataset(cfg.data, cfg.partition, cfg.seed)
    data.x = data.x.copy()  # the strides the harness's workers get (bench_throughput.same_layout_as_workers)

    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.aggregate.weighting import WeightByDatapoints
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.base import TrainingProcessCallback
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.internal.ops.selector import get_default_framework_module as get_ops
    from pfl.metrics import Metrics
    from pfl.model.pytorch import PyTorchModel

    rounds: list[list[int]] = spec["rounds"]
    seed = cfg.seed

    def train_user(uid):
        rnd, cid = uid
        index = data.split_of(cid, "train")
        # the harness's order of the first epoch; pfl repeats a user's order in later epochs (same work)
        order = index[rng(seed, "batches", rnd, cid).permutation(len(index))]
        return Dataset((data.x[order], data.y[order]), user_id=str(uid))

    def val_user(cid):
        index = data.split_of(cid, "test")
        return Dataset((data.x[index], data.y[index]), user_id=str(cid))

    train_ids = [(r, c) for r, cids in enumerate(rounds) for c in cids]
    sizes = data.sizes("train")
    train_data = FederatedDataset(train_user, ReplaySampler(train_ids),
                                  user_id_to_weight={u: int(sizes[u[1]]) for u in train_ids})
    val_ids = list(range(data.num_clients)) if spec["evaluate"] else [0]
    test_sizes = data.sizes("test")
    val_data = FederatedDataset(val_user, ReplaySampler(val_ids),
                                user_id_to_weight={c: int(test_sizes[c]) for c in val_ids})

    net = _wrapped_model(cfg, data)
    with torch.no_grad():  # the harness's initial weights
        init = torch.from_numpy(np.load(spec["init"]))
        offset = 0
        for p in net.net.parameters():
            p.copy_(init[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
    model = PyTorchModel(net, functools.partial(torch.optim.SGD, momentum=cfg.train.momentum),
                         torch.optim.SGD(net.parameters(), lr=1.0))
    rank0 = get_ops().distributed.global_rank == 0
    stamps: dict = {"ends": [], "eval_s": None}

    class Timed(TrainingProcessCallback):
        def on_train_begin(self, *, model):
            stamps["begin"] = time.perf_counter()
            return Metrics()

        def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
            stamps["ends"].append(time.perf_counter())
            return False, Metrics()

    class TimedBackend(SimulatedBackend):
        async def async_gather_results(self, model, training_algorithm, *, central_context):
            t = time.perf_counter()
            out = await super().async_gather_results(model, training_algorithm, central_context=central_context)
            if central_context.population.name == "VAL":
                stamps["eval_s"] = time.perf_counter() - t
            return out

    backend = TimedBackend(train_data, val_data, postprocessors=[WeightByDatapoints()])
    params = NNAlgorithmParams(central_num_iterations=len(rounds), evaluation_frequency=10**9,
                               train_cohort_size=len(rounds[0]),
                               val_cohort_size=len(val_ids) if spec["evaluate"] else None)
    train_params = NNTrainHyperParams(local_num_epochs=cfg.train.local_epochs, local_learning_rate=cfg.train.lr,
                                      local_batch_size=cfg.train.batch_size)
    FederatedAveraging().run(algorithm_params=params, backend=backend, model=model,
                             model_train_params=train_params,
                             model_eval_params=NNEvalHyperParams(local_batch_size=512), callbacks=[Timed()])
    steps = torch.tensor([float(net.steps)])
    get_ops().distributed.all_reduce([steps])  # a sum over the ranks (in place; a no-op with one rank)
    stamps["steps"] = int(steps.item())
    if rank0:
        Path(spec["out"]).write_text(json.dumps(stamps))


if __name__ == "__main__":
    main(sys.argv[1])
