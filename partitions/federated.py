"""FederatedDataset: one array of examples, clients as index arrays (CSR layout).

The arrays go into Ray's object store once; a client is nothing but slices of three index
arrays (train / val / test), so thousands of clients cost a few bytes each.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ArrayData:
    """A whole data set in memory: what a source returns."""

    x: np.ndarray  # (N, C, H, W) or (N, D); uint8 (scaled by 1/255) or float32
    y: np.ndarray  # (N,) int64
    num_classes: int
    mean: tuple[float, ...]  # per channel, after the 1/255 scaling of uint8
    std: tuple[float, ...]
    name: str
    groups: np.ndarray | None = None  # natural client id per example (e.g. FEMNIST writer)
    class_names: list[str] | None = None
    columns: tuple[str, ...] = ()  # per-example columns the source offered (named in error messages)

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"{self.name}: {len(self.x)} inputs but {len(self.y)} labels")
        self.y = np.asarray(self.y, dtype=np.int64)
        if self.x.strides != _c_strides(self.x):
            # e.g. x[:, None] has a zero stride on its channel axis: torch then picks channels-last
            # kernels in this process but not in Ray workers (which get a plain copy), and the two
            # give different float results. One canonical layout keeps runs identical everywhere.
            self.x = self.x.copy(order="C")
        if len(self.y) and (self.y.min() < 0 or self.y.max() >= self.num_classes):
            raise ValueError(f"{self.name}: labels span {self.y.min()}..{self.y.max()} but num_classes is "
                             f"{self.num_classes}")
        if self.groups is not None and len(self.groups) != len(self.y):
            raise ValueError(f"{self.name}: {len(self.groups)} group ids but {len(self.y)} labels")

    def subset(self, keep: slice | np.ndarray) -> ArrayData:
        groups = self.groups[keep] if self.groups is not None else None
        return ArrayData(self.x[keep], self.y[keep], self.num_classes, self.mean, self.std, self.name, groups,
                         self.class_names, self.columns)


def _c_strides(a: np.ndarray) -> tuple[int, ...]:
    strides, step = [], a.itemsize
    for dim in reversed(a.shape):
        strides.append(step)
        step *= dim
    return tuple(reversed(strides))


def _csr(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(p) for p in parts])
    flat = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
    return flat, offsets


@dataclass
class FederatedDataset:
    x: np.ndarray
    y: np.ndarray
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    index: dict[str, np.ndarray]  # split -> concatenated example indices
    offsets: dict[str, np.ndarray]  # split -> (num_clients + 1,) offsets into index[split]
    train_clients: np.ndarray  # ids of clients that train (the rest are unseen, evaluation only)
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_splits(cls, data: ArrayData, splits: dict[str, list[np.ndarray]], train_clients: np.ndarray,
                    meta: dict | None = None) -> FederatedDataset:
        index, offsets = {}, {}
        for split, parts in splits.items():
            index[split], offsets[split] = _csr(parts)
        return cls(data.x, data.y, data.num_classes, tuple(data.mean), tuple(data.std), data.name,
                   index, offsets, np.asarray(train_clients, dtype=np.int64), meta or {})

    @classmethod
    def from_csr(cls, data: ArrayData, index: dict[str, np.ndarray], offsets: dict[str, np.ndarray],
                 train_clients: np.ndarray, meta: dict | None = None, x: np.ndarray | None = None) -> FederatedDataset:
        """Wrap ready CSR arrays (what the vectorized splitter and the cache produce); `x` replaces the
        source's inputs (e.g. after a per-client feature shift)."""
        return cls(data.x if x is None else x, data.y, data.num_classes, tuple(data.mean), tuple(data.std),
                   data.name, dict(index), dict(offsets), np.asarray(train_clients, dtype=np.int64), meta or {})

    @property
    def num_clients(self) -> int:
        return len(self.offsets["train"]) - 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def split_of(self, cid: int, split: str = "train") -> np.ndarray:
        if split not in self.index:
            return np.zeros(0, dtype=np.int64)
        o = self.offsets[split]
        return self.index[split][o[cid] : o[cid + 1]]

    def train_of(self, cid: int) -> np.ndarray:
        return self.split_of(cid, "train")

    def sizes(self, split: str = "train") -> np.ndarray:
        return np.diff(self.offsets[split]) if split in self.offsets else np.zeros(self.num_clients, np.int64)

    def label_counts(self, split: str | None = None) -> np.ndarray:
        """(num_clients, num_classes) label histogram of a split, or of all splits together."""
        splits = [split] if split else list(self.index)
        flat = np.zeros(self.num_clients * self.num_classes, dtype=np.int64)
        for s in splits:
            owner = np.repeat(np.arange(self.num_clients), np.diff(self.offsets[s]))
            flat += np.bincount(owner * self.num_classes + self.y[self.index[s]], minlength=len(flat))
        return flat.reshape(self.num_clients, self.num_classes)

    def digest(self) -> str:
        """sha256 of the partition (labels, every split's CSR arrays, training clients): a checkpoint records
        it, and a resume on other data or another partition is refused."""
        from partitions.cache import array_digest

        splits = sorted(self.index)
        return array_digest(self.y, self.train_clients, *[self.index[s] for s in splits],
                            *[self.offsets[s] for s in splits])

    def owner(self) -> np.ndarray:
        """Client of every example (-1: dealt to no client), over all splits."""
        out = np.full(len(self.y), -1, dtype=np.int64)
        for s in self.index:
            out[self.index[s]] = np.repeat(np.arange(self.num_clients), np.diff(self.offsets[s]))
        return out
