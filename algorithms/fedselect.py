"""FedSelect (Tamirisa, Xie, Bao, Zhou, Arel, Shamsian, CVPR 2024, "FedSelect: Personalized Federated Learning with
Customized Selection of Parameters for Fine-Tuning", arXiv:2404.02478).

Each client k holds a binary mask m_k over the model's elements (1 = personal, 0 = shared), all zeros at first, and
grows it like an inverted lottery-ticket search: the elements that move most in local training become personal.
One participation of client k (the paper's Algorithm 1 with GradSelect and LocalAlt):

1. start model: the global value on shared elements, k's own stored value on personal ones;
2. LocalAlt: for each local epoch, one epoch on the personal elements (shared ones frozen), then one epoch on the
   shared elements (personal ones frozen);
3. GradSelect: delta = |theta_after - theta_start|; in every candidate tensor of n elements with c personal, the
   min(round(p (n - c)), floor(alpha n) - c) still-shared elements of largest delta become personal (ties: lower
   index). The personal set only grows, by the rate p of what is still shared, up to the limit alpha;
4. k keeps its personal values (state) and uploads its model and new mask; the server averages each element over
   the clients that share it (equal weights); an element every uploader keeps personal keeps its global value.

Checked against the paper (abstract and method: growing per-client subnetworks, rate p, limit alpha, LocalAlt,
per-index aggregation; its full text was not retrievable here) and the authors' code (lapisrocks/fedselect:
fedselect.py, lottery_ticket.py, broadcast.py, pflopt/optimizers.py, utils/options.py). FL-bench (KarhouTam/FL-bench)
has no FedSelect. Differences from the authors' code, following the paper:
- the code grows masks only every --lth_epoch_iters=3 rounds (not in round 0), with delta over those three rounds;
  here GradSelect runs at every participation, delta over its LocalAlt (the paper's GradSelect);
- the code checks the limit before growing, so a tensor can end above alpha (e.g. 0.78 -> 0.84 with p=0.25,
  alpha=0.8) and takes every tie at the cutoff; here at most floor(alpha n) elements, exactly the count above;
- the code aggregates and broadcasts with the mask of the round's training, so a newly personal element first
  receives the server's average; here (Algorithm 1) it keeps the client's trained value and is not uploaded;
- the code personalizes only tensors named *weight*; here every trainable tensor (`candidates=weights` gives the
  code's choice); buffers (BatchNorm statistics) are never personal;
- with an empty personal set (a client's first participation) the personal epoch is skipped (the code runs it with
  no effect on the model but its compute counted).
Training uses the run's optimizer (train.*; the code: plain SGD, lr 0.05, 15 LocalAlt epochs) for
train.local_epochs LocalAlt epochs: twice FedAvg's local work once something is personal. State per client:
"mask" (np.packbits over the flat model) and "personal" (float32 values of the personal elements, flat order).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Notes, Params
from algorithms.fedobp import top_k_mask
from algorithms.registry import register
from protocol.params import ParamSpec
from protocol.trainer import ExtraLoss, PhaseStats, Trainer

CODE = "lapisrocks/fedselect utils/options.py"


# ----- helpers shared with the other element-wise algorithms (feddpa, fedcac) ---------------------------------------
def round_half_up(x: float, n: int) -> int:
    """round(x * n), half up, on x's decimal form (so that e.g. 0.29 * 100 gives 29, not 28.999...)."""
    return int(math.floor(Fraction(repr(float(x))) * n + Fraction(1, 2)))


def floor_share(x: float, n: int) -> int:
    """floor(x * n) on x's decimal form."""
    return int(math.floor(Fraction(repr(float(x))) * n))


def unpack(packed: np.ndarray | None, n: int) -> np.ndarray:
    """A boolean mask of n elements from np.packbits (all False for None)."""
    if packed is None:
        return np.zeros(n, dtype=bool)
    return np.unpackbits(packed, count=n).astype(bool)


def train_elements(trainer: Trainer, job: ClientJob, spec: ParamSpec, mask: np.ndarray, epochs: int, purpose: str,
                   extra_loss: ExtraLoss | None = None) -> PhaseStats:
    """Local training of the elements where `mask` is true only: the others are put back after every optimizer step,
    so they stay exactly fixed whatever the optimizer (momentum, weight decay). Tensors without a masked element are
    not trained at all. Nothing to train: no work, no steps."""
    names = [s.name for s in spec.slots if s.trainable and mask[s.start : s.stop].any()]
    if not names or epochs <= 0:
        return PhaseStats()
    params = dict(trainer.model.named_parameters())
    fixed = trainer.tensors_of(trainer.get_vector())  # laid out like the model's own tensors
    keep = trainer.tensors_of(mask.astype(np.float32))
    frozen = {n: (keep[n] < 0.5, fixed[n]) for n in names if not mask[spec.slot(n).start : spec.slot(n).stop].all()}

    def restore(model) -> None:
        with torch.no_grad():
            for name, (off, value) in frozen.items():
                params[name].copy_(torch.where(off, value, params[name]))

    return trainer.train(job, epochs=epochs, names=names, extra_loss=extra_loss, purpose=purpose,
                         after_step=restore if frozen else None)


