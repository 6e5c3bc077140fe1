"""Per-FedAvg (Fallah, Mokhtari & Ozdaglar, NeurIPS 2020, "Personalized Federated Learning with Theoretical
Guarantees: A Model-Agnostic Meta-Learning Approach"; arXiv:2002.07948, "Personalized Federated Learning: A
Meta-Learning Approach").

The global model w is a MAML initialisation: it minimises the mean over clients of f_i(w - alpha grad f_i(w)),
the loss after one personalization step. Each local step of a sampled client (Algorithm 1) takes independent
mini-batches D, D' (and D'' for HF) of its training data:
    w_tilde = w - alpha grad f_i(w; D)                                   (the adapted model)
    FO:  w <- w - beta grad f_i(w_tilde; D')                             (`perfedavg_fo`, first order)
    HF:  w <- w - beta (grad f_i(w_tilde; D') - alpha d),                (`perfedavg_hf`, Hessian-free)
         d = [grad f_i(w + delta g; D'') - grad f_i(w - delta g; D'')] / (2 delta),   g = grad f_i(w_tilde; D')
the paper's finite-difference estimate of the Hessian-vector product hess f_i(w; D'') g (`hvp=exact` computes it
by double backpropagation instead). The server averages the clients' w uniformly (Algorithm 1's 1/(rn) sum).
A client's personalized model is the global model after `eval_steps` gradient steps with step alpha on
mini-batches of its own training split (the paper evaluates after one step); nothing is stored per client.

Checked against the paper (Algorithm 1 and its FO / HF variants, the evaluation after one local step) and against
FL-bench (src/client/perfedavg.py, src/server/perfedavg.py), PFLlib (clientperavg.py, FO only) and the pFedMe
authors' Per-FedAvg (CharlieDinh/pFedMe FLAlgorithms/users/userperavg.py, FO only). Local work: each local epoch
has floor(b / g) meta-steps (b batches per epoch, g = 2 for FO, 3 for HF), every meta-step taking its g batches in
turn from a stream of freshly shuffled epochs: FL-bench's count, except that a client with fewer than g batches
still takes one step per epoch (none in FL-bench). The steps are plain SGD with alpha and beta (train.lr and
train.momentum are not used, as in the paper). Costs on the virtual clock: one step per gradient pass (FO 2 per
meta-step, HF 4: D'' needs two). The reported train_loss is the adapted model's loss on D' (the meta-objective).
Defaults: alpha 0.005 and beta 0.001 are the values the pFedMe authors ran Per-FedAvg with in their comparison
(CharlieDinh/pFedMe README: --learning_rate 0.005 for the adaptation step, --beta 0.001 for the meta step; the same
pair is shared for PFLlib in its issue #136); beta 0.001 and delta 0.001 are also FL-bench's defaults (FLGo: delta
0.001). The paper's own experiment values were not available in the sources read for this module. Differences, the
module follows the paper:
- FL-bench's adaptation step uses the run's optimizer (its momentum, weight decay) and its personalization at
  evaluation fine-tunes finetune_epoch (>= 1) whole epochs; PFLlib uses alpha = beta = the local learning rate (its
  beta argument is unused), older PFLlib versions personalized on a TEST batch; the pFedMe authors' evaluation
  takes an alpha step and then a further beta step;
- the server mean is uniform (the paper, FL-bench: weight 1); PFLlib and the pFedMe authors weight by samples
  (`weighting=samples`).
BatchNorm statistics (if any) follow every forward pass of the client. A client without training data is
evaluated with the global model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.func import functional_call

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Notes, Params
from algorithms.registry import register
from protocol.rng import rng

Named = dict[str, torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[Named, Batch], torch.Tensor]


# ----- the mechanism as pure functions (tested directly) ------------------------------------------------------------
def model_loss(model: nn.Module) -> LossFn:
    """Cross-entropy of `model` run with the given parameters (its own buffers)."""
    return lambda theta, batch: F.cross_entropy(functional_call(model, theta, (batch[0],)), batch[1])


def gradient(loss_fn: LossFn, theta: Named, batch: Batch) -> tuple[torch.Tensor, Named]:
    """(loss, grad f(theta; batch)), both detached."""
    leaves = {n: t.detach().requires_grad_() for n, t in theta.items()}
    loss = loss_fn(leaves, batch)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return loss.detach(), dict(zip(leaves, grads, strict=True))


def hvp_difference(loss_fn: LossFn, theta: Named, v: Named, batch: Batch, delta: float) -> Named:
    """The paper's Hessian-free estimate [grad f(theta + delta v) - grad f(theta - delta v)] / (2 delta)."""
    _, plus = gradient(loss_fn, {n: t + delta * v[n] for n, t in theta.items()}, batch)
    _, minus = gradient(loss_fn, {n: t - delta * v[n] for n, t in theta.items()}, batch)
    return {n: (plus[n] - minus[n]) / (2 * delta) for n in theta}


