"""FedFomo (Zhang, Sapra, Fidler, Yeung & Alvarez, ICLR 2021, "Personalized Federated Learning with First Order Model
Optimization", arXiv:2012.08565): each client federates only with the clients whose models help it.

Every client i owns a personalized model theta_i. When sampled in round t it downloads the models theta_n of M other
clients and weighs each by the first-order gain it brings on the client's own validation split:
    w_n = (L_i(theta_i) - L_i(theta_n)) / ||theta_n - theta_i||      (L_i: mean cross-entropy on the val split)
    theta_i <- theta_i + sum_n max(w_n, 0) (theta_n - theta_i) / sum_n max(w_n, 0)
(no update when every weight is <= 0: the client keeps its own model), then trains locally (the run's SGD) and
uploads the trained theta_i. The server keeps an affinity matrix P and adds each client's weights to its row,
P_in <- P_in + w_n (signed: a harmful model is marked down), and picks the M models a client downloads by an
epsilon-greedy scheme: each of the M slots is, with probability eps_t = max(0, epsilon - t * epsilon_decay)
(t = the 0-based round), a random not yet chosen candidate, otherwise the not yet chosen candidate with the highest
P_in (ties broken at random). Candidates are the models uploaded in the last round with uploads (the authors' code
and FL-bench alike: the clients that uploaded at t-1), the client itself excluded; with M or fewer candidates all
are downloaded. Round 0 has no candidates: every sampled client trains from the common initialisation.
||.|| is the L2 norm over the trainable parameters (float64); the combination covers every element (buffers too).

What is personal, what is shared: theta_i is personal (client state "model"); nothing is averaged, so FedFomo has
no global model (has_global_model False; the global vector stays the initial model, with which a never-trained
client is evaluated and from which it starts). Down: the M peer models (+ the initial model for a client without
one); up: the trained model and the M weights.

Where the models and P live, and their memory:
- peer models: server state, the last round's kept uploads (ids + a K x d float32 matrix, K = clients kept per
  round, checkpointed through server_state): K*d*4 bytes, independent of the number of clients N (100 kept clients
  of the 878,538-parameter avgcnn: 351 MB; of a 3,466-parameter digits MLP: 1.4 MB);
- theta_i: the client-state store (d float32 per client that has trained: N*d*4 bytes in all, as Local-only and
  FedAMP; 10,000 avgcnn clients: 35 GB, which the disk store keeps on disk, off the driver's memory);
- P: row i in client i's store entry ("affinity_ids" int64 + "affinity" float64), sparse: only the peers i has
  evaluated (at most M per participation), so 10,000 clients never need a dense N x N matrix (800 MB in float64).
  Only the server side reads (server_prepare) and writes (aggregate) it; the client passes it through unchanged.

The validation split: the partition's "val" split when the client has one (partition.val_fraction > 0), and then
local training uses the whole training split (trainer.train); otherwise a fixed held-out share `val_fraction` of
the client's training split (floor(val_fraction * n), at least one example left to train on, drawn once from
rng(seed, "fedfomo-val", client)), which local training then never sees (epochs over the rest, shuffled from
rng(seed, "fedfomo-batches", round, client)). The validation forward passes use trainer.batches_from with cost 0:
not counted on the virtual clock or against a step budget (as IFCA's loss estimation).

Checked against the paper (the weight, the update, positive weights only, the affinity matrix and the epsilon-greedy
download) and two implementations: the authors' code (NVlabs/FedFomo: federated/configs.py CLIENT_WEIGHT.EPSILON
0.3, EPSILON_DECAY 0.05 subtracted per round in client.get_federating_clients, README runs "5 models" =
--num_update_clients 4 + the client's own, --train_split 0.8, i.e. 20% of the local data for validation) and
FL-bench (src/server/fedfomo.py --M 5 --valset_ratio 0.2, src/client/fedfomo.py). Defaults: M 5 (FL-bench; the
paper's "5 models" setting), epsilon 0.3 and decay 0.05 (authors' code), val_fraction 0.2 (FL-bench, authors' README).
Differences, the module follows the paper:
- authors' code: the client's own model is one of the "M" models, compared against the model it had before its last
  local training (baseline first_model); the distance defaults to an L1 norm (--model_delta_norm l1); P is
  updated with the weights divided by |sum of the weights|. Here: M other clients, the baseline is theta_i (the
  client's current model), an L2 norm, P_in += w_n as in the paper;
- FL-bench: no exploration (always the top M of P among the last round's clients), 1e-5 added to the norm, and a
  new random validation split drawn every round (the client then trains on data it validated on before). Here:
  epsilon-greedy, w_n = 0 for a peer identical to theta_i (0/0), a validation split fixed per client;
- a non-finite weight (a peer whose validation loss overflows) counts as 0;
- with partial participation the candidates are the last round's uploads (as both implementations), so a client
  sampled after a round in which its favourite peers did not take part cannot download them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Dispatch, Notes, Params, State
from algorithms.registry import register
from protocol.rng import rng

AUTHORS = "NVlabs/FedFomo federated/configs.py"
FLBENCH = "FL-bench src/server/fedfomo.py"


# ----- the mechanism as pure functions (tested directly) ------------------------------------------------------------
def fomo_weights(own_loss: float, peer_losses: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """w_n = (L_i(theta_i) - L_i(theta_n)) / ||theta_n - theta_i||; 0 for a peer at distance 0 or a non-finite w."""
    gain = own_loss - np.asarray(peer_losses, dtype=np.float64)
    dist = np.asarray(distances, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(dist > 0, gain / np.where(dist > 0, dist, 1.0), 0.0)
    return np.where(np.isfinite(w), w, 0.0)


def fomo_update(own: np.ndarray, peers: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, bool]:
    """theta_i + sum_n max(w_n,0)(theta_n - theta_i) / sum_n max(w_n,0) (float64, rows in order; float32 out);
    (theta_i, False) when no weight is positive."""
    pos = np.maximum(np.asarray(weights, dtype=np.float64), 0.0)
    total = float(pos.sum())
    if not total > 0:
        return own, False
    base = own.astype(np.float64)
    step = np.zeros_like(base)
    for row, w in zip(peers, pos, strict=True):
        if w > 0:
            step += w * (row.astype(np.float64) - base)
    return (base + step / total).astype(np.float32), True


def epsilon_at(epsilon: float, decay: float, round: int) -> float:
    """eps_t = max(0, epsilon - t * decay), t the 0-based round (authors' code: linear decay per round)."""
    return max(0.0, epsilon - round * decay)


def egreedy_select(candidates: np.ndarray, scores: np.ndarray, m: int, eps: float,
                   gen: np.random.Generator) -> tuple[np.ndarray, int]:
    """(chosen ids sorted, how many were exploration picks). Each of the m slots: with probability eps the next
    unused candidate of a random order, otherwise the unused candidate of highest score (random tie-break).
    All candidates when there are m or fewer."""
    candidates = np.asarray(candidates, dtype=np.int64)
    if len(candidates) <= m:
        return np.sort(candidates), 0
    greedy = list(np.lexsort((gen.random(len(candidates)), -np.asarray(scores, dtype=np.float64))))
    random_order = list(gen.permutation(len(candidates)))
    chosen: list[int] = []
    explored = 0
    for _ in range(m):
        explore = gen.random() < eps
        source = random_order if explore else greedy
        pick = source.pop(0)
        while pick in chosen:
            pick = source.pop(0)
        chosen.append(int(pick))
        explored += int(explore)
    return np.sort(candidates[chosen]), explored


def add_to_row(ids: np.ndarray, values: np.ndarray, new_ids: np.ndarray, new_values: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """A sparse affinity row (sorted ids, values) with new_values added at new_ids (new ids start at 0)."""
    row = dict(zip(np.asarray(ids, dtype=np.int64).tolist(), np.asarray(values, dtype=np.float64).tolist(),
                   strict=True))
    for j, w in zip(np.asarray(new_ids, dtype=np.int64).tolist(), np.asarray(new_values, np.float64).tolist(),
                    strict=True):
        row[j] = row.get(j, 0.0) + w
    keys = sorted(row)
    return np.array(keys, dtype=np.int64), np.array([row[k] for k in keys], dtype=np.float64)


class FedFomoParams(Params):
    M: int = Field(5, ge=0, description="models of other clients each sampled client downloads (FL-bench --M 5; the "
                                        "paper's '5 models' run; 0 = Local-only)")
    epsilon: float = Field(0.3, ge=0, le=1, description="initial exploration probability of the epsilon-greedy "
                                                        "download (authors' code: 0.3)")
    epsilon_decay: float = Field(0.05, ge=0, description="subtracted from epsilon per round, eps_t = max(0, epsilon - "
                                                         "t*decay) (authors' code: 0.05)")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of the training split held out for validation "
                                                             "when the partition has no val split (FL-bench "
                                                             "valset_ratio 0.2; authors' README train_split 0.8)")


@register
class FedFomo(Algorithm):
    """FedFomo: each client adds the downloaded models that lower its validation loss, weighted by gain per distance."""

    name = "fedfomo"
    Params = FedFomoParams
    has_global_model = False
    source = ("Zhang et al. 2021 (w_n = loss gain / L2 distance, positive weights only, affinity P += w, "
              "epsilon-greedy download); epsilon 0.3, decay 0.05 per round (" + AUTHORS + "); M 5, val 20% (" +
              FLBENCH + ")")

    def __init__(self, params: FedFomoParams, ctx):
        super().__init__(params, ctx)
        self.trainable = self.spec.mask(s.name for s in self.spec.slots if s.trainable)
        self.pool_ids = np.zeros(0, dtype=np.int64)  # the last round's uploads (server state)
        self.pool_models = np.zeros((0, self.spec.size), dtype=np.float32)

    # ----- server side ----------------------------------------------------------------------------------------------
    def server_prepare(self, cid: int, round: int, global_vec: np.ndarray, state: State) -> Dispatch:
        """The M peer models picked epsilon-greedily over the client's affinity row, among the last round's uploads."""
        p = self.params
        others = self.pool_ids != cid
        candidates = self.pool_ids[others]
        row = dict(zip(state.get("affinity_ids", np.zeros(0, np.int64)).tolist(),
                       state.get("affinity", np.zeros(0)).tolist(), strict=True))
        scores = np.array([row.get(int(j), 0.0) for j in candidates], dtype=np.float64)
        eps = epsilon_at(p.epsilon, p.epsilon_decay, round)
        chosen, explored = egreedy_select(candidates, scores, p.M, eps, rng(self.ctx.seed, "fedfomo-pick", round, cid))
        position = {int(j): k for k, j in enumerate(self.pool_ids.tolist())}
        payload = {"peer_ids": chosen, "peers": self.pool_models[[position[int(j)] for j in chosen]]}
        if "model" not in state:  # a client without a model of its own starts from the common initialisation
            payload["model"] = global_vec
        note = {"peers": float(len(chosen)), "explored": float(explored), "epsilon": eps}
        return Dispatch(payload, state, note)

    def aggregate(self, global_vec: np.ndarray, updates: list[ClientUpdate], notes: Notes | None = None) -> np.ndarray:
        """No global model: P_in += w_n in each uploader's row (its state), the uploads become the candidate pool."""
        if not updates:
            return global_vec
        ordered = sorted(updates, key=lambda u: u.cid)
        for u in ordered:
            ids, values = add_to_row(u.state.get("affinity_ids", np.zeros(0, np.int64)),
                                     u.state.get("affinity", np.zeros(0)), u.upload["peer_ids"], u.upload["weights"])
            u.state = {**u.state, "affinity_ids": ids, "affinity": values}  # committed with the round
        self.pool_ids = np.array([u.cid for u in ordered], dtype=np.int64)
        self.pool_models = np.stack([u.upload["model"] for u in ordered]).astype(np.float32)
        return global_vec

    def server_state(self) -> State:
        return {"pool_ids": self.pool_ids.copy(), "pool_models": self.pool_models.copy()} if len(self.pool_ids) else {}

    def load_server_state(self, state: State) -> None:
        self.pool_ids = np.asarray(state.get("pool_ids", np.zeros(0)), dtype=np.int64).copy()
        models = state.get("pool_models")
        self.pool_models = (np.asarray(models, dtype=np.float32).copy() if models is not None
                            else np.zeros((0, self.spec.size), dtype=np.float32))

    def round_metrics(self, notes: Notes) -> dict[str, float]:
        if not notes:
            return {}
        cids = sorted(notes)
        return {"fedfomo_peers_mean": float(np.mean([notes[c]["peers"] for c in cids])),
                "fedfomo_explored_mean": float(np.mean([notes[c]["explored"] for c in cids])),
                "fedfomo_epsilon": float(notes[cids[0]]["epsilon"])}

    def bytes_down(self, payload: State) -> int:
        return 4 * self.spec.size * (len(payload["peer_ids"]) + int("model" in payload))

    def bytes_up(self, update: ClientUpdate) -> int:
        return 4 * self.spec.size + 8 * len(update.upload["weights"])  # the model + (id, weight) per peer

    # ----- client side ----------------------------------------------------------------------------------------------
    def splits(self, cid: int, trainer) -> tuple[np.ndarray | None, np.ndarray]:
        """(training index, or None for the whole training split; validation index)."""
        val = trainer.split_of(cid, "val")
        if len(val):
            return None, val
        train = trainer.split_of(cid, "train")
        n_val = min(int(self.params.val_fraction * len(train)), max(len(train) - 1, 0))
        held = np.zeros(len(train), dtype=bool)
        held[rng(trainer.seed, "fedfomo-val", cid).permutation(len(train))[:n_val]] = True
        return train[~held], train[held]

    def val_loss(self, job: ClientJob, trainer, vec: np.ndarray, index: np.ndarray) -> float:
        """Mean cross-entropy of `vec` on `index` (eval mode, not counted: cost 0)."""
        trainer.set_vector(vec)
        trainer.model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for x, y in trainer.batches_from(job, index, cost=0):
                total += float(F.cross_entropy(trainer.model(x), y, reduction="sum"))
                count += len(y)
        return total / count if count else float("nan")

    def fomo_start(self, job: ClientJob, trainer) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        """(the model local training starts from, the weights w_n of the downloaded peers, metrics)."""
        own = job.state["model"] if "model" in job.state else job.payload["model"]
        peers = job.payload["peers"]
        if len(peers) == 0:
            return own, np.zeros(0), {}
        _, val = self.splits(job.cid, trainer)
        if len(val) == 0:  # nothing to validate on: every weight is 0, no update
            return own, np.zeros(len(peers)), {"fomo_updated": 0.0, "fomo_positive": 0.0}
        own_loss = self.val_loss(job, trainer, own, val)
        losses = np.array([self.val_loss(job, trainer, row, val) for row in peers])
        mine = own[self.trainable].astype(np.float64)
        dist = np.array([np.linalg.norm(row[self.trainable].astype(np.float64) - mine) for row in peers])
        weights = fomo_weights(own_loss, losses, dist)
        start, updated = fomo_update(own, peers, weights)
        return start, weights, {"fomo_updated": float(updated), "fomo_positive": float((weights > 0).sum())}

    def train_on(self, job: ClientJob, trainer, index: np.ndarray) -> None:
        """The run's local SGD (train.local_epochs epochs) over `index` only, budget-aware."""
        model = trainer.model
        model.train()
        opt = trainer.optimizer(trainer.parameters(None))
        gen = rng(trainer.seed, "fedfomo-batches", job.round, job.cid)
        for _ in range(trainer.train_spec.local_epochs):
            for x, y in trainer.batches_from(job, index[gen.permutation(len(index))]):
                loss = F.cross_entropy(model(x), y)
                if not trainer.record_loss(loss):
                    return
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if not trainer.budget_left:
                return

    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        start, weights, metrics = self.fomo_start(job, trainer)
        trainer.set_vector(start)
        train_index, _ = self.splits(job.cid, trainer)
        if train_index is None:
            trainer.train(job)
        else:
            self.train_on(job, trainer, train_index)
        vec = trainer.get_vector()
        state = {"model": vec}
        for key in ("affinity_ids", "affinity"):  # the server's row, passed through (aggregate adds the weights)
            if key in job.state:
                state[key] = job.state[key]
        upload = {"model": vec, "peer_ids": job.payload["peer_ids"], "weights": weights}
        return trainer.update(job, upload=upload, state=state, **metrics)

    def received_vector(self, job: ClientJob, trainer) -> np.ndarray:
        return self.fomo_start(job, trainer)[0]  # exactly the start local_update builds

    def eval_vector(self, job: ClientJob, trainer) -> np.ndarray:
        return job.state["model"] if "model" in job.state else job.payload["model"]
