"""Study specs: a base run spec times a grid (or list) of config values, expanded into cells.

A study spec (YAML):

    name: demo                      # MLflow experiment (unless `experiment:` says otherwise)
    base: ../quickstart.yaml        # path relative to the study file, or an inline mapping
    overrides: [rounds=10]          # dotted overrides applied to the base, for every cell
    grid:                           # cartesian product over dotted config keys
      algorithm.name: [fedavg, local]
      seed: [0, 1, 2]
    cells:                          # and/or an explicit list; with a grid: cells x grid
      - {partition.alpha: 0.1}
      - {partition.scheme: pathological, partition.classes_per_client: 2}
    parallel_cells: 1               # at most this many cells at once (harness.studies.runner)

Why expansion is its own step, with no MLflow and no engine in sight:
- Every cell is expanded and validated (harness.config.load_config) before anything runs, so a
  typo in cell 30 is a one-line error at once, not after an hour of cells 1-29.
- A cell's identity is its config hash (RunConfig.config_hash: workers, tracking and
  checkpoint paths excluded); two cells with one hash are refused, since they would be one run.
  harness.studies.state matches cells to MLflow runs by that hash.
- The run name is set through the `mlflow.runName` tag (Study.tags), not `RunConfig.name`, so
  the hash of a cell does not depend on the study's name; it names the algorithm (or the cell's
  `name`), data set, partition and seed, then the cell's other values.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from harness.config import ConfigError, RunConfig, load_config, read_yaml
from protocol.specs import Strict

STUDY_TAG = "fedharness.study"
CELL_TAG_PREFIX = "fedharness.cell."


class StudySpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", description="study name; tags every run")
    base: str | dict[str, Any] = Field(default_factory=dict, description="run spec path (relative to the study "
                                                                         "file) or inline mapping")
    overrides: list[str] = Field(default_factory=list, description="dotted overrides applied to the base")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="key -> values; cartesian product")
    cells: list[dict[str, Any]] = Field(default_factory=list, description="explicit cells (times the grid)")
    parallel_cells: int = Field(1, ge=1, description="at most this many cells at once")
    experiment: str | None = Field(None, description="MLflow experiment (default: the study name)")


@dataclass
class Cell:
    """One point of the study: the values it sets and the validated run config they give."""

    index: int
    values: dict[str, Any]
    config: RunConfig

    @property
    def hash(self) -> str:
        return self.config.config_hash()

    @property
    def label(self) -> str:
        return ", ".join(f"{_short_key(k)}={_text(v)}" for k, v in self.values.items()) or "base"

    @property
    def run_name(self) -> str:
        """What MLflow lists the cell's run as: its name value (or algorithm), data set, partition, seed, and the
        cell's other values (harness.tracking.run_name)."""
        from harness.tracking import run_name

        shown = ("name", "algorithm.name", "seed", "data.source")
        extra = ", ".join(f"{_short_key(k)}={_text(v)}" for k, v in self.values.items()
                          if k not in shown and not k.startswith("partition."))
        what = str(self.values["name"]) if "name" in self.values else None
        return run_name(self.config, what, extra)

    @property
    def cpus(self) -> float:
        """CPUs its worker actors reserve in the Ray cluster (0 with in-process workers)."""
        w = self.config.workers
        return w.num_workers * w.num_cpus if w.use_ray else 0.0

    @property
    def gpus(self) -> float:
        w = self.config.workers
        return w.num_workers * w.num_gpus if w.use_ray else 0.0


@dataclass
class Study:
    name: str
    experiment: str
    cells: list[Cell]
    parallel_cells: int = 1
    source: str = "<inline>"

    @property
    def tracking_uri(self) -> str:
        from harness.tracking import tracking_uri

        return tracking_uri(self.cells[0].config.tracking.uri)

    def tags(self, cell: Cell) -> dict[str, str]:
        """MLflow tags of a cell's run: the study, the cell's label (as run name) and one tag per value."""
        tags = {STUDY_TAG: self.name, "fedharness.cell": cell.label, "mlflow.runName": cell.run_name}
        tags |= {f"{CELL_TAG_PREFIX}{k}": _text(v) for k, v in cell.values.items()}
        return tags


