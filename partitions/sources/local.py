"""Local sources: scikit-learn's bundled digits (the offline default) and local arrays.

`arrays` reads a .npz, a .npy (its siblings are the other keys) or a folder of .npy files,
never unpickling anything; a `jpeg` + `offsets` blob (e.g. the shared CIFAR-10 copy) is decoded
once and cached as uint8, since decoding 60,000 JPEGs costs more than reading the cache.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from partitions.cache import cached_arrays, file_fingerprint
from partitions.federated import ArrayData
from partitions.sources.common import data_cache, make_data
from partitions.sources.registry import source
from partitions.spec import DataSpec


@source("digits")
def digits(spec: DataSpec) -> ArrayData:
    """scikit-learn's bundled 8x8 digits (1,797 real images, 10 classes): the offline default."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    return ArrayData(x, bunch.target, 10, mean=(float(x.mean()),), std=(float(x.std()),), name="digits")


X_KEYS = ("x", "images", "image", "X", "data", "inputs", "features")
Y_KEYS = ("y", "labels", "label", "targets", "target", "Y")


class _Table:
    """Named arrays of a .npz file or of a folder of .npy files, loaded on demand, no pickle."""

    def __init__(self, root: Path):
        self.root = root
        if root.is_dir():
            self.files = {p.stem: p for p in sorted(root.glob("*.npy"))}
            self.npz = None
        elif root.suffix == ".npz":
            try:
                self.npz = np.load(root, allow_pickle=False)
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
                raise ValueError(f"arrays: data.root={str(root)!r} is corrupt or not a .npz data file "
                                 f"({_why(err)})") from None
            if not hasattr(self.npz, "files"):  # a .npy array under a .npz name
                raise ValueError(f"arrays: data.root={str(root)!r} is a single .npy array, not a .npz archive of "
                                 f"named arrays; rename it to .npy")
            self.files = {}
        elif root.suffix == ".npy":
            self.files = {p.stem: p for p in sorted(root.parent.glob("*.npy"))}
            self.npz = None
        else:
            raise ValueError(f"arrays: data.root={str(root)!r} is not a .npz/.npy file or a folder of .npy files")

    @property
    def keys(self) -> list[str]:
        return list(self.npz.files) if self.npz is not None else list(self.files)

    def __getitem__(self, key: str) -> np.ndarray:
        where = f"key {key!r} of {str(self.root)!r}" if self.npz is not None else repr(str(self.files[key]))
        try:
            value = self.npz[key] if self.npz is not None else np.load(self.files[key], allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"arrays: {where} is corrupt or not a fedharness data array ({_why(err)})") from None
        if not isinstance(value, np.ndarray):
            raise ValueError(f"arrays: {where} is not a .npy array")
        return value

    def close(self) -> None:
        if self.npz is not None:
            self.npz.close()


