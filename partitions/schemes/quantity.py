"""quantity: size skew with IID labels, to separate "how much data" from "which labels"."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from partitions.schemes.common import check_enough, deal, largest_remainder
from partitions.schemes.registry import scheme
from protocol.specs import Strict

if TYPE_CHECKING:
    from partitions.spec import PartitionSpec


class QuantityParams(Strict):
    quantity_distribution: Literal["lognormal", "powerlaw"] = Field(
        "lognormal", description="quantity: law of the client sizes (labels stay IID)")
    quantity_sigma: float = Field(1.0, gt=0, description="quantity/lognormal: sigma of log client sizes")
    powerlaw_exponent: float = Field(1.5, gt=0, description="quantity/powerlaw: Pareto shape; small = heavier tail")


@scheme("quantity", QuantityParams, label=lambda p: p.quantity_distribution)
def quantity(y: np.ndarray, spec: PartitionSpec, params: QuantityParams, gen: np.random.Generator,
             groups: np.ndarray | None = None) -> np.ndarray:
    """Every client gets min_samples, the remaining N - K*min_samples are dealt in proportion to
    weights ~ lognormal(0, sigma) or Pareto(exponent) + 1."""
    n, k, m = len(y), spec.num_clients, spec.min_samples
    check_enough(n, spec)
    if params.quantity_distribution == "lognormal":
        weights = gen.lognormal(0.0, params.quantity_sigma, k)
    else:
        weights = gen.pareto(params.powerlaw_exponent, k) + 1.0
    sizes = m + largest_remainder(weights, n - k * m)
    return deal(sizes, gen.permutation(n), n)
