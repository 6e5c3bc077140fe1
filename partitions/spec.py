"""Validated specs of a data source and a partition (part of the run config).

Every field says what it does; every wrong value fails at config time with a message that
names the field, the value and the allowed choices (the harness prints it as one line).
Sources and schemes are looked up in their registries when a spec is validated, so a user's
module that registers one before the config is loaded extends what a spec may name.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from partitions.schemes import SCHEMES, get_scheme
from partitions.schemes.registry import on_register
from protocol.specs import Strict

EMNIST_SPLITS = ("byclass", "bymerge", "balanced", "letters", "digits", "mnist")


class DataSpec(Strict):
    """Where the examples come from. `source` names an entry of partitions.sources.SOURCES."""

    source: str = Field("digits", description="a registered data source; built in: digits, mnist, fashionmnist, "
                                              "emnist, cifar10, cifar100, svhn (torchvision), hf (Hugging Face hub "
                                              "or local files), arrays (local .npz/.npy), synthetic, femnist, "
                                              "shakespeare, sent140 (LEAF), cinic10, tinyimagenet, celeba, medmnist")
    root: str | None = Field(None, description="torchvision: folder holding the data set (default ./data); arrays: "
                                               ".npz file, .npy file or folder of .npy files; hf: local parquet/"
                                               "arrow/csv/json file or folder (imagefolder); null = hub")
    download: bool = Field(False, description="torchvision: download into root when the files are missing "
                                              "(needs internet)")
    name: str | None = Field(None, description="emnist: split (byclass, bymerge, balanced, letters, digits, mnist); "
                                               "hf: hub data set id, or a builder (parquet, csv, json, arrow, "
                                               "imagefolder) for local files; synthetic: key=value options "
                                               "(alpha, beta, devices, seed, iid); medmnist: the set (pathmnist)")
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
    normalize_mean: list[float] | None = Field(None, description=(
        "per-channel mean the inputs are normalized with (after uint8 / 255); null = the data's own. E.g. "
        "FL-bench's CIFAR-10 constants [0.4914, 0.4822, 0.4465]"))
    normalize_std: list[float] | None = Field(None, description=(
        "per-channel std for the normalization; null = the data's own. FL-bench's CIFAR-10: [0.2023, 0.1994, 0.2010]"))
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
    def _normalization(self) -> DataSpec:
        if self.normalize_std is not None and not all(v > 0 for v in self.normalize_std):
            raise ValueError(f"data.normalize_std must be positive, got {self.normalize_std}")
        return self

    @model_validator(mode="after")
    def _source_options(self) -> DataSpec:
        if self.source == "emnist" and self.name is not None and self.name not in EMNIST_SPLITS:
            raise ValueError(f"data.name={self.name!r} is not an EMNIST split; choose one of: "
                             f"{', '.join(EMNIST_SPLITS)}")
        from partitions.sources import SOURCES

        allowed = SOURCES[self.source].splits
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


# The pre-registry layout of PartitionSpec held every built-in scheme's keys; these are their
# defaults, frozen here so that identity_dump() reproduces that layout exactly (see there).
PRE_REGISTRY_KEYS: dict[str, Any] = {"alpha": 0.5, "dirichlet_balance": False, "classes_per_client": 2,
                                     "class_assignment": "cyclic", "shards_per_client": 2,
                                     "quantity_distribution": "lognormal", "quantity_sigma": 1.0,
                                     "powerlaw_exponent": 1.5}


class PartitionSpec(Strict):
    """How examples are dealt to clients, then split locally. See docs/partitions.md.

    The fields below are common to every scheme. The chosen scheme's own keys (e.g. `alpha`) are
    written flat beside them, validated by that scheme's parameter class, stored with their
    defaults filled in, and read as attributes (`spec.alpha`) or as one object (`spec.params`)."""

    model_config = ConfigDict(extra="allow")  # the scheme's keys; _scheme_keys lets no other key through

    scheme: Literal[tuple(SCHEMES)] = Field(  # type: ignore[valid-type]  # kept equal to the registry
        "dirichlet", description="a registered scheme; built in: iid, dirichlet (label skew), pathological (k "
                                 "classes per client), shards, quantity (size skew), natural (by data.group_column), "
                                 "inner_dirichlet, iid_dirichlet_mix, label_quantity, flbench_dirichlet "
                                 "(FL-bench's own partition and local split, draw for draw)")
    num_clients: int = Field(50, ge=1, description="number of clients (natural: how many groups to keep)")
    min_samples: int = Field(10, ge=1, description="minimum samples per client (before the local split)")
    feature_shift: FeatureShiftSpec = FeatureShiftSpec()
    unseen_fraction: float = Field(0.0, ge=0, lt=1, description="clients that never train, only evaluated")
    test_fraction: float = Field(0.25, gt=0, lt=1, description="local test share of each client")
    val_fraction: float = Field(0.0, ge=0, lt=1, description="local validation share of each client")
    cache_dir: str | None = Field(".cache/partitions", description="partition cache; null disables it")
    virtual_clients: int | None = Field(None, ge=1, description=(
        "N virtual clients over this partition (the base): client c resamples base client f(seed, c)'s splits "
        "on demand, so N may be 1,000,000 (partitions/virtual.py); null = the partition's own clients"))

    @field_validator("scheme", mode="plain")
    @classmethod
    def _registered(cls, value: Any) -> str:
        """Checked against the registry when a spec is validated (the annotation only shows the choices),
        so a scheme that a user's module registered later is valid in a RunConfig built earlier."""
        if not isinstance(value, str) or value not in SCHEMES:
            choices = [repr(name) for name in SCHEMES]
            raise PydanticCustomError("partition_scheme", "Input should be a registered partition scheme: {choices}",
                                      {"choices": ", ".join(choices[:-1]) + f" or {choices[-1]}"})
        return value

    @model_validator(mode="after")
    def _scheme_keys(self) -> PartitionSpec:
        """The flat extra keys become the scheme's validated keys, defaults filled in (dumps show them all)."""
        self.__pydantic_extra__ = scheme_params(self.scheme, self.__pydantic_extra__ or {}).model_dump()
        return self

    @model_validator(mode="after")
    def _fractions(self) -> PartitionSpec:
        if self.test_fraction + self.val_fraction >= 1:
            raise ValueError(
                f"test_fraction + val_fraction must be < 1, got {self.test_fraction} + {self.val_fraction}"
            )
        if self.virtual_clients is not None and (self.unseen_fraction > 0 or self.feature_shift.kind != "none"):
            raise ValueError("partition.virtual_clients needs unseen_fraction=0 and feature_shift.kind=none (a "
                             "virtual client resamples a base client's splits; neither is defined per virtual client)")
        n_unseen = int(round(self.unseen_fraction * self.num_clients))
        if n_unseen >= self.num_clients:
            raise ValueError(f"unseen_fraction={self.unseen_fraction} of {self.num_clients} clients leaves no "
                             f"client to train; lower it below {(self.num_clients - 0.5) / self.num_clients:.3f}")
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        """Validated like the rest of the config; a rejected value leaves the spec as it was (pydantic
        alone would keep a rejected scheme key, which it stores before the validators run)."""
        saved = dict(self.__dict__), dict(self.__pydantic_extra__ or {})
        try:
            super().__setattr__(name, value)
        except ValidationError:
            object.__setattr__(self, "__dict__", saved[0])
            object.__setattr__(self, "__pydantic_extra__", saved[1])
            raise

    @property
    def params(self) -> Any:
        """The scheme's parameters as its own validated object (computed from the stored keys, so
        a model_copy(update=...) is seen too)."""
        return get_scheme(self.scheme).Params.model_validate(self.__pydantic_extra__ or {})

    def identity_dump(self, exclude: set[str] | None = None) -> dict[str, Any]:
        """The spec as the identity of a partition (its cache key) and of a run (its config hash):
        model_dump(mode="json") laid out as before the registry, i.e. with every built-in scheme's
        keys, at their defaults where the chosen scheme has no such key. Cache entries and config
        hashes of runs started before the registry therefore stay the same."""
        dump = {**PRE_REGISTRY_KEYS, **self.model_dump(mode="json", exclude=exclude)}
        if dump.get("virtual_clients", 0) is None:  # the default: identities from before the option stay the same
            dump.pop("virtual_clients")
        return dump

    @property
    def population(self) -> int:
        """The clients a run samples from: virtual_clients when set, else num_clients."""
        return self.virtual_clients or self.num_clients


