"""The interface every algorithm implements.

An algorithm has two halves that never share Python state:

* server side (runs in the driver): `server_prepare` decides what a sampled client receives (a
  Dispatch: payload, state, and a server-side note), `aggregate` turns the round's uploads (and
  the round's notes) into the next global model, `round_metrics` reports on the round from them;
* client side (runs inside a Ray worker): `local_update` trains one virtual client through the
  trainer API (protocol.trainer.Trainer), `eval_vector` gives its personalized model.

Everything that must survive between rounds for one client (a personal head, FedALA's
weights, FedOBP's stored theta_k, Ditto's personal model) is a dict of numpy arrays that the
engine keeps in the client-state store and hands back the next time. Models are flat float32
vectors (see protocol.params). Adding an algorithm means writing one module with a subclass
and `@register` (in this package, or in a plugin module of your own); the engine does not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from protocol.messages import ClientJob, ClientUpdate, Dispatch, State
from protocol.trainer import Phase

if TYPE_CHECKING:
    from torch import nn

    from protocol.params import ParamSpec
    from protocol.specs import TrainSpec
    from protocol.trainer import PhaseStats, Trainer

__all__ = ["AlgoContext", "Algorithm", "ClientJob", "ClientUpdate", "Dispatch", "Notes", "Params", "Phase", "State"]

#: this round's server-side notes, by client id (what each `server_prepare` returned as Dispatch.note)
Notes = dict[int, dict]


class Params(BaseModel):
    """Hyperparameters of an algorithm; subclasses add fields with documented defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class AlgoContext:
    spec: ParamSpec
    train: TrainSpec
    num_clients: int
    num_classes: int
    seed: int


