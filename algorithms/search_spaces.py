"""Hyperparameter search spaces, one entry per algorithm beside its defaults, for `fedharness tune`.

A space maps a dotted run-spec key to a distribution, written as plain data so this layer needs no tuner:

    ("loguniform", low, high)   ("uniform", low, high)   ("choice", [v1, v2, ...])

`COMMON` (the training settings every algorithm has) applies to all; `SPACES[name]` adds the algorithm's
own hyperparameters as `algorithm.<name>.<param>` keys. An algorithm (a plugin's too) may instead declare a
class attribute `search_space = {...}` (its own keys, same format) and `search_space_source = "..."`; that wins
over this table. Nothing here touches the engine: harness.tuning reads `space_of(name)`.

Where the ranges come from (each is the grid or range the paper or the authors' code tunes over):
- train.lr: log-uniform over [1e-3, 1e-1], the span of the learning-rate grids of FedRep (Collins et al. 2021,
  App.), Ditto (Li et al. 2021, App. C) and FL-bench/PFLlib's default scripts (0.001 to 0.1).
- train.local_epochs: {1, 2, 5}: FedAvg's E grid starts {1, 5, ...} (McMahan et al. 2017, Table 2); 2 added
  in between because compute grows linearly with E.
- fedprox.mu: {0.001, 0.01, 0.1, 1} (Li et al. 2020, Sec. 5.2).
- ditto.lam: {0.05, 0.1, 0.2, 1, 2}: the union of the paper's two lambda grids (Li et al. 2021, Sec. 5 /
  App.: {0.05, 0.1, 0.2} and {0.1, 1, 2}).
- fedrep.head_epochs: {1, 5, 10} around the paper's 10 (Collins et al. 2021, Sec. 5: 10 head epochs);
  body_epochs: {1, 5} (the paper's two settings).
- fedala.eta: {0.1, 1, 10} and layer_idx: {1, 2, 3}: the values the FedALA paper's hyperparameter study
  covers around its defaults (Zhang et al. 2023, Sec. 5: eta 1.0, p = 2); rand_percent: {0.05, 0.1, 0.4, 0.8}
  (its s study, 5% to 100%, default 80%).
- fedobp.q: {0.9, 0.99, 0.995, 0.999, 0.9999}: the quantiles of the authors' logged runs (0.9999 CIFAR-10,
  0.99505 CIFAR-100, 0.995 EMNIST, 0.91078 classifier-only; uglyghost/FedOBP_results), rounded.
- apfl.alpha: {0.25, 0.5, 0.75} (Deng et al. 2020, Sec. 6: the alphas the paper compares).
- qffl.q: {0.001, 0.01, 0.1, 1, 2, 5} (Li et al. 2020, q-FFL, App.: q from {0.001, ..., 15}, small end).
- fedbabu.finetune_epochs: {1, 2, 5} (Oh et al. 2022: 5 fine-tuning epochs; fewer are cheaper).
"""

from __future__ import annotations

from typing import Any

Distribution = tuple[Any, ...]

COMMON: dict[str, Distribution] = {
    "train.lr": ("loguniform", 1e-3, 1e-1),
    "train.local_epochs": ("choice", [1, 2, 5]),
}

SPACES: dict[str, dict[str, Distribution]] = {
    "fedprox": {"mu": ("choice", [0.001, 0.01, 0.1, 1.0])},
    "ditto": {"lam": ("choice", [0.05, 0.1, 0.2, 1.0, 2.0])},
    "fedrep": {"head_epochs": ("choice", [1, 5, 10]), "body_epochs": ("choice", [1, 5])},
    "fedala": {"eta": ("choice", [0.1, 1.0, 10.0]), "layer_idx": ("choice", [1, 2, 3]),
               "rand_percent": ("choice", [0.05, 0.1, 0.4, 0.8])},
    "fedobp": {"q": ("choice", [0.9, 0.99, 0.995, 0.999, 0.9999])},
    "apfl": {"alpha": ("choice", [0.25, 0.5, 0.75])},
    "qffl": {"q": ("choice", [0.001, 0.01, 0.1, 1.0, 2.0, 5.0])},
    "fedbabu": {"finetune_epochs": ("choice", [1, 2, 5])},
}

SOURCES: dict[str, str] = {
    "common": "lr: FedRep/Ditto/FL-bench lr grids (1e-3..1e-1); local epochs: McMahan et al. 2017 E grid",
    "fedprox": "Li et al. 2020, Sec. 5.2: mu in {0.001, 0.01, 0.1, 1}",
    "ditto": "Li et al. 2021: lambda grids {0.05, 0.1, 0.2} and {0.1, 1, 2}",
    "fedrep": "Collins et al. 2021, Sec. 5: 10 head epochs; 1 or 5 representation epochs",
    "fedala": "Zhang et al. 2023, Sec. 5 hyperparameter study (eta, p, s)",
    "fedobp": "q of the authors' logged runs (uglyghost/FedOBP_results)",
    "apfl": "Deng et al. 2020, Sec. 6: alpha in {0.25, 0.5, 0.75}",
    "qffl": "Li et al. 2020 (q-FFL): q grid 0.001..15, small end",
    "fedbabu": "Oh et al. 2022: 5 fine-tuning epochs, fewer for cost",
}

KINDS = ("loguniform", "uniform", "choice")


def space_of(name: str) -> dict[str, Distribution]:
    """The full space of an algorithm as dotted run-spec keys: COMMON plus its own (class attribute first)."""
    from algorithms import registry

    cls = registry.get(name)
    own = getattr(cls, "search_space", None)
    own = SPACES.get(name, {}) if own is None else own
    space = dict(COMMON)
    space.update({f"algorithm.{name}.{param}": dist for param, dist in own.items()})
    for key, dist in space.items():
        check(key, dist)
        param = key.rsplit(".", 1)[-1]
        if key.startswith("algorithm.") and param not in cls.Params.model_fields:
            raise ValueError(f"search space of {name}: {param!r} is not one of its hyperparameters "
                             f"({', '.join(sorted(cls.Params.model_fields)) or 'none'})")
    return space


def source_of(name: str) -> str:
    from algorithms import registry

    own = getattr(registry.get(name), "search_space_source", None)
    return "; ".join(s for s in (SOURCES["common"], own or SOURCES.get(name)) if s)


def check(key: str, dist: Distribution) -> None:
    """A distribution must be one of KINDS with valid bounds / a non-empty list (one-line ValueError)."""
    if not isinstance(dist, (tuple, list)) or not dist or dist[0] not in KINDS:
        raise ValueError(f"search space {key}: {dist!r} is not one of ('loguniform'|'uniform', low, high) "
                         f"or ('choice', [values])")
    if dist[0] == "choice":
        if len(dist) != 2 or not isinstance(dist[1], (list, tuple)) or not dist[1]:
            raise ValueError(f"search space {key}: choice needs a non-empty list of values, got {dist!r}")
        return
    if len(dist) != 3 or not all(isinstance(v, (int, float)) for v in dist[1:]) or not dist[1] < dist[2]:
        raise ValueError(f"search space {key}: {dist[0]} needs low < high, got {dist!r}")
    if dist[0] == "loguniform" and dist[1] <= 0:
        raise ValueError(f"search space {key}: loguniform needs low > 0, got {dist!r}")
