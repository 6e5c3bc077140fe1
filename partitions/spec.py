"""Validated specs of a data source and a partition (part of the run config).

Every field says what it does; every wrong value fails at config time with a message that
names the field, the value and the allowed choices (the harness prints it as one line).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


TORCHVISION_SPLITS = {"mnist": ("train", "test"), "fashionmnist": ("train", "test"), "emnist": ("train", "test"),
                      "cifar10": ("train", "test"), "cifar100": ("train", "test"),
                      "svhn": ("train", "test", "extra")}
EMNIST_SPLITS = ("byclass", "bymerge", "balanced", "letters", "digits", "mnist")


class DataSpec(Strict):
    """Where the examples come from. `source` names an entry of partitions.sources.SOURCES."""

    source: str = Field("digits", description="data source: digits, mnist, fashionmnist, emnist, cifar10, cifar100, "
                                              "svhn (torchvision), hf (Hugging Face hub or local files), arrays "
                                              "(local .npz/.npy)")
    root: str | None = Field(None, description="torchvision: folder holding the data set (default ./data); arrays: "
                                               ".npz file, .npy file or folder of .npy files; hf: local parquet/"
                                               "arrow/csv/json file or folder (imagefolder); null = hub")
    download: bool = Field(False, description="torchvision: download into root when the files are missing "
                                              "(needs internet)")
    name: str | None = Field(None, description="emnist: split (byclass, bymerge, balanced, letters, digits, mnist); "
                                               "hf: hub data set id, or a builder (parquet, csv, json, arrow, "
                                               "imagefolder) for local files")
    subset: str | None = Field(None, description="hf: configuration (subset) name of a hub data set")
    split: str | None = Field(None, description="train or test (svhn also extra); hf: any split expression; "
                                                "null pools all splits (the partition makes its own local splits)")
    image_column: str | None = Field(None, description="column/key of the inputs (auto: image/x/... or the "
                                                       "numeric columns of a table)")
    label_column: str | None = Field(None, description="column/key of the labels (auto: label/y/...)")
    group_column: str | None = Field(None, description="column/key of a natural client id per example (e.g. "
                                                       "writer); needed by partition.scheme=natural")
    invert: bool = Field(False, description="x -> 1 - x (uint8: 255 - x); LEAF FEMNIST stores white = 255")
    max_samples: int | None = Field(None, ge=1, description="keep only the first N samples (smoke tests)")
    cache_dir: str | None = Field(".cache/data", description="cache of decoded data (JPEG blobs, Hugging Face "
                                                             "images, unpacked MNIST files); null disables it")

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        from partitions.sources import SOURCES

        if value not in SOURCES:
            raise ValueError(f"unknown data source {value!r}; choose one of: {', '.join(sorted(SOURCES))}")
        return value

    @model_validator(mode="after")
    def _source_options(self) -> DataSpec:
        if self.source == "emnist" and self.name is not None and self.name not in EMNIST_SPLITS:
            raise ValueError(f"data.name={self.name!r} is not an EMNIST split; choose one of: "
                             f"{', '.join(EMNIST_SPLITS)}")
        allowed = TORCHVISION_SPLITS.get(self.source, ("train", "test") if self.source == "arrays" else None)
        if allowed is not None and self.split not in (None, "all", *allowed):
            raise ValueError(f"data.split={self.split!r} is not a split of {self.source}; choose one of: "
                             f"{', '.join(allowed)}, all (or null: all pooled)")
        return self


class FeatureShiftSpec(Strict):
    """Per-client covariate shift, applied once at partition time to every example of a client
    (train, val and test alike: the shift is a property of the client's device/domain)."""

    kind: Literal["none", "rotation", "noise", "rotation+noise"] = Field(
        "none", description="per-client transform: rotation (images only), additive Gaussian noise, or both")
    max_degrees: float = Field(90.0, ge=0, le=360, description="rotation angles lie in [0, max_degrees] "
                                                               "(counter-clockwise)")
    max_noise_std: float = Field(0.3, ge=0, description="noise std lies in [0, max_noise_std], in units of "
                                                        "the [0, 1] pixel scale")
    levels: int | None = Field(None, ge=1, description="null: each client draws its own value; L: clients are "
                                                       "split evenly over L domains with values "
                                                       "linspace(0, max, L) (rotated-MNIST style)")


class PartitionSpec(Strict):
    """How examples are dealt to clients, then split locally. See docs/partitions.md."""

    scheme: Literal["iid", "dirichlet", "pathological", "shards", "quantity", "natural"] = Field(
        "dirichlet", description="iid, dirichlet (label skew), pathological (k classes per client), shards, "
                                 "quantity (size skew), natural (by data.group_column)")
    num_clients: int = Field(50, ge=1, description="number of clients (natural: how many groups to keep)")
    alpha: float = Field(0.5, gt=0, description="dirichlet: concentration; small = strong label skew")
    min_samples: int = Field(10, ge=1, description="minimum samples per client (before the local split)")
    dirichlet_balance: bool = Field(False, description="dirichlet: FL-bench/PFLlib rule, a client already above "
                                                       "N/num_clients samples gets no share of later classes")
    classes_per_client: int = Field(2, ge=1, description="pathological: labels per client")
    class_assignment: Literal["cyclic", "random"] = Field(
        "cyclic", description="pathological: cyclic = the i-th client holds classes p[i..i+k-1 mod C] of a random "
                              "class order p (every class held equally often; clients shuffled); random = a random "
                              "k-subset per client")
    shards_per_client: int = Field(2, ge=1, description="shards: label-sorted shards per client")
    quantity_distribution: Literal["lognormal", "powerlaw"] = Field(
        "lognormal", description="quantity: law of the client sizes (labels stay IID)")
    quantity_sigma: float = Field(1.0, gt=0, description="quantity/lognormal: sigma of log client sizes")
    powerlaw_exponent: float = Field(1.5, gt=0, description="quantity/powerlaw: Pareto shape; small = heavier tail")
    feature_shift: FeatureShiftSpec = FeatureShiftSpec()
    unseen_fraction: float = Field(0.0, ge=0, lt=1, description="clients that never train, only evaluated")
    test_fraction: float = Field(0.25, gt=0, lt=1, description="local test share of each client")
    val_fraction: float = Field(0.0, ge=0, lt=1, description="local validation share of each client")
    cache_dir: str | None = Field(".cache/partitions", description="partition cache; null disables it")

    @model_validator(mode="after")
    def _fractions(self) -> PartitionSpec:
        if self.test_fraction + self.val_fraction >= 1:
            raise ValueError(
                f"test_fraction + val_fraction must be < 1, got {self.test_fraction} + {self.val_fraction}"
            )
        n_unseen = int(round(self.unseen_fraction * self.num_clients))
        if n_unseen >= self.num_clients:
            raise ValueError(f"unseen_fraction={self.unseen_fraction} of {self.num_clients} clients leaves no "
                             f"client to train; lower it below {(self.num_clients - 0.5) / self.num_clients:.3f}")
        return self
