"""FedEM (Marfoq, Neglia, Bellet, Kameni & Vidal, NeurIPS 2021, "Federated Multi-Task Learning under a Mixture of
Distributions", arXiv:2108.10252).

Every client's data distribution is modelled as a mixture of M shared components: p_t(y|x) = Σ_m π_tm p_m(y|x).
The M component models are shared and averaged by the server; the mixture weights π_t stay on client t. One round
of a sampled client (the paper's Algorithm 1, one EM iteration followed by local training):

    E-step   q_t(z_i = m) ∝ π_tm · exp(−ℓ(h_m(x_i), y_i))       for each training sample i, with the RECEIVED
                                                                  components and the client's stored π_t
    M-step   π_tm ← (1/n_t) Σ_i q_t(z_i = m)
    train    each component m on Σ_i q_t(z_i = m) · ℓ(h_m(x_i), y_i) / B   (per mini-batch of B samples)

and the server sets each component to the sample-weighted mean of the uploads (Σ_t n_t Θ_{t,m} / Σ_t n_t), the
paper's Algorithm 1 and the authors' aggregator (weights n_t / n). Prediction: the mixture of the components'
predictive distributions Σ_m π_tm softmax(h_m(x)) (the authors' LearnersEnsemble.evaluate_iterator); the model
returns its log, so cross-entropy is the mixture's negative log-likelihood and argmax its prediction.

How the components travel: as IFCA keeps k cluster models, `build_model` wraps M copies of the base model as
`components.0..M-1` plus a float buffer `mix` (the mixture weights the forward pass uses, never averaged), so the
global vector holds every component (checkpointed with it) and evaluation, which sees only the global vector and the
client's state, sets `mix` to the client's π. Component 0 is the run's initial model, the others independent draws
of the same layers' init (each module's reset_parameters, from the RNG the engine seeded, identical everywhere), as
in the authors' code (M independently initialised learners). The global vector's `mix` stays uniform 1/M: a client
that never trained is evaluated with the uniform mixture, its π's initial value (the authors' learners_weights
start at 1/M). Client state: "pi" (M floats, bounded whatever the client count); the per-sample responsibilities
are recomputed at every participation (they depend on the received components), so they are not stored.

Checked against the paper (Algorithm 1, Eq. for the E/M steps), the authors' code (omarfoq/FedEM:
client.MixtureClient.step -> update_sample_weights = softmax(log π − losses), update_learners_weights = mean,
learners.fit_epochs(weights)) and FL-bench (src/client/fedem.py). M = 3: the authors' experiment scripts
(paper_experiments/*/run_*.sh --n_learners 3) and FL-bench's default. Differences:
- the M components are trained together on the same shuffled mini-batches (one optimizer over all components;
  every component's update depends only on its own gradient, so this equals the authors' one-after-another
  training with the same batch order for SGD, momentum and Adam; a batch counts M steps on the virtual clock);
- FL-bench interpolates the components' LOGITS with π for prediction; here, as the paper and the authors' code,
  their probabilities;
- the E-step's forward passes over the training split are not counted on the virtual clock (as IFCA's cluster
  estimation); with a BatchNorm model a trailing batch of one sample is skipped (the trainer's rule), and such a
  sample gets the prior π as its responsibilities;
- the paper's decentralised variant (D-FedEM) and the authors' "locally tune" option are not implemented.
has_global_model is False: FedEM has M components, not one model.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Params
from algorithms.registry import register
from protocol.rng import rng


class FedEMParams(Params):
    n_components: int = Field(3, ge=1, description="number of mixture components M (authors' run_*.sh "
                                                   "--n_learners 3; FL-bench default 3)")


class MixtureModel(nn.Module):
    """M independent copies of a model; forward = log Σ_m mix_m softmax(component_m(x))."""

    def __init__(self, base: nn.Module, m: int):
        super().__init__()
        copies = [base]
        for _ in range(m - 1):
            fresh = copy.deepcopy(base)
            for module in fresh.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
            copies.append(fresh)
        self.components = nn.ModuleList(copies)
        self.register_buffer("mix", torch.full((m,), 1.0 / m))

    def component_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [c(x) for c in self.components]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logp = torch.stack([F.log_softmax(z, dim=1) for z in self.component_logits(x)], dim=0)  # M x B x C
        return torch.logsumexp(torch.log(self.mix)[:, None, None] + logp, dim=0)


def responsibilities(log_pi: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """E-step: q_im = π_m exp(−ℓ_im) / Σ_m' π_m' exp(−ℓ_im') (n x M, float64, log-sum-exp stable)."""
    a = log_pi[None, :] - losses
    a = a - a.max(axis=1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(axis=1, keepdims=True)


@register
class FedEM(Algorithm):
    """FedEM: M shared components; per client, EM on its mixture weights and sample-weighted training of each."""

    name = "fedem"
    Params = FedEMParams
    has_global_model = False
    source = ("Marfoq et al. 2021 (Algorithm 1: E-step, M-step, weighted local training, n_t-weighted averaging); "
              "M 3 from the authors' run_*.sh and FL-bench")

    def build_model(self, model: nn.Module) -> nn.Module:
        params = getattr(self, "params", None)  # a bare probe (built without hyperparameters) has none
        m = params.n_components if params is not None else FedEMParams.model_fields["n_components"].default
        return MixtureModel(model, m)

    def __init__(self, params: FedEMParams, ctx):
        self.mix = ctx.spec.slot("mix")
        if self.mix.size != params.n_components:
            raise ValueError(f"fedem: n_components={params.n_components} but the model was built with "
                             f"{self.mix.size} components (build_model needs the hyperparameters)")
        super().__init__(params, ctx)

    def shared_mask(self) -> np.ndarray:
        return ~self.spec.mask(["mix"])

    def uniform(self) -> np.ndarray:
        return np.full(self.params.n_components, 1.0 / self.params.n_components, dtype=np.float32)

    def with_mix(self, vec: np.ndarray, pi: np.ndarray | None) -> np.ndarray:
        out = vec.copy()
        out[self.mix.start : self.mix.stop] = self.uniform() if pi is None else pi
        return out

    # ----- client side --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_losses(self, job: ClientJob, trainer) -> np.ndarray:
        """ℓ(h_m(x_i), y_i) for every training sample i (split order) and component m (n x M, float64); NaN rows
        for samples the trainer skipped (a trailing single-sample batch with BatchNorm)."""
        index = trainer.split_of(job.cid, "train")
        out = np.full((len(index), self.params.n_components), np.nan)
        trainer.model.eval()
        pos = 0
        for x, y in trainer.batches_from(job, index, cost=0):  # the E-step's passes are not budgeted
            out[pos : pos + len(y)] = torch.stack(
                [F.cross_entropy(z, y, reduction="none") for z in trainer.model.component_logits(x)], dim=1
            ).double().cpu().numpy()
            pos += len(y)
        return out

    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        pi = job.state.get("pi", self.uniform()).astype(np.float64)
        trainer.set_vector(self.with_mix(job.payload["model"], job.state.get("pi")))
        losses = self.sample_losses(job, trainer)
        seen = ~np.isnan(losses).any(axis=1)
        with np.errstate(divide="ignore"):  # a component whose weight reached 0 stays at 0 (log 0 = -inf)
            q = np.tile(pi, (len(losses), 1))
            q[seen] = responsibilities(np.log(pi), losses[seen])
        new_pi = q.mean(axis=0) if len(q) else pi  # M-step
        weights = torch.as_tensor(q, dtype=torch.float32, device=trainer.device)
        self.weighted_training(job, trainer, weights)
        vec = self.with_mix(trainer.get_vector(), new_pi.astype(np.float32))
        entropy = -float(sum(p * math.log(p) for p in new_pi if p > 0))
        return trainer.update(job, upload={"model": vec}, state={"pi": new_pi.astype(np.float32)},
                              mix_entropy=entropy, mix_max=float(new_pi.max()))

    def weighted_training(self, job: ClientJob, trainer, weights: torch.Tensor) -> None:
        """Each component on its responsibility-weighted cross-entropy, all on the same shuffled batches
        (rng(seed, "fedem-batches", round, client)); a batch costs M steps."""
        model = trainer.model
        index = trainer.split_of(job.cid, "train")
        if len(index) == 0:
            return
        opt = trainer.optimizer(trainer.parameters(None))
        model.train()
        gen = rng(trainer.seed, "fedem-batches", job.round, job.cid)
        m = self.params.n_components
        for _ in range(self.ctx.train.local_epochs):
            order = gen.permutation(len(index))
            pos = 0
            for x, y in trainer.batches_from(job, index[order], cost=m):
                w = weights[torch.as_tensor(order[pos : pos + len(y)], device=weights.device)]  # B x M
                pos += len(y)
                per = torch.stack([F.cross_entropy(z, y, reduction="none") for z in model.component_logits(x)], 1)
                loss = (per * w).sum() / len(y)
                if not trainer.record_loss(loss):
                    return
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if not trainer.budget_left:
                return

    def eval_vector(self, job: ClientJob, trainer) -> np.ndarray:
        return self.with_mix(job.payload["model"], job.state.get("pi"))
