"""FedLC (Zhang et al., ICML 2022, "Federated Learning with Label Distribution Skew via Logits Calibration").

FedAvg whose local loss calibrates the logits by the client's label distribution: with n_c the client's number
of training samples of class c, the class-c logit is lowered by a pairwise label margin τ · n_c^{-1/4} before
the softmax cross-entropy,

    ℓ_cal(x, y) = −log( e^{f_y(x) − τ n_y^{-1/4}} / Σ_c e^{f_c(x) − τ n_c^{-1/4}} ),

so rare classes need a larger margin and the local model overfits less to its majority classes. Only the loss
changes: prediction (evaluation) uses the raw logits of the global model; the server is FedAvg's
(sample-weighted average of full models). Nothing is kept per client: n_c is read from the training split.

Checked against the paper's calibrated loss and known implementations: FL-bench (src/client/fedlc.py,
src/server/fedlc.py) and PFLlib (clientlc.py) compute the same cross-entropy of logits − τ n_c^{-1/4} over all
classes. The paper's printed loss leaves the true class out of the denominator (Σ_{c≠y}); read literally that
ratio grows without bound as f_y grows, so the loss is unbounded below, and FL-bench reports that training with
it collapsed (FL-bench issue #5). This module uses the normalised softmax above, as FL-bench and PFLlib do; then
τ = 0 is plain cross-entropy and trains bit for bit like FedAvg (tested). Classes the client does not hold
(n_c = 0) get the limit of the margin, +inf: their calibrated logit is −inf and their probability exactly zero
(FL-bench floors n_c at 1e-8, a margin of 100 τ, nearly the same). Default τ = 1.0: FL-bench's default (the
paper's per-data-set value was not retrievable in this session).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Params
from algorithms.registry import register


class FedLCParams(Params):
    tau: float = Field(1.0, ge=0, description="calibration strength τ of the margin τ·n_c^(-1/4) (FL-bench "
                                              "default 1.0); 0 = plain cross-entropy (FedAvg)")


def calibration(counts: np.ndarray, tau: float) -> np.ndarray:
    """The per-class margin τ · n_c^{-1/4}; +inf for classes with n_c = 0 (when τ > 0), all zeros for τ = 0."""
    counts = np.asarray(counts, dtype=np.float64)
    if tau == 0:
        return np.zeros(len(counts), dtype=np.float32)
    with np.errstate(divide="ignore"):
        margin = tau * np.power(counts, -0.25)  # n = 0 -> inf
    return margin.astype(np.float32)


def calibrated_cross_entropy(logits: torch.Tensor, y: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Batch mean of −log softmax(logits − margin)_y."""
    return F.cross_entropy(logits - margin, y)


@register
class FedLC(Algorithm):
    """FedLC: FedAvg with a cross-entropy on logits calibrated by the client's class counts (margin τ·n_c^(-1/4))."""

    name = "fedlc"
    Params = FedLCParams
    source = "Zhang et al. 2022 (calibrated cross-entropy); τ 1.0 (FL-bench)"

    def personal_is_global(self) -> bool:
        return True

    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        counts = np.bincount(trainer.labels(job.cid, "train"), minlength=self.ctx.num_classes)
        margin = torch.as_tensor(calibration(counts, self.params.tau), device=trainer.device)
        trainer.set_vector(job.payload["model"])
        trainer.train(job, loss_fn=lambda logits, y: calibrated_cross_entropy(logits, y, margin))
        return trainer.update(job, upload={"model": trainer.get_vector()}, state=job.state)
