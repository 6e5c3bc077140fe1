"""What travels between the driver and the workers, per virtual client.

Models are flat float32 vectors (protocol.params); per-client state is a dict of numpy arrays that
the engine keeps in the client-state store between rounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

State = dict[str, np.ndarray]


@dataclass
class ClientJob:
    """One virtual client's work order for one round (or one evaluation)."""

    cid: int
    round: int
    payload: State
    state: State
    max_steps: int | None = None  # from the compute budget; None = the full local work
    cohort: int | None = None  # batched training: the round's cohort it trains in (None: one by one)


@dataclass
class ClientUpdate:
    cid: int
    num_samples: int  # local training-set size: the FedAvg weight
    upload: State
    state: State
    steps: int = 0
    samples_processed: int = 0
    loss: float = float("nan")
    finite: bool = True
    metrics: dict[str, float] = field(default_factory=dict)
    #: (correct before, correct after local training, test samples) on the client's test split, with
    #: `eval_sampled` on: FL-bench's accuracy_test_before/after of the sampled clients
    sampled_eval: tuple[int, int, int] | None = None


@dataclass
class ClientEval:
    cid: int
    n: int
    correct: int  # personalized model
    loss: float
    global_correct: float  # global model (NaN where the algorithm has none)
    global_loss: float
    ft_correct: float = float("nan")  # personalized model after eval_finetune_epochs of fine-tuning
    ft_loss: float = float("nan")
    val_n: int = 0  # the personalized model on the client's validation split (partition.val_fraction > 0)
    val_correct: float = float("nan")
    val_loss: float = float("nan")


@dataclass(frozen=True)
class Dispatch:
    """What the server's `prepare` decides for one sampled client: the payload it sends, the state that
    goes with the job, and a server-side note kept for this round's `aggregate` and `round_metrics`
    (e.g. FedOBP's mask) — passed to them explicitly, never left on the algorithm instance."""

    payload: State
    state: State
    note: dict = field(default_factory=dict)
