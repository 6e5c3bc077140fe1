"""On-disk caches: partitions keyed by (data set, scheme, params, seed), and decoded data arrays.

Both write to a temporary name and `os.replace` it, so a crash or two processes writing the
same entry never leave a half-written file behind; both load with allow_pickle=False.

Partition key = sha256 of {format version, data set name, a fingerprint of the labels and group
ids (sha256 of their bytes, plus N and the input shape), the PartitionSpec without cache_dir,
seed}. The partition depends on nothing else, so the key does not depend on where the data
lives (an absolute or a relative root hit the same entry), and a changed data file (other
labels) misses. The inputs themselves are not hashed: a per-client feature shift is
recomputed from the seed on load, deterministically, instead of caching a copy of x.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PARTITION_FORMAT = 1  # bump when a partitioner's output for the same spec changes
DATA_FORMAT = 1


def digest(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def array_digest(*arrays: np.ndarray | None) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.data)
    return h.hexdigest()


def _atomic_save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


class PartitionCache:
    """One .npz per partition (CSR index/offsets per split, training clients, meta as JSON) and a
    .json beside it that says, readably, what the entry is."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, key: str, label: str = "") -> Path:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)[:60]
        return self.folder / f"{safe + '-' if safe else ''}{key[:24]}.npz"

    def load(self, key: str, label: str = "", num_samples: int | None = None,
             num_clients: int | None = None) -> dict | None:
        """The entry, or None (a miss). An entry that is unreadable, fails its checksum or holds indices out of
        range for (num_samples, num_clients) is logged and treated as a miss: recomputed and overwritten."""
        path = self.path(key, label)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) != key:
                    return None
                splits = json.loads(str(z["splits"]))
                out = {
                    "index": {s: z[f"index_{s}"] for s in splits},
                    "offsets": {s: z[f"offsets_{s}"] for s in splits},
                    "train_clients": z["train_clients"],
                    "meta": json.loads(str(z["meta"])),
                }
                stored = str(z["checksum"]) if "checksum" in z.files else None
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as err:
            return self._damaged(path, f"unreadable: {type(err).__name__}")
        if stored != entry_checksum(out):
            return self._damaged(path, "no checksum (an older entry)" if stored is None else "checksum mismatch")
        problem = csr_problem(out["index"], out["offsets"], out["train_clients"], num_samples, num_clients)
        return self._damaged(path, problem) if problem else out

    @staticmethod
    def _damaged(path: Path, why: str) -> None:
        log.warning("partition cache entry %s is not usable (%s); recomputing it", path, why)
        return None

    def save(self, key: str, label: str, index: dict[str, np.ndarray], offsets: dict[str, np.ndarray],
             train_clients: np.ndarray, meta: dict, about: dict) -> Path | None:
        """Write the entry (None, with a warning, when the folder cannot hold it: the run goes on uncached)."""
        path = self.path(key, label)
        arrays = {f"index_{s}": index[s] for s in index} | {f"offsets_{s}": offsets[s] for s in offsets}
        arrays |= {"train_clients": np.asarray(train_clients, dtype=np.int64), "key": np.array(key),
                   "splits": np.array(json.dumps(list(index))), "meta": np.array(json.dumps(meta))}
        arrays["checksum"] = np.array(entry_checksum({"index": index, "offsets": offsets, "train_clients":
                                                      arrays["train_clients"], "meta": meta}))
        try:
            _atomic_save_npz(path, arrays)
            _atomic_write_text(path.with_suffix(".json"), json.dumps({"key": key, **about}, indent=1, default=str))
        except OSError as err:
            log.warning("partition.cache_dir=%r cannot hold the partition cache (%s); continuing without it",
                        str(self.folder), err.strerror or err)
            return None
        return path


def entry_checksum(entry: dict) -> str:
    """sha256 of a partition entry's content (every split's index and offsets, training clients, meta)."""
    splits = sorted(entry["index"])
    arrays = [entry["index"][s] for s in splits] + [entry["offsets"][s] for s in splits] + [entry["train_clients"]]
    return digest([splits, array_digest(*arrays), entry["meta"]])


def csr_problem(index: dict[str, np.ndarray], offsets: dict[str, np.ndarray], train_clients: np.ndarray,
                num_samples: int | None, num_clients: int | None) -> str | None:
    """What is wrong with a CSR partition (None: nothing): offsets that do not cover the index, indices or
    clients out of range."""
    for s, idx in index.items():
        o = offsets.get(s)
        if o is None or len(o) < 1 or o[0] != 0 or o[-1] != len(idx) or np.any(np.diff(o) < 0):
            return f"offsets of split {s!r} do not cover its index"
        if num_clients is not None and len(o) != num_clients + 1:
            return f"split {s!r} has {len(o) - 1} clients, not {num_clients}"
        if num_samples is not None and len(idx) and (idx.min() < 0 or idx.max() >= num_samples):
            return f"split {s!r} indexes samples outside 0..{num_samples - 1}"
    if num_clients is not None and len(train_clients) and (train_clients.min() < 0 or
                                                             train_clients.max() >= num_clients):
        return f"training clients outside 0..{num_clients - 1}"
    return None


def file_fingerprint(path: str | Path) -> dict:
    """Identity of a file or folder for the data cache: resolved path, size and mtime of every file
    (make-style: a rewritten file misses, an untouched one hits without hashing gigabytes)."""
    p = Path(path).resolve()
    files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
    return {"path": str(p), "files": [(str(q.relative_to(p)) if q != p else q.name, q.stat().st_size,
                                       q.stat().st_mtime_ns) for q in files]}


def cached_arrays(folder: str | Path | None, label: str, key_payload: dict,
                  build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """build() once, then reload its arrays (e.g. decoded JPEGs) from `folder`; folder=None: no cache."""
    if folder is None:
        return build()
    key = digest({"format": DATA_FORMAT, **key_payload})
    path = Path(folder) / f"{label}-{key[:24]}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {name: z[name] for name in z.files}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # truncated or foreign file: rebuild
    arrays = build()
    _atomic_save_npz(path, arrays)
    return arrays
