"""Data sources: each turns a DataSpec into an ArrayData (all examples in one array).

Images stay uint8 (N, C, H, W) (training scales them by 1/255, then normalizes with the per-
channel mean/std computed here); float inputs are float32. Built-in sources, by module:

- local: `digits` (scikit-learn's bundled 8x8 digits, the offline default) and `arrays` (a local
  .npz / .npy file or folder of .npy files, `<key>_train`/`<key>_test` splits, an optional group
  key, JPEG blobs decoded once and cached);
- vision: `mnist`, `fashionmnist`, `emnist`, `cifar10`, `cifar100`, `svhn` through torchvision;
- hf: `hf`, Hugging Face `datasets` (hub or local files), never hanging on an offline hub;
- leaf: `synthetic` (FedProx's Synthetic(alpha, beta), generated), `femnist`, `shakespeare`, `sent140`
  (naturally federated: each example's device / writer / user is its group id);
- images: `cinic10`, `tinyimagenet` (image folders), `celeba` (torchvision), `medmnist` (official .npz).

A user's module registers its own with `@source("name")` (partitions.sources.registry).
"""

from __future__ import annotations

from partitions.sources import hf, images, leaf, local, vision  # noqa: F401  (register the built-in sources)
from partitions.sources.common import make_data
from partitions.sources.registry import SOURCES, Source, load_source, source, unregister

__all__ = ["SOURCES", "Source", "load_source", "make_data", "source", "unregister"]
