"""FedCP (Zhang, Hua, Wang, Song, Xue, Ma & Guan, KDD 2023, "FedCP: Separating Feature Information for Personalized
Federated Learning via Conditional Policy", arXiv:2307.01217): a conditional policy network (CPN) splits each
sample's feature into a global part, fed to a global head, and a personalized part, fed to the client's own head.

Model (the base BodyHead, wrapped): feature extractor f (body.*), personalized head h_p (head.*, the client's own),
global head h_g (ghead.*, frozen during local training) and the CPN (cs.*: Linear(d, 2d), LayerNorm(2d), ReLU).
For a sample with feature z = f(x) (d dims) and the client's context c = normalise(sum_k W_p[k, :]) (the column sums
of its personalized head's weight matrix, L2-normalised; fixed during a round):
    a = CPN(z * c) viewed as (2, d);   s = softmax over the pair of (a + g) / tau,  g ~ Gumbel(0, 1) (training)
    s_p = s[0], s_g = s[1] (s_p + s_g = 1 elementwise);   z_p = z * s_p,  z_g = z * s_g  (z_p + z_g = z)
    logits = h_p(z_p) + h_g(z_g)
Local training (the run's local epochs and optimizer) updates f, h_p and the CPN on
    CE(logits, y) + lam * MMD(z, f_0(x))          (f_0: the received global extractor, frozen)
with the authors' RBF-kernel MMD (bandwidths 10, 15, 20, 50). The client uploads f, the CPN and the global head
0.5 * h_p + 0.5 * h_g; the server averages all three, weighted by training samples. h_p never leaves the client.

Checked against the authors' code (TsingZ0/FedCP system/flcore/clients/clientcp.py, servers/servercp.py, run_me.sh)
and PFLlib (system/flcore/clients/clientcp.py, servers/servercp.py, same author); the paper's method section was
not available to me in this session. lam = 5: the authors' run_me.sh (-lam 5); tau = 1 and soft (not hard)
Gumbel-softmax: both codes. Differences:
- Gumbel noise is drawn from the named stream rng(seed, "fedcp-gumbel", round, client), one draw per batch (both
  codes call F.gumbel_softmax on the global torch RNG). Evaluation uses the noise-free policy s = softmax(a) so a
  client's personalized model is a deterministic function (both codes draw noise at test time too);
- the context: PFLlib's column sums of the personalized head's weights, used here from the client's first round
  (PFLlib starts from torch.rand until the server first sends the global head); the authors' KDD repository sums
  |W_g(previous) - W_g(new)| of the global head instead;
- a multi-layer head would need the product of its weight matrices; only a linear head is supported (the
  harness's models all end in one nn.Linear);
- the authors' loader drops the last incomplete batch; the harness's trainer does not.
There is no usable global model (the global vector's personalized head is the initialisation): has_global_model
False. A client that never trained is evaluated with the global f, CPN and h_g and the initial h_p.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Params
from algorithms.fedrep import mask_names
from algorithms.registry import register
from protocol.rng import torch_generator

BANDWIDTHS = (10.0, 15.0, 20.0, 50.0)  # the authors' MMD(..., 'rbf')


class FedCPParams(Params):
    lam: float = Field(5.0, ge=0, description="weight of the MMD between the local and the received global "
                                              "features (authors' run_me.sh -lam 5)")
    tau: float = Field(1.0, gt=0, description="Gumbel-softmax temperature of the policy (authors, PFLlib: 1)")


def rbf_mmd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The authors' empirical MMD: mean(K_xx + K_yy - 2 K_xy), K = sum_a exp(-||.-.||^2 / (2a)), a in 10,15,20,50."""
    xx, yy, xy = x @ x.T, y @ y.T, x @ y.T
    rx, ry = xx.diag().unsqueeze(0).expand_as(xx), yy.diag().unsqueeze(0).expand_as(yy)
    dxx, dyy, dxy = rx.T + rx - 2.0 * xx, ry.T + ry - 2.0 * yy, rx.T + ry - 2.0 * xy
    k = sum(torch.exp(-0.5 * dxx / a) + torch.exp(-0.5 * dyy / a) - 2.0 * torch.exp(-0.5 * dxy / a)
            for a in BANDWIDTHS)
    return k.mean()


