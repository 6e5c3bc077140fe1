"""Run specification: YAML file + dotted overrides -> validated RunConfig.

Bad input never reaches the engine: an unknown key, a wrong type, an out-of-range value or
an unknown algorithm/data set/model raises ConfigError with one line that names the field,
the value and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness import models, plugins
from harness.specfile import ConfigError, read_yaml, yaml_value
from partitions.spec import DataSpec, PartitionSpec, with_scheme
from protocol.specs import Strict, TrainSpec


class ModelSpec(Strict):
    name: str = Field("mlp", description="a registered model (harness.models; plugins add more)")
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in models.MODELS:
            raise ValueError(f"unknown model {value!r}; choose one of: {', '.join(sorted(models.MODELS))}")
        return value


class AlgorithmSpec(BaseModel):
    """`name` picks the algorithm; other keys are its hyperparameters.

    A key named after an algorithm holds that algorithm's hyperparameters as a block, e.g.
    `{name: fedobp, fedobp: {q: 0.9999}, ditto: {lam: 0.1}}`: one spec can then carry tuned values for
    several algorithms and `algorithm.name=...` switches between them. Flat keys apply to the chosen
    algorithm and win over its block.
    """

    model_config = ConfigDict(extra="allow")
    name: str = "fedavg"

    def _split(self) -> tuple[dict[str, Any], dict[str, Any]]:
        from algorithms import registry

        known = set(registry.names())
        extras = self.model_extra or {}
        blocks = {k: v for k, v in extras.items() if k in known}
        flat = {k: v for k, v in extras.items() if k not in known}
        return blocks, flat

    def _raw_params(self) -> dict[str, Any]:
        blocks, flat = self._split()
        for key, block in blocks.items():
            if not isinstance(block, dict):
                raise ValueError(f"algorithm.{key} must be a mapping of {key}'s hyperparameters, got {block!r}")
        return {**blocks.get(self.name, {}), **flat}

    @model_validator(mode="after")
    def _known_algorithm(self) -> AlgorithmSpec:
        from algorithms import registry

        try:
            cls = registry.get(self.name)
        except KeyError as err:
            raise ValueError(err.args[0]) from None
        blocks, _ = self._split()
        for block_name in blocks:  # every block must be valid for its own algorithm
            _validate_params(registry.get(block_name), self._raw_params() if block_name == self.name
                             else blocks[block_name] if isinstance(blocks[block_name], dict) else {})
        _validate_params(cls, self._raw_params())
        return self

    @property
    def params(self) -> dict[str, Any]:
        from algorithms import registry

        return registry.get(self.name).Params(**self._raw_params()).model_dump()


def _validate_params(cls, raw: dict[str, Any]) -> None:
    try:
        cls.Params(**raw)
    except ValidationError as err:
        e = err.errors()[0]
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            allowed = ", ".join(sorted(cls.Params.model_fields)) or "none"
            raise ValueError(f"{cls.name} has no hyperparameter {key!r}; its hyperparameters: {allowed} "
                             f"(put another algorithm's values under algorithm.<its name>)") from None
        raise ValueError(f"{cls.name}.{key}: {e['msg']} (got {e.get('input')!r})") from None


class WorkersSpec(Strict):
    num_workers: int = Field(2, ge=1, description="Ray worker actors (the virtual clients are not actors)")
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per worker actor")
    num_gpus: float = Field(0.0, ge=0, description="GPU share per worker actor")
    address: str | None = Field(None, description="existing Ray cluster (e.g. 'auto' or ray://host:10001)")
    max_retries: int = Field(3, ge=0, description="re-runs of a batch whose worker died")
    use_ray: bool = Field(True, description="false runs the workers in-process (debugging)")
    warm_start: bool = Field(True, description="a run that starts its own local Ray trains its first rounds in-process "
                             "while Ray and the actors start (same numbers); false waits for the actors")


class StoreSpec(Strict):
    backend: Literal["memory", "disk"] = "memory"
    path: str | None = Field(None, description="disk backend folder (default: a folder under the run's checkpoint dir)")


class TrackingSpec(Strict):
    uri: str | None = Field(None, description="MLflow tracking URI; default sqlite:///mlruns/mlflow.db")
    experiment: str = "fedharness"
    enabled: bool = True
    log_model: bool = Field(False, description="log the final global model (model/global.npy, param_spec.json, "
                            "global_state_dict.pt) with a FINISHED run")


class TierSpec(Strict):
    fraction: float = Field(gt=0, le=1)
    seconds_per_sample: float = Field(gt=0)
    upload_mbps: float = Field(gt=0)
    download_mbps: float = Field(gt=0)
    max_steps: int | None = Field(None, ge=1, description="per-round step budget of this tier")


class DevicesSpec(Strict):
    """How clients' device profiles are drawn (deterministic per seed)."""

    distribution: Literal["uniform", "tiers", "lognormal", "trace"] = "uniform"
    seconds_per_sample: float = Field(0.001, gt=0, description="uniform/lognormal median compute time")
    upload_mbps: float = Field(10.0, gt=0)
    download_mbps: float = Field(50.0, gt=0)
    sigma: float = Field(0.5, ge=0, description="lognormal spread of speed and bandwidth")
    tiers: list[TierSpec] = Field(default_factory=list)
    trace_file: str | None = Field(
        None, description="CSV with seconds_per_sample,upload_mbps,download_mbps[,availability]")
    availability: float = Field(1.0, gt=0, le=1, description="probability a client is online in a round")