# ----- the mechanism as pure functions (tested directly) ------------------------------------------------------------
def grow_mask(mask: np.ndarray, delta: np.ndarray, segments: list[tuple[int, int]], p: float,
              alpha: float) -> np.ndarray:
    """GradSelect: per tensor [a, b), the min(round(p (n - c)), floor(alpha n) - c) still-shared elements of largest
    delta become personal (c = personal count, ties by lower index). Never removes an element."""
    new = mask.copy()
    for a, b in segments:
        n, c = b - a, int(np.count_nonzero(mask[a:b]))
        k = min(round_half_up(p, n - c), floor_share(alpha, n) - c)
        if k > 0:
            score = np.where(mask[a:b], -np.inf, delta[a:b].astype(np.float64))
            new[a:b] |= top_k_mask(score, k)
    return new


class FedSelectParams(Params):
    p: float = Field(0.25, gt=0, le=1, description=(
        "personalization rate: each GradSelect makes the round(p r) still-shared elements of a tensor (r of them) "
        "that moved most in the round personal (paper's p; authors' code --prune_percent 25, " + CODE + ")"))
    alpha: float = Field(0.8, ge=0, le=1, description=(
        "personalization limit: at most floor(alpha n) elements of a tensor become personal (paper's alpha; "
        "authors' code --prune_target 80)"))
    candidates: Literal["all", "weights"] = Field("all", description=(
        "tensors that can become personal: every trainable tensor (the paper) or only *weight* tensors (the "
        "authors' code)"))


@register
class FedSelect(Algorithm):
    """FedSelect: per-client personal subnetworks grown element by element (largest local change), the rest averaged."""

    name = "fedselect"
    Params = FedSelectParams
    source = ("Tamirisa et al., CVPR 2024, arXiv:2404.02478; p=0.25, alpha=0.8 from the authors' code (" + CODE
              + "); GradSelect every participation, LocalAlt for train.local_epochs")

    def __init__(self, params: FedSelectParams, ctx):
        super().__init__(params, ctx)
        slots = [s for s in self.spec.slots if s.trainable
                 and (self.params.candidates == "all" or s.name.rsplit(".", 1)[-1] == "weight")]
        if not slots:
            raise ValueError(f"fedselect: candidates={self.params.candidates} selects no tensor ({self.spec.names})")
        self.segments = [(s.start, s.stop) for s in slots]
        self.trainable = self.spec.mask(s.name for s in self.spec.slots if s.trainable)

    def mask_of(self, state) -> np.ndarray:
        return unpack(state.get("mask"), self.spec.size)

    # ----- server side ----------------------------------------------------------------------------------------
    def aggregate(self, global_vec: np.ndarray, updates: list[ClientUpdate], notes: Notes | None = None) -> np.ndarray:
        """Per-index mean over the clients that share each element (equal weights, float64, client order)."""
        if not updates:
            return global_vec
        total = np.zeros(self.spec.size, dtype=np.float64)
        count = np.zeros(self.spec.size, dtype=np.float64)
        for u in sorted(updates, key=lambda u: u.cid):
            shared = ~unpack(u.upload["mask"], self.spec.size)
            total[shared] += u.upload["model"][shared]
            count[shared] += 1.0
        new = global_vec.copy()
        ok = count > 0
        new[ok] = (total[ok] / count[ok]).astype(np.float32)
        return new

    def bytes_up(self, update: ClientUpdate) -> int:
        personal = int(np.count_nonzero(unpack(update.upload["mask"], self.spec.size)))
        return 4 * (self.spec.size - personal) + int(update.upload["mask"].nbytes)

    # ----- client side ----------------------------------------------------------------------------------------
    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        mask = self.mask_of(job.state)
        start = self.eval_vector(job, trainer)
        trainer.set_vector(start)
        shared = self.trainable & ~mask
        for epoch in range(self.ctx.train.local_epochs):  # LocalAlt: personal epoch, then shared epoch
            if mask.any():
                train_elements(trainer, job, self.spec, mask, 1, f"fedselect-personal-{epoch}")
            train_elements(trainer, job, self.spec, shared, 1, f"fedselect-shared-{epoch}")
        after = trainer.get_vector()
        new = grow_mask(mask, np.abs(after - start), self.segments, self.params.p, self.params.alpha)
        packed = np.packbits(new)
        frac = float(np.count_nonzero(new)) / sum(b - a for a, b in self.segments)
        return trainer.update(job, upload={"model": after, "mask": packed},
                              state={"mask": packed, "personal": after[new].copy()}, personal_frac=frac)

    def eval_vector(self, job: ClientJob, trainer) -> np.ndarray:
        """The global model with the client's personal values on its personal elements (the global one if none)."""
        out = job.payload["model"].copy()
        if "personal" in job.state:
            out[self.mask_of(job.state)] = job.state["personal"]
        return out