def load_study(source: str | Path | dict[str, Any], overrides: list[str] | None = None,
               tracking_uri: str | None = None, parallel_cells: int | None = None) -> Study:
    """Read and expand a study spec; every cell is validated before this returns."""
    where = "<inline>"
    base_dir = Path.cwd()
    if isinstance(source, dict):
        tree = json.loads(json.dumps(source))
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"study spec {where!r} does not exist")
        tree = read_yaml(path, "study spec")
        base_dir = path.resolve().parent
        if not isinstance(tree, dict):
            raise ConfigError(f"study spec {where!r} must hold a mapping at top level")
    try:
        spec = StudySpec.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(f"study spec {where}: {_describe(err)}") from None
    for key, values in spec.grid.items():
        if not values:
            raise ConfigError(f"study spec {where}: grid.{key} is an empty list")
    if isinstance(spec.base, str):
        base_path = (base_dir / spec.base) if not Path(spec.base).is_absolute() else Path(spec.base)
        if not base_path.is_file():
            raise ConfigError(f"study spec {where}: base {spec.base!r} does not exist (looked for {base_path})")
        base_tree = read_yaml(base_path, f"study spec {where}: base")
    else:
        base_tree = spec.base
    experiment = spec.experiment or spec.name
    fixed = [*spec.overrides, *(overrides or []), f"tracking.experiment={json.dumps(experiment)}"]
    if tracking_uri:
        fixed.append(f"tracking.uri={json.dumps(tracking_uri)}")
    try:
        load_config(base_tree, fixed)
    except ConfigError as err:
        raise ConfigError(f"study spec {where}: base + overrides: {err}") from None

    cells: list[Cell] = []
    seen: dict[str, int] = {}
    for i, values in enumerate(expand_values(spec)):
        cell_overrides = [f"{k}={json.dumps(v)}" for k, v in values.items()]
        label = ", ".join(f"{k}={_text(v)}" for k, v in values.items())
        try:
            cfg = load_config(base_tree, [*fixed, *cell_overrides])
        except ConfigError as err:
            raise ConfigError(f"study spec {where}: cell {i + 1} ({label}): {err}") from None
        cell = Cell(i, values, cfg)
        if cell.hash in seen:
            raise ConfigError(f"study spec {where}: cells {seen[cell.hash] + 1} and {i + 1} ({label}) "
                              f"are the same experiment (config hash {cell.hash})")
        seen[cell.hash] = i
        cells.append(cell)
    if len({c.config.tracking.uri for c in cells}) > 1:
        raise ConfigError(f"study spec {where}: all cells must use one tracking.uri")
    return Study(spec.name, experiment, cells, parallel_cells or spec.parallel_cells, where)


def expand_values(spec: StudySpec) -> list[dict[str, Any]]:
    """cells x grid, in spec order (the grid's last key varies fastest)."""
    keys = list(spec.grid)
    grid_points = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*spec.grid.values())]
    explicit = spec.cells or [{}]
    out = []
    for cell in explicit:
        for point in grid_points:
            clash = set(cell) & set(point)
            if clash:
                raise ConfigError(f"study spec: key(s) {sorted(clash)} appear in both cells and grid")
            out.append({**cell, **point})
    return out


def _describe(err: ValidationError) -> str:
    """pydantic's first error as one line (the CLI prints config errors on one line)."""
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        return f"unknown key {loc!r}; allowed keys: {', '.join(StudySpec.model_fields)}"
    if e["type"] == "missing":
        return f"missing key {loc!r}"
    return f"{loc}: {e['msg']} (got {json.dumps(e.get('input'), default=str)})"


def _short_key(key: str) -> str:
    parts = key.split(".")
    return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))
