"""A run's checkpoint: the global model, what the client-state store needs, and meta.json.

Written at the end of a round (and once before round 1, before any worker starts). Each checkpoint's
files go into a fresh folder `round-NNNNNN-*` beside meta.json: global.npy, server.npz (the
algorithm's server state, when it has one), the store's snapshot (the memory store: every client's
state; the disk store: nothing, its staged commit is confirmed by meta.json). Then meta.json is
replaced atomically — the commit point — naming that folder and the sha256 of each of its files;
only then are older folders removed. A crash at any point leaves the previous checkpoint whole.

meta.json carries a format version, the partition's digest (FederatedDataset.digest), the run's
status (RUNNING, or FINISHED once the run ended) and a sha256 of its own content. `read_meta` and
`verify` refuse, with one line naming the file, anything that does not add up: not JSON, not a
mapping, another format, missing or mistyped fields, done_round outside the run or not matching
the history, an edited meta.json, another run's checkpoint, a missing, truncated or replaced file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

FORMAT = 2  # 1: the unversioned layout before checksums (files beside meta.json)
META = "meta.json"
GLOBAL = "global.npy"
SERVER = "server.npz"  # the algorithm's server-side state (Algorithm.server_state), when it has one
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
TOTALS = ("sim_time", "bytes_up_total", "bytes_down_total")


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted or used, in one line naming the file."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def meta_checksum(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class Checkpoint:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    @property
    def meta_path(self) -> Path:
        return self.folder / META

    def write(self, meta: dict, global_vec: np.ndarray, store, server_state: dict | None = None) -> dict:
        """Write one checkpoint; returns the meta.json it committed."""
        state = Path(tempfile.mkdtemp(prefix=f"round-{meta['done_round'] + 1:06d}-", dir=self.folder))
        np.save(state / GLOBAL, global_vec, allow_pickle=False)
        if server_state:
            np.savez(state / SERVER, **server_state)
        store.snapshot(state)
        files = {p.name: file_sha256(p) for p in sorted(state.iterdir()) if p.is_file()}
        meta = {**meta, "format": FORMAT, "state": state.name, "files": files}
        self._commit(meta)
        for old in self.folder.glob("round-*"):
            if old != state and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        return meta

    def _commit(self, meta: dict) -> None:
        meta = {**meta, "checksum": meta_checksum(meta)}
        tmp = self.folder / "meta.tmp.json"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, self.meta_path)

    def mark_finished(self, meta: dict) -> None:
        """The run ended FINISHED: say so in meta.json (a resume is then refused); the files stay as they are."""
        self._commit({k: v for k, v in meta.items() if k != "checksum"} | {"status": "FINISHED"})

    def state_folder(self, meta: dict) -> Path:
        return self.folder / meta["state"]

    def verify(self, meta: dict) -> None:
        """Every file meta.json names exists and has its recorded sha256, and nothing else was added."""
        state = self.state_folder(meta)
        if not state.is_dir():
            raise CheckpointError(f"checkpoint {state} is missing (meta.json names it)")
        present = {p.name for p in state.iterdir() if p.is_file()}
        for extra in sorted(present - set(meta["files"])):
            raise CheckpointError(f"checkpoint file {state / extra} is not part of the checkpoint (added?)")
        for name, expected in meta["files"].items():
            path = state / name
            if name not in present:
                raise CheckpointError(f"checkpoint file {path} is missing")
            if file_sha256(path) != expected:
                raise CheckpointError(f"checkpoint file {path} does not match its sha256 in meta.json "
                                      f"(truncated, damaged or replaced)")

    def global_vector(self, meta: dict, like: np.ndarray) -> np.ndarray:
        """global.npy, which must have the shape and dtype of the run's model vector `like`."""
        path = self.state_folder(meta) / GLOBAL
        vec = np.load(path, allow_pickle=False)
        if vec.shape != like.shape or vec.dtype != like.dtype:
            raise CheckpointError(f"checkpoint file {path} holds {vec.dtype} {vec.shape}; the model needs "
                                  f"{like.dtype} {like.shape}")
        return vec

    def server_state(self, meta: dict) -> dict:
        path = self.state_folder(meta) / SERVER
        if not path.exists():
            return {}
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


def read_meta(checkpoint_dir: str | Path, run_id: str) -> dict:
    """The meta.json of a run's checkpoint, checked: one-line errors when it is missing, unreadable, of
    another format or run, mistyped, inconsistent, or edited (its own checksum)."""
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise CheckpointError(f"{run_id!r} is not a run id (letters, digits, '-', '_', '.')")
    path = Path(checkpoint_dir) / run_id / META
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint for run {run_id!r} under {checkpoint_dir} (looked for {path}; a run "
                                f"that FINISHED keeps none unless keep_checkpoint=true: nothing to resume)")
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else 'empty'})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path} holds {json.dumps(meta)[:40]}, not a checkpoint (a JSON object)")
    fmt = meta.get("format")
    if fmt != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {fmt!r}; this fedharness reads format {FORMAT} "
                              f"(written before checksums, or not a fedharness checkpoint)")
    problem = _field_problem(meta)
    if problem:
        raise CheckpointError(f"checkpoint {path}: {problem}")
    if meta["checksum"] != meta_checksum(meta):
        raise CheckpointError(f"checkpoint {path} does not match its own checksum (edited or damaged)")
    if meta["run_id"] != run_id:
        raise CheckpointError(f"checkpoint {path} belongs to run {meta['run_id']}, not to {run_id} "
                              f"(a folder copied from another run?)")
    return meta


def _field_problem(meta: dict) -> str | None:
    """The first field of meta.json that is missing, mistyped or inconsistent (None: all fine)."""
    names = {str: "string", int: "integer", dict: "object", list: "array"}
    types = {"run_id": str, "config": dict, "done_round": int, "history": list, "totals": dict, "state": str,
             "files": dict, "partition": str, "status": str, "checksum": str}
    for key, kind in types.items():
        if key not in meta:
            return f"no {key!r}"
        value = meta[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{key} is {json.dumps(value)[:60]}, not a JSON {names[kind]}"
    rounds = meta["config"].get("rounds")
    done = meta["done_round"]
    if not isinstance(rounds, int) or not -1 <= done < rounds:
        return f"done_round={done} is outside the run's rounds (-1..{rounds - 1 if isinstance(rounds, int) else '?'})"
    if len(meta["history"]) != done + 1 or any(not isinstance(h, dict) or h.get("round") != i + 1
                                               for i, h in enumerate(meta["history"])):
        return f"done_round={done} but the history holds rounds 1..{len(meta['history'])}"
    if sorted(meta["totals"]) != sorted(TOTALS) or not all(isinstance(v, (int, float)) for v in
                                                           meta["totals"].values()):
        return f"totals must hold the numbers {', '.join(TOTALS)}"
    if meta["status"] not in ("RUNNING", "FINISHED"):
        return f"status {meta['status']!r} is neither RUNNING nor FINISHED"
    if Path(meta["state"]).name != meta["state"] or not meta["state"].startswith("round-"):
        return f"state {meta['state']!r} is not a checkpoint folder name"
    if not all(isinstance(v, str) and Path(k).name == k for k, v in meta["files"].items()):
        return "files must map file names to sha256 digests"
    return None
