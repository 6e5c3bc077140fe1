"""Byzantine-robust aggregation: coordinate-wise median and trimmed mean (Yin, Chen, Ramchandran & Bartlett,
ICML 2018, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates") and (multi-)Krum
(Blanchard, El Mhamdi, Guerraoui & Stainer, NeurIPS 2017, "Machine Learning with Adversaries: Byzantine
Tolerant Gradient Descent").

Clients train exactly as in FedAvg; only the server's rule for combining the round's models changes:
- `fedmedian`: the coordinate-wise median of the client models (unweighted, as in the paper);
- `fedtrimmedavg`: per coordinate, drop the β largest and β smallest shares of the values, average the rest;
- `krum`: score each model by the sum of squared distances to its n - f - 2 nearest others; keep the m lowest
  scoring (m = 1: Krum; m > 1: multi-Krum, their mean).
Checked against the papers (all rules unweighted over the round's clients) and Flower's FedMedian,
FedTrimmedAvg and Krum strategies (which also ignore sample counts). Defaults: β = 0.2 (Flower's
FedTrimmedAvg; the paper's β is the assumed fraction of Byzantine clients); f = 0 and m = 1 (Flower's Krum
defaults; the paper's f is the assumed number of Byzantine clients). Everything is computed in float64 over
the shared elements, clients in id order.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np
from pydantic import Field

from algorithms.base import Algorithm, ClientUpdate, Notes, Params
from algorithms.registry import register


def _stack(updates: list[ClientUpdate]) -> np.ndarray:
    return np.stack([u.upload["model"].astype(np.float64) for u in sorted(updates, key=lambda u: u.cid)])


def trimmed_mean(values: np.ndarray, beta: float) -> np.ndarray:
    """Mean over axis 0 after dropping floor(beta * n) values from each end, per coordinate."""
    n = values.shape[0]
    cut = int(math.floor(beta * n))
    if 2 * cut >= n:
        raise ValueError(f"trimming {cut} of {n} values from each end leaves nothing; lower beta below 0.5")
    ordered = np.sort(values, axis=0)
    return ordered[cut : n - cut].mean(axis=0)


def krum_select(values: np.ndarray, byzantine: int, keep: int) -> np.ndarray:
    """Indices of the `keep` models with the lowest Krum scores (sum of squared distances to the n - f - 2
    nearest others); ties by lower index."""
    n = values.shape[0]
    neighbours = max(1, n - byzantine - 2)
    sq = (values * values).sum(axis=1)
    dist = sq[:, None] + sq[None, :] - 2.0 * values @ values.T
    np.fill_diagonal(dist, np.inf)
    scores = np.sort(np.maximum(dist, 0.0), axis=1)[:, : min(neighbours, n - 1)].sum(axis=1)
    return np.argsort(scores, kind="stable")[: min(keep, n)]


class _RobustAggregation(Algorithm, ABC):
    batchable = True  # FedAvg's client side (the default local_update): vectorises (train.batched)

    def personal_is_global(self) -> bool:
        return True

    @abstractmethod
    def combine(self, values: np.ndarray) -> np.ndarray:
        """The round's models (clients x elements, float64) -> the new global model."""

    def aggregate(self, global_vec: np.ndarray, updates: list[ClientUpdate], notes: Notes | None = None) -> np.ndarray:
        if not updates:
            return global_vec
        new = global_vec.copy()
        new[self.shared] = self.combine(_stack(updates))[self.shared].astype(np.float32)
        return new


@register
class FedMedian(_RobustAggregation):
    """FedMedian: the coordinate-wise median of the round's client models."""

    name = "fedmedian"
    source = "Yin et al. 2018 (coordinate-wise median, unweighted)"

    def combine(self, values: np.ndarray) -> np.ndarray:
        return np.median(values, axis=0)


class TrimmedParams(Params):
    beta: float = Field(0.2, ge=0, lt=0.5, description="share trimmed from each end per coordinate (Flower's "
                                                       "FedTrimmedAvg default; Yin et al.: the Byzantine share)")


@register
class FedTrimmedAvg(_RobustAggregation):
    """FedTrimmedAvg: per coordinate, the mean after trimming the beta largest and smallest shares."""

    name = "fedtrimmedavg"
    Params = TrimmedParams
    source = "Yin et al. 2018 (coordinate-wise trimmed mean); beta 0.2 (Flower FedTrimmedAvg)"

    def combine(self, values: np.ndarray) -> np.ndarray:
        return trimmed_mean(values, self.params.beta)


class KrumParams(Params):
    byzantine: int = Field(0, ge=0, description="f, the number of Byzantine clients assumed (Flower's Krum: 0)")
    keep: int = Field(1, ge=1, description="m models kept and averaged: 1 = Krum, >1 = multi-Krum (Flower: 1)")


@register
class Krum(_RobustAggregation):
    """Krum / multi-Krum: keep the model(s) closest to their nearest neighbours, drop outliers."""

    name = "krum"
    Params = KrumParams
    source = "Blanchard et al. 2017 (Krum, multi-Krum); f 0, m 1 (Flower Krum defaults)"

    def combine(self, values: np.ndarray) -> np.ndarray:
        return values[krum_select(values, self.params.byzantine, self.params.keep)].mean(axis=0)
