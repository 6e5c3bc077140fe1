"""A virtual client population: N clients whose data is drawn on demand from (seed, client id).

`partition.virtual_clients: N` first builds the spec's partition as usual (the *base*: e.g. FEMNIST
by writer, 300 real writers; cached like any partition, under the same key as without the option),
then N virtual clients over it, none of whose data is ever materialised for all N:

  base_of[c]     = the base client that virtual client c imitates: one uniform draw per client from
                   rng(seed, "virtual-base") (one int32 vector: 4 MB at 1,000,000 clients)
  split_of(c, s) = a resample with replacement of base client base_of[c]'s split s, of the same
                   size, from rng(seed, "virtual-split", c, s): sorted example indices

So a virtual client has the size and the label mix of a real client (FEMNIST's writers: their
skew, their sizes) and its own draw of that writer's examples; its test examples come from the
writer's test split only, so it never tests on an example it trains on. Everything per client is
a pure function of (seed, c): identical in every process, for every worker count, after a resume.

Bounded: what the run holds is O(N) integers (base_of, train_clients, the per-split sizes the
engine asks for); split_of is computed per call (a bounded per-process cache of the last clients
serves the repeated calls of one job). Whatever would be O(N x examples) or O(N x classes) is
refused above DENSE_LIMIT clients with a one-line error naming the option (`label_counts`,
`owner`); statistics use `report_clients`, a seeded sample of at most DENSE_LIMIT clients.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from partitions.federated import FederatedDataset
from protocol.rng import rng

VIRTUAL_FORMAT = 1  # bump when the generator's output for the same parameters changes
DENSE_LIMIT = 10_000  # clients up to which per-client x per-class arrays are built
CACHE_CLIENTS = 64  # split_of results kept per process (one job asks for a client's splits several times)
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


@dataclass
class VirtualFederatedDataset(FederatedDataset):
    """A FederatedDataset of N virtual clients over a base partition. `index`, `offsets` (and
    x, y, meta) are the base partition's; the per-client view (num_clients, split_of, sizes,
    label_counts, digest) is the virtual population's."""

    base_of: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # (N,) base client per client
    seed: int = 0
    base_digest: str = ""

    @classmethod
    def over(cls, base: FederatedDataset, num_clients: int, seed: int) -> VirtualFederatedDataset:
        if base.meta.get("unseen_clients") or "feature_shift" in base.meta:
            raise ValueError("partition.virtual_clients needs a base partition without unseen clients and "
                             "without a feature shift")
        b = base.num_clients
        base_of = rng(seed, "virtual-base").integers(0, b, size=num_clients, dtype=np.int32)
        meta = {**base.meta, "virtual_clients": int(num_clients), "base_clients": int(b)}
        return cls(base.x, base.y, base.num_classes, base.mean, base.std, base.name, base.index, base.offsets,
                   np.arange(num_clients, dtype=np.int64), meta, base_of=base_of, seed=int(seed),
                   base_digest=base.digest())

    # ----- the per-client view ------------------------------------------------------------------
    @property
    def num_clients(self) -> int:
        return len(self.base_of)

    @property
    def base_clients(self) -> int:
        return len(self.offsets["train"]) - 1

    def sizes(self, split: str = "train") -> np.ndarray:
        if split not in self.offsets:
            return np.zeros(self.num_clients, np.int64)
        return np.diff(self.offsets[split])[self.base_of]

    def split_of(self, cid: int, split: str = "train") -> np.ndarray:
        if split not in self.index:
            return np.zeros(0, dtype=np.int64)
        cid = int(cid)
        if not 0 <= cid < self.num_clients:
            raise IndexError(f"client {cid} is not in the virtual population of {self.num_clients:,} clients")
        cache = self._cache()
        key = (cid, split)
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        o = self.offsets[split]
        b = int(self.base_of[cid])
        pool = self.index[split][o[b] : o[b + 1]]
        pick = rng(self.seed, "virtual-split", cid, SPLIT_CODES[split]).integers(0, len(pool), size=len(pool))
        out = np.sort(pool[pick]) if len(pool) else np.zeros(0, dtype=np.int64)
        out.setflags(write=False)
        cache[key] = out
        if len(cache) > CACHE_CLIENTS * len(self.index):
            cache.popitem(last=False)
        return out

    def _cache(self) -> OrderedDict:
        cache = self.__dict__.get("_split_cache")
        if cache is None:
            cache = self.__dict__["_split_cache"] = OrderedDict()
        return cache

    def __getstate__(self) -> dict:
        """Pickled (Ray's object store) without the per-process cache."""
        return {k: v for k, v in self.__dict__.items() if k != "_split_cache"}

    def label_counts_of(self, clients: np.ndarray | list[int], split: str | None = None) -> np.ndarray:
        """(len(clients), num_classes) label histogram of the given clients (a split, or all splits)."""
        splits = [split] if split else list(self.index)
        out = np.zeros((len(clients), self.num_classes), dtype=np.int64)
        for row, c in enumerate(clients):
            for s in splits:
                out[row] += np.bincount(self.y[self.split_of(int(c), s)], minlength=self.num_classes)
        return out

    def label_counts(self, split: str | None = None) -> np.ndarray:
        self._dense("label_counts", f"a {self.num_clients:,} x {self.num_classes} array; use "
                                    f"label_counts_of(report_clients())")
        return self.label_counts_of(np.arange(self.num_clients), split)

    def owner(self) -> np.ndarray:
        raise ValueError("owner(): the examples of a virtual population (partition.virtual_clients) are shared by "
                         "many clients (resampled with replacement); there is no owner per example")

    def report_clients(self, limit: int = DENSE_LIMIT) -> np.ndarray:
        """The clients statistics look at: all of them up to `limit`, else a seeded sample of `limit` (sorted)."""
        if self.num_clients <= limit:
            return np.arange(self.num_clients)
        return np.sort(rng(self.seed, "virtual-report").choice(self.num_clients, limit, replace=False))

    def digest(self) -> str:
        """The generator's parameters and the base partition's digest: what a checkpoint records."""
        from partitions.cache import digest

        return digest({"format": VIRTUAL_FORMAT, "virtual_clients": self.num_clients, "seed": self.seed,
                       "base": self.base_digest})

    def _dense(self, what: str, detail: str) -> None:
        if self.num_clients > DENSE_LIMIT:
            raise ValueError(f"{what} over {self.num_clients:,} virtual clients (partition.virtual_clients) would be "
                             f"{detail}; refused above {DENSE_LIMIT:,} clients")


def is_virtual(data: FederatedDataset) -> bool:
    return isinstance(data, VirtualFederatedDataset)
