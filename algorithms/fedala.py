"""FedALA (Zhang et al., AAAI 2023, "FedALA: Adaptive Local Aggregation for Personalized FL").

Instead of overwriting its local model with the global one, a client starts each round from
    theta_hat = theta_local + (theta_global - theta_local) (.) W      on the top `layer_idx` tensors,
with the global values everywhere below. W (one weight per element, in [0, 1], initially all
ones) is learned on a random rand_percent share of the local training data:
    W <- clip(W - eta * grad_theta_hat L (.) (theta_global - theta_local), 0, 1),
until the loss settles (std of the last num_pre_loss epoch losses < threshold) the first time a
client uses ALA, one epoch per round afterwards. The client then trains theta_hat as FedAvg does
and uploads the full model; the server averages as FedAvg.

Checked against the paper (Eq. for theta_hat, the W update with clipping, ALA disabled while the
local model equals the global one, "train W until convergence" once, then one epoch) and the
authors' code (TsingZ0/FedALA system/main.py and PFLlib's utils/ALA.py: eta=1.0, rand_percent=80,
layer_idx=2, threshold=0.1, num_pre_loss=10). layer_idx counts trainable tensors from the top
(2 = weight and bias of the classifier; 0 = every tensor); buffers always take the global values.
State: W and the client's own top tensors live in that CLIENT's state (the store), never in a
worker: one known peer implementation keeps ALA weights per worker object, which mixes the W of
every client that worker hosts.
Differences from the authors' code, following the paper:
- the paper samples s% of the local data at random; the code takes a random CONTIGUOUS window of
  the (unshuffled) training list. Here: a random subset, drawn from rng(seed, "ala", round, client);
- the code's convergence test uses the last batch's loss of each epoch; here the epoch's mean loss
  (less noisy; same threshold); a safety cap `max_start_epochs` (not in the paper) bounds it;
- the code runs ALA for EVERY client every round (also unselected ones, whose local model is
  then the untrained initial model); here a client runs ALA when it is selected, and, at
  evaluation, the same ALA (with weight learning, data drawn from purpose "ala-eval") builds the
  evaluated model from the current global model without storing anything;
- ALA's forward/backward passes count as local steps and samples on the virtual clock.
A client that never trained has no local model: ALA is skipped (paper: disabled in the first
iteration) and it starts from / is evaluated with the global model.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Params
from algorithms.registry import register
from protocol.rng import rng


class FedALAParams(Params):
    eta: float = Field(1.0, gt=0, description="learning rate of the ALA weights (authors: 1.0)")
    rand_percent: float = Field(0.8, gt=0, le=1, description="share of local training data sampled for ALA (80%)")
    layer_idx: int = Field(2, ge=0, description="top trainable tensors aggregated adaptively; 0 = all (authors: 2)")
    threshold: float = Field(0.1, ge=0, description="first-time ALA stops when std of recent epoch losses < this (0.1)")
    num_pre_loss: int = Field(10, ge=1, description="how many recent epoch losses the std looks at (authors: 10)")
    max_start_epochs: int = Field(50, ge=1, description="cap on first-time ALA epochs (safety; not in the paper)")


@register
class FedALA(Algorithm):
    """FedALA: each client blends its old local model and the global one element-wise with learned weights (ALA)."""

    name = "fedala"
    Params = FedALAParams
    source = "Zhang et al. 2023; TsingZ0/FedALA main.py + PFLlib ALA.py (eta 1, 80%, layer_idx 2, 0.1, 10)"

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        trainable = [s for s in self.spec.slots if s.trainable]
        k = self.params.layer_idx
        if k > len(trainable):
            raise ValueError(f"fedala.layer_idx={k} but the model has {len(trainable)} trainable tensors")
        self.top_slots = trainable[-k:] if k else trainable
        self.top_names = [s.name for s in self.top_slots]
        self.top_mask = self.spec.mask(self.top_names)

    # ----- client side -----------------------------------------------------------------------
    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        start, weights = self.adaptive_start(job, trainer, purpose="ala")
        trainer.set_vector(start)
        trainer.train(job)
        vec = trainer.get_vector()
        state = {"top": vec[self.top_mask].copy()}
        metrics = {}
        if weights is not None:
            state["weights"] = weights
            metrics["ala_weight_mean"] = float(weights.mean())
        return trainer.update(job, upload={"model": vec}, state=state, **metrics)

    def received_vector(self, job: ClientJob, trainer) -> np.ndarray:
        return self.adaptive_start(job, trainer, purpose="ala")[0]  # exactly the start local_update builds

    def trained_vector(self, job: ClientJob, update: ClientUpdate, trainer) -> np.ndarray:
        return update.upload["model"]  # the model the client holds after local training

    def eval_vector(self, job: ClientJob, trainer) -> np.ndarray:
        start, _ = self.adaptive_start(job, trainer, purpose="ala-eval")
        return start

    def adaptive_start(self, job: ClientJob, trainer, purpose: str) -> tuple[np.ndarray, np.ndarray | None]:
        """(theta_hat, learned W) for this client; (global, None) when it has no local model yet."""
        global_vec = job.payload["model"]
        if "top" not in job.state:
            return global_vec, None
        local = job.state["top"]
        first = "weights" not in job.state
        weights = np.ones_like(local) if first else job.state["weights"].astype(np.float32, copy=True)
        weights = self.learn_weights(job, trainer, global_vec, local, weights, first, purpose)
        start = global_vec.copy()
        start[self.top_mask] = local + (global_vec[self.top_mask] - local) * weights
        return start, weights

    def learn_weights(self, job: ClientJob, trainer, global_vec: np.ndarray, local: np.ndarray,
                      weights: np.ndarray, first: bool, purpose: str) -> np.ndarray:
        index = trainer.split_of(job.cid, "train")
        if len(index) == 0:
            return weights
        device, model = trainer.device, trainer.model
        trainer.set_vector(global_vec)  # lower layers (and buffers): the global model
        params = dict(model.named_parameters())
        local_t, diff_t, w_t, offset = {}, {}, {}, 0
        for s in self.top_slots:
            part = slice(offset, offset + s.size)
            local_t[s.name] = torch.tensor(local[part], device=device).view(s.shape)
            diff_t[s.name] = torch.tensor(global_vec[s.start : s.stop] - local[part], device=device).view(s.shape)
            w_t[s.name] = torch.tensor(weights[part], device=device).view(s.shape)
            offset += s.size
        with torch.no_grad():
            for name in self.top_names:
                params[name].copy_(local_t[name] + diff_t[name] * w_t[name])
        trainer.parameters(self.top_names)  # gradients for the top tensors only
        model.train()
        gen = rng(trainer.seed, purpose, job.round, job.cid)
        sample = gen.choice(index, size=max(1, int(self.params.rand_percent * len(index))), replace=False)
        eta = self.params.eta
        losses: list[float] = []
        try:
            for _ in range(self.params.max_start_epochs if first else 1):
                total, count = 0.0, 0
                for x, y in trainer.batches_from(job, sample):  # in the sampled order, counted, budget-aware
                    loss = F.cross_entropy(model(x), y)
                    if not math.isfinite(float(loss.detach())):
                        trainer.mark_nonfinite()
                        return self._flat(w_t)
                    for name in self.top_names:
                        params[name].grad = None
                    loss.backward()
                    with torch.no_grad():
                        for name in self.top_names:
                            w = w_t[name]
                            w.sub_(eta * params[name].grad * diff_t[name]).clamp_(0.0, 1.0)
                            params[name].copy_(local_t[name] + diff_t[name] * w)
                    total += float(loss.detach()) * len(y)
                    count += len(y)
                if not trainer.budget_left:
                    return self._flat(w_t)
                losses.append(total / count)
                n = self.params.num_pre_loss
                if len(losses) > n and float(np.std(losses[-n:])) < self.params.threshold:
                    break
        finally:
            trainer.parameters(None)
            for p in params.values():
                p.grad = None
        return self._flat(w_t)

    def _flat(self, tensors: dict[str, torch.Tensor]) -> np.ndarray:
        return np.concatenate([tensors[n].reshape(-1).cpu().numpy() for n in self.top_names]).astype(np.float32)
