"""Floco (Grinwald, Wiesner & Nakajima, NeurIPS 2024, "Federated Learning over Connected Modes", arXiv:2403.03333).

All clients train one SOLUTION SIMPLEX: the classifier weight is W(alpha) = sum_m alpha_m theta_m, a convex
combination of M endpoint matrices theta_m (`head.endpoints`, shape (M, classes, features); the bias `head.bias`
is shared by all points, as in the authors' code); the body is ordinary. Every local step draws a point alpha:
- rounds 0 .. tau-1: uniformly from the whole simplex (simplex learning);
- at the end of round tau-1 the server places the clients by their GRADIENT SIGNATURE, the pseudo-gradient
  theta(round tau-1) - theta_k of the endpoint weights: it fits a PCA to M components on the signatures of
  the round's clients, projects each onto the standard simplex (Euclidean projection of kappa / z) and picks
  the scale z of a 1,000-point grid on [1e-4, 1] whose projected points have the lowest Riesz s-energy
  (s = 2: spread out, the authors' projection). Client k's center beta_k is that point;
- from round tau (0-based, as FL-bench; the authors' Flower baseline starts one round earlier): client k samples
  alpha uniformly from its subregion R_k = {a in simplex : ||a - beta_k||_1 <= rho} (exact uniform sampling:
  rejection from whichever of two known supersets is smaller, class Region).
Aggregation is FedAvg over everything except the per-client `head.alpha` buffer. The personalized model is
W(beta_k), the global model the simplex center (alpha = 1/M); a client not placed yet uses the center.
Floco+ (`pers_epoch` > 0): a personal copy v_k of the whole simplex model is also trained, pers_epoch epochs
with alpha from R_k and Ditto's proximal term (lamda/2)||v - w||^2 to the received model, and evaluated at beta_k.

Checked against the paper, the authors' Flower baseline (adap/flower baselines/floco: model.py, strategy.py,
client_app.py) and FL-bench (src/server/floco.py, src/client/floco.py). Differences, this module follows the paper:
- the paper (cross-silo, 100 clients) collects every client's signature in round tau-1; here the map (PCA
  mean and components, z) is fitted on the clients trained in round tau-1 (they keep their signature in
  their state until placed) and every other client is placed with the same map on its first round from tau
  on, after replaying its round-(tau-1) training from the stored theta(tau-1) (same data order and alpha
  draws: the signature it would have had). The server keeps theta(tau-1) and the map, nothing per client;
- the authors and FL-bench sample `center + r u` (u on the L1 unit sphere, r ~ U(0, rho)): not uniform, and
  the point can leave the simplex (negative weights, sum != 1); here exactly uniform on R_k, always inside it;
- FL-bench projects the trained endpoint weights themselves, not their pseudo-gradients (the authors use
  init - trained, as the paper's gradient signals); FL-bench's Floco+ adds `lamda * v - w` to the gradient
  (operator precedence) where the authors add lamda (v - w), as here;
- PCA by float64 SVD with a deterministic sign (largest loading positive) and components of (numerically) zero
  variance set to zero; endpoints initialised like the base model's classifier (PyTorch's Linear init, one
  draw per endpoint) where the authors use Xavier-normal with per-endpoint seeds.
`endpoints` sizes the model: build_model reads it from the hyperparameters (harness.engine.worker.build_algorithm
hands them to its probe); a model built with another number of endpoints is refused with a clear error.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Dispatch, Params, State
from algorithms.registry import register
from protocol.rng import rng

MAP_KEYS = ("map_mean", "map_components", "map_scale")


class FlocoParams(Params):
    endpoints: int = Field(10, ge=2, description="M, endpoints of the solution simplex (FedOBP authors' logged runs, "
                                                 "FL-bench and the authors' Flower baseline: 10)")
    tau: int = Field(10, ge=1, description="rounds on the whole simplex before clients are placed (FedOBP authors' "
                                           "logged runs and FL-bench: 10; authors' Flower baseline: 250 of 500)")
    rho: float = Field(0.1, gt=0, le=2, description="L1 radius of each client's subregion (logged runs, FL-bench: "
                                                    "0.1; authors' Flower baseline: 0.1 fold split, 0.3 Dirichlet)")
    pers_epoch: int = Field(0, ge=0, description="Floco+: personal-model epochs per round, 0 = plain Floco "
                                                 "(logged runs, FL-bench: 0)")
    lamda: float = Field(1.0, ge=0, description="Floco+: proximal weight of the personal model (logged runs, "
                                                "FL-bench: 1)")


class SimplexHead(nn.Module):
    """Linear classifier whose weight is sum_m alpha_m endpoints[m]; `alpha` is a float buffer set per step."""

    def __init__(self, linear: nn.Linear, endpoints: int):
        super().__init__()
        weights = []
        for _ in range(endpoints):  # the base classifier's own init scheme, one independent draw per endpoint
            fresh = nn.Linear(linear.in_features, linear.out_features)
            weights.append(fresh.weight.detach().clone())
        self.endpoints = nn.Parameter(torch.stack(weights))
        self.bias = nn.Parameter(linear.bias.detach().clone())
        self.register_buffer("alpha", torch.full((endpoints,), 1.0 / endpoints))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.linear(z, torch.tensordot(self.alpha, self.endpoints, dims=1), self.bias)


class FlocoModel(nn.Module):
    def __init__(self, body: nn.Module, head: SimplexHead):
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


# ----- placing clients on the simplex ----------------------------------------------------------------------------
def project_to_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection of each row of v onto the standard simplex (sort-based, Duchi et al. 2008)."""
    v = np.atleast_2d(np.asarray(v, dtype=np.float64))
    u = -np.sort(-v, axis=1)
    css = np.cumsum(u, axis=1) - 1.0
    k = np.arange(1, v.shape[1] + 1)
    count = (u - css / k > 0).sum(axis=1)
    theta = css[np.arange(len(v)), count - 1] / count
    return np.maximum(v - theta[:, None], 0.0)