COMMON_KEYS = frozenset(PartitionSpec.model_fields)


def scheme_params(name: str, raw: dict[str, Any]) -> Any:
    """Validate the flat scheme keys of a partition spec with scheme `name`'s parameter class.

    A key of another registered scheme is accepted, and dropped, only at that scheme's default:
    that is what a spec written for another scheme carries after an override of partition.scheme
    (e.g. a study cell `partition.scheme: iid` over a Dirichlet base), and what configs saved
    before the registry carry for every scheme. Any other value of it would be silently ignored,
    so it is an error, like a key that no scheme knows."""
    chosen = get_scheme(name)
    own = {}
    for key, value in raw.items():
        if key in chosen.Params.model_fields:
            own[key] = value
            continue
        owners = [s for s in SCHEMES.values() if key in s.Params.model_fields]
        if not owners:
            raise ValueError(f"unknown key 'partition.{key}'; allowed keys here: {_allowed(name)}")
        if not all(_is_default(s.Params, key, value) for s in owners):
            default = owners[0].Params.model_fields[key].default
            raise ValueError(f"key 'partition.{key}' belongs to scheme {', '.join(s.name for s in owners)}, not "
                             f"{name} (another scheme's key is accepted only at its default, {default!r}); allowed "
                             f"keys here: {_allowed(name)}")
    return chosen.Params.model_validate(own)


