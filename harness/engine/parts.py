"""What a run is built from (data, algorithm, initial model, virtual clock, clients per round), built and
checked before the run's MLflow record or checkpoint exists: bad input leaves no trace."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.config import ConfigError, RunConfig
from harness.engine.batched import decide
from harness.engine.clock import DeviceProfiles, VirtualClock
from harness.engine.evaluate import evaluation_clients
from harness.engine.worker import build_algorithm, check_device, resolve_device
from partitions import build_federated_dataset
from partitions.federated import FederatedDataset


@dataclass
class Parts:
    """What a run is built from. Building it checks every input (data, model, device, budget), so it comes
    before the run's MLflow record and checkpoint exist."""

    data: FederatedDataset
    algo: object
    global_vec: np.ndarray
    clock: VirtualClock
    k: int
    batched: bool = False  # train.batched resolved for this machine's device (workers resolve it alike)
    eval_ids: list[int] | None = None  # the clients each evaluation round evaluates (None: evaluation off)


def build_parts(cfg: RunConfig, evaluate: bool = True) -> Parts:
    check_device(cfg)
    _check_writable_folder(cfg.checkpoint_dir, "checkpoint_dir")
    data = build_federated_dataset(cfg.data, cfg.partition, cfg.seed)
    algo, model, global_vec = build_algorithm(cfg, data)
    _check_server_memory(algo, data.num_clients)
    # a cluster's workers may have the CUDA device the driver lacks (check_device lets that through)
    device = torch.device("cuda") if cfg.device == "cuda" else resolve_device(cfg.device)
    batched = decide(cfg.train.batched, algo, model, cfg.train.optimizer, device)
    profiles = DeviceProfiles.draw(cfg.budget, data.num_clients, cfg.seed)
    clock = VirtualClock(cfg.budget, profiles, cfg.train.batch_size, cfg.seed, cfg.sampling)
    try:
        eval_ids = evaluation_clients(cfg.eval_clients, data, cfg.seed) if evaluate else None
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return Parts(data, algo, global_vec, clock, cfg.sampled_per_round(len(data.train_clients)), batched, eval_ids)


def _check_server_memory(algo, num_clients: int) -> None:
    """Refuse, before anything starts, an algorithm whose per-dispatch server memory grows with the number of
    clients (APPLE's N cores, pFedLA's N-wide hypernetworks) past what this machine has available."""
    need, have = algo.server_bytes(), available_memory()
    if have is not None and need > have:
        raise ConfigError(f"{algo.name} over {num_clients:,} clients needs {need / 2**30:.1f} GiB per client "
                          f"dispatch on the server (it grows with the number of clients) but {have / 2**30:.1f} GiB "
                          f"are available; use fewer clients (partition.num_clients / virtual_clients)")


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is no such file)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _check_writable_folder(path: str, field: str) -> None:
    """A folder that exists or can be created, without creating it (bad input leaves no trace)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
        why = "not a folder" if not p.is_dir() else "not writable"
        raise ConfigError(f"{field}={path!r} cannot hold checkpoints ({p} is {why})")