def hvp_exact(loss_fn: LossFn, theta: Named, v: Named, batch: Batch) -> Named:
    """hess f(theta; batch) v by double backpropagation."""
    leaves = {n: t.detach().requires_grad_() for n, t in theta.items()}
    grads = torch.autograd.grad(loss_fn(leaves, batch), list(leaves.values()), create_graph=True)
    dot = sum((g * v[n]).sum() for n, g in zip(leaves, grads, strict=True))
    return dict(zip(leaves, torch.autograd.grad(dot, list(leaves.values())), strict=True))


def meta_step(loss_fn: LossFn, theta: Named, batches: list[Batch], alpha: float, beta: float,
              hessian: str | None = None, delta: float = 1e-3) -> tuple[Named, torch.Tensor]:
    """One Per-FedAvg local step from theta on batches (D, D'[, D'']): the new theta and the loss at w_tilde on D'.
    hessian: None (FO), "difference" (HF, the paper's estimate) or "exact" (HF with an exact product)."""
    _, g0 = gradient(loss_fn, theta, batches[0])
    adapted = {n: t.detach() - alpha * g0[n] for n, t in theta.items()}
    loss, g1 = gradient(loss_fn, adapted, batches[1])
    step = g1
    if hessian is not None:
        d = (hvp_difference(loss_fn, theta, g1, batches[2], delta) if hessian == "difference"
             else hvp_exact(loss_fn, theta, g1, batches[2]))
        step = {n: g1[n] - alpha * d[n] for n in theta}
    return {n: t.detach() - beta * step[n] for n, t in theta.items()}, loss


def batch_stream(index: np.ndarray, batch_size: int, gen: np.random.Generator) -> Iterator[np.ndarray]:
    """Index batches of freshly shuffled epochs, forever."""
    while True:
        order = index[gen.permutation(len(index))]
        for start in range(0, len(order), batch_size):
            yield order[start : start + batch_size]


class PerFedAvgParams(Params):
    alpha: float = Field(0.005, gt=0, description="adaptation (personalization) step size alpha (the pFedMe "
                                                  "authors' Per-FedAvg runs: 0.005)")
    beta: float = Field(0.001, gt=0, description="meta step size beta (pFedMe authors' runs, FL-bench: 0.001)")
    eval_steps: int = Field(1, ge=0, description="alpha-steps on the client's training batches before evaluation "
                                                 "(paper: one step)")
    weighting: Literal["uniform", "samples"] = Field(
        "uniform", description="server mean: uniform (paper's Algorithm 1, FL-bench) or by samples (PFLlib, the "
                               "pFedMe authors)")


class PerFedAvgHFParams(PerFedAvgParams):
    delta: float = Field(0.001, gt=0, description="finite-difference step of the Hessian-vector estimate (FL-bench, "
                                                  "FLGo: 0.001)")
    hvp: Literal["difference", "exact"] = Field(
        "difference", description="Hessian-vector product: the paper's finite difference or exact (autograd)")