class BudgetSpec(Strict):
    mode: Literal["fixed", "deadline", "overcommit"] = "fixed"
    deadline_s: float | None = Field(None, gt=0, description="round deadline in simulated seconds")
    partial_work: bool = Field(True, description="deadline: do the steps that fit (else drop stragglers)")
    min_steps: int = Field(1, ge=1, description="deadline: fewer steps than this and the client is dropped")
    overcommit: float = Field(0.3, ge=0, description="overcommit: sample (1+x)K clients, keep the first K")
    devices: DevicesSpec = DevicesSpec()

    @model_validator(mode="after")
    def _deadline_needs_time(self) -> BudgetSpec:
        if self.mode == "deadline" and self.deadline_s is None:
            raise ValueError("budget.mode=deadline needs budget.deadline_s")
        return self


class RunConfig(Strict):
    plugins: list[str] = Field(default_factory=list, description=(
        "modules (dotted path or .py file) imported before validation: they register algorithms, models, data "
        "sources, partition schemes (harness.plugins); every worker loads them too"))
    name: str = "run"
    seed: int = Field(0, ge=0)
    rounds: int = Field(20, ge=1)
    clients_per_round: int | None = Field(None, ge=1, description="overrides join_ratio")
    join_ratio: float = Field(0.1, gt=0, le=1)
    sampling: Literal["uniform", "flbench"] = Field("uniform", description=(
        "which clients a round samples: uniform = a seeded draw per round (protocol.rng); flbench = FL-bench's "
        "stream, random.Random(seed).sample(training clients, k) drawn round after round, so that with "
        "partition.scheme=flbench_dirichlet every round trains the clients FL-bench's run of that seed trained "
        "(needs budget.mode=fixed and every client available)"))
    eval_every: int = Field(1, ge=1)
    eval_sampled: bool = Field(False, description=(
        "per round, pooled accuracy of the sampled clients' test splits before local training (the model each "
        "received) and after it: FL-bench's accuracy_test_before/after (sampled_acc_before/_after)"))
    eval_clients: int | None = Field(None, ge=1, description=(
        "at evaluation rounds, evaluate this many clients (a fixed sample drawn once from the seed) instead of every "
        "client; needed above 10,000 clients of a virtual population (partition.virtual_clients)"))
    eval_finetune_epochs: int = Field(0, ge=0, description=(
        "at evaluation rounds, also evaluate every client after this many epochs of fine-tuning its "
        "personalized model on its training split (FL-bench's finetune_epoch; personal_ft_*); stored state "
        "is never changed"))
    device: Literal["auto", "cpu", "cuda"] = "auto"
    nan_policy: Literal["drop", "fail"] = Field("drop", description="a client whose loss is NaN/inf")
    empty_round_policy: Literal["fail", "skip"] = Field("fail", description=(
        "a round in which no client update survives (all NaN/inf, late or without time): fail the run with the "
        "reason, or keep the global model and go on (counted, warned); a run where no round had an update fails"))
    checkpoint_every: int = Field(1, ge=1, description="rounds between checkpoints with store.backend=memory "
                                  "(its snapshot holds every client's state); the disk store checkpoints each round")
    checkpoint_dir: str = ".fedharness/checkpoints"
    keep_checkpoint: bool = Field(False, description="keep the checkpoint folder of a run that FINISHED (by default "
                                  "it is removed: MLflow holds the results; a paused or failed run keeps it always)")
    data: DataSpec = DataSpec()
    partition: PartitionSpec = PartitionSpec()
    model: ModelSpec = ModelSpec()
    train: TrainSpec = TrainSpec()
    algorithm: AlgorithmSpec = AlgorithmSpec()
    workers: WorkersSpec = WorkersSpec()
    store: StoreSpec = StoreSpec()
    tracking: TrackingSpec = TrackingSpec()
    budget: BudgetSpec = BudgetSpec()

    @model_validator(mode="before")
    @classmethod
    def _load_plugins(cls, tree: Any) -> Any:
        """Plugins first: the algorithm, model, source or scheme they register must exist when validated."""
        plugins.load_installed()
        if isinstance(tree, dict) and tree.get("plugins"):
            names = tree["plugins"]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError(f"plugins must be a list of module names or .py paths, got {names!r}")
            tree = {**tree, "plugins": plugins.absolute(names)}  # Ray workers run in another directory
            plugins.load(tree["plugins"])
        return tree

    @model_validator(mode="after")
    def _clients_per_round_fits(self) -> RunConfig:
        p = self.partition
        field = self._population_field()
        if self.clients_per_round is not None and self.clients_per_round > p.population:
            raise ValueError(f"clients_per_round={self.clients_per_round} is more than the partition's "
                             f"{p.population} clients ({field})")
        if self.eval_clients is not None and self.eval_clients > p.population:
            raise ValueError(f"eval_clients={self.eval_clients} is more than the partition's {p.population} clients "
                             f"({field}); leave it unset to evaluate every client")
        return self

    @model_validator(mode="after")
    def _flbench_sampling_needs_everyone(self) -> RunConfig:
        b = self.budget
        if self.sampling == "flbench" and (b.mode != "fixed" or b.devices.availability < 1 or b.devices.trace_file):
            raise ValueError("sampling=flbench draws from every training client each round, as FL-bench does: it needs "
                             "budget.mode=fixed, budget.devices.availability=1 and no budget.devices.trace_file")
        return self

    def _population_field(self) -> str:
        return "partition.virtual_clients" if self.partition.virtual_clients is not None else "partition.num_clients"

    def sampled_per_round(self, num_train_clients: int) -> int:
        """Clients sampled per round; more than the training clients is an error, never a silent clamp."""
        if self.clients_per_round is not None and self.clients_per_round > num_train_clients:
            raise ConfigError(f"clients_per_round={self.clients_per_round} is more than the {num_train_clients} "
                              f"clients that train ({self._population_field()}={self.partition.population}, "
                              f"unseen_fraction={self.partition.unseen_fraction})")
        k = self.clients_per_round or max(1, round(self.join_ratio * num_train_clients))
        return min(k, num_train_clients)

    def config_hash(self) -> str:
        """Identity of the experiment (excludes where it runs and where it is tracked). The partition enters in
        the layout it had before the scheme registry (PartitionSpec.identity_dump), and no plugins = the key
        is absent, so hashes of runs recorded before either change stay the same."""
        body = self.model_dump(mode="json", exclude={"workers", "tracking", "checkpoint_dir", "keep_checkpoint",
                                                    "store"})
        body["partition"] = self.partition.identity_dump()
        if not body.get("plugins"):
            body.pop("plugins", None)
        if body["train"].get("batched") == "off":  # the default: hashes of runs recorded before it stay the same
            body["train"].pop("batched")
            body["train"].pop("cohort_size", None)
        if body.get("eval_clients", 0) is None:  # the default: hashes of runs recorded before it stay the same
            body.pop("eval_clients")
        for key in ("normalize_mean", "normalize_std"):  # the default: hashes of runs recorded before it stay the same
            if body["data"].get(key, 0) is None:
                body["data"].pop(key)
        if body.get("sampling") == "uniform":  # the default: hashes of runs recorded before it stay the same
            body.pop("sampling")
        if body.get("empty_round_policy") == "fail":  # the default: hashes of runs recorded before it stay the same
            body.pop("empty_round_policy")
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    def flat(self) -> dict[str, Any]:
        """Flattened config plus the chosen algorithm's effective hyperparameters as algorithm.<name>."""
        flat = flatten(self.model_dump(mode="json"))
        flat.update({f"algorithm.{k}": v for k, v in self.algorithm.params.items()})
        return flat


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key part")
    return key.split("."), yaml_value(raw, f"override {text!r}") if raw != "" else ""


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = tree
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
        if path == ["partition", "scheme"] and isinstance(value, str):
            tree["partition"] = with_scheme(tree["partition"], value)  # drop the old scheme's own keys
    return tree