def riesz_log_energy(points: np.ndarray, eps: float = 1e-4) -> float:
    """log of the mean Riesz 2-energy 1/d^2 over all pairs (distances clipped below at eps, as the authors')."""
    i, j = np.triu_indices(len(points), 1)
    dist = np.maximum(np.linalg.norm(points[i] - points[j], axis=1), eps)
    return float(np.log(np.sum(1.0 / dist**2)) - np.log(len(i)))


def fit_placement(signatures: np.ndarray, endpoints: int) -> tuple[State, np.ndarray]:
    """PCA to `endpoints` components + simplex projection with the energy-minimising scale z: the map (float32,
    what clients receive) and the centers of the given clients."""
    x = np.asarray(signatures, dtype=np.float64)
    mean = x.mean(axis=0)
    _, sv, vt = np.linalg.svd(x - mean, full_matrices=False)
    keep = sv > sv[0] * 1e-9 if sv.size and sv[0] > 0 else np.zeros(sv.size, dtype=bool)
    comps = np.zeros((endpoints, x.shape[1]))
    rows = vt[: endpoints][keep[: endpoints]]
    signs = np.sign(rows[np.arange(len(rows)), np.abs(rows).argmax(axis=1)])
    comps[: len(rows)] = rows * signs[:, None]
    state = {"map_mean": mean.astype(np.float32), "map_components": comps.astype(np.float32)}
    kappa = (x - state["map_mean"]) @ state["map_components"].T.astype(np.float64)
    best, best_z = np.inf, 1.0
    if len(x) > 1:
        for z in np.linspace(1e-4, 1.0, 1000):
            energy = riesz_log_energy(project_to_simplex(kappa / z))
            if np.isfinite(energy) and energy < best:
                best, best_z = energy, float(z)
    state["map_scale"] = np.array([best_z], dtype=np.float32)
    return state, project_to_simplex(kappa / np.float64(state["map_scale"][0]))


def locate(signature: np.ndarray, placement: State) -> np.ndarray:
    """A client's center beta on the simplex, from its signature and the fitted map."""
    kappa = (signature.astype(np.float64) - placement["map_mean"]) @ placement["map_components"].T.astype(np.float64)
    return project_to_simplex(kappa / np.float64(placement["map_scale"][0]))[0]


