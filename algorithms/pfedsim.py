"""pFedSim (Tan, Zhou, Liu, Wang & Yu, arXiv:2305.15706, 2023, "pFedSim: Similarity-Aware Model Aggregation Towards
Personalized Federated Learning"): a warm-up of plain FedAvg, then personalized feature extractors aggregated from
the clients whose classifiers look alike.

The model is decoupled into a feature extractor (the body, theta) and a classifier (the head, phi: tensors head.*).
- Warm-up (generalization) phase, rounds t < `warmup_rounds`: FedAvg on the whole model (sample-weighted mean of
  everything; identical to algorithm fedavg, bit for bit).
- Personalization phase, t >= `warmup_rounds`: the global vector is frozen at the warm-up model. Each client keeps
  its own classifier phi_i; the server keeps the last uploaded model (theta_j, phi_j) of every client j that has
  trained in this phase (the pool). When client i is dispatched, with W_i the weight matrix of its classifier's
  output layer (one row per class, C rows):
      s_ij  = max(0, (1/C) sum_c cos(W_i[c], W_j[c]))                      (mean row-wise cosine, clipped at 0)
      a_ij  = -log(1 - min(s_ij, s_max)),  a_ii = -log(1 - s_max)          (s_max = `self_similarity` = 0.9999)
      theta_i <- sum_j (a_ij / sum_k a_ik) theta_j      (j over i itself and the pool; a_ij = 0 where s_ij = 0)
  The client trains body and head jointly for the run's local epochs from (theta_i, phi_i) and uploads the whole
  model; the server replaces i's pool entry with it. A client with no pool entry yet (new in this phase) receives
  the warm-up model, body and head, as in FL-bench (where every client's personal model is reset to the global one
  when the phase starts). A client whose every similarity is 0 keeps its own body (weight 1).
Personal: in the personalization phase, the whole trained model w_i = (theta_i, phi_i) is the client's model; it is
kept in the client-state store ("w", d floats) because evaluation on the workers sees only the global vector and the
client's state. The personalized model evaluated is that w_i (the body trained from the similarity-weighted
aggregate, plus the client's own head), as FL-bench tests clients_personal_model_params; before a client trains in
this phase it is evaluated with the warm-up model. global_* metrics keep measuring the frozen warm-up model (the
model a client new to the personalization phase starts from).

Server memory: the pool holds the last full model of every client that has trained since the warm-up ended: N_seen
x d float32 (N_seen <= N; all N heads and bodies once every client has trained), checkpointed through server_state.
For the 17,330-parameter digits MLP (hidden 32) that is ~69 MB per 1,000 clients (~0.7 GB for 10,000); the bodies
are what the aggregation needs, the heads (C x hidden each) what the similarities need. FL-bench additionally holds
an N x N similarity matrix (400 MB at 10,000 clients in float32); here s_ij is recomputed from the pooled heads at
dispatch (O(N_seen C h) per dispatched client) and no matrix is stored.

Sources: the paper's abstract and summaries (decoupling, classifier similarity, generalization then personalization
phase; the method section itself was not available to me), and FL-bench's src/server/pfedsim.py (maintained by
KarhouTam, to my knowledge the first author Jiahao Tan; not verified), whose formulas are the ones above: mean
row-wise cosine of classifier.weight clipped at 0, weights -log(1 - s) normalised, self similarity 0.9999,
warmup_round 0.5 of the rounds, aggregation of every non-classifier tensor, evaluation of the stored personal model.
Differences, and why:
- FL-bench updates s_ij only for pairs sampled in the same round (from their just-trained classifiers) and keeps it
  in an N x N matrix; here s_ij comes from the last classifiers the server holds, whenever they were trained. With
  full participation the two are identical; with partial participation a client here also aggregates with clients
  it never shared a round with (FL-bench: weight 0 until they do). This avoids the O(N^2) matrix.
- FL-bench's warm-up is a share of the run's rounds (default 0.5 of 100); the algorithm here does not see the run's
  length, so `warmup_rounds` is absolute (default 50 = 0.5 x FL-bench's default 100 rounds): set half of `rounds`
  for FL-bench's ratio.
- FL-bench caps only the self similarity at 0.9999; here every s_ij is capped at `self_similarity` too, so that two
  identical classifiers (cosine 1, or 1 + rounding) cannot give -log(0) = inf or NaN.
- FL-bench's aggregation weights ignore sample counts, as here; the body includes buffers (e.g. BatchNorm running
  statistics), as FL-bench's non-classifier keys do. Bytes: the warm-up sends and receives the full model; the
  personalization phase sends the body (plus the warm-up head to a client without its own) and receives the full
  model (the server needs the classifier for the similarities).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Dispatch, Notes, Params, Phase, State
from algorithms.pool import ModelPool
from algorithms.registry import register


# ----- the mechanism as pure functions (tested directly) ------------------------------------------------------------
def classifier_similarity(mine: np.ndarray, others: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """s_ij = max(0, mean over classes c of cos(W_i[c], W_j[c])) for each W_j in `others` (n x C x h), float64.
    A zero row has cosine 0 (torch.cosine_similarity's eps on the product of the norms)."""
    a = mine.astype(np.float64)
    b = others.astype(np.float64).reshape(len(others), *a.shape)
    dots = np.einsum("ck,nck->nc", a, b)
    norms = np.linalg.norm(a, axis=1)[None, :] * np.linalg.norm(b, axis=2)
    cos = dots / np.maximum(norms, eps)
    return np.maximum(cos.mean(axis=1), 0.0) if len(others) else np.zeros(0)


def similarity_weights(sims: np.ndarray, self_similarity: float) -> tuple[float, np.ndarray]:
    """(own weight, weight of each peer): a = -log(1 - s) with s capped at self_similarity, the client's own
    a = -log(1 - self_similarity), all normalised to sum to 1 (FL-bench's pfedsim)."""
    own = -np.log1p(-self_similarity)
    peers = -np.log1p(-np.minimum(np.asarray(sims, dtype=np.float64), self_similarity))
    peers = np.maximum(peers, 0.0)  # -log(1 - 0) is -0.0
    total = own + float(peers.sum())
    return float(own / total), peers / total


def weighted_body(own: np.ndarray, own_weight: float, peers: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """own_weight * own + sum_j weights_j * peers_j (float64, rows in client-id order, zero weights skipped)."""
    out = own_weight * own.astype(np.float64)
    for row, w in zip(peers, weights, strict=True):
        if w > 0:
            out += w * row.astype(np.float64)
    return out.astype(np.float32)


class PFedSimParams(Params):
    warmup_rounds: int = Field(50, ge=0, description="FedAvg rounds before personalization (FL-bench: warmup_round "
                                                     "0.5 of the rounds, 50 of its default 100; paper's value not "
                                                     "available here)")
    self_similarity: float = Field(0.9999, gt=0, lt=1, description="similarity a client is given with itself, and "
                                                                   "the cap on every s_ij, before -log(1 - s) "
                                                                   "(FL-bench: 0.9999)")


@register
class PFedSim(Algorithm):
    """pFedSim: FedAvg warm-up, then personal heads and bodies aggregated by classifier cosine similarity."""

    name = "pfedsim"
    batchable = True  # one plain SGD phase (body and head jointly): vectorises (train.batched)
    Params = PFedSimParams
    needs_split = True
    source = ("Tan et al. 2023 (classifier-similarity body aggregation after a FedAvg warm-up); -log(1 - s) weights, "
              "self 0.9999, warm-up 0.5 x 100 = 50 rounds from FL-bench's pfedsim.py")

    def __init__(self, params: PFedSimParams, ctx):
        super().__init__(params, ctx)
        weights = [s for s in self.spec.slots if s.trainable and len(s.shape) == 2 and self.spec.is_head(s.name)]
        if not weights:
            raise ValueError(f"pfedsim: the classifier (head.*) has no weight matrix to compare; tensors: "
                             f"{', '.join(self.spec.names)}")
        self.classifier = weights[-1]  # the output layer: one row per class (FL-bench's classifier.weight)
        self.pool = ModelPool(self.spec.size)  # client id -> its last uploaded model (server state)

    def shared_mask(self) -> np.ndarray:
        return ~self.spec.head_mask()

    def personalizing(self, round: int) -> bool:
        return round >= self.params.warmup_rounds

    # ----- server side ----------------------------------------------------------------------------------------------
    def head_weight(self, vec: np.ndarray) -> np.ndarray:
        s = self.classifier
        return vec[..., s.start : s.stop].reshape(*vec.shape[:-1], *s.shape)

    def server_prepare(self, cid: int, round: int, global_vec: np.ndarray, state: State) -> Dispatch:
        if not self.personalizing(round):
            return Dispatch({"model": global_vec}, state, {"personalized": False})
        own = self.pool.get(cid)
        if own is None:  # new to this phase: the warm-up model (FL-bench resets every personal model to it)
            body, own_weight, peers = global_vec[self.shared], 1.0, 0
        else:
            ids, models = self.pool.stacked()
            others = models[ids != cid]  # client-id order
            own_weight, weights = similarity_weights(
                classifier_similarity(self.head_weight(own), self.head_weight(others)), self.params.self_similarity)
            body = weighted_body(own[self.shared], own_weight, others[:, self.shared], weights)
            peers = int((weights > 0).sum())
        payload = {"body": body}
        if "w" not in state:  # no classifier of its own yet: it starts from the warm-up head
            payload["head"] = global_vec[~self.shared].copy()
        return Dispatch(payload, state, {"personalized": True, "self_weight": own_weight, "peers": float(peers),
                                         "pooled": float(len(self.pool))})

    def aggregate(self, global_vec: np.ndarray, updates: list[ClientUpdate], notes: Notes | None = None) -> np.ndarray:
        """Warm-up: FedAvg over every element. Personalization: the uploads replace their clients' pool entries and
        the global vector stays the warm-up model."""
        if not updates:
            return global_vec
        if not any((notes or {}).get(u.cid, {}).get("personalized", False) for u in updates):
            total = np.zeros(self.spec.size, dtype=np.float64)
            scaled = np.empty_like(total)
            weight = 0.0
            for u in sorted(updates, key=lambda u: u.cid):
                np.multiply(u.upload["model"], u.num_samples, out=scaled, dtype=np.float64)
                total += scaled
                weight += u.num_samples
            return (total / weight).astype(np.float32)
        self.pool.put(updates)
        return global_vec

    def server_state(self) -> State:
        return self.pool.state()

    def load_server_state(self, state: State) -> None:
        self.pool.load(state)

    def round_metrics(self, notes: Notes) -> dict[str, float]:
        rows = [notes[c] for c in sorted(notes) if notes[c].get("personalized")]
        if not rows:
            return {}  # warm-up: exactly FedAvg's metrics
        return {"pfedsim_self_weight_mean": float(np.mean([r["self_weight"] for r in rows])),
                "pfedsim_peers_mean": float(np.mean([r["peers"] for r in rows])),
                "pfedsim_pool_size": float(max(r["pooled"] for r in rows))}

    def bytes_down(self, payload: State) -> int:
        return 4 * sum(int(np.asarray(a).size) for a in payload.values())

    def bytes_up(self, update: ClientUpdate) -> int:
        return 4 * int(update.upload["model"].size) if "model" in update.upload else 0

    # ----- client side ----------------------------------------------------------------------------------------------
    def start_vector(self, job: ClientJob) -> np.ndarray:
        """Warm-up: the global model. Personalization: the received body with the client's own head (the warm-up
        head the first time)."""
        if "body" not in job.payload:
            return job.payload["model"]
        out = np.empty(self.spec.size, dtype=np.float32)
        out[self.shared] = job.payload["body"]
        own = job.state.get("w")
        out[~self.shared] = own[~self.shared] if own is not None else job.payload["head"]
        return out

    def local_phases(self, job: ClientJob) -> list[Phase]:
        return [Phase(self.start_vector(job))]  # body and head jointly, the run's local epochs

    def local_result(self, job: ClientJob, trained, stats, trainer) -> ClientUpdate:
        vec = trained[-1]
        state = {"w": vec} if "body" in job.payload else job.state
        return trainer.update(job, upload={"model": vec}, state=state)

    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        return self.run_phases(job, trainer)

    def received_vector(self, job: ClientJob, trainer) -> np.ndarray:
        return self.start_vector(job)

    def eval_vector(self, job: ClientJob, trainer) -> np.ndarray:
        return job.state.get("w", job.payload["model"])
