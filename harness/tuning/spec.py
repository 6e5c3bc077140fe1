"""Tune specs: a study cell (base run spec + overrides) times a list of algorithms, one budget for all.

A tune spec (YAML):

    name: tune-demo                 # MLflow experiment (unless `experiment:`) and Ray Tune folder
    base: ../quickstart.yaml        # as in a study spec: a path (relative to this file) or a mapping
    overrides: [rounds=10, partition.val_fraction=0.2]
    algorithms: [fedavg, fedper, ditto]
    budget: {trials: 8}             # or {client_updates: 4000}: the same for every algorithm
    scheduler: {grace_rounds: 2, reduction_factor: 2}   # ASHA on rounds
    space:                          # optional narrowing of the declared spaces (algorithms/search_spaces.py)
      all: {train.local_epochs: [choice, [1, 2]]}
      fedrep: {algorithm.fedrep.head_epochs: [choice, [1, 5]]}
    parallel_trials: 2              # trials at once (each reserves trial_cpus CPUs of the Ray cluster)
    trial_workers: inprocess        # or `actors`: a trial's clients run on its own worker actors
    reuse_actors: true              # the next trial runs in a finished trial's process (false: a new one)
    final_seeds: [1, 2, 3]          # fresh seeds for the chosen and the default configuration
    search_seed: 0                  # seeds the sampler: same seed, same trial configurations

Why the budget is enforced here, once: the budget is one value of the spec, not of an algorithm, so it cannot
differ between algorithms; a space may not hold keys that change what a trial costs or sees (rounds, clients
per round, data, partition, seed, evaluation schedule), and a `client_updates` budget becomes the same number
of trials for every algorithm (budget // (rounds x clients per round): a trial's most client-updates).
Selection needs validation data: `partition.val_fraction` must be > 0, and search runs read no test split
(harness.tuning.trial).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from harness.config import ConfigError, RunConfig, load_config, read_yaml
from protocol.specs import Strict

#: keys a search space may not touch: they change a trial's cost or what it is evaluated on
FIXED_KEYS = ("rounds", "clients_per_round", "join_ratio", "seed", "eval_every", "eval_sampled", "data.",
              "partition.", "budget.", "model.", "workers.", "tracking.", "algorithm.name")
METRIC = "personal_val_acc"


class Budget(Strict):
    trials: int | None = Field(None, ge=1, description="trials per algorithm")
    client_updates: int | None = Field(None, ge=1, description="simulated client-updates per algorithm")

    @model_validator(mode="after")
    def _one(self) -> Budget:
        if (self.trials is None) == (self.client_updates is None):
            raise ValueError("give exactly one of budget.trials or budget.client_updates")
        return self


class Scheduler(Strict):
    kind: Literal["asha", "none"] = Field("asha", description="early stopping of trials on rounds")
    grace_rounds: int = Field(2, ge=1, description="rounds every trial gets before it can be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA: keep 1/reduction_factor at each rung")


class TuneSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    base: str | dict[str, Any] = Field(default_factory=dict)
    overrides: list[str] = Field(default_factory=list)
    algorithms: list[str] = Field(min_length=1)
    budget: Budget
    scheduler: Scheduler = Field(default_factory=Scheduler)
    space: dict[str, dict[str, list[Any]]] = Field(default_factory=dict)
    parallel_trials: int = Field(1, ge=1)
    trial_cpus: float = Field(1.0, gt=0, description="CPUs a trial reserves in the Ray cluster")
    trial_workers: Literal["inprocess", "actors"] = Field(
        "inprocess", description="a trial's engine runs its clients in the trial's process, or on worker actors")
    reuse_actors: bool = Field(True, description="Tune reuses a finished trial's process for the next trial "
                                                 "(imports and the data cache stay loaded; measured faster)")
    final_seeds: list[int] = Field(default_factory=lambda: [1, 2, 3], min_length=1)
    search_seed: int = Field(0, ge=0)
    experiment: str | None = None
    storage: str = Field(".fedharness/tune", description="Ray Tune's experiment folders (resumable state)")


@dataclass
class Tune:
    spec: TuneSpec
    base_tree: dict[str, Any]
    fixed: list[str]                    # base overrides every run of the tune gets
    configs: dict[str, RunConfig]       # algorithm -> its validated search config (defaults)
    spaces: dict[str, dict[str, tuple]]  # algorithm -> dotted key -> distribution
    trials: int
    source: str

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def experiment(self) -> str:
        return self.spec.experiment or self.spec.name

    @property
    def storage(self) -> Path:
        return Path(self.spec.storage).absolute() / self.spec.name

    def updates_per_trial(self, algorithm: str) -> int:
        cfg = self.configs[algorithm]
        return cfg.rounds * cfg.sampled_per_round(cfg.partition.num_clients)

    def trial_config(self, algorithm: str, values: dict[str, Any]) -> RunConfig:
        return load_config(self.base_tree, [*self.fixed, f"algorithm.name={algorithm}",
                                            *(f"{k}={json.dumps(v)}" for k, v in values.items())])


def load_tune(source: str | Path | dict[str, Any], overrides: list[str] | None = None,
              tracking_uri: str | None = None) -> Tune:
    where, base_dir = "<inline>", Path.cwd()
    if isinstance(source, dict):
        tree = json.loads(json.dumps(source))
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"tune spec {where!r} does not exist")
        tree, base_dir = read_yaml(path, "tune spec"), path.resolve().parent
        if not isinstance(tree, dict):
            raise ConfigError(f"tune spec {where!r} must hold a mapping at top level")
    try:
        spec = TuneSpec.model_validate(tree)
    except ValidationError as err:
        e = err.errors()[0]
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            allowed = ", ".join(TuneSpec.model_fields if "." not in loc else Budget.model_fields)
            raise ConfigError(f"tune spec {where}: unknown key {loc!r} (the budget is one for every algorithm: "
                              f"budget.trials or budget.client_updates); allowed keys: {allowed}") from None
        raise ConfigError(f"tune spec {where}: {loc}: {e['msg']}") from None
    base_tree = spec.base
    if isinstance(spec.base, str):
        base_path = Path(spec.base) if Path(spec.base).is_absolute() else base_dir / spec.base
        if not base_path.is_file():
            raise ConfigError(f"tune spec {where}: base {spec.base!r} does not exist (looked for {base_path})")
        base_tree = read_yaml(base_path, f"tune spec {where}: base")
    fixed = [*spec.overrides, *(overrides or []), f"tracking.experiment={json.dumps(spec.experiment or spec.name)}"]
    if tracking_uri:
        fixed.append(f"tracking.uri={json.dumps(tracking_uri)}")
    configs, spaces = {}, {}
    for algorithm in dict.fromkeys(spec.algorithms):
        try:
            configs[algorithm] = load_config(base_tree, [*fixed, f"algorithm.name={algorithm}"])
        except ConfigError as err:
            raise ConfigError(f"tune spec {where}: {algorithm}: {err}") from None
        spaces[algorithm] = _space(spec, algorithm, where)
        for key, dist in spaces[algorithm].items():  # every key is a valid run-spec key, at both ends
            for value in (dist[1] if dist[0] == "choice" else dist[1:]):
                try:
                    load_config(base_tree, [*fixed, f"algorithm.name={algorithm}", f"{key}={json.dumps(value)}"])
                except ConfigError as err:
                    raise ConfigError(f"tune spec {where}: search space of {algorithm}: {key}={value!r}: "
                                      f"{err}") from None
    _check(spec, configs, where)
    first = next(iter(configs.values()))
    per_trial = first.rounds * first.sampled_per_round(first.partition.num_clients)
    trials = spec.budget.trials or spec.budget.client_updates // per_trial
    if trials < 1:
        raise ConfigError(f"tune spec {where}: budget.client_updates={spec.budget.client_updates} is less than one "
                          f"trial ({first.rounds} rounds x {per_trial // first.rounds} clients = {per_trial})")
    return Tune(spec, base_tree, fixed, configs, spaces, trials, where)


def _space(spec: TuneSpec, algorithm: str, where: str) -> dict[str, tuple]:
    from algorithms.search_spaces import check, space_of

    try:
        space = space_of(algorithm)
        for scope in ("all", algorithm):
            for key, dist in spec.space.get(scope, {}).items():
                if any(key == k or key.startswith(k) for k in FIXED_KEYS if k.endswith(".")) or key in FIXED_KEYS:
                    raise ValueError(f"space.{scope}.{key}: a search space may not change {key} (it would change "
                                     f"the budget or the data a trial is judged on)")
                if key.startswith("algorithm.") and not key.startswith(f"algorithm.{algorithm}."):
                    if scope == algorithm:
                        raise ValueError(f"space.{scope}.{key}: {algorithm}'s keys are algorithm.{algorithm}.*")
                    continue
                check(key, tuple(dist))
                space[key] = tuple(dist)
    except ValueError as err:
        raise ConfigError(f"tune spec {where}: {err}") from None
    unknown = set(spec.space) - {"all", *spec.algorithms}
    if unknown:
        raise ConfigError(f"tune spec {where}: space.{sorted(unknown)[0]}: not 'all' or one of the algorithms")
    return space


def _check(spec: TuneSpec, configs: dict[str, RunConfig], where: str) -> None:
    for cfg in configs.values():
        if cfg.partition.val_fraction <= 0:
            raise ConfigError(f"tune spec {where}: partition.val_fraction must be > 0: selection reads validation "
                              f"data only (add partition.val_fraction=0.2 to overrides)")
        if cfg.seed in spec.final_seeds:
            raise ConfigError(f"tune spec {where}: final_seeds {spec.final_seeds} must be fresh: the search used "
                              f"seed {cfg.seed}")
    costs = {a: (c.rounds, c.sampled_per_round(c.partition.num_clients), c.eval_every) for a, c in configs.items()}
    if len(set(costs.values())) > 1:  # cannot happen through one base; kept as the budget's guard
        raise ConfigError(f"tune spec {where}: algorithms differ in rounds / clients per round: {costs}")
