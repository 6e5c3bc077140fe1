"""FedAS (Yang, Huang & Ye, CVPR 2024, "FedAS: Bridging Inconsistency in Personalized Federated Learning"):
Federated Parameter-Alignment and Client-Synchronization.

Each client keeps its whole model (client state "model": the personalized model, the one it is evaluated with).
A sampled client
1. PARAMETER ALIGNMENT: computes its class prototypes with its OWN previous model, P_c = mean of body(x) over its
   training samples of class c, then trains the RECEIVED global body alone (`align_epochs` epochs of plain SGD at
   `align_lr`) on Σ_{c in batch} mean_{i: y_i = c} ‖body(x_i) − P_c‖² / d, so the shared part takes in the client's
   local knowledge before it replaces the client's own body (the head stays the client's own);
2. trains the whole model (aligned global body + own head) with the run's local SGD;
3. measures the trace of its empirical Fisher information on the training split after training,
   F_k = Σ_batches Σ_params ‖∇_θ mean_batch(−log p_θ(y|x))‖²,
   and uploads its model with F_k.
CLIENT SYNCHRONISATION: the server averages the uploaded models with weights F_k / Σ_j F_j (client-id order, float64)
instead of sample counts, so an under-trained ("straggler") client, whose Fisher trace is small, weighs less. A
client that never trained starts from (and is evaluated with) the global model.

Checked against the authors' code (xiyuanyang45/FedAS system/flcore/clients/clientas.py, servers/serveras.py),
PFLlib (clientas.py, serveras.py, the same code) and FL-bench (src/client/fedas.py, src/server/fedas.py). Defaults:
one alignment epoch of SGD at lr 0.01, the authors' clientas.set_parameters (hard-coded) and FL-bench's
--alignment_epoch 1 / --alignment_lr 0.01. The alignment loss is the authors' nn.MSELoss between each sample's
features and its class prototype, summed over the batch's classes. Differences:
- a client's first participation skips the alignment: it has no local model yet (the authors' clients hold the
  initial model and align to its prototypes; FL-bench aligns to the received model's own prototypes);
- FL-bench's clients start local training from the full global model (global head) and align to the batch MEAN of
  a class's features; here, as the authors, the head stays the client's own and every sample is aligned;
- the alignment uses the run's batch size (the authors: 16); the alignment batches count on the virtual clock, the
  Fisher pass (one backward per batch after training) does not, so a step budget never truncates the weight;
- the authors' non-sampled clients also compute (and only log) their Fisher traces each round; here only the
  sampled ones do, which is all the aggregation uses. If every uploaded trace is 0 the weights fall back to samples.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Params
from algorithms.registry import register
from protocol.params import ParamSpec

AUTHORS = "xiyuanyang45/FedAS clientas.py"


class FedASParams(Params):
    align_epochs: int = Field(1, ge=0, description="epochs of parameter alignment of the received body (authors' "
                                                   "clientas.py: 1; FL-bench --alignment_epoch 1)")
    align_lr: float = Field(0.01, gt=0, description="plain-SGD learning rate of the alignment (authors' "
                                                    "clientas.py: 0.01; FL-bench --alignment_lr 0.01)")


def fisher_weights(traces: list[float], samples: list[float]) -> np.ndarray:
    """F_k / Σ F_j (float64); sample weights when every trace is 0."""
    f = np.asarray(traces, dtype=np.float64)
    if f.sum() > 0:
        return f / f.sum()
    n = np.asarray(samples, dtype=np.float64)
    return n / n.sum()


def body_names(spec: ParamSpec, model) -> list[str]:
    return [n for n, _ in model.named_parameters() if not spec.is_head(n)]


@register
class FedAS(Algorithm):
    """FedAS: align the received body to the client's own prototypes, train, aggregate by Fisher-information traces."""

    name = "fedas"
    Params = FedASParams
    source = f"Yang et al. 2024 (alignment to local prototypes, Fisher-trace aggregation); 1 epoch, lr 0.01 ({AUTHORS})"

    def __init__(self, params: FedASParams, ctx):
        super().__init__(params, ctx)
        head = self.spec.head_mask()
        if head.all() or not head.any():
            raise ValueError(f"fedas needs a body and a classifier head (tensors named head.*, harness.models.BodyHead)"
                             f"; this model has tensors: {', '.join(self.spec.names)}")

    # ----- server side --------------------------------------------------------------------------------------------
    def aggregate(self, global_vec: np.ndarray, updates: list[ClientUpdate], notes=None) -> np.ndarray:
        if not updates:
            return global_vec
        ordered = sorted(updates, key=lambda u: u.cid)
        w = fisher_weights([float(u.upload["fisher"][0]) for u in ordered], [u.num_samples for u in ordered])
        total = np.zeros(self.spec.size, dtype=np.float64)
        for wk, u in zip(w, ordered, strict=True):
            total += wk * u.upload["model"].astype(np.float64)
        return total.astype(np.float32)

    # ----- client side --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def prototypes(self, job: ClientJob, trainer) -> tuple[torch.Tensor, torch.Tensor]:
        """(C x d class means of body(x) under the loaded model, C bools: the class has samples), float32."""
        model = trainer.model
        model.eval()
        sums, counts = None, torch.zeros(self.ctx.num_classes, device=trainer.device)
        for x, y in trainer.batches_from(job, trainer.split_of(job.cid, "train"), cost=0):
            z = model.body(x).double()
            if sums is None:
                sums = torch.zeros(self.ctx.num_classes, z.shape[1], dtype=torch.float64, device=trainer.device)
            sums.index_add_(0, y, z)
            counts += torch.bincount(y, minlength=self.ctx.num_classes)
        known = counts > 0
        return (sums / counts.clamp(min=1)[:, None].double()).float(), known

    def align(self, job: ClientJob, trainer, protos: torch.Tensor, known: torch.Tensor) -> float:
        """Train the loaded body alone on the per-sample MSE to its class prototype; returns the mean loss."""
        model = trainer.model
        opt = torch.optim.SGD(trainer.parameters(body_names(self.spec, model)), lr=self.params.align_lr)
        model.train()
        total, steps = 0.0, 0
        for x, y in trainer.batches(job, self.params.align_epochs, purpose="fedas-align"):
            z = model.body(x)
            has = known[y]
            if not bool(has.any()):
                continue
            loss = sum(F.mse_loss(z[y == c], protos[c].expand_as(z[y == c])) for c in torch.unique(y[has]))
            if not torch.isfinite(loss):
                trainer.mark_nonfinite()
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
        trainer.parameters(None)
        return total / steps if steps else float("nan")

    def fisher_trace(self, job: ClientJob, trainer) -> float:
        """Σ_batches Σ_params ‖∇ mean-batch NLL‖² on the training split, the model in evaluation mode."""
        model = trainer.model
        model.eval()
        params = trainer.parameters(None)
        total = 0.0
        for x, y in trainer.batches_from(job, trainer.split_of(job.cid, "train"), cost=0):
            nll = F.cross_entropy(model(x), y)
            grads = torch.autograd.grad(nll, params, allow_unused=True)
            total += float(sum((g.double() ** 2).sum() for g in grads if g is not None))
        return total

    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        received = job.payload["model"]
        own = job.state.get("model")
        metrics = {}
        if own is not None:
            trainer.set_vector(own)
            protos, known = self.prototypes(job, trainer)
            start = own.copy()
            body = ~self.spec.head_mask()
            start[body] = received[body]  # the received body with the client's own head
            trainer.set_vector(start)
            if self.params.align_epochs and bool(known.any()):
                loss = self.align(job, trainer, protos, known)
                if np.isfinite(loss):
                    metrics["align_loss"] = loss
        else:
            trainer.set_vector(received)
        trainer.train(job)
        fisher = self.fisher_trace(job, trainer)
        vec = trainer.get_vector()
        return trainer.update(job, upload={"model": vec, "fisher": np.array([fisher], dtype=np.float64)},
                              state={"model": vec}, fisher_trace=fisher, **metrics)

    def eval_vector(self, job: ClientJob, trainer) -> np.ndarray:
        own = job.state.get("model")
        return job.payload["model"] if own is None else own
