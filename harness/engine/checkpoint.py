"""A run's checkpoint: the global model, what the client-state store needs, and meta.json.

Written at the end of a round (and once before round 1), in this order: global.npy, the store's
snapshot (the memory store: every client's state; the disk store: nothing, its staged commit is
confirmed by meta.json), then meta.json by an atomic rename — the commit point. A crash before
the rename leaves the previous checkpoint intact; every random draw is derived from (seed,
purpose, round, client), so nothing else is needed for a bit-identical resume.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

META = "meta.json"
GLOBAL = "global.npy"
SERVER = "server.npz"  # the algorithm's server-side state (Algorithm.server_state), when it has one


class Checkpoint:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    @property
    def meta_path(self) -> Path:
        return self.folder / META

    def write(self, meta: dict, global_vec: np.ndarray, store, server_state: dict | None = None) -> None:
        tmp = self.folder / "global.tmp.npy"
        np.save(tmp, global_vec, allow_pickle=False)
        os.replace(tmp, self.folder / GLOBAL)
        if server_state:
            tmp = self.folder / "server.tmp.npz"
            np.savez(tmp, **server_state)
            os.replace(tmp, self.folder / SERVER)
        store.snapshot(self.folder)
        tmp = self.folder / "meta.tmp.json"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, self.meta_path)

    def global_vector(self) -> np.ndarray:
        return np.load(self.folder / GLOBAL, allow_pickle=False)

    def server_state(self) -> dict:
        path = self.folder / SERVER
        if not path.exists():
            return {}
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


def read_meta(checkpoint_dir: str | Path, run_id: str) -> dict:
    """The meta.json of a run's checkpoint (one-line errors when it is missing or unreadable)."""
    path = Path(checkpoint_dir) / run_id / META
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint for run {run_id!r} under {checkpoint_dir} (looked for {path})")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"checkpoint {path} is unreadable: {err}") from None
    if not isinstance(meta, dict) or "config" not in meta or "done_round" not in meta:
        raise ValueError(f"checkpoint {path} is not a fedharness checkpoint (no config / done_round)")
    return meta
