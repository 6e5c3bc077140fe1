"""FedProto (Tan et al., AAAI 2022, "FedProto: Federated Prototype Learning across Heterogeneous Clients").

Clients share class PROTOTYPES, not models. A prototype is the mean representation (the body's output, what
feeds `head.*`) of a class; every client keeps its whole model to itself (store: `personal`, starting from the
common initialisation) and trains it with

    ℓ = CE(head(z), y) + λ · mean_batch [y has a global prototype] · ‖z − C̄_y‖² / d      (z = body(x), d = dim z),

then uploads its local prototypes C_k^c (the mean z of its class-c samples) and class counts n_k^c. The server
averages them per class, weighted by the class counts (client-id order, float64):

    C̄^c = Σ_k n_k^c C_k^c / Σ_k n_k^c     over the round's clients that hold class c;

a class no client of the round holds keeps its previous global prototype. Prediction (the personalized model) is
by the NEAREST GLOBAL PROTOTYPE of the client's representation (logits = −‖z − C̄_c‖² / d, classes without a
global prototype ranked below all others), the paper's inference; `inference=head` uses the client's own head.

The global prototypes live in the model vector as float buffers `proto.means` (C x d) and `proto.known` (C,): the
evaluation of a client receives only the global vector, and the server's state across rounds is exactly that
vector (checkpointed with it, as pFedFDA's `fda.*` buffers). The rest of the global vector stays the common
initialisation and is never sent: bytes down count the known global prototypes (d floats + the class index
each), bytes up the client's prototypes (d floats + its count each). There is no global model
(has_global_model = False).

Checked against the authors' code (yuetan031/FedProto, lib/update.py update_weights_het and
test_inference_new_het_lt), PFLlib (clientproto.py, serverproto.py) and FL-bench (src/client/fedproto.py,
src/server/fedproto.py); the paper itself could not be re-read in this session. λ = 1: the authors' `--ld`
default and their MNIST/FEMNIST commands (CIFAR-10: 0.1), FL-bench's default. As in all three, the distance is
nn.MSELoss's per-feature mean (the ‖·‖² / d above), so λ keeps their scale, and the local prototypes are the
representations of the LAST local epoch's training batches (the authors reset them every epoch; here: the last
⌈n / batch⌉ batches, each training sample once when the epoch completes), so no extra pass over the data is
needed. Differences:
- aggregation is weighted by the class counts as in the paper; the authors, PFLlib and FL-bench average the
  clients' prototypes unweighted;
- inference compares with every known global prototype; the authors' evaluation only with the classes the
  client holds (`classes_list`), and FL-bench evaluates with the local head;
- the paper's clients all train every round; with partial participation a class absent from a round keeps
  its previous global prototype (FL-bench and PFLlib drop it until a client holding it returns).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Params, State
from algorithms.registry import register


class FedProtoParams(Params):
    lam: float = Field(1.0, ge=0, description="weight λ of the prototype distance (authors' --ld default and "
                                              "MNIST/FEMNIST runs, FL-bench: 1; authors' CIFAR-10 run: 0.1)")
    inference: Literal["prototype", "head"] = Field(
        "prototype", description="personalized prediction: nearest global prototype (the paper) or the local head")


class Prototypes(nn.Module):
    """The global prototypes as float buffers (part of the model vector): means C x d, known C (1 = has one)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.register_buffer("means", torch.zeros(num_classes, dim))
        self.register_buffer("known", torch.zeros(num_classes))


