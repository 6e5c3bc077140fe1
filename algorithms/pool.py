"""The server's pool of every client's last uploaded model (FedAMP, pFedSim, APPLE, pFedLA): kept as server state,
checkpointed as two arrays, and stacked in client-id order once per change (a round's dispatches all read the same
stack)."""

from __future__ import annotations

import numpy as np

from algorithms.base import State


class ModelPool:
    """client id -> its last uploaded model (float32 flat vectors of length `size`)."""

    def __init__(self, size: int):
        self.size = size
        self.models: dict[int, np.ndarray] = {}
        self._stacked: tuple[np.ndarray, np.ndarray] | None = None  # (ids, models), rebuilt on change

    def __len__(self) -> int:
        return len(self.models)

    def get(self, cid: int, default: np.ndarray | None = None) -> np.ndarray | None:
        return self.models.get(cid, default)

    def set(self, cid: int, model: np.ndarray) -> None:
        """One client's entry (a float32 copy of `model`)."""
        self.models[cid] = np.asarray(model, dtype=np.float32).copy()
        self._stacked = None

    def put(self, updates) -> None:
        """The uploads (ClientUpdates with upload["model"]) replace their clients' entries."""
        for u in sorted(updates, key=lambda u: u.cid):
            self.models[u.cid] = u.upload["model"].copy()
        self._stacked = None

    def stacked(self) -> tuple[np.ndarray, np.ndarray]:
        """(client ids ascending, their models as rows)."""
        if self._stacked is None:
            ids = sorted(self.models)
            models = np.stack([self.models[j] for j in ids]) if ids else np.zeros((0, self.size), np.float32)
            self._stacked = (np.array(ids, dtype=np.int64), models)
        return self._stacked

    def state(self) -> State:
        if not self.models:
            return {}
        ids, models = self.stacked()
        return {"pool_cids": ids.copy(), "pool_models": models.copy()}

    def load(self, state: State) -> None:
        self.models = {int(c): np.asarray(m, dtype=np.float32).copy()
                       for c, m in zip(state.get("pool_cids", []), state.get("pool_models", []), strict=True)}
        self._stacked = None
