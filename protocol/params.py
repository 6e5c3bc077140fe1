"""Flat parameter vectors: the one currency between server, workers and the state store.

Models travel as one float32 numpy vector (fast through Ray's object store, trivially stored
as .npy), never as pickled state_dicts. A ParamSpec knows where each tensor lives in it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class TensorSlot:
    name: str
    shape: tuple[int, ...]
    start: int
    stop: int
    trainable: bool

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class ParamSpec:
    """Layout of a model's floating-point state (parameters and float buffers) in a flat vector."""

    slots: tuple[TensorSlot, ...]
    head_prefixes: tuple[str, ...]
    #: tensors (parameters and running statistics) of BatchNorm layers: what FedBN keeps local
    batchnorm_names: frozenset[str] = frozenset()

    @classmethod
    def of(cls, model: nn.Module, head_prefixes: tuple[str, ...] = ("head.",)) -> ParamSpec:
        trainable = {n for n, p in model.named_parameters()}
        batchnorm = frozenset(f"{module_name}.{tensor_name}" if module_name else tensor_name
                              for module_name, module in model.named_modules()
                              if isinstance(module, nn.modules.batchnorm._BatchNorm)
                              for tensor_name, _ in module.state_dict().items())
        slots, offset = [], 0
        for name, tensor in model.state_dict().items():
            if not torch.is_floating_point(tensor):
                continue  # e.g. BatchNorm's num_batches_tracked: not model state we average
            n = tensor.numel()
            slots.append(TensorSlot(name, tuple(tensor.shape), offset, offset + n, name in trainable))
            offset += n
        return cls(tuple(slots), tuple(head_prefixes), batchnorm)

    @property
    def size(self) -> int:
        return self.slots[-1].stop if self.slots else 0

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.slots]

    def slot(self, name: str) -> TensorSlot:
        for s in self.slots:
            if s.name == name:
                return s
        raise KeyError(f"no tensor named {name!r}; tensors: {self.names}")

    def is_head(self, name: str) -> bool:
        return any(name.startswith(p) for p in self.head_prefixes)

    def mask(self, names) -> np.ndarray:
        """Boolean element mask over the flat vector selecting the named tensors."""
        names = set(names)
        m = np.zeros(self.size, dtype=bool)
        for s in self.slots:
            if s.name in names:
                m[s.start : s.stop] = True
        return m

    def head_mask(self) -> np.ndarray:
        return self.mask(s.name for s in self.slots if self.is_head(s.name))

    def head_names(self) -> list[str]:
        return [s.name for s in self.slots if self.is_head(s.name)]

    def body_names(self) -> list[str]:
        return [s.name for s in self.slots if not self.is_head(s.name)]

    def layer_groups(self) -> list[list[TensorSlot]]:
        """Slots grouped by module (weight+bias of one layer together), in model order."""
        groups: dict[str, list[TensorSlot]] = {}
        for s in self.slots:
            groups.setdefault(s.name.rsplit(".", 1)[0], []).append(s)
        return list(groups.values())


def model_to_vector(model: nn.Module, spec: ParamSpec) -> np.ndarray:
    state = model.state_dict()
    out = np.empty(spec.size, dtype=np.float32)
    for s in spec.slots:
        out[s.start : s.stop] = state[s.name].detach().reshape(-1).cpu().numpy()
    return out


def vector_to_model(vec: np.ndarray, model: nn.Module, spec: ParamSpec) -> None:
    if vec.shape != (spec.size,):
        raise ValueError(f"vector has shape {vec.shape}, model needs ({spec.size},)")
    state = model.state_dict()
    with torch.no_grad():
        for s in spec.slots:
            t = state[s.name]
            t.copy_(torch.from_numpy(np.ascontiguousarray(vec[s.start : s.stop])).view(s.shape))


def nbytes(arrays: dict[str, np.ndarray]) -> int:
    """Bytes a message of arrays would take on the wire (raw, uncompressed)."""
    return int(sum(a.nbytes for a in arrays.values()))
