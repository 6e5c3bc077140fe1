"""Validated specs of a data source and a partition (part of the run config)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSpec(Strict):
    """Where the examples come from. `source` names an entry of partitions.sources.SOURCES."""

    source: str = "digits"
    root: str | None = Field(None, description="folder or file of local data")
    download: bool = False
    name: str | None = Field(None, description="sub-set name (EMNIST split, HF data set name)")
    split: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    group_column: str | None = None
    max_samples: int | None = Field(None, ge=1, description="keep only the first N samples (smoke tests)")


class FeatureShiftSpec(Strict):
    """Per-client covariate shift: each client gets its own rotation and/or noise level."""

    kind: Literal["none", "rotation", "noise", "rotation+noise"] = "none"
    max_degrees: float = Field(90.0, ge=0, le=360)
    max_noise_std: float = Field(0.3, ge=0)


class PartitionSpec(Strict):
    scheme: Literal["iid", "dirichlet", "pathological", "shards", "quantity", "natural"] = "dirichlet"
    num_clients: int = Field(50, ge=1)
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (label skew)")
    min_samples: int = Field(10, ge=1, description="minimum samples per client (before the local split)")
    classes_per_client: int = Field(2, ge=1, description="pathological: labels per client")
    shards_per_client: int = Field(2, ge=1, description="shards: label-sorted shards per client")
    quantity_distribution: Literal["lognormal", "powerlaw"] = "lognormal"
    quantity_sigma: float = Field(1.0, gt=0, description="lognormal sigma of client sizes")
    powerlaw_exponent: float = Field(1.5, gt=0)
    feature_shift: FeatureShiftSpec = FeatureShiftSpec()
    unseen_fraction: float = Field(0.0, ge=0, lt=1, description="clients that never train, only evaluated")
    test_fraction: float = Field(0.25, gt=0, lt=1)
    val_fraction: float = Field(0.0, ge=0, lt=1)
    cache_dir: str | None = Field(".cache/partitions", description="partition cache; null disables it")

    @model_validator(mode="after")
    def _fractions(self) -> PartitionSpec:
        if self.test_fraction + self.val_fraction >= 1:
            raise ValueError(
                f"test_fraction + val_fraction must be < 1, got {self.test_fraction} + {self.val_fraction}"
            )
        return self