class Algorithm:
    name: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = Params
    #: Which defaults come from where (shown by `fedharness algorithms`).
    source: ClassVar[str] = ""
    #: False where the server's vector is not a usable model on its own (Local-only never
    #: averages; FedPer/FedRep never average the head, LG-FedAvg the body): its global_* metrics
    #: would measure an untrained part, so they are reported as NaN and not computed.
    has_global_model: ClassVar[bool] = True
    #: True for algorithms that split the model into a shared and a personal part (FedPer, FedRep, LG-FedAvg,
    #: FedBABU): a model whose split leaves either part empty is refused with a clear error
    needs_split: ClassVar[bool] = False
    #: True where `local_update` is exactly `run_phases` (plain SGD phases, optionally with a proximal term):
    #: the engine may then train a cohort of clients in one vectorised computation (train.batched). An
    #: algorithm whose local step is anything else (its own loss, hooks, frozen tensors, a custom loop) leaves
    #: it False and always trains one client at a time.
    batchable: ClassVar[bool] = False

    def __init__(self, params: Params, ctx: AlgoContext):
        self.params = params
        self.ctx = ctx
        self.spec = ctx.spec
        self.shared = self.shared_mask()
        if self.needs_split and (self.shared.all() or not self.shared.any()):
            empty = "personal" if self.shared.all() else "shared"
            raise ValueError(f"{self.name}: this model leaves the {empty} part empty (tensors: "
                             f"{', '.join(self.spec.names)}); {self.name} needs both, with the classifier's "
                             "tensors named head.* (harness.models.BodyHead)")

    # ----- model ------------------------------------------------------------------------
    def build_model(self, model: nn.Module) -> nn.Module:
        """Wrap or extend the base model (FedRoD adds a personal head). Default: unchanged."""
        return model

    def personal_is_global(self) -> bool:
        """True where every client's personalized model IS the global one (FedAvg, FedProx): evaluation then
        reads each test split once and reports the same numbers for both. Default: False (always safe)."""
        return False

    def shared_mask(self) -> np.ndarray:
        """Elements of the flat model that are communicated and averaged. Default: all."""
        return np.ones(self.spec.size, dtype=bool)

    # ----- server side ----------------------------------------------------------------------
    def server_prepare(self, cid: int, round: int, global_vec: np.ndarray, state: State) -> Dispatch:
        """What client `cid` receives in `round` (payload), the state that goes with its job, and a
        server-side note for this round's aggregate/round_metrics. Default: the global model."""
        return Dispatch({"model": global_vec}, state)

    def aggregate(self, global_vec: np.ndarray, updates: list[ClientUpdate], notes: Notes | None = None) -> np.ndarray:
        """Sample-weighted average of uploaded models over the shared elements (float64, cid order).
        `notes` holds this round's server_prepare notes by client id (None: there are none). The engine commits
        each kept update's `state` after aggregate returns, so a server-side step on personal parts (FLUTE's
        classifier step) may update those states here."""
        if not updates:
            return global_vec
        total = np.zeros(self.spec.size, dtype=np.float64)
        scaled = np.empty_like(total)  # one reused buffer: 2x faster than a temporary per client
        weight = 0.0
        for u in sorted(updates, key=lambda u: u.cid):
            np.multiply(u.upload["model"], u.num_samples, out=scaled, dtype=np.float64)
            total += scaled
            weight += u.num_samples
        new = global_vec.copy()
        new[self.shared] = (total / weight)[self.shared].astype(np.float32)
        return new

    def server_state(self) -> State:
        """What the server side keeps across rounds besides the global model (e.g. FedAvgM's momentum, a
        server optimizer's moments). The engine checkpoints it and hands it back to `load_server_state` on
        resume, so a resumed run stays bit-identical. Default: nothing."""
        return {}

    def load_server_state(self, state: State) -> None:
        """Restore what `server_state` returned (resume)."""

    def round_metrics(self, notes: Notes) -> dict[str, float]:
        """Server-side metrics of the round, from its notes (e.g. FedOBP's personalized counts); no side effects."""
        return {}

    def server_bytes(self) -> int:
        """Bytes one client's dispatch needs at once on the server beyond O(model) (APPLE: all N cores; pFedLA: an
        N-wide hypernetwork), for this run's clients and model. The engine refuses a run whose need exceeds the
        machine's available memory before it starts. Default 0."""
        return 0

    def bytes_down(self, payload: State) -> int:
        return 4 * int(self.shared.sum()) if "model" in payload else 0

    def bytes_up(self, update: ClientUpdate) -> int:
        return 4 * int(self.shared.sum()) if "model" in update.upload else 0

    # ----- client side (inside a worker) ----------------------------------------------------
    def local_update(self, job: ClientJob, trainer: Trainer) -> ClientUpdate:
        """Default: FedAvg's E epochs of SGD from the received model; upload the result (the trainer API,
        protocol.trainer, is all an algorithm may use of the worker)."""
        return self.run_phases(job, trainer)

    def local_phases(self, job: ClientJob) -> list[Phase]:
        """The client's local training as plain SGD phases (read by `run_phases` and, for a `batchable`
        algorithm, by the engine's batched training). Default: FedAvg's, one phase from the received model."""
        return [Phase(job.payload["model"])]

    def local_result(self, job: ClientJob, trained: list[np.ndarray], stats: list[PhaseStats],
                     trainer: Trainer) -> ClientUpdate:
        """The ClientUpdate from each phase's trained model and work (`trainer.update` reads the client's
        counters). Default: upload the trained model, keep the state as received."""
        return trainer.update(job, upload={"model": trained[-1]}, state=job.state)

    def run_phases(self, job: ClientJob, trainer: Trainer) -> ClientUpdate:
        """`local_phases` run one by one: each phase from its start model, then `local_result`."""
        trained, stats = [], []
        phases = self.local_phases(job)
        if phases and phases[0].start is None:
            raise RuntimeError(f"{self.name}: the first phase has no start model (Phase.start=None continues a phase)")
        for phase in phases:
            if phase.start is not None:
                trainer.set_vector(phase.start)
            extra = trainer.proximal(phase.anchor, phase.coef) if phase.coef > 0 else None
            names = None if phase.names is None else list(phase.names)
            stats.append(trainer.train(job, epochs=phase.epochs, names=names, extra_loss=extra, purpose=phase.purpose))
            trained.append(trainer.get_vector())
        return self.local_result(job, trained, stats, trainer)

    def eval_vector(self, job: ClientJob, trainer: Trainer) -> np.ndarray:
        """The client's personalized model, built from the current global model (job.payload['model'])
        and its stored state. Default: the global model."""
        return job.payload["model"]

    def evaluate_personal(self, job: ClientJob, trainer: Trainer, vec: np.ndarray,
                          split: str = "test") -> tuple[int, float, int]:
        """(correct, summed loss, count) of the client's personalized prediction with the model `vec` on one of its
        splits: every personalized evaluation (all clients; the sampled clients' before/after) goes through here.
        Default: the model's own forward (trainer.evaluate). An algorithm whose prediction is not one model's
        forward overrides it (kNN-Per interpolates with a memory of the client's training features)."""
        return trainer.evaluate(vec, job.cid, split)

    def received_vector(self, job: ClientJob, trainer: Trainer) -> np.ndarray:
        """The model a sampled client starts its local training from (the "before" of the sampled-client
        evaluation, FL-bench's evaluation between set_parameters and fit). Default: eval_vector."""
        return self.eval_vector(job, trainer)

    def trained_vector(self, job: ClientJob, update: ClientUpdate, trainer: Trainer) -> np.ndarray:
        """The client's personalized model right after its local training (the "after" of the sampled-client
        evaluation). Default: what eval_vector builds from the new state when the server's model is the
        client's own upload (FedAvg: the trained model; FedPer: trained body + new head; Ditto: new v)."""
        model = update.upload.get("model")
        payload = {"model": model} if model is not None else job.payload
        return self.eval_vector(ClientJob(job.cid, job.round, payload, update.state), trainer)

    # ----- helpers for subclasses -------------------------------------------------------------
    def start_vector(self, job: ClientJob) -> np.ndarray:
        """Received global values on shared elements, the client's stored personal part elsewhere."""
        return self.merge_personal(job.payload["model"], job.state.get("personal"))

    def personal_state(self, vec: np.ndarray) -> State:
        """What a partially shared algorithm keeps per client: only vec[~shared] (a few KB for a head)."""
        return {"personal": vec[~self.shared].copy()}

    def merge_personal(self, global_vec: np.ndarray, personal: np.ndarray | None) -> np.ndarray:
        """Global values on shared elements, the client's own values (state) elsewhere."""
        out = global_vec.copy()
        if personal is not None:
            out[~self.shared] = personal
        return out