def with_scheme(block: dict[str, Any], name: str) -> dict[str, Any]:
    """A raw `partition:` block switched to scheme `name`: the keys that only other registered schemes
    have are dropped, the rest (common keys, the new scheme's keys, unknown keys, which validation
    then reports) kept. For whatever changes partition.scheme on a spec written for another scheme
    (a dotted override, a study cell): `scheme=iid` over `{scheme: dirichlet, alpha: 0.1}` then
    means iid, not an error about alpha, while `alpha` set after the switch still is one."""
    if name not in SCHEMES:
        return {**block, "scheme": name}  # validation names the registered schemes
    keep = set(SCHEMES[name].Params.model_fields) | COMMON_KEYS
    other = {key for s in SCHEMES.values() for key in s.Params.model_fields} - keep
    return {**{k: v for k, v in block.items() if k not in other}, "scheme": name}


def _allowed(name: str) -> str:
    """The keys an error message offers: the scheme's own, then the common ones."""
    keys = get_scheme(name).keys
    common = ", ".join(sorted(COMMON_KEYS))
    if not keys:
        return f"the common keys {common} (scheme {name} has no keys of its own)"
    return f"{', '.join(keys)} (scheme {name}) and the common keys {common}"


def _is_default(params: type[BaseModel], key: str, value: Any) -> bool:
    """Whether `value` validates to the default of `key` (0.5, "0.5" and 1/2 alike)."""
    try:
        return getattr(params.model_validate({key: value}), key) == params.model_fields[key].get_default(
            call_default_factory=True)
    except ValidationError:
        return False


def _sync_scheme_choices() -> None:
    """Keep PartitionSpec's `scheme` annotation equal to the registry (what introspection and the
    docs show), and refuse a scheme whose keys would shadow a common key."""
    for s in SCHEMES.values():
        clash = sorted(set(s.Params.model_fields) & COMMON_KEYS)
        if clash:
            raise ValueError(f"scheme {s.name}: parameter(s) {', '.join(clash)} clash with the common partition keys")
    PartitionSpec.model_fields["scheme"].annotation = Literal[tuple(SCHEMES)]  # type: ignore[valid-type]


on_register(_sync_scheme_choices)
