"""Elastic aggregation (Dengsheng Chen, Jie Hu, Vince Junkai Tan, Xiaoming Wei & Enhua Wu, CVPR 2023, "Elastic
Aggregation for Federated Optimization", pp. 12187-12197).

FedAvg's clients, plus a per-parameter sensitivity that each client measures online while it trains; the server
scales every element of the averaged update by an elastic coefficient: less for sensitive parameters (the server
model should not drift to any one client's distribution), more for insensitive ones (explore).

Client i, at each local step on mini-batch B (before the optimizer step, on the current local model θ):

    g = ∂/∂θ [ mean_{x in B} ||F(x; θ)||²_2 ]      (`signal=output`: how much the output changes with each
                                                     parameter, no labels: the paper's unsupervised measure)
    g = ∂/∂θ CE(F(x; θ), y)                         (`signal=loss`: the training gradient, as FL-bench)
    Ω_i <- μ Ω_i + (1 - μ) |g|                      (element-wise; Ω_i is the client's state, 0 at first)

then uploads its model x_i and Ω_i. Server, with the round's clients S_t and sample weights p_i = n_i / Σ n_j:

    Δ = Σ_i p_i (x_i - x_t),    Ω = Σ_i p_i Ω_i,    ζ = 1 + τ - Ω / max(Ω),    x_{t+1} = x_t + ζ ⊙ Δ

so ζ lies in [τ, 1 + τ]: the most sensitive element moves by τΔ, an insensitive one by (1 + τ)Δ. `max_over`
picks what Ω is divided by: `model` the largest element of Ω (the paper's max(Ω)), `tensor` the largest element
of the same tensor, `clients` the element-wise largest Ω_i of the round's clients (FL-bench's choice). Where that
maximum is 0 (no gradient reached the element) ζ is 1, i.e. FedAvg's update. Float buffers (BatchNorm running
statistics) have no gradient: they are averaged with ζ = 1.

What is personal / shared: nothing is personal (the personalized model is the global model, as FedAvg's); the
full model is shared. Per client the store keeps Ω_i (one float32 per trainable element, `omega`), continued from
the client's previous participation (the moving average is online over all the steps the client ever took); it is
as large as the model, so use the disk store for many clients. The server keeps nothing across rounds beyond
the global model. Bytes up count the model and Ω_i (about 2x FedAvg's).

Sources checked: the paper's abstract and method description (sensitivity as "how much the overall prediction
function output changes when each parameter is changed", measured "in an unsupervised and online manner": the
memory-aware-synapses measure, ∂||F||²/∂θ); its full text (Algorithm 1 and the hyperparameter table) was not
retrievable in this session, so the defaults come from FL-bench (KarhouTam/FL-bench, src/server/elastic.py and
src/client/elastic.py): τ = 0.5, μ = 0.95. No authors' code was found. Differences:
- FL-bench measures one sensitivity per tensor (the squared norm of the loss gradient, with labels), on a 30 %
  slice of the training set held out from training (`sample_ratio` 0.3), at the received global model before
  training (one FL-bench version keeps each client's value across rounds, a later one restarts the average every
  round; one takes the norm of the gradient's first row only); here it is per element, during training on the
  training batches, continued across rounds, and by default the output measure of the paper (`signal=loss` gives
  the loss gradient, still per element, on all the data);
- FL-bench divides the averaged sensitivity by the element-wise maximum over the round's clients (`max_over=
  clients`); the default here reads the paper's max(Ω) as the largest element of the averaged Ω (a reading: the
  full text, which would settle it, was not available);
- the moving average is not bias-corrected: a client with few local steps uploads a smaller Ω_i (1 - μ^K of its
  level), as in FL-bench; the ratio Ω / max(Ω) is scale-free, so only the mix across clients feels it;
- the extra backward pass of `signal=output` is not counted on the virtual clock (one batch = one step).
Where ζ = 1 everywhere (`max_over=clients` with τ = 1 and one client per round, or no sensitivity measured) the
step is FedAvgM's with β = 0, i.e. FedAvg's sample-weighted update, bit for bit (tested).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Notes, Params
from algorithms.fedopt import average_delta
from algorithms.registry import register


# ----- the server's rule as pure functions (tested directly) --------------------------------------------------------
def elastic_coefficients(omega: np.ndarray, scale: np.ndarray, tau: float) -> np.ndarray:
    """ζ = 1 + τ - Ω / scale element-wise (float64); ζ = 1 where scale is 0 (no sensitivity measured)."""
    omega = np.asarray(omega, dtype=np.float64)
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), omega.shape)
    zeta = np.ones_like(omega)
    ok = scale > 0
    zeta[ok] = 1.0 + tau - omega[ok] / scale[ok]
    return zeta


def sensitivity_scale(mean: np.ndarray, per_client: list[np.ndarray], max_over: str,
                      bounds: list[tuple[int, int]]) -> np.ndarray:
    """What Ω is divided by: its largest element (`model`), the largest of its tensor (`tensor`, `bounds` are
    the tensors' [start, stop) in the Ω vector) or each element's largest Ω_i over the clients (`clients`)."""
    if max_over == "model":
        return np.full_like(mean, mean.max() if mean.size else 0.0)
    if max_over == "tensor":
        out = np.empty_like(mean)
        for start, stop in bounds:
            out[start:stop] = mean[start:stop].max() if stop > start else 0.0
        return out
    return np.max(np.stack([np.asarray(o, dtype=np.float64) for o in per_client]), axis=0)


class ElasticParams(Params):
    tau: float = Field(0.5, ge=0, description="τ in ζ = 1 + τ - Ω/max(Ω): the most sensitive element moves by τΔ, "
                                              "the least by (1+τ)Δ (FL-bench default 0.5)")
    mu: float = Field(0.95, ge=0, lt=1, description="momentum μ of the client's online sensitivity Ω_i <- μΩ_i + "
                                                    "(1-μ)|g| (FL-bench default 0.95)")
    signal: Literal["output", "loss"] = Field(
        "output", description="g: gradient of the batch-mean squared L2 norm of the output (the paper's "
                              "unsupervised measure) or of the training loss (FL-bench)")
    max_over: Literal["model", "tensor", "clients"] = Field(
        "model", description="max(Ω): over all elements of the averaged Ω (the paper), per tensor, or "
                             "element-wise over the round's clients' Ω_i (FL-bench)")


@register
class Elastic(Algorithm):
    """Elastic aggregation: FedAvg's update scaled per element by ζ = 1 + τ - Ω/max(Ω) (Ω: averaged sensitivity)."""

    name = "elastic"
    Params = ElasticParams
    source = ("Chen et al. 2023 (ζ = 1 + τ - Ω/max(Ω), sensitivity of the output, online with momentum μ); "
              "τ 0.5, μ 0.95 from FL-bench (the paper's table not retrievable here)")

    def __init__(self, params: ElasticParams, ctx):
        super().__init__(params, ctx)
        #: elements with a gradient (parameters, not buffers), in the flat vector's order: the layout of Ω_i
        self.trainable = self.spec.mask(s.name for s in self.spec.slots if s.trainable)
        self.bounds, offset = [], 0
        for s in self.spec.slots:
            if s.trainable:
                self.bounds.append((offset, offset + s.size))
                offset += s.size
        self._last: dict[str, float] = {}

    def personal_is_global(self) -> bool:
        return True

    # ----- server side ----------------------------------------------------------------------------------------------
    def aggregate(self, global_vec: np.ndarray, updates: list[ClientUpdate], notes: Notes | None = None) -> np.ndarray:
        self._last = {}
        if not updates:
            return global_vec
        ordered = sorted(updates, key=lambda u: u.cid)
        weight = float(sum(u.num_samples for u in ordered))
        base = global_vec.astype(np.float64)
        delta = average_delta(global_vec, ordered, self.shared, "samples")  # Σ p_i (x_i - x_t), FedAvgM's
        omega = np.zeros(int(self.trainable.sum()), dtype=np.float64)
        for u in ordered:
            omega += u.num_samples * u.upload["omega"].astype(np.float64)
        omega /= weight
        scale = sensitivity_scale(omega, [u.upload["omega"] for u in ordered], self.params.max_over, self.bounds)
        zeta = np.ones(global_vec.size, dtype=np.float64)
        zeta[self.trainable] = elastic_coefficients(omega, scale, self.params.tau)
        new = global_vec.copy()
        new[self.shared] = (base + zeta * delta)[self.shared].astype(np.float32)
        z = zeta[self.trainable]
        if z.size:
            self._last = {"elastic_zeta_mean": float(z.mean()), "elastic_zeta_min": float(z.min()),
                          "elastic_zeta_max": float(z.max())}
        return new

    def round_metrics(self, notes: Notes) -> dict[str, float]:
        """The elastic coefficients of the round's aggregation (mean, smallest, largest over trainable elements)."""
        return dict(self._last)

    def bytes_up(self, update: ClientUpdate) -> int:
        return super().bytes_up(update) + 4 * int(update.upload["omega"].size if "omega" in update.upload else 0)

    # ----- client side ----------------------------------------------------------------------------------------------
    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        """FedAvg's local SGD (same batches, same steps); before each optimizer step Ω_i <- μΩ_i + (1-μ)|g|."""
        mu = self.params.mu
        trainer.set_vector(job.payload["model"])
        model = trainer.model
        params = trainer.parameters(None)
        names = [n for n, _ in model.named_parameters()]
        stored = job.state.get("omega")
        omega = {n: torch.zeros_like(p) for n, p in zip(names, params, strict=True)}
        if stored is not None:
            full = np.zeros(self.spec.size, dtype=np.float32)
            full[self.trainable] = stored
            loaded = trainer.tensors_of(full)
            omega = {n: loaded[n].clone() for n in names}
        opt = trainer.optimizer(params)
        model.train()
        for x, y in trainer.batches(job, self.ctx.train.local_epochs):  # FedAvg's data order
            out = model(x)
            loss = F.cross_entropy(out, y)
            if not trainer.record_loss(loss):
                break
            sens = None
            if self.params.signal == "output":
                sens = torch.autograd.grad(out.pow(2).sum(dim=1).mean(), params, retain_graph=True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if sens is None:
                sens = [p.grad for p in params]
            with torch.no_grad():
                for n, g in zip(names, sens, strict=True):
                    if g is not None:
                        omega[n].mul_(mu).add_(g.abs(), alpha=1.0 - mu)
            opt.step()
        vec = trainer.get_vector()
        full = np.zeros(self.spec.size, dtype=np.float32)
        for n in names:
            s = self.spec.slot(n)
            full[s.start : s.stop] = omega[n].detach().reshape(-1).cpu().numpy()
        sens = full[self.trainable].copy()
        return trainer.update(job, upload={"model": vec, "omega": sens}, state={"omega": sens},
                              sensitivity=float(sens.mean()) if sens.size else 0.0)
