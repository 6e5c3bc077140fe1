"""FedDBE (Zhang, Hua, Cao, Wang, Song, Xue, Ma & Guan, NeurIPS 2023, "Eliminating Domain Bias for Federated
Learning in Representation Space", arXiv:2311.14975): FedAvg with the Domain Bias Eliminator (DBE).

DBE has two parts, both on the representation z = body(x) (the input of `head.*`):
- PRBM, the personalized representation bias memory: a trainable vector z̄_p (dim z) per client, added to the
  representation before the head, head(z + z̄_p), and trained with the model; it never leaves the client
  (client state "personal"), so the body learns the client-invariant part and z̄_p the client's bias;
- MR, mean regularisation: κ · mean_d ½ (z̄_t − z̄_g)², pulling the client's mean representation z̄_t toward the
  global mean representation z̄_g. z̄_t is a running mean over the local mini-batches,
  z̄_t ← (1 − μ) z̄_t.detach() + μ · mean_batch(z), restarted each round (μ = 1: the current batch's mean).

z̄_g is computed once, from the first round's statistics (the paper's initialization period): while the global
vector has no z̄_g yet (its float buffer `dbe_ready` is 0), clients train plain FedAvg (no PRBM, no MR) and upload
their mean representation over the last local epoch (each training sample once) with its sample count; the server
sets z̄_g = Σ_k n_k z̄_k / Σ_k n_k (sample-weighted, client-id order, float64) into the float buffer `dbe_mean` and
`dbe_ready` = 1, and keeps them fixed afterwards (they travel in the global vector and its checkpoint). Body and head
are averaged as in FedAvg; the global vector's PRBM stays 0, so global_acc is the generic model and a client that
never trained is evaluated with it; personal_acc uses head(body(x) + z̄_p).

Checked against the authors' code (TsingZ0/DBE system/flcore/clients/clientDBE.py, servers/serverDBE.py) and PFLlib
(clientdbe.py, serverdbe.py, the same code). κ = 50 and μ = 1: the authors' run_me.sh (-klw 50 -mo 1). As theirs,
the MR term is taken on z (without the PRBM), the PRBM starts at 0, the running mean restarts every round.
Differences:
- the authors' initialization period is an extra local training of ALL clients before round 1 whose models are
  discarded; here it is the first round's sampled clients, whose models are averaged as a normal FedAvg round (a
  round with no kept update leaves z̄_g unset and the next round is the initialization again);
- their clients upload the running mean after training (with μ = 1: the LAST batch's mean); here the mean over the
  last epoch's batches (every training sample once), the paper's mean representation of the client's data;
- the PRBM is trained by the run's optimizer together with the model (its momentum and weight decay apply); the
  authors give it its own plain SGD with the same learning rate.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Params
from algorithms.registry import register

AUTHORS = "TsingZ0/DBE system/run_me.sh"


class FedDBEParams(Params):
    kappa: float = Field(50.0, ge=0, description="weight κ of the mean regularisation (authors' run_me.sh -klw 50)")
    momentum: float = Field(1.0, gt=0, le=1, description="μ of the running mean of representations "
                                                          "(authors' run_me.sh -mo 1: the batch mean)")


def feature_dim(head: nn.Module) -> int:
    """The representation's size: in_features of the head's first linear layer."""
    for m in head.modules():
        if isinstance(m, nn.Linear):
            return m.in_features
    raise ValueError(f"feddbe needs a linear layer in the classifier head (its input is the representation), got "
                     f"{type(head).__name__}")


class DBEModel(nn.Module):
    """head(body(x) + prbm); buffers dbe_mean (the global mean representation) and dbe_ready (1 once it is set)."""

    def __init__(self, body: nn.Module, head: nn.Module):
        super().__init__()
        dim = feature_dim(head)
        self.body = body
        self.head = head
        self.prbm = nn.Parameter(torch.zeros(dim))
        self.register_buffer("dbe_mean", torch.zeros(dim))
        self.register_buffer("dbe_ready", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x) + self.prbm)


def global_mean(means: list[np.ndarray], counts: list[float]) -> np.ndarray:
    """z̄_g = Σ_k n_k z̄_k / Σ_k n_k (float64)."""
    total = sum(n * m.astype(np.float64) for m, n in zip(means, counts, strict=True))
    return total / float(sum(counts))


@register
class FedDBE(Algorithm):
    """FedDBE: FedAvg + a local representation bias (PRBM) + regularising the mean representation to the global one."""

    name = "feddbe"
    Params = FedDBEParams
    source = f"Zhang et al. 2023 (PRBM + MR, first-round global mean); κ 50, μ 1 from the authors' ({AUTHORS})"

    def build_model(self, model: nn.Module) -> nn.Module:
        return DBEModel(model.body, model.head)

    def __init__(self, params: FedDBEParams, ctx):
        super().__init__(params, ctx)
        self.mean_slot, self.ready_slot = self.spec.slot("dbe_mean"), self.spec.slot("dbe_ready")

    def shared_mask(self) -> np.ndarray:
        return ~self.spec.mask(["prbm"])

    def ready(self, vec: np.ndarray) -> bool:
        return bool(vec[self.ready_slot.start] > 0)

    # ----- server side --------------------------------------------------------------------------------------------
    def aggregate(self, global_vec: np.ndarray, updates: list[ClientUpdate], notes=None) -> np.ndarray:
        new = super().aggregate(global_vec, updates, notes)
        m, r = self.mean_slot, self.ready_slot
        new[m.start : m.stop] = global_vec[m.start : m.stop]  # fixed once set: never averaged
        new[r.start : r.stop] = global_vec[r.start : r.stop]
        stats = [u for u in sorted(updates, key=lambda u: u.cid) if "mean" in u.upload and u.upload["count"][0] > 0]
        if not self.ready(global_vec) and stats:
            g = global_mean([u.upload["mean"] for u in stats], [float(u.upload["count"][0]) for u in stats])
            new[m.start : m.stop] = g.astype(np.float32)
            new[r.start : r.stop] = 1.0
        return new

    def bytes_up(self, update: ClientUpdate) -> int:
        extra = 4 * (self.mean_slot.size + 1) if "mean" in update.upload else 0
        return super().bytes_up(update) + extra

    # ----- client side --------------------------------------------------------------------------------------------
    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        vec = self.start_vector(job)
        trainer.set_vector(vec)
        model = trainer.model
        ready = self.ready(vec)
        g = torch.as_tensor(vec[self.mean_slot.start : self.mean_slot.stop], device=trainer.device)
        names = None if ready else [n for n, _ in model.named_parameters() if n != "prbm"]
        opt = trainer.optimizer(trainer.parameters(names))  # initialization round: plain FedAvg, PRBM untouched
        model.train()
        mu, kappa = self.params.momentum, self.params.kappa
        running = torch.zeros_like(g)
        per_epoch = math.ceil(len(trainer.split_of(job.cid, "train")) / self.ctx.train.batch_size)
        recent: deque = deque(maxlen=max(per_epoch, 1))  # the last epoch's representations (initialization)
        mr_total, batches = 0.0, 0
        for x, y in trainer.batches(job, self.ctx.train.local_epochs):
            z = model.body(x)
            if ready:
                running = (1.0 - mu) * running.detach() + mu * z.mean(dim=0)
                mr = 0.5 * ((running - g) ** 2).mean()
                loss = F.cross_entropy(model.head(z + model.prbm), y) + kappa * mr
                mr_total += float(mr.detach())
            else:
                loss = F.cross_entropy(model.head(z), y)
                recent.append(z.detach())
            if not trainer.record_loss(loss):
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            batches += 1
        trainer.parameters(None)
        out = trainer.get_vector()
        upload = {"model": out}
        metrics = {}
        if ready and batches:
            metrics["mr_loss"] = mr_total / batches
        if not ready:
            feats = torch.cat(list(recent)) if recent else torch.zeros(0, len(g), device=trainer.device)
            mean = feats.double().mean(dim=0) if len(feats) else torch.zeros(len(g), dtype=torch.float64)
            upload |= {"mean": mean.float().cpu().numpy(), "count": np.array([len(feats)], dtype=np.float32)}
        return trainer.update(job, upload=upload, state=self.personal_state(out), **metrics)

    def eval_vector(self, job: ClientJob, trainer) -> np.ndarray:
        return self.start_vector(job)
