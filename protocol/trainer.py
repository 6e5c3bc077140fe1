"""The trainer API: everything an algorithm's client side may ask of the worker's trainer.

One trainer per worker holds the model, the client data (read-only) and the device; the engine
implements it (harness.engine.training.LocalTrainer). Algorithms program against this interface
only: they never set the trainer's counters or read its private state, so the trainer can enforce
the compute budget and count the work (steps, samples) that the virtual clock turns into time.

Building blocks, from the simplest:
- `train(job, ...)`: a phase of plain local SGD (which tensors, how many epochs, an extra loss term,
  another loss function, a hook before each optimizer step (e.g. SCAFFOLD's gradient correction) and one
  after it (e.g. a projection)); returns that phase's `PhaseStats`;
- `batches(job, epochs, cost=...)` / `batches_from(job, index)`: mini-batches for a custom loop,
  budget-aware and counted (`cost` = optimizer passes per batch, e.g. APFL's two);
- `record_loss(loss)` / `mark_nonfinite()`: report the loss of a custom step (a NaN/inf stops the client);
- vectors <-> model: `set_vector`, `get_vector`, `tensors_of(vec)` (tensors laid out like the model's);
- `proximal(anchor, coef)`: the (coef/2)||w - anchor||^2 term of FedProx / Ditto as an `extra_loss`;
- `update(job, upload, state, loss=..., **metrics)`: the ClientUpdate the engine expects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from protocol.messages import ClientJob, ClientUpdate, State

if TYPE_CHECKING:
    import torch
    from torch import nn

    from protocol.specs import TrainSpec

ExtraLoss = Callable[["nn.Module"], "torch.Tensor"]
StepHook = Callable[["nn.Module"], None]


@dataclass(frozen=True)
class Phase:
    """One phase of plain local SGD, declared rather than run: what `Algorithm.local_phases` returns for an
    algorithm whose local objective vectorises, so the engine can train many clients' phases at once.
    Running it one by one is `set_vector(start)` (unless start is None), then `train(job, epochs, names,
    extra_loss=proximal(anchor, coef) if coef > 0, purpose=purpose)`."""

    start: np.ndarray | None  # the flat model the phase starts from; None: the previous phase's trained model
    epochs: int | None = None  # None: train.local_epochs
    purpose: str = "batches"  # the data order's random stream
    anchor: np.ndarray | None = None  # proximal term (coef/2)||w - anchor||^2 when coef > 0 (FedProx, Ditto)
    coef: float = 0.0
    names: tuple[str, ...] | None = None  # the tensors this phase trains, the others frozen (None: all; FedRep)


@dataclass(frozen=True)
class PhaseStats:
    """The work and mean loss of one training phase (one `train` call)."""

    steps: int = 0
    samples: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.loss_count if self.loss_count else float("nan")


class Trainer(Protocol):
    """What an algorithm may use on a worker (read-only attributes and methods)."""

    model: nn.Module
    device: torch.device
    seed: int
    train_spec: TrainSpec

    # ----- the work done so far for the current client (read-only) ------------------------------
    @property
    def steps(self) -> int: ...
    @property
    def samples(self) -> int: ...
    @property
    def max_steps(self) -> int | None: ...
    @property
    def budget_left(self) -> bool: ...

    # ----- data ------------------------------------------------------------------------------------
    def split_of(self, cid: int, split: str = "train") -> np.ndarray: ...
    def labels(self, cid: int, split: str = "train") -> np.ndarray: ...

    # ----- model <-> vectors -------------------------------------------------------------------------
    def set_vector(self, vec: np.ndarray) -> None: ...
    def get_vector(self) -> np.ndarray: ...
    def tensors_of(self, vec: np.ndarray) -> dict[str, torch.Tensor]: ...
    def parameters(self, names: list[str] | None = None) -> list[nn.Parameter]: ...
    def optimizer(self, params) -> torch.optim.Optimizer: ...

    # ----- training ---------------------------------------------------------------------------------
    def train(self, job: ClientJob, epochs: int | None = None, names: list[str] | None = None,
              extra_loss: ExtraLoss | None = None, loss_fn=None, purpose: str = "batches",
              after_step: StepHook | None = None, before_step: StepHook | None = None) -> PhaseStats: ...
    def batches(self, job: ClientJob, epochs: int, purpose: str = "batches", split: str = "train",
                cost: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def batches_from(self, job: ClientJob, index: np.ndarray,
                     cost: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def record_loss(self, loss: torch.Tensor) -> bool: ...
    def mark_nonfinite(self) -> None: ...
    def proximal(self, anchor: np.ndarray, coef: float) -> ExtraLoss: ...

    # ----- results ----------------------------------------------------------------------------------
    def evaluate(self, vec: np.ndarray | None, cid: int, split: str = "test") -> tuple[int, float, int]: ...
    def update(self, job: ClientJob, upload: State, state: State, loss: float | None = None,
               **metrics: float) -> ClientUpdate: ...