def _why(err: BaseException) -> str:
    """numpy's reasons, in words that do not suggest trusting the file with allow_pickle."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if isinstance(err, zipfile.BadZipFile) or isinstance(err, EOFError):
        return f"truncated or damaged: {text}"
    if "pickle" in text:
        return "neither a zip archive of .npy arrays nor a .npy array; fedharness never unpickles data files" \
            if "Object arrays" not in text else "it holds Python objects, which fedharness never unpickles"
    return text


def _concat(table: _Table, keys: list[str], ravel: bool = False) -> np.ndarray:
    parts = [table[k].ravel() if ravel else table[k] for k in keys]
    try:
        return np.concatenate(parts)
    except ValueError:
        shapes = ", ".join(f"{k}: {p.shape}" for k, p in zip(keys, parts, strict=True))
        raise ValueError(f"arrays: keys of {str(table.root)!r} do not stack ({shapes})") from None


def _split_keys(table: _Table, base: str, split: str | None, field: str) -> list[str]:
    keys = table.keys
    if split in (None, "all"):
        per_split = [f"{base}_{s}" for s in ("train", "test") if f"{base}_{s}" in keys]
        if per_split:
            return per_split
        if base in keys:
            return [base]
    elif f"{base}_{split}" in keys:
        return [f"{base}_{split}"]
    want = base if split in (None, "all") else f"{base}_{split}"
    raise ValueError(f"arrays: {field}={base!r}: no key {want!r} (or {base}_train/{base}_test) in "
                     f"{str(table.root)!r}; keys there: {', '.join(keys)}")


def _pick(table: _Table, given: str | None, candidates: tuple[str, ...], field: str) -> str:
    if given:
        return given
    bases = {k.removesuffix("_train").removesuffix("_test") for k in table.keys}
    for cand in candidates:
        if cand in bases:
            return cand
    raise ValueError(f"arrays: cannot guess {field}; set it to one of the keys of {str(table.root)!r}: "
                     f"{', '.join(table.keys)}")


def decode_jpeg_blob(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Concatenated JPEG files -> uint8 (N, 3, H, W). torchvision decodes the whole list in C++
    (about twice as fast as a Pillow loop; identical pixels on the CIFAR-10 blob)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    data = torch.from_numpy(np.ascontiguousarray(blob))
    out = []
    for start in range(0, len(offsets) - 1, 8192):
        stop = min(start + 8192, len(offsets) - 1)
        chunk = [data[offsets[i] : offsets[i + 1]] for i in range(start, stop)]
        try:
            images = decode_jpeg(chunk, mode=ImageReadMode.RGB)
        except RuntimeError as err:
            raise ValueError(f"JPEG blob: images {start}..{stop - 1} do not decode "
                             f"({str(err).splitlines()[0] if str(err) else 'corrupt'})") from None
        try:
            out.append(torch.stack(images).numpy())
        except RuntimeError:
            shapes = sorted({tuple(im.shape) for im in images})[:4]
            raise ValueError(f"JPEG blob: images differ in size ({shapes} ...); they must share one size") from None
    return np.concatenate(out) if out else np.zeros((0, 3, 0, 0), np.uint8)


@source("arrays", splits=("train", "test"))
def arrays(spec: DataSpec) -> ArrayData:
    """Local arrays: a .npz, a .npy (its siblings are the other keys) or a folder of .npy files.

    Keys: inputs (data.image_column, auto x/images/...), labels (data.label_column, auto
    y/labels/...), optional groups (data.group_column). A key may come as `<key>_train` and
    `<key>_test` (data.split picks one; null pools both). A `jpeg` + `offsets` blob (e.g. the
    shared CIFAR-10 copy) is decoded once and cached under data.cache_dir; its first
    len(y_train) images are the train split. `classes` / `class_names` name the labels."""
    if spec.root is None:
        raise ValueError("arrays: set data.root to a .npz file, a .npy file or a folder of .npy files")
    root = Path(spec.root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"arrays: data.root={str(root)!r} does not exist")
    table = _Table(root)
    try:
        name = spec.name or (root.stem if root.is_file() else root.name)
        y_base = _pick(table, spec.label_column, Y_KEYS, "data.label_column")
        y_keys = _split_keys(table, y_base, spec.split, "data.label_column")
        y = _concat(table, y_keys, ravel=True)
        keys = table.keys
        if spec.image_column in (None, "jpeg") and "jpeg" in keys and "offsets" in keys:
            decoded = cached_arrays(data_cache(spec), "jpeg", {"kind": "jpeg-blob", **file_fingerprint(root)},
                                    lambda: {"x": decode_jpeg_blob(table["jpeg"], table["offsets"])})
            x = decoded["x"]
            if spec.split not in (None, "all"):
                n_train = len(table[f"{y_base}_train"]) if f"{y_base}_train" in keys else int(table["n_train"])
                x = x[:n_train] if spec.split == "train" else x[n_train:]
        else:
            if spec.image_column is None and root.suffix == ".npy":
                x_base = root.stem
            else:
                x_base = _pick(table, spec.image_column, X_KEYS, "data.image_column")
            x = _concat(table, _split_keys(table, x_base, spec.split, "data.image_column"))
        groups = None
        if spec.group_column:
            groups = _concat(table, _split_keys(table, spec.group_column, spec.split, "data.group_column"), ravel=True)
        class_names = None
        for key in ("classes", "class_names"):
            if key in keys:
                class_names = [str(v) for v in table[key].ravel()]
        columns = tuple(sorted({k.removesuffix("_train").removesuffix("_test") for k in keys}))
    finally:
        table.close()
    if len(x) != len(y):
        raise ValueError(f"arrays: {len(x)} inputs but {len(y)} labels in {str(root)!r}")
    return make_data(x, y, name, class_names, groups, columns, where=f"arrays: data.root={str(root)!r}")

