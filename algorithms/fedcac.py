"""FedCAC (Wu, Liu, Niu, Zhu, Tang, ICCV 2023, "Bold but Cautious: Unlocking the Potential of Personalized Federated
Learning through Cautiously Aggressive Collaboration", arXiv:2309.11103).

After its local training (plain local SGD on the whole model) client k marks, in every parameter tensor of n
elements, the floor(tau n) elements of largest sensitivity
    s = |(theta_after - theta_before) * theta_after|
(the first-order loss change of zeroing the element, the round's update standing in for the gradient) as critical:
mask M_k. It uploads its model and M_k. The server averages every model as FedAvg (the global model, used for the
non-critical elements) and builds, for each client, a customized aggregate of the critical elements over the
clients whose critical sets overlap its own:
    overlap(k, j) = 1 - ||M_k - M_j||_1 / (2 ||M_k||_1)      (= |M_k & M_j| / |M_k| for equal-size sets)
    xi_t = avg + (t + 1) / beta * (max - avg)                 (avg, max over the round's ordered pairs j != k)
    C_k = {k} + {j : overlap(k, j) >= xi_t},   custom_k = mean_{j in C_k} theta_j   (equal weights)
and k starts its next round from  M_k * custom_k + (1 - M_k) * theta_global. The threshold climbs from the mean to
the largest overlap over beta rounds: wide collaboration on critical elements at first, then only with the most
similar clients, and once it passes every overlap (after round beta) with none ("bold but cautious").

Checked against the authors' code, Fling (FLAIR-Community/Fling fling/component/client/fedcac_client.py,
fling/component/group/fedcac_group.py; tau 0.5 and beta 100 in argzoo/cifar10/cifar10_fedcac_resnet_config.py,
0.4 / 170 for CIFAR-100) and its PFLlib port (TsingZ0/PFLlib clientcac.py, servercac.py); the paper's text was
available here only in its abstract and summaries (sensitivity-based critical parameters, collaborators chosen by the
overlap of critical sets under a rising threshold), which the code implements. FL-bench has no FedCAC. Differences:
- partial participation (both codes train every client every round): the server keeps the last round's uploads
  (models and masks: server_state, bounded by clients per round) as the collaboration pool and builds client k's
  customized aggregate when k is next dispatched, from k's stored model and the pool members j != k with
  overlap(M_k, M_j) >= xi (xi over the pool's pairs, t = the pool's round). With every client in every round this is
  the authors' computation exactly. PFLlib instead averages over the stored models of all N clients;
- exactly floor(tau n) critical elements per tensor, ties by lower index; the code takes every tie at the cutoff and,
  when the cutoff is <= 1e-10, every element of positive sensitivity;
- evaluation: a client's personalized model is M_k * theta_k + (1 - M_k) * theta_global (its own trained critical
  elements): the customized aggregate needs the pool, which evaluation on the workers does not see. Once the
  threshold passes every overlap (after round beta) it is exactly the model the client starts from; before, the
  authors evaluate the customized model. The sampled-client "before" evaluation uses the customized start model;
- buffers (BatchNorm statistics) are never critical: always the global values.
State per client: "theta" (float32, its last trained model) and "mask" (np.packbits of M_k over the flat model).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Dispatch, Notes, Params, Phase, State
from algorithms.fedobp import top_k_mask
from algorithms.fedselect import floor_share, unpack
from algorithms.registry import register

FLING = "FLAIR-Community/Fling argzoo/cifar10/cifar10_fedcac_resnet_config.py"
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


# ----- the mechanism as pure functions (tested directly) ------------------------------------------------------------
def sensitivity(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """|(theta_after - theta_before) * theta_after| element-wise (float32)."""
    return np.abs((after - before) * after)


def critical_mask(score: np.ndarray, segments: list[tuple[int, int]], tau: float) -> np.ndarray:
    """In each tensor [a, b): the floor(tau n) largest scores (ties: lower index); elsewhere False."""
    mask = np.zeros(score.size, dtype=bool)
    for a, b in segments:
        mask[a:b] = top_k_mask(score[a:b], floor_share(tau, b - a))
    return mask


def popcount(packed: np.ndarray) -> np.ndarray:
    """Set bits of np.packbits arrays, summed over the last axis."""
    return _POPCOUNT[packed].sum(axis=-1)


def overlaps(mine: np.ndarray, others: np.ndarray) -> np.ndarray:
    """overlap(k, j) = 1 - ||M_k - M_j||_1 / (2 ||M_k||_1) of one packed mask against each row of `others` (0 where
    M_k is empty)."""
    nk = int(popcount(mine))
    if nk == 0:
        return np.zeros(len(others))
    inter = popcount(others & mine)
    diff = nk + popcount(others) - 2 * inter
    return 1.0 - diff / (2.0 * nk)


def collaboration_threshold(masks: np.ndarray, round: int, beta: int) -> float:
    """xi = avg + (round + 1) / beta * (max - avg) over all ordered pairs j != k of the packed masks; +inf with fewer
    than two clients (no one to collaborate with)."""
    k = len(masks)
    if k < 2:
        return float("inf")
    rows = [np.delete(overlaps(masks[i], masks), i) for i in range(k)]
    values = np.concatenate(rows)
    avg = float(values.sum()) / (k * (k - 1))
    return avg + (round + 1) / beta * (float(values.max()) - avg)


def collaborators(cid: int, mine: np.ndarray, pool_cids: np.ndarray, pool_masks: np.ndarray,
                  threshold: float) -> np.ndarray:
    """The pool members j != cid whose overlap with `mine` reaches the threshold (their positions in the pool)."""
    if len(pool_cids) == 0:
        return np.zeros(0, dtype=np.int64)
    ok = (overlaps(mine, pool_masks) >= threshold) & (pool_cids != cid)
    return np.flatnonzero(ok)


class FedCACParams(Params):
    tau: float = Field(0.5, gt=0, le=1, description=(
        "share of each parameter tensor marked critical: floor(tau n) elements of largest |delta * theta| "
        "(paper's tau; 0.5 in the authors' CIFAR-10 config, " + FLING + ")"))
    beta: int = Field(100, ge=1, description=(
        "rounds over which the collaboration threshold climbs from the mean to the largest overlap, "
        "xi_t = avg + (t+1)/beta (max - avg) (paper's beta; authors' CIFAR-10 config: 100, CIFAR-100: 170)"))


@register
class FedCAC(Algorithm):
    """FedCAC: critical elements by sensitivity, averaged only among clients with overlapping critical sets."""

    name = "fedcac"
    batchable = True  # one plain SGD phase; the sensitivity and masks are computed from its result
    Params = FedCACParams
    source = ("Wu et al., ICCV 2023, arXiv:2309.11103; tau=0.5, beta=100 from the authors' CIFAR-10 config ("
              + FLING + "); partial participation: the last round's uploads are the collaboration pool")

    def __init__(self, params: FedCACParams, ctx):
        super().__init__(params, ctx)
        self.segments = [(s.start, s.stop) for s in self.spec.slots if s.trainable]
        self.nbytes_mask = (self.spec.size + 7) // 8
        self.load_server_state({})

    # ----- server side ----------------------------------------------------------------------------------------
    def server_prepare(self, cid: int, round: int, global_vec: np.ndarray, state: State) -> Dispatch:
        """The customized start model: critical elements averaged over k and its collaborators in the pool."""
        if "mask" not in state:
            return Dispatch({"model": global_vec}, {}, {"round": round, "first": True})
        mine = state["mask"]
        chosen = collaborators(cid, mine, self.pool_cids, self.pool_masks, self.pool_threshold)
        critical = unpack(mine, self.spec.size)
        rows = sorted([(cid, state["theta"])] + [(int(self.pool_cids[j]), self.pool_models[j]) for j in chosen],
                      key=lambda r: r[0])
        total = np.zeros(int(np.count_nonzero(critical)), dtype=np.float64)
        for _, vec in rows:  # client-id order, float64
            total += vec[critical]
        start = global_vec.copy()
        start[critical] = (total / len(rows)).astype(np.float32)
        note = {"round": round, "first": False, "collaborators": len(rows), "threshold": self.pool_threshold}
        return Dispatch({"model": start}, {}, note)

    def aggregate(self, global_vec: np.ndarray, updates: list[ClientUpdate], notes: Notes | None = None) -> np.ndarray:
        """FedAvg of the full models; this round's uploads become the next round's collaboration pool."""
        new = super().aggregate(global_vec, updates, notes)
        if updates:
            if not notes or updates[0].cid not in notes:
                raise RuntimeError("fedcac: aggregate() needs the notes of this round's server_prepare()")
            kept = sorted(updates, key=lambda u: u.cid)
            masks = np.stack([u.upload["mask"] for u in kept])
            self.load_server_state({
                "pool_cids": np.array([u.cid for u in kept], dtype=np.int64),
                "pool_models": np.stack([u.upload["model"] for u in kept]),
                "pool_masks": masks,
                "pool_threshold": np.array([collaboration_threshold(masks, notes[kept[0].cid]["round"],
                                                                    self.params.beta)]),
            })
        return new

    def server_state(self) -> State:
        if len(self.pool_cids) == 0:
            return {}
        return {"pool_cids": self.pool_cids, "pool_models": self.pool_models, "pool_masks": self.pool_masks,
                "pool_threshold": np.array([self.pool_threshold])}

    def load_server_state(self, state: State) -> None:
        self.pool_cids = state.get("pool_cids", np.zeros(0, dtype=np.int64))
        self.pool_models = state.get("pool_models", np.zeros((0, self.spec.size), dtype=np.float32))
        self.pool_masks = state.get("pool_masks", np.zeros((0, self.nbytes_mask), dtype=np.uint8))
        self.pool_threshold = float(state["pool_threshold"][0]) if "pool_threshold" in state else float("inf")

    def round_metrics(self, notes: Notes) -> dict[str, float]:
        rows = [notes[c] for c in sorted(notes) if not notes[c]["first"]]
        out = {"fedcac_first_participation": float(len(notes) - len(rows))}
        if rows:
            out["fedcac_collaborators_mean"] = float(np.mean([r["collaborators"] for r in rows]))
            if np.isfinite(rows[0]["threshold"]):
                out["fedcac_threshold"] = float(rows[0]["threshold"])
        return out

    def bytes_up(self, update: ClientUpdate) -> int:
        return 4 * self.spec.size + self.nbytes_mask

    # ----- client side ----------------------------------------------------------------------------------------
    def local_phases(self, job: ClientJob) -> list[Phase]:
        return [Phase(job.payload["model"])]

    def local_result(self, job: ClientJob, trained, stats, trainer) -> ClientUpdate:
        before, after = job.payload["model"], trained[-1]
        packed = np.packbits(critical_mask(sensitivity(before, after), self.segments, self.params.tau))
        return trainer.update(job, upload={"model": after, "mask": packed}, state={"theta": after, "mask": packed})

    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        return self.run_phases(job, trainer)

    def received_vector(self, job: ClientJob, trainer) -> np.ndarray:
        return job.payload["model"]  # the customized start model built by server_prepare

    def trained_vector(self, job: ClientJob, update: ClientUpdate, trainer) -> np.ndarray:
        return update.state["theta"]

    def eval_vector(self, job: ClientJob, trainer) -> np.ndarray:
        """Own trained critical elements, the current global model elsewhere (the global model if never trained)."""
        if "mask" not in job.state:
            return job.payload["model"]
        return np.where(unpack(job.state["mask"], self.spec.size), job.state["theta"], job.payload["model"])
