"""Client-state store: per-client dicts of numpy arrays, in memory or on disk.

Both backends share one interface. A round's new states are written with `commit`, which
is atomic with respect to the run's checkpoint: the disk backend first writes the round's
files into a staging folder, then the checkpoint marks the round done, then the files move
into place (a redo log). A crash at any point leaves a store that matches the last
checkpoint exactly, which is what makes `fedharness resume` reproduce an undisturbed run.

Each backend owns its checkpoint policy: `checkpoint_due` says whether a round ends with a
checkpoint, `snapshot` writes what the checkpoint needs of the store, `restore` brings the store
back to a checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

State = dict[str, np.ndarray]


class MemoryStore:
    """Fastest; lives in the driver's RAM. Snapshots to disk at each checkpoint."""

    def __init__(self) -> None:
        self._states: dict[int, State] = {}

    def get(self, cid: int) -> State:
        return dict(self._states.get(cid, {}))

    def get_many(self, cids: Iterable[int]) -> dict[int, State]:
        return {c: self.get(c) for c in cids}

    def commit(self, states: dict[int, State], round: int = 0,
               mark_done: Callable[[], None] = lambda: None) -> None:
        for cid, state in states.items():
            self._states[cid] = {k: np.asarray(v) for k, v in state.items()}
        mark_done()

    def __len__(self) -> int:
        return len(self._states)

    def nbytes(self) -> int:
        return sum(a.nbytes for s in self._states.values() for a in s.values())

    def save(self, path: Path) -> None:
        """Snapshot (one .npz, written atomically)."""
        arrays = {f"{cid}/{key}": value for cid, s in self._states.items() for key, value in s.items()}
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)

    SNAPSHOT = "store.npz"

    def checkpoint_due(self, round: int, every: int, final: bool) -> bool:
        """A snapshot holds every client's state (the one checkpoint cost that grows with N), so it is taken
        every `every` rounds and at the end; a resume replays the rounds since (determinism: identical)."""
        return final or (round + 1) % every == 0

    def snapshot(self, folder: Path) -> None:
        self.save(folder / self.SNAPSHOT)

    def restore(self, folder: Path, done_round: int) -> None:
        self.load(folder / self.SNAPSHOT)

    def load(self, path: Path) -> None:
        self._states = {}
        if not path.exists():
            return
        with np.load(path, allow_pickle=False) as z:
            for name in z.files:
                cid, key = name.split("/", 1)
                self._states.setdefault(int(cid), {})[key] = z[name]


class DiskStore:
    """One .npy file per (client, key): RAM stays flat whatever the number of clients.

    An index cid -> keys (a few bytes per client, built by one scan when the store is opened and
    kept current by commits) lets reads open exact paths instead of globbing a folder per client,
    whose cost grew with N (186 us per client at N=100,000).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._staging = self.root / "_staging"
        self._keys = self._scan()

    def _scan(self) -> dict[int, set[str]]:
        keys: dict[int, set[str]] = {}
        for folder in self.root.glob("[0-9][0-9][0-9]"):
            with os.scandir(folder) as entries:
                for entry in entries:
                    cid, _, rest = entry.name.partition(".")
                    if rest.endswith(".npy") and cid.isdigit():
                        keys.setdefault(int(cid), set()).add(rest[:-4])
        return keys

    def _file(self, cid: int, key: str, base: Path | None = None) -> Path:
        return (base or self.root) / f"{cid % 1000:03d}" / f"{cid}.{key}.npy"

    def get(self, cid: int) -> State:
        return {key: np.load(self._file(cid, key), allow_pickle=False) for key in sorted(self._keys.get(cid, ()))}

    def get_many(self, cids: Iterable[int]) -> dict[int, State]:
        return {c: self.get(c) for c in cids}

    def checkpoint_due(self, round: int, every: int, final: bool) -> bool:
        """Every round: the commit *is* the checkpoint and costs only the round's clients."""
        return True

    def snapshot(self, folder: Path) -> None:
        """Nothing to write: the staged commit confirmed by the checkpoint's meta.json is the snapshot."""

    def restore(self, folder: Path, done_round: int) -> None:
        self.recover(done_round)

    def commit(self, states: dict[int, State], round: int = 0,
               mark_done: Callable[[], None] = lambda: None) -> None:
        if self._staging.exists():
            shutil.rmtree(self._staging)
        self._staging.mkdir()
        manifest = []
        for cid, state in states.items():
            for key, value in state.items():
                target = self._file(cid, key, self._staging)
                target.parent.mkdir(exist_ok=True)
                np.save(target, np.asarray(value), allow_pickle=False)
                manifest.append([cid, key])
            manifest.append([cid, None])  # marks the client's state as complete (keys removed vanish)
        (self._staging / "manifest.json").write_text(json.dumps({"round": round, "entries": manifest}))
        mark_done()  # the checkpoint now says this round happened: the move below must finish
        self._apply()

    def recover(self, committed_round: int) -> None:
        """On resume: finish a staged commit the checkpoint confirmed, drop one it never confirmed."""
        manifest = self._staging / "manifest.json"
        if not manifest.exists():
            shutil.rmtree(self._staging, ignore_errors=True)
            return
        if json.loads(manifest.read_text())["round"] <= committed_round:
            self._apply()
        else:
            shutil.rmtree(self._staging)

    def _apply(self) -> None:
        """Move staged files into place (idempotent: a redo after a crash finds some already moved)."""
        manifest = json.loads((self._staging / "manifest.json").read_text())["entries"]
        kept: dict[int, set[str]] = {}
        for cid, key in manifest:
            if key is not None:
                kept.setdefault(cid, set()).add(key)
                target = self._file(cid, key)
                target.parent.mkdir(exist_ok=True)
                staged = self._file(cid, key, self._staging)
                if staged.exists():
                    os.replace(staged, target)
            else:
                new_keys = kept.get(cid, set())
                for stale in self._keys.get(cid, set()) - new_keys:
                    self._file(cid, stale).unlink(missing_ok=True)
                self._keys[cid] = new_keys
        shutil.rmtree(self._staging)

    def __len__(self) -> int:
        return sum(1 for keys in self._keys.values() if keys)

    def nbytes(self) -> int:
        return sum(self._file(c, k).stat().st_size for c, keys in self._keys.items() for k in keys)


def make_store(backend: str, path: str | Path | None) -> MemoryStore | DiskStore:
    if backend == "memory":
        return MemoryStore()
    if path is None:
        raise ValueError("store.backend=disk needs store.path")
    return DiskStore(path)