class _PerFedAvg(Algorithm):
    """Per-FedAvg's common part; subclasses pick first order or Hessian-free."""

    hessian_free: ClassVar[bool] = False

    def aggregate(self, global_vec: np.ndarray, updates: list[ClientUpdate], notes: Notes | None = None) -> np.ndarray:
        if not updates or self.params.weighting == "samples":
            return super().aggregate(global_vec, updates, notes)
        total = np.zeros(self.spec.size, dtype=np.float64)
        for u in sorted(updates, key=lambda u: u.cid):
            total += u.upload["model"]
        return (total / len(updates)).astype(np.float32)

    def _theta(self, trainer, vec: np.ndarray) -> Named:
        trainer.set_vector(vec)
        return {n: t.detach().clone() for n, t in trainer.model.named_parameters()}

    def _vector(self, trainer, theta: Named) -> np.ndarray:
        with torch.no_grad():
            for n, t in trainer.model.named_parameters():
                t.copy_(theta[n])
        return trainer.get_vector()

    def _batch(self, trainer, job: ClientJob, index: np.ndarray, cost: int) -> Batch:
        (batch,) = list(trainer.batches_from(job, index, cost))  # consumed: the trainer counts it
        return batch

    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        p = self.params
        theta = self._theta(trainer, job.payload["model"])
        index = trainer.split_of(job.cid)
        costs = (1, 1, 2) if self.hessian_free else (1, 1)
        per_epoch = -(-len(index) // self.ctx.train.batch_size) // len(costs)
        steps = self.ctx.train.local_epochs * max(1, per_epoch) if len(index) else 0
        hessian = p.hvp if self.hessian_free else None
        delta = p.delta if self.hessian_free else 0.0
        stream = batch_stream(index, self.ctx.train.batch_size, rng(self.ctx.seed, "perfedavg", job.round, job.cid))
        loss_fn = model_loss(trainer.model)
        trainer.model.train()
        done = 0
        for _ in range(steps):
            if trainer.max_steps is not None and trainer.steps + sum(costs) > trainer.max_steps:
                break
            batches = [self._batch(trainer, job, next(stream), c) for c in costs]
            theta, loss = meta_step(loss_fn, theta, batches, p.alpha, p.beta, hessian, delta)
            if not trainer.record_loss(loss):
                break
            done += 1
        return trainer.update(job, upload={"model": self._vector(trainer, theta)}, state={},
                              meta_steps=float(done))

    def eval_vector(self, job: ClientJob, trainer) -> np.ndarray:
        """The global model after eval_steps alpha-steps on the client's training batches (kept nowhere)."""
        index = trainer.split_of(job.cid)
        if self.params.eval_steps == 0 or len(index) == 0:
            return job.payload["model"]
        theta = self._theta(trainer, job.payload["model"])
        stream = batch_stream(index, self.ctx.train.batch_size, rng(self.ctx.seed, "perfedavg-eval", job.round,
                                                                     job.cid))
        loss_fn = model_loss(trainer.model)
        trainer.model.train()
        for _ in range(self.params.eval_steps):
            x, y = next(iter(trainer.batches_from(job, next(stream))))
            _, g = gradient(loss_fn, theta, (x, y))
            theta = {n: t - self.params.alpha * g[n] for n, t in theta.items()}
        return self._vector(trainer, theta)


@register
class PerFedAvgFO(_PerFedAvg):
    """Per-FedAvg (FO): MAML-style local steps with the first-order meta-gradient; one alpha-step personalizes."""

    name = "perfedavg_fo"
    Params = PerFedAvgParams
    source = ("Fallah et al. 2020 (Algorithm 1, FO; uniform mean; one-step personalization); alpha 0.005, beta 0.001 "
              "from the pFedMe authors' Per-FedAvg runs (CharlieDinh/pFedMe README; beta also FL-bench)")


@register
class PerFedAvgHF(_PerFedAvg):
    """Per-FedAvg (HF): MAML-style local steps with a finite-difference Hessian-vector correction."""

    name = "perfedavg_hf"
    Params = PerFedAvgHFParams
    hessian_free = True
    source = ("Fallah et al. 2020 (Algorithm 1, HF; uniform mean); alpha 0.005, beta 0.001 from the pFedMe authors' "
              "Per-FedAvg runs; delta 0.001 (FL-bench, FLGo)")
