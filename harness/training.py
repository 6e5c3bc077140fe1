"""Local training and evaluation of one virtual client inside a worker.

One LocalTrainer per worker holds the model, the (shared, read-only) data arrays and the
device. Algorithms drive it: `train` for plain SGD epochs, `batches` for custom loops.
The trainer also enforces the compute budget of the job (`max_steps`) and counts the work
done (steps, samples processed), which the virtual clock turns into simulated time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from algorithms.base import ClientJob, ClientUpdate, State
from harness.config import TrainSpec
from harness.params import ParamSpec, model_to_vector, vector_to_model
from harness.rng import rng
from partitions.federated import FederatedDataset

EVAL_BATCH = 512


class BudgetExhausted(Exception):
    pass


def channels_last_pays(model: nn.Module, device: torch.device, input_shape: tuple[int, ...]) -> bool:
    """Conv models on images, on the CPU: with PyTorch's channels-last conv and max-pool kernels an
    MNIST avgcnn client trained 1.16x faster, a 3x32x32 step ~1.3x, on one thread (docs/scale.md, hot spot 3).
    On CUDA the layout is left to the default (cuDNN picks its own)."""
    return device.type == "cpu" and len(input_shape) == 3 and any(isinstance(m, nn.Conv2d) for m in model.modules())


class LocalTrainer:
    def __init__(self, model: nn.Module, spec: ParamSpec, data: FederatedDataset, train: TrainSpec,
                 device: torch.device, seed: int):
        # one explicit layout for weights and batches, whatever strides the data array arrived with:
        # every executor then runs the same kernels and computes the same floats
        self.channels_last = channels_last_pays(model, device, tuple(data.input_shape))
        self.model = model.to(device, memory_format=torch.channels_last) if self.channels_last else model.to(device)
        self.spec = spec
        self.data = data
        self.cfg = train
        self.device = device
        self.seed = seed
        shape = (1, -1, *([1] * (len(data.input_shape) - 1)))  # per channel, broadcast over pixels
        self._mean = torch.as_tensor(data.mean, dtype=torch.float32, device=device).view(shape)
        self._std = torch.as_tensor(data.std, dtype=torch.float32, device=device).view_as(self._mean)
        self.start(ClientJob(cid=-1, round=-1, payload={}, state={}))

    # ----- bookkeeping of one client's work ------------------------------------------------
    def start(self, job: ClientJob) -> None:
        self.steps = 0
        self.samples = 0
        self.loss_sum = 0.0
        self.loss_count = 0
        self.finite = True
        self.max_steps = job.max_steps

    def update(self, job: ClientJob, upload: State, state: State, **metrics: float) -> ClientUpdate:
        loss = self.loss_sum / self.loss_count if self.loss_count else float("nan")
        finite = self.finite and all(np.isfinite(a).all() for a in upload.values() if a.dtype.kind == "f")
        return ClientUpdate(
            cid=job.cid, num_samples=len(self.data.train_of(job.cid)), upload=upload, state=state,
            steps=self.steps, samples_processed=self.samples, loss=loss, finite=finite, metrics=dict(metrics),
        )

    @property
    def budget_left(self) -> bool:
        return self.max_steps is None or self.steps < self.max_steps

    # ----- model <-> vector -------------------------------------------------------------------
    def set_vector(self, vec: np.ndarray) -> None:
        vector_to_model(vec, self.model, self.spec)

    def get_vector(self) -> np.ndarray:
        return model_to_vector(self.model, self.spec)

    # ----- data -----------------------------------------------------------------------------
    def tensors(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(self.data.x[index]).to(self.device)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        x = (x - self._mean) / self._std
        if self.channels_last:  # copied into NHWC strides: with one channel, .contiguous() would keep any strides
            x = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last).copy_(x)
        return x, torch.from_numpy(self.data.y[index]).to(self.device)

    def batches(self, job: ClientJob, epochs: int, purpose: str = "batches",
                split: str = "train") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled mini-batches of the client's data for `epochs` epochs, deterministic in
        (seed, purpose, round, client). Stops early when the job's step budget is spent."""
        index = self.data.split_of(job.cid, split)
        if len(index) == 0:
            return
        gen = rng(self.seed, purpose, job.round, job.cid)
        bs = self.cfg.batch_size
        for _ in range(epochs):
            order = index[gen.permutation(len(index))]
            for start in range(0, len(order), bs):
                if not self.budget_left:
                    return
                batch = order[start : start + bs]
                yield self.tensors(batch)
                self.steps += 1
                self.samples += len(batch)

    def optimizer(self, params) -> torch.optim.Optimizer:
        params = list(params)
        if self.cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        return torch.optim.SGD(params, lr=self.cfg.lr, momentum=self.cfg.momentum, weight_decay=self.cfg.weight_decay)

    def parameters(self, names: list[str] | None = None) -> list[nn.Parameter]:
        """Model parameters by name (all when names is None); the others get requires_grad=False."""
        chosen = []
        for name, p in self.model.named_parameters():
            p.requires_grad_(names is None or name in names)
            if p.requires_grad:
                chosen.append(p)
        return chosen

    def record_loss(self, loss: torch.Tensor) -> bool:
        value = float(loss.detach())
        if not math.isfinite(value):
            self.finite = False
            return False
        self.loss_sum += value
        self.loss_count += 1
        return True

    def train(self, job: ClientJob, epochs: int | None = None, names: list[str] | None = None,
              extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
              loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
              purpose: str = "batches") -> None:
        """Plain local SGD on the client's training split (stops on NaN/inf loss)."""
        self.model.train()
        opt = self.optimizer(self.parameters(names))
        for x, y in self.batches(job, self.cfg.local_epochs if epochs is None else epochs, purpose):
            loss = loss_fn(self.model(x), y)
            if extra_loss is not None:
                loss = loss + extra_loss(self.model)
            if not self.record_loss(loss):
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        self.parameters(None)  # leave everything trainable for the next user

    @torch.no_grad()
    def evaluate(self, vec: np.ndarray | None, cid: int, split: str = "test") -> tuple[int, float, int]:
        """(correct, summed loss, count) of the model `vec` (or the loaded one) on a split."""
        if vec is not None:
            self.set_vector(vec)
        self.model.eval()
        index = self.data.split_of(cid, split)
        correct, loss = 0, 0.0
        for start in range(0, len(index), EVAL_BATCH):
            x, y = self.tensors(index[start : start + EVAL_BATCH])
            logits = self.model(x)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
        return correct, loss, len(index)
