"""Local training and evaluation of one virtual client inside a worker: the trainer API
(protocol.trainer.Trainer) that algorithms program against.

One LocalTrainer per worker holds the model, the (shared, read-only) data arrays and the
device. Algorithms drive it: `train` for plain SGD phases, `batches` / `batches_from` for custom
loops. The trainer alone enforces the compute budget of the job (`max_steps`) and counts the work
done (steps, samples processed), which the virtual clock turns into simulated time: algorithms
read the counters, never set them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from partitions.federated import FederatedDataset
from protocol.messages import ClientJob, ClientUpdate, State
from protocol.params import ParamSpec, model_to_vector, vector_to_model
from protocol.rng import rng
from protocol.specs import TrainSpec
from protocol.trainer import ExtraLoss, PhaseStats, StepHook

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
        self.train_spec = train
        self.device = device
        self.seed = seed
        # BatchNorm cannot normalise a batch of one sample in training mode: such a trailing batch is skipped
        self.skips_single_batches = bool(spec.batchnorm_names)
        shape = (1, -1, *([1] * (len(data.input_shape) - 1)))  # per channel, broadcast over pixels
        self._mean = torch.as_tensor(data.mean, dtype=torch.float32, device=device).view(shape)
        self._std = torch.as_tensor(data.std, dtype=torch.float32, device=device).view_as(self._mean)
        self.start(ClientJob(cid=-1, round=-1, payload={}, state={}))

    # ----- bookkeeping of one client's work ------------------------------------------------
    def start(self, job: ClientJob) -> None:
        """A new client: counters at zero, its step budget armed (called by the worker, not algorithms)."""
        self._steps = 0
        self._samples = 0
        self._loss_sum = 0.0
        self._loss_count = 0
        self._finite = True
        self._max_steps = job.max_steps

    def update(self, job: ClientJob, upload: State, state: State, loss: float | None = None,
               **metrics: float) -> ClientUpdate:
        """The client's ClientUpdate; `loss` overrides the mean of every recorded loss (e.g. Ditto reports
        only its global model's)."""
        if loss is None:
            loss = self._loss_sum / self._loss_count if self._loss_count else float("nan")
        finite = self._finite and all(np.isfinite(a).all() for a in upload.values() if a.dtype.kind == "f")
        return ClientUpdate(
            cid=job.cid, num_samples=len(self.data.train_of(job.cid)), upload=upload, state=state,
            steps=self._steps, samples_processed=self._samples, loss=loss, finite=finite, metrics=dict(metrics),
        )

    def credit(self, steps: int, samples: int, loss_sum: float, loss_count: int, finite: bool) -> None:
        """The engine's batched training (harness.engine.batched) books a client's work done elsewhere."""
        self._steps, self._samples, self._loss_sum, self._loss_count = steps, samples, loss_sum, loss_count
        self._finite = self._finite and finite

    @property
    def steps(self) -> int:
        return self._steps

    @property
    def samples(self) -> int:
        return self._samples

    @property
    def max_steps(self) -> int | None:
        return self._max_steps

    @property
    def finite(self) -> bool:
        return self._finite

    @property
    def budget_left(self) -> bool:
        return self._max_steps is None or self._steps < self._max_steps

    def _affords(self, cost: int) -> bool:
        return self._max_steps is None or self._steps + cost <= self._max_steps

    # ----- model <-> vector -------------------------------------------------------------------
    def set_vector(self, vec: np.ndarray) -> None:
        vector_to_model(vec, self.model, self.spec)

    def get_vector(self) -> np.ndarray:
        return model_to_vector(self.model, self.spec)

    def tensors_of(self, vec: np.ndarray) -> dict[str, torch.Tensor]:
        """Each tensor of `vec` on the device, shaped and laid out (memory format) like the model's own, so
        that arithmetic between the two runs the same kernels as between two model tensors."""
        state = self.model.state_dict()
        out = {}
        for s in self.spec.slots:
            like = state[s.name]
            src = torch.from_numpy(np.ascontiguousarray(vec[s.start : s.stop])).view(s.shape)
            out[s.name] = torch.empty_like(like).copy_(src)
        return out

    def proximal(self, anchor: np.ndarray, coef: float) -> ExtraLoss:
        """(coef/2) * ||w - anchor||^2 over the model's parameters, as an `extra_loss` (FedProx's mu, Ditto's
        lambda); `anchor` is a flat model vector (e.g. the received global model)."""
        fixed = self.tensors_of(anchor)
        anchors = [fixed[name] for name, _ in self.model.named_parameters()]

        def term(model: nn.Module) -> torch.Tensor:
            return 0.5 * coef * sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchors, strict=True))

        return term

    # ----- data -----------------------------------------------------------------------------
    def split_of(self, cid: int, split: str = "train") -> np.ndarray:
        return self.data.split_of(cid, split)

    def labels(self, cid: int, split: str = "train") -> np.ndarray:
        return self.data.y[self.data.split_of(cid, split)]

    def tensors(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(self.data.x[index]).to(self.device)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        x = (x - self._mean) / self._std
        if self.channels_last:  # copied into NHWC strides: with one channel, .contiguous() would keep any strides
            x = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last).copy_(x)
        return x, torch.from_numpy(self.data.y[index]).to(self.device)

    def batches(self, job: ClientJob, epochs: int, purpose: str = "batches", split: str = "train",
                cost: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled mini-batches of the client's data for `epochs` epochs, deterministic in
        (seed, purpose, round, client). A batch counts `cost` steps and cost x its samples (APFL's two
        passes: 2); none starts that the job's step budget cannot afford."""
        index = self.data.split_of(job.cid, split)
        if len(index) == 0:
            return
        gen = rng(self.seed, purpose, job.round, job.cid)
        for _ in range(epochs):
            order = index[gen.permutation(len(index))]
            if not (yield from self._counted(order, cost)):
                return

    def batches_from(self, job: ClientJob, index: np.ndarray, cost: int = 1) -> Iterator[tuple[torch.Tensor,
                                                                                                torch.Tensor]]:
        """Mini-batches of `index` in the given order (one pass), budget-aware and counted like `batches`."""
        yield from self._counted(np.asarray(index), cost)

    def _counted(self, order: np.ndarray, cost: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of `order`; a batch is counted once the consumer asks for the next one. Returns False when
        the budget stopped it."""
        bs = self.train_spec.batch_size
        for start in range(0, len(order), bs):
            if not self._affords(cost):
                return False
            batch = order[start : start + bs]
            if len(batch) == 1 and self.skips_single_batches:
                continue  # BatchNorm (training mode) needs two samples; PyTorch users drop_last for the same reason
            yield self.tensors(batch)
            self._steps += cost
            self._samples += cost * len(batch)
        return True

    def optimizer(self, params) -> torch.optim.Optimizer:
        params = list(params)
        t = self.train_spec
        if t.optimizer == "adam":
            return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)

    def parameters(self, names: list[str] | None = None) -> list[nn.Parameter]:
        """Model parameters by name (all when names is None); the others get requires_grad=False."""
        chosen = []
        for name, p in self.model.named_parameters():
            p.requires_grad_(names is None or name in names)
            if p.requires_grad:
                chosen.append(p)
        return chosen

    def record_loss(self, loss: torch.Tensor) -> bool:
        """Count a step's loss into the client's mean; False (and the client marked non-finite) on NaN/inf."""
        value = float(loss.detach())
        if not math.isfinite(value):
            self._finite = False
            return False
        self._loss_sum += value
        self._loss_count += 1
        return True

    def mark_nonfinite(self) -> None:
        """A custom loop met a NaN/inf it does not record as the client's loss: the update is dropped/failed."""
        self._finite = False

    def train(self, job: ClientJob, epochs: int | None = None, names: list[str] | None = None,
              extra_loss: ExtraLoss | None = None,
              loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
              purpose: str = "batches", after_step: StepHook | None = None,
              before_step: StepHook | None = None) -> PhaseStats:
        """One phase of plain local SGD on the client's training split (stops on NaN/inf loss): `names`
        selects the trained tensors (others frozen), `extra_loss(model)` is added to the loss,
        `before_step(model)` runs between backward and the optimizer step (gradients in place: e.g. SCAFFOLD's
        correction), `after_step(model)` after it (e.g. a projection). Returns the phase's work."""
        loss_fn = F.cross_entropy if loss_fn is None else loss_fn
        steps0, samples0, sum0, count0 = self._steps, self._samples, self._loss_sum, self._loss_count
        self.model.train()
        opt = self.optimizer(self.parameters(names))
        for x, y in self.batches(job, self.train_spec.local_epochs if epochs is None else epochs, purpose):
            loss = loss_fn(self.model(x), y)
            if extra_loss is not None:
                loss = loss + extra_loss(self.model)
            if not self.record_loss(loss):
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if before_step is not None:
                before_step(self.model)
            opt.step()
            if after_step is not None:
                after_step(self.model)
        self.parameters(None)  # leave everything trainable for the next user
        return PhaseStats(self._steps - steps0, self._samples - samples0, self._loss_sum - sum0,
                          self._loss_count - count0)

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