class Region:
    """Uniform sampler of R = {a in simplex : ||a - center||_1 <= rho} (center None: the whole simplex).

    Exact rejection sampling from the smaller of two supersets of R, both sampled uniformly in closed form:
    T = {a in simplex : a >= max(center - rho/2, 0)} (a scaled simplex; R lies in it since the negative part of
    a - center sums to at most rho/2), and center + B with B = {d : sum d = 0, ||d||_1 <= rho, d_i >= 0 where
    center_i = 0} (by sign pattern: N the negative coordinates, |N| = b, with weight C(|S|, b) /
    ((M-b-1)! (b-1)!), ||d||_1 / 2 = t with density ~ t^(M-2), both parts Dirichlet(1)-distributed).
    """

    def __init__(self, center: np.ndarray | None, rho: float, endpoints: int):
        self.m, self.rho = endpoints, rho
        self.center = None if center is None else np.asarray(center, dtype=np.float64)
        if self.center is None:
            return
        m = self.m
        self.low = np.maximum(self.center - rho / 2, 0.0)
        self.scale = 1.0 - self.low.sum()
        self.support = np.flatnonzero(self.center > 0)
        sizes = np.arange(1, min(len(self.support), m - 1) + 1)
        weights = np.array([math.comb(len(self.support), b) / (math.factorial(m - b - 1) * math.factorial(b - 1))
                            for b in sizes])
        self.sizes, self.size_p = sizes, weights / weights.sum()
        vol_t = self.scale ** (m - 1) / math.factorial(m - 1)
        vol_b = (rho / 2) ** (m - 1) / (m - 1) * weights.sum()
        self.use_t = vol_t <= vol_b

    def _propose(self, gen: np.random.Generator, n: int) -> np.ndarray:
        e = gen.standard_exponential((n, self.m))
        if self.use_t:
            return self.low + self.scale * e / e.sum(axis=1, keepdims=True)
        b = gen.choice(self.sizes, size=n, p=self.size_p)
        ranks = np.argsort(np.argsort(gen.random((n, len(self.support))), axis=1), axis=1)
        neg = np.zeros((n, self.m), dtype=bool)
        neg[:, self.support] = ranks < b[:, None]
        t = self.rho / 2 * gen.random(n) ** (1.0 / (self.m - 1))
        pos_e, neg_e = np.where(neg, 0.0, e), np.where(neg, e, 0.0)
        d = pos_e / pos_e.sum(axis=1, keepdims=True) - neg_e / neg_e.sum(axis=1, keepdims=True)
        return self.center + t[:, None] * d

    def contains(self, a: np.ndarray, tol: float = 1e-9, check_sum: bool = True) -> np.ndarray:
        a = np.atleast_2d(a)
        inside = (a >= -tol).all(axis=1)
        if check_sum:  # proposals sum to 1 by construction (up to rounding): not a rejection criterion
            inside &= np.abs(a.sum(axis=1) - 1.0) <= max(tol, 1e-12)
        if self.center is not None:
            inside &= np.abs(a - self.center).sum(axis=1) <= self.rho + tol
        return inside

    def sample(self, gen: np.random.Generator) -> np.ndarray:
        if self.center is None:
            e = gen.standard_exponential(self.m)
            return e / e.sum()
        for _ in range(64):  # acceptance >= 0.4% in 500 random regions (M 10, rho 0.1; median 99.6%)
            cand = self._propose(gen, 256)
            ok = np.flatnonzero(self.contains(cand, tol=0.0, check_sum=False))
            if ok.size:
                return cand[ok[0]]
        return self.center.copy()