def policy(scores: torch.Tensor, tau: float, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(s_p, s_g) from the CPN's B x 2d output: softmax over the pair of (scores + Gumbel noise) / tau."""
    a = scores.view(scores.shape[0], 2, -1)
    if noise is not None:
        a = a + noise
    s = torch.softmax(a / tau, dim=1)
    return s[:, 0, :], s[:, 1, :]


def context_of(head: nn.Linear) -> torch.Tensor:
    """The client's context: column sums of its personalized head's weight matrix, L2-normalised (1 x d)."""
    return F.normalize(head.weight.detach().sum(dim=0, keepdim=True), p=2, dim=1)


class CPModel(nn.Module):
    """f -> (CPN split) -> h_p(z_p) + h_g(z_g); in this forward (evaluation) the policy is noise-free."""

    def __init__(self, body: nn.Module, head: nn.Module, tau: float):
        super().__init__()
        if not isinstance(head, nn.Linear):
            raise ValueError(f"fedcp needs a linear classifier head, got {type(head).__name__}")
        d = head.in_features
        self.body, self.head, self.ghead = body, head, copy.deepcopy(head)
        self.cs = nn.Sequential(nn.Linear(d, 2 * d), nn.LayerNorm(2 * d), nn.ReLU())
        self.tau = tau

    def split(self, z: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_p, z_g) = (z * s_p, z * s_g): the personalized and the global part of each feature."""
        s_p, s_g = policy(self.cs(z * context_of(self.head)), self.tau, noise)
        return z * s_p, z * s_g

    def logits(self, z: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        z_p, z_g = self.split(z, noise)
        return self.head(z_p) + self.ghead(z_g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.body(x))


def gumbel(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """-log(Exp(1)) draws, as torch's gumbel_softmax, from a named generator."""
    return -torch.empty(shape).exponential_(generator=gen).log()


@register
class FedCP(Algorithm):
    """FedCP: a conditional policy splits each feature into a personalized and a global part, one head each."""

    name = "fedcp"
    Params = FedCPParams
    needs_split = True
    has_global_model = False
    source = ("Zhang et al. 2023 (CPN feature split, global head 0.5 h_p + 0.5 h_g, MMD to the global extractor); "
              "lam 5 (TsingZ0/FedCP run_me.sh), tau 1, RBF bandwidths 10/15/20/50 (authors' code, PFLlib)")

    def build_model(self, model: nn.Module) -> nn.Module:
        return CPModel(model.body, model.head, self.params.tau)

    def __init__(self, params: FedCPParams, ctx):
        super().__init__(params, ctx)
        self.trained = mask_names(self.spec, ~self.spec.mask(n for n in self.spec.names if n.startswith("ghead.")))
        g = self.spec.mask(n for n in self.spec.names if n.startswith("ghead."))
        self.ghead, self.head = g, self.spec.head_mask()

    def shared_mask(self):
        return ~self.spec.head_mask()  # f, the CPN and the global head; the personalized head stays

    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        trainer.set_vector(self.start_vector(job))
        model = trainer.model
        frozen = copy.deepcopy(model.body).eval()  # f_0, the received global extractor
        for p in frozen.parameters():
            p.requires_grad_(False)
        opt = trainer.optimizer(trainer.parameters(self.trained))
        context = context_of(model.head)  # fixed during the round
        gen = torch_generator(trainer.seed, "fedcp-gumbel", job.round, job.cid)
        model.train()
        mmd_sum, batches = 0.0, 0
        for x, y in trainer.batches(job, self.ctx.train.local_epochs):
            z = model.body(x)
            scores = model.cs(z * context)
            noise = gumbel((len(x), 2, z.shape[1]), gen).to(z.device)
            s_p, s_g = policy(scores, self.params.tau, noise)
            logits = model.head(z * s_p) + model.ghead(z * s_g)
            with torch.no_grad():
                z0 = frozen(x)
            mmd = rbf_mmd(z, z0)
            loss = F.cross_entropy(logits, y) + self.params.lam * mmd
            if not trainer.record_loss(loss):
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            mmd_sum += float(mmd.detach())
            batches += 1
        trainer.parameters(None)
        vec = trainer.get_vector()
        upload = vec.copy()  # the global head sent up: 0.5 h_p + 0.5 h_g (authors' generate_upload_head)
        upload[self.ghead] = 0.5 * vec[self.head] + 0.5 * vec[self.ghead]
        metrics = {"fedcp_mmd": mmd_sum / batches} if batches else {}
        return trainer.update(job, upload={"model": upload}, state=self.personal_state(vec), **metrics)

    def eval_vector(self, job: ClientJob, trainer):
        return self.start_vector(job)