def nearest_prototype_logits(z: torch.Tensor, means: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """−‖z − C̄_c‖² / d per class (B x C); classes without a prototype get the farthest known distance + 1."""
    dist = torch.cdist(z, means).pow(2) / z.shape[1]
    far = dist[:, known].max(dim=1, keepdim=True).values + 1.0
    return -torch.where(known.unsqueeze(0), dist, far)


class ProtoModel(nn.Module):
    """body -> head in training; in evaluation mode, with global prototypes, the nearest prototype's class."""

    def __init__(self, body: nn.Module, head: nn.Module):
        super().__init__()
        if not isinstance(head, nn.Linear):
            raise ValueError(f"fedproto needs a linear classifier head (its input is the prototype space), got "
                             f"{type(head).__name__}")
        self.body = body
        self.head = head
        self.proto = Prototypes(head.out_features, head.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.body(x)
        known = self.proto.known > 0
        if self.training or not bool(known.any()):
            return self.head(z)
        return nearest_prototype_logits(z, self.proto.means, known)


def prototype_loss(z: torch.Tensor, y: torch.Tensor, means: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """(1/B) Σ_i known[y_i] · ‖z_i − C̄_{y_i}‖² / d: samples of a class without a global prototype add 0."""
    return (((z - means[y]) ** 2).mean(dim=1) * known[y]).sum() / len(y)


def class_means(feats: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class mean features (zeros where a class is absent) and class counts, computed in float64."""
    sums = torch.zeros(num_classes, feats.shape[1], dtype=torch.float64, device=feats.device)
    sums.index_add_(0, labels, feats.double())
    counts = torch.bincount(labels, minlength=num_classes).double()
    means = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], torch.zeros_like(sums))
    return means.float().cpu().numpy(), counts.float().cpu().numpy()


@register
class FedProto(Algorithm):
    """FedProto: local models; clients share class prototypes (mean features) and predict by the nearest global one."""

    name = "fedproto"
    Params = FedProtoParams
    source = ("Tan et al. 2022; λ 1 (authors' --ld default, FL-bench), nearest-prototype inference (the paper), "
              "count-weighted prototype average (the paper)")
    has_global_model = False  # the global vector holds prototypes, not a trained model

    def build_model(self, model: nn.Module) -> nn.Module:
        return ProtoModel(model.body, model.head)

    def __init__(self, params: FedProtoParams, ctx):
        super().__init__(params, ctx)
        self.means, self.known = self.spec.slot("proto.means"), self.spec.slot("proto.known")
        self.dim = self.means.shape[1]

    def shared_mask(self) -> np.ndarray:
        return self.spec.mask(["proto.means", "proto.known"])  # all that is averaged; the model is personal

    def prototypes_of(self, vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(means C x d, known C as bool) of a vector's prototype buffers."""
        m, k = self.means, self.known
        return vec[m.start : m.stop].reshape(m.shape), vec[k.start : k.stop] > 0

    # ----- server side --------------------------------------------------------------------------------------------
    def aggregate(self, global_vec: np.ndarray, updates: list[ClientUpdate], notes=None) -> np.ndarray:
        means, known = (a.astype(np.float64) for a in self.prototypes_of(global_vec))
        total = np.zeros_like(means)
        weight = np.zeros(len(means), dtype=np.float64)
        for u in sorted(updates, key=lambda u: u.cid):
            counts = u.upload["counts"].astype(np.float64)
            total += counts[:, None] * u.upload["protos"].astype(np.float64)
            weight += counts
        held = weight > 0
        means[held] = total[held] / weight[held, None]
        known[held] = 1.0
        new = global_vec.copy()
        new[self.means.start : self.means.stop] = means.reshape(-1).astype(np.float32)
        new[self.known.start : self.known.stop] = known.astype(np.float32)
        return new

    def bytes_down(self, payload: State) -> int:
        return 4 * (self.dim + 1) * int(self.prototypes_of(payload["model"])[1].sum())

    def bytes_up(self, update: ClientUpdate) -> int:
        counts = update.upload.get("counts")
        return 0 if counts is None else 4 * (self.dim + 1) * int((counts > 0).sum())

    # ----- client side --------------------------------------------------------------------------------------------
    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        means_np, known_np = self.prototypes_of(job.payload["model"])
        means = torch.as_tensor(means_np, device=trainer.device)
        known = torch.as_tensor(known_np, dtype=torch.float32, device=trainer.device)
        trainer.set_vector(self.start_vector(job))
        model = trainer.model
        opt = trainer.optimizer(trainer.parameters(None))
        model.train()
        per_epoch = math.ceil(len(trainer.split_of(job.cid, "train")) / self.ctx.train.batch_size)
        recent: deque = deque(maxlen=max(per_epoch, 1))  # the last epoch's batches: each training sample once
        total, batches = 0.0, 0
        for x, y in trainer.batches(job, self.ctx.train.local_epochs):
            z = model.body(x)
            reg = prototype_loss(z, y, means, known)
            loss = F.cross_entropy(model.head(z), y) + self.params.lam * reg
            if not trainer.record_loss(loss):
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            recent.append((z.detach(), y))
            total += float(reg.detach())
            batches += 1
        if recent:
            protos, counts = class_means(torch.cat([z for z, _ in recent]), torch.cat([y for _, y in recent]),
                                         self.ctx.num_classes)
        else:  # no step (budget): nothing to share
            protos = np.zeros_like(means_np)
            counts = np.zeros(self.ctx.num_classes, dtype=np.float32)
        vec = trainer.get_vector()
        metrics = {"proto_loss": total / batches} if batches and math.isfinite(total) else {}
        return trainer.update(job, upload={"protos": protos, "counts": counts}, state=self.personal_state(vec),
                              **metrics)

    def eval_vector(self, job: ClientJob, trainer) -> np.ndarray:
        """The client's own model with the current global prototypes (nearest-prototype prediction); with
        inference=head the prototypes are marked unknown, so the model predicts with its head."""
        vec = self.start_vector(job)
        if self.params.inference == "head":
            vec[self.known.start : self.known.stop] = 0.0
        return vec