# ----- the algorithm ------------------------------------------------------------------------------------------------
@register
class Floco(Algorithm):
    """Floco: a shared solution simplex of classifiers; each client trains and is evaluated in its own subregion."""

    name = "floco"
    Params = FlocoParams
    source = ("Grinwald et al. 2024; endpoints 10, tau 10, rho 0.1, pers_epoch 0, lamda 1 from the FedOBP authors' "
              "logged runs (= FL-bench defaults; the authors' Flower baseline: M 10, tau 250, rho 0.1/0.3)")

    def build_model(self, model: nn.Module) -> nn.Module:
        params = getattr(self, "params", None)  # a bare probe (built without hyperparameters) has none
        m = params.endpoints if params is not None else FlocoParams.model_fields["endpoints"].default
        return FlocoModel(model.body, SimplexHead(model.head, m))

    def __init__(self, params: FlocoParams, ctx):
        super().__init__(params, ctx)
        self.ends = self.spec.slot("head.endpoints")
        self.alpha = self.spec.slot("head.alpha")
        if self.ends.shape[0] != params.endpoints:
            raise ValueError(f"floco: endpoints={params.endpoints} but the model was built with {self.ends.shape[0]} "
                             "(build_model needs the hyperparameters: harness.engine.worker.build_algorithm)")
        self.center = np.full(params.endpoints, 1.0 / params.endpoints, dtype=np.float32)
        self.placement: State = {}  # anchor = theta(tau-1) and the map, once fitted (server state)

    def shared_mask(self) -> np.ndarray:
        return ~self.spec.mask(["head.alpha"])

    # ----- server side --------------------------------------------------------------------------------------------
    def server_prepare(self, cid: int, round: int, global_vec: np.ndarray, state: State) -> Dispatch:
        payload = {"model": global_vec}
        placing = round >= self.params.tau and "center" not in state and bool(self.placement)
        if placing:
            payload |= {k: self.placement[k] for k in MAP_KEYS}
            if "signature" not in state:
                payload["anchor"] = self.placement["anchor"]
        return Dispatch(payload, state, {"round": round, "placing": placing})

    def aggregate(self, global_vec, updates, notes=None):
        new = super().aggregate(global_vec, updates, notes)
        rounds = {n["round"] for n in (notes or {}).values()}
        if updates and rounds == {self.params.tau - 1} and not self.placement:
            signatures = np.stack([self.signature(global_vec, u.upload["model"])
                                   for u in sorted(updates, key=lambda u: u.cid)])
            self.placement, _ = fit_placement(signatures, self.params.endpoints)
            self.placement["anchor"] = global_vec.copy()
        return new

    def server_state(self) -> State:
        return dict(self.placement)

    def load_server_state(self, state: State) -> None:
        self.placement = {k: np.asarray(v) for k, v in state.items()}

    def round_metrics(self, notes) -> dict[str, float]:
        return {"floco_placed": float(sum(n.get("placing", False) for n in notes.values()))}

    def bytes_down(self, payload: State) -> int:
        return super().bytes_down(payload) + sum(int(v.size) * 4 for k, v in payload.items() if k != "model")

    # ----- client side --------------------------------------------------------------------------------------------
    def signature(self, start: np.ndarray, trained: np.ndarray) -> np.ndarray:
        """The gradient signature: theta(start) - theta(trained) of the endpoint weights."""
        return (start[self.ends.start : self.ends.stop].astype(np.float64)
                - trained[self.ends.start : self.ends.stop]).astype(np.float32)

    def _train(self, job: ClientJob, trainer, start: np.ndarray, center, purpose: str = "batches", epochs=None,
               extra_loss=None):
        """Local SGD from `start`, every batch at a fresh alpha drawn from the client's region."""
        region = Region(center, self.params.rho, self.params.endpoints)
        gen = rng(self.ctx.seed, f"floco-alpha-{purpose}", job.round, job.cid)

        def draw(model: nn.Module) -> None:
            model.head.alpha.copy_(torch.as_tensor(region.sample(gen), dtype=torch.float32))

        trainer.set_vector(start)
        with torch.no_grad():
            draw(trainer.model)
        stats = trainer.train(job, epochs=epochs, extra_loss=extra_loss, purpose=purpose, after_step=draw)
        return trainer.get_vector(), stats

    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        p, received = self.params, job.payload["model"]
        state = dict(job.state)
        if all(k in job.payload for k in MAP_KEYS) and "center" not in state:
            signature = state.pop("signature", None)
            if signature is None:  # not trained in round tau-1: replay that round from theta(tau-1)
                replay = ClientJob(job.cid, p.tau - 1, {"model": job.payload["anchor"]}, {}, job.max_steps)
                trained, _ = self._train(replay, trainer, job.payload["anchor"], None)
                signature = self.signature(job.payload["anchor"], trained)
            state["center"] = locate(signature, job.payload).astype(np.float32)
        center = state.get("center")
        upload, stats = self._train(job, trainer, received, center)
        if job.round == p.tau - 1:
            state["signature"] = self.signature(received, upload)
        metrics = {}
        if p.pers_epoch > 0:  # Floco+: the personal simplex model, pulled to the received one
            prox = trainer.proximal(received, p.lamda) if p.lamda > 0 else None
            state["v"], personal = self._train(job, trainer, state.get("v", received), center, "floco-personal",
                                               p.pers_epoch, prox)
            metrics["personal_loss"] = personal.mean_loss
        return trainer.update(job, upload={"model": upload}, state=state, loss=stats.mean_loss, **metrics)

    def eval_vector(self, job: ClientJob, trainer) -> np.ndarray:
        base = job.state["v"] if self.params.pers_epoch > 0 and "v" in job.state else job.payload["model"]
        out = base.copy()
        out[self.alpha.start : self.alpha.stop] = job.state.get("center", self.center)
        return out