def _describe(err: ValidationError, model: type[BaseModel]) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        parent = e["loc"][:-1]
        allowed = _fields_at(model, parent)
        return f"unknown key {loc!r}; allowed keys here: {', '.join(allowed)}"
    value = e.get("input")
    msg = e["msg"].removeprefix("Value error, ")
    if isinstance(value, dict):
        # a section's own validator already names the full key (e.g. "unknown key 'partition.alpah'")
        return msg if not loc or f"'{loc}." in msg else f"{loc}: {msg}"
    return f"{loc or 'config'}: {msg} (got {json.dumps(value, default=str, ensure_ascii=False)})"


def _fields_at(model: type[BaseModel], path: tuple) -> list[str]:
    current: Any = model
    for part in path:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
    return sorted(getattr(current, "model_fields", {}))


def load_config(source: str | Path | dict[str, Any], overrides: list[str] | None = None,
                plugins: list[str] | None = None) -> RunConfig:
    """Read a YAML spec (or a dict), apply `a.b=value` overrides, add `plugins` to its list, validate."""
    if isinstance(source, dict):
        tree = json.loads(json.dumps(source))
    elif not isinstance(source, (str, Path)):
        raise ConfigError(f"a run spec must be a mapping or a YAML file, not a {type(source).__name__}")
    else:
        path = Path(source)
        tree = read_yaml(path)
        if not isinstance(tree, dict):
            raise ConfigError(f"spec file {str(path)!r} must hold a mapping at top level, not a "
                              f"{type(tree).__name__}")
    tree = apply_overrides(tree, overrides or [])
    if plugins:
        tree["plugins"] = [*tree.get("plugins", []), *(p for p in plugins if p not in tree.get("plugins", []))]
    return validate(tree)


def validate(tree: dict[str, Any]) -> RunConfig:
    try:
        cfg = RunConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_describe(err, RunConfig)) from None
    except KeyError as err:  # unknown registry entry
        raise ConfigError(str(err.args[0])) from None
    _check_finite(cfg.model_dump(), "")
    _check_finite(cfg.algorithm.params, "algorithm.")
    return cfg


def _check_finite(tree: Any, name: str) -> None:
    """inf/NaN pass `gt=0` (train.lr=inf, .nan, a tier's speed): every number of a spec must be finite."""
    if isinstance(tree, float) and not math.isfinite(tree):
        raise ConfigError(f"{name.rstrip('.') or 'config'}: must be a finite number (got {tree})")
    if isinstance(tree, dict):
        for key, value in tree.items():
            _check_finite(value, f"{name}{key}.")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            _check_finite(value, f"{name.rstrip('.')}[{i}].")
