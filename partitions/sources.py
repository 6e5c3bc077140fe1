"""Data sources: each turns a DataSpec into an ArrayData (all examples in one array).

Images stay uint8 (N, C, H, W) (training scales them by 1/255, then normalizes with the per-
channel mean/std computed here); float inputs are float32. Sources:

- digits: scikit-learn's bundled 8x8 digits (offline default);
- mnist, fashionmnist, emnist, cifar10, cifar100, svhn: the torchvision classes do the parsing.
  `root` may be torchvision's own layout, or a folder that directly holds the raw files
  (e.g. the four MNIST IDX .gz files): those are unpacked/linked into a cached layout that
  torchvision accepts. Missing files fail at once with their names and the download flag;
- hf: Hugging Face `datasets`, a hub data set (never hangs: HF_HUB_OFFLINE is respected and,
  when it is unset, an unreachable hub is detected in seconds and treated as offline) or local
  parquet/arrow/csv/json/imagefolder files;
- arrays: a local .npz / .npy file or folder of .npy files, with `<key>_train`/`<key>_test`
  splits, an optional group key, and JPEG blobs (`jpeg` + `offsets`) decoded once and cached.
"""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from partitions.cache import cached_arrays, digest, file_fingerprint
from partitions.federated import ArrayData
from partitions.spec import EMNIST_SPLITS, DataSpec

SOURCES: dict[str, Callable[[DataSpec], ArrayData]] = {}


def source(name: str):
    def deco(fn: Callable[[DataSpec], ArrayData]):
        SOURCES[name] = fn
        return fn

    return deco


# ----- helpers shared by all sources ----------------------------------------------------------
def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std on the training scale (uint8 / 255). uint8 uses a 256-bin histogram
    per channel: exact, and no float copy of the data (CIFAR-10 would need 1.4 GB in float64).
    (N, D) tables get per-feature statistics (zero std -> 1)."""
    if x.ndim == 2:
        xf = x.astype(np.float64)
        std = xf.std(0)
        return tuple(xf.mean(0).tolist()), tuple(np.where(std > 0, std, 1.0).tolist())
    channels = x.shape[1] if x.ndim == 4 else 1
    means, stds = [], []
    for c in range(channels):
        plane = x[:, c] if x.ndim == 4 else x
        if x.dtype == np.uint8:
            import torch  # bincount of uint8 without numpy's int64 copy (1.5 s -> 0.3 s on CIFAR-10)

            flat = torch.from_numpy(np.ascontiguousarray(plane).reshape(-1))
            hist = torch.bincount(flat, minlength=256).numpy().astype(np.float64)
            v = np.arange(256) / 255.0
            mean = (hist * v).sum() / hist.sum()
            var = (hist * (v - mean) ** 2).sum() / hist.sum()
        else:
            mean = float(plane.mean(dtype=np.float64))
            var = float(plane.var(dtype=np.float64))
        means.append(float(mean))
        stds.append(float(np.sqrt(var)) if var > 0 else 1.0)
    return tuple(means), tuple(stds)


def to_nchw(x: np.ndarray, what: str) -> np.ndarray:
    """(N, H, W) -> (N, 1, H, W); channels-last (N, H, W, C) -> (N, C, H, W); (N, D) stays."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    elif x.ndim not in (2, 4):
        raise ValueError(f"{what}: inputs of shape {x.shape} are neither a table (N, D) nor images")
    if x.dtype != np.uint8:
        x = x.astype(np.float32, copy=False)
    return x


def labels_to_int(y: np.ndarray, what: str) -> tuple[np.ndarray, list[str] | None]:
    """Integer labels pass through; strings become 0..C-1 in sorted order (names returned)."""
    y = np.asarray(y)
    if y.dtype.kind in "USO":
        names, inverse = np.unique(y.astype(str), return_inverse=True)
        return inverse.astype(np.int64).ravel(), [str(v) for v in names]
    if y.dtype.kind == "f":
        if not np.all(np.mod(y, 1) == 0):
            raise ValueError(f"{what}: labels are non-integer floats; classification needs class labels")
        y = y.astype(np.int64)
    if y.dtype.kind not in "iub":
        raise ValueError(f"{what}: labels of dtype {y.dtype} are not class labels")
    y = y.astype(np.int64).ravel()
    if len(y) and y.min() < 0:
        raise ValueError(f"{what}: negative label {y.min()}")
    return y, None


def groups_to_int(groups: np.ndarray | None) -> np.ndarray | None:
    if groups is None:
        return None
    groups = np.asarray(groups)
    if groups.dtype.kind in "iu":
        return groups.astype(np.int64).ravel()
    return np.unique(groups.astype(str), return_inverse=True)[1].astype(np.int64).ravel()


def make_data(x: np.ndarray, y: np.ndarray, name: str, class_names: list[str] | None = None,
              groups: np.ndarray | None = None, columns: tuple[str, ...] = ()) -> ArrayData:
    x = to_nchw(np.asarray(x), name)
    y, names = labels_to_int(y, name)
    class_names = class_names or names
    num_classes = int(y.max()) + 1 if len(y) else 0
    if class_names and len(class_names) >= num_classes:
        num_classes = len(class_names)
    mean, std = channel_stats(x)
    return ArrayData(x, y, num_classes, mean, std, name, groups_to_int(groups), class_names, columns)


def _pooled(split: str | None, choices: tuple[str, ...]) -> list[str]:
    return list(choices[:2]) if split in (None, "all") else [split]


def _data_cache(spec: DataSpec) -> Path | None:
    return Path(spec.cache_dir) if spec.cache_dir else None


@contextmanager
def _scratch(spec: DataSpec, sub: str) -> Iterator[Path]:
    """A folder for unpacked files: inside the data cache (kept), or a temp folder (removed)."""
    if spec.cache_dir:
        path = Path(spec.cache_dir) / sub
        path.mkdir(parents=True, exist_ok=True)
        yield path
    else:
        tmp = Path(tempfile.mkdtemp(prefix="fedharness-data-"))
        try:
            yield tmp / sub
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


# ----- scikit-learn ---------------------------------------------------------------------------------
@source("digits")
def digits(spec: DataSpec) -> ArrayData:
    """scikit-learn's bundled 8x8 digits (1,797 real images, 10 classes): the offline default."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    return ArrayData(x, bunch.target, 10, mean=(float(x.mean()),), std=(float(x.std()),), name="digits")


# ----- torchvision ------------------------------------------------------------------------------------
def _tv_root(spec: DataSpec) -> Path:
    return Path(spec.root if spec.root is not None else "data").expanduser()


def _missing(what: str, root: Path, files: list[str]) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what}: data not found under data.root={str(root)!r}; missing: {', '.join(files)}. Set data.download=true "
        f"to fetch it into data.root (needs internet), or point data.root at a folder that holds these files")


def _tv_call(what: str, fn: Callable, spec: DataSpec):
    try:
        return fn()
    except (RuntimeError, OSError) as err:
        if spec.download:
            raise FileNotFoundError(f"{what}: download into data.root failed ({type(err).__name__}: {err}); this "
                                    f"machine may be offline: copy the files into data.root instead") from None
        raise FileNotFoundError(f"{what}: torchvision could not read the data under data.root "
                                f"({type(err).__name__}: {err})") from None


def _mnist_layout(spec: DataSpec, folder: str, files: list[str], scratch: Path) -> Path | None:
    """A root that torchvision's MNIST-family class accepts (root/<folder>/raw/<files>), or None.

    Accepts root = torchvision's layout, or a folder (root, root/raw) that directly holds the
    raw files, plain or .gz: those are symlinked (plain) or decompressed (.gz) into `scratch`,
    where torchvision's own class then parses them."""
    root = _tv_root(spec)
    if all((root / folder / "raw" / f).is_file() for f in files):
        return root
    for cand in (root, root / "raw", root / folder / "raw"):
        found = [cand / f if (cand / f).is_file() else cand / f"{f}.gz" for f in files]
        if not all(p.is_file() for p in found):
            continue
        sub = digest([file_fingerprint(p) for p in found])[:16]  # new or changed files: a new layout
        raw = scratch / sub / folder / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for f, src in zip(files, found, strict=True):
            target = raw / f
            if target.is_file():
                continue
            if src.suffix != ".gz":
                try:
                    os.symlink(src.resolve(), target)
                    continue
                except OSError:
                    pass  # no symlinks here (e.g. some Windows setups): copy below
            fd, tmp = tempfile.mkstemp(prefix=f + ".", suffix=".tmp", dir=raw)
            with os.fdopen(fd, "wb") as out, (gzip.open(src, "rb") if src.suffix == ".gz" else open(src, "rb")) as inp:
                shutil.copyfileobj(inp, out, 1 << 20)
            os.replace(tmp, target)
        return scratch / sub
    return None


def _mnist_family(spec: DataSpec, cls_name: str, what: str, file_stem: Callable[[str], list[str]],
                  **kwargs) -> tuple[np.ndarray, np.ndarray, list[str]]:
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    splits = _pooled(spec.split, ("train", "test"))
    files = [f for s in ("train", "test") for f in file_stem(s)]  # torchvision's MNIST checks all four
    xs, ys, classes = [], [], []
    with _scratch(spec, "torchvision") as scratch:
        root = _mnist_layout(spec, cls_name, files, scratch)
        if root is None and not spec.download:
            raise _missing(what, _tv_root(spec), [f"{f}[.gz]" for f in files])
        for s in splits:
            ds = _tv_call(what, lambda s=s: cls(str(root or _tv_root(spec)), train=s == "train",
                                                download=spec.download and root is None, **kwargs), spec)
            xs.append(ds.data.numpy())
            ys.append(ds.targets.numpy())
            classes = list(ds.classes)
    return np.concatenate(xs), np.concatenate(ys), classes


def _idx_files(prefix: str = "") -> Callable[[str], list[str]]:
    def stem(split: str) -> list[str]:
        tag = "train" if split == "train" else "t10k"
        return [f"{prefix}{tag}-images-idx3-ubyte", f"{prefix}{tag}-labels-idx1-ubyte"]

    return stem


@source("mnist")
def mnist(spec: DataSpec) -> ArrayData:
    """MNIST through torchvision.datasets.MNIST (70,000 28x28 grey digits)."""
    x, y, classes = _mnist_family(spec, "MNIST", "mnist", _idx_files())
    return make_data(x, y, "mnist", classes)


@source("fashionmnist")
def fashionmnist(spec: DataSpec) -> ArrayData:
    """Fashion-MNIST through torchvision.datasets.FashionMNIST (same IDX file names as MNIST)."""
    x, y, classes = _mnist_family(spec, "FashionMNIST", "fashionmnist", _idx_files())
    return make_data(x, y, "fashionmnist", classes)


@source("emnist")
def emnist(spec: DataSpec) -> ArrayData:
    """EMNIST (data.name = byclass | bymerge | balanced | letters | digits | mnist; default byclass).
    The raw files store images transposed; they are turned upright here. `letters` labels 1..26
    become 0..25 (torchvision keeps an empty class 0)."""
    split = spec.name or "byclass"
    if split not in EMNIST_SPLITS:
        raise ValueError(f"data.name={split!r} is not an EMNIST split; choose one of: {', '.join(EMNIST_SPLITS)}")

    def stem(s: str) -> list[str]:
        tag = "train" if s == "train" else "test"
        return [f"emnist-{split}-{tag}-images-idx3-ubyte", f"emnist-{split}-{tag}-labels-idx1-ubyte"]

    x, y, classes = _mnist_family(spec, "EMNIST", f"emnist-{split}", stem, split=split)
    x = np.ascontiguousarray(x.transpose(0, 2, 1))
    if split == "letters":
        y, classes = y - 1, classes[1:]
    return make_data(x, y, f"emnist-{split}", classes)


def _cifar(spec: DataSpec, cls_name: str, what: str, folder: str, archive: str) -> ArrayData:
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import extract_archive

    cls = getattr(tvd, cls_name)
    root = _tv_root(spec)
    with _scratch(spec, "torchvision") as scratch:
        if (root / folder).is_dir():
            base = root
        elif root.name == folder and root.is_dir():
            base = root.parent
        elif (root / archive).is_file():
            base = scratch / digest(file_fingerprint(root / archive))[:16]
            if not (base / folder).is_dir():
                extract_archive(str(root / archive), str(base))
        elif spec.download:
            base = root
        else:
            raise _missing(what, root, [f"{folder}/ (or {archive})"])
        parts = [_tv_call(what, lambda s=s: cls(str(base), train=s == "train", download=spec.download), spec)
                 for s in _pooled(spec.split, ("train", "test"))]
    x = np.concatenate([np.asarray(p.data) for p in parts])
    y = np.concatenate([np.asarray(p.targets) for p in parts])
    return make_data(x, y, what, list(parts[0].classes))


@source("cifar10")
def cifar10(spec: DataSpec) -> ArrayData:
    """CIFAR-10 through torchvision.datasets.CIFAR10 (root holds cifar-10-batches-py/ or the .tar.gz)."""
    return _cifar(spec, "CIFAR10", "cifar10", "cifar-10-batches-py", "cifar-10-python.tar.gz")


@source("cifar100")
def cifar100(spec: DataSpec) -> ArrayData:
    """CIFAR-100 (fine labels) through torchvision.datasets.CIFAR100."""
    return _cifar(spec, "CIFAR100", "cifar100", "cifar-100-python", "cifar-100-python.tar.gz")


@source("svhn")
def svhn(spec: DataSpec) -> ArrayData:
    """SVHN through torchvision.datasets.SVHN (root holds train_32x32.mat, test_32x32.mat[, extra])."""
    import torchvision.datasets as tvd

    root = _tv_root(spec)
    splits = _pooled(spec.split, ("train", "test"))
    missing = [f"{s}_32x32.mat" for s in splits if not (root / f"{s}_32x32.mat").is_file()]
    if missing and not spec.download:
        raise _missing("svhn", root, missing)
    parts = [_tv_call("svhn", lambda s=s: tvd.SVHN(str(root), split=s, download=spec.download), spec) for s in splits]
    x = np.concatenate([p.data for p in parts])
    y = np.concatenate([p.labels for p in parts])
    return make_data(x, y, "svhn", [str(i) for i in range(10)])


# ----- local arrays ---------------------------------------------------------------------------------
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
            self.npz = np.load(root, allow_pickle=False)
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
        if self.npz is not None:
            return self.npz[key]
        return np.load(self.files[key], allow_pickle=False)

    def close(self) -> None:
        if self.npz is not None:
            self.npz.close()


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
        images = decode_jpeg(chunk, mode=ImageReadMode.RGB)
        try:
            out.append(torch.stack(images).numpy())
        except RuntimeError:
            shapes = sorted({tuple(im.shape) for im in images})[:4]
            raise ValueError(f"JPEG blob: images differ in size ({shapes} ...); they must share one size") from None
    return np.concatenate(out) if out else np.zeros((0, 3, 0, 0), np.uint8)


@source("arrays")
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
        y = np.concatenate([table[k].ravel() for k in y_keys])
        keys = table.keys
        if spec.image_column in (None, "jpeg") and "jpeg" in keys and "offsets" in keys:
            decoded = cached_arrays(_data_cache(spec), "jpeg", {"kind": "jpeg-blob", **file_fingerprint(root)},
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
            x = np.concatenate([table[k] for k in _split_keys(table, x_base, spec.split, "data.image_column")])
        groups = None
        if spec.group_column:
            groups = np.concatenate([table[k].ravel() for k in
                                     _split_keys(table, spec.group_column, spec.split, "data.group_column")])
        class_names = None
        for key in ("classes", "class_names"):
            if key in keys:
                class_names = [str(v) for v in table[key].ravel()]
        columns = tuple(sorted({k.removesuffix("_train").removesuffix("_test") for k in keys}))
    finally:
        table.close()
    if len(x) != len(y):
        raise ValueError(f"arrays: {len(x)} inputs but {len(y)} labels in {str(root)!r}")
    return make_data(x, y, name, class_names, groups, columns)


# ----- Hugging Face datasets ------------------------------------------------------------------------
LOCAL_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json", ".jsonl": "json",
                  ".tsv": "csv"}
IMAGE_COLUMNS = ("image", "img", "pixels", "pixel_values")
LABEL_COLUMNS = ("label", "labels", "target", "targets", "y", "class", "fine_label")


def _env_on(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    """TCP connect to the hub endpoint, in a thread we stop waiting for after `timeout` seconds
    (name resolution has no timeout of its own)."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            ok.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok and ok[0])


@contextmanager
def _hub_mode() -> Iterator[bool]:
    """Yields True when the hub is used offline (cache only). HF_HUB_OFFLINE=1 is respected; when it
    is unset and the hub cannot be reached, offline mode is switched on for this call so that
    `datasets` fails (or reads its cache) at once instead of retrying for ~20 s."""
    if _env_on("HF_HUB_OFFLINE") or _env_on("HF_DATASETS_OFFLINE"):
        yield True
        return
    if hub_reachable():
        yield False
        return
    import datasets.config as dcfg
    import huggingface_hub.constants as hcst

    saved = (hcst.HF_HUB_OFFLINE, dcfg.HF_HUB_OFFLINE)
    hcst.HF_HUB_OFFLINE, dcfg.HF_HUB_OFFLINE = True, True
    try:
        yield True
    finally:
        hcst.HF_HUB_OFFLINE, dcfg.HF_HUB_OFFLINE = saved


def _hf_load(spec: DataSpec):
    import datasets

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    if spec.root is not None:
        root = Path(spec.root).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"hf: data.root={str(root)!r} does not exist")
        builder = spec.name
        if builder is None:
            if root.is_file():
                builder = LOCAL_BUILDERS.get(root.suffix.lower())
            else:
                suffixes = {p.suffix.lower() for p in root.rglob("*") if p.is_file()}
                tabular = [LOCAL_BUILDERS[s] for s in LOCAL_BUILDERS if s in suffixes]
                builder = tabular[0] if tabular else "imagefolder"
        if builder is None:
            raise ValueError(f"hf: cannot tell the format of {str(root)!r}; set data.name to one of: "
                             f"parquet, arrow, csv, json, imagefolder")
        kwargs = {"data_files": str(root)} if root.is_file() else {"data_dir": str(root)}
        if builder == "csv" and root.suffix.lower() == ".tsv":
            kwargs["sep"] = "\t"
        cache = str(Path(spec.cache_dir) / "hf") if spec.cache_dir else tempfile.mkdtemp(prefix="fedharness-hf-")
        try:
            loaded = datasets.load_dataset(builder, split=spec.split, cache_dir=cache, **kwargs)
        except ValueError as err:
            raise ValueError(f"hf: could not read {str(root)!r} as {builder}: {err}") from None
        return loaded, f"{builder}:{root.name}"
    if not spec.name:
        raise ValueError("hf: set data.name to a hub data set id (e.g. ylecun/mnist), or data.root to local files")
    with _hub_mode() as offline:
        try:
            loaded = datasets.load_dataset(spec.name, spec.subset, split=spec.split)
        except (ConnectionError, FileNotFoundError, OSError) as err:
            if offline:
                raise FileNotFoundError(
                    f"hf: data set {spec.name!r} is not in the local Hugging Face cache and the hub is offline "
                    f"(HF_HUB_OFFLINE=1 or unreachable). Download it where there is internet "
                    f"(datasets.load_dataset({spec.name!r})) and copy the cache (HF_HOME), or save it as "
                    f"parquet and point data.root at the file") from None
            raise FileNotFoundError(f"hf: could not load {spec.name!r} from the hub: {err}") from None
    return loaded, spec.name.replace("/", "_")


def _hf_column(ds, given: str | None, names: tuple[str, ...], feature_type, field: str) -> str | None:
    columns = list(ds.column_names)
    if given is not None:
        if given not in columns:
            raise ValueError(f"hf: {field}={given!r} is not a column; columns: {', '.join(columns)}")
        return given
    for col, feat in ds.features.items():
        if feature_type is not None and isinstance(feat, feature_type):
            return col
    for cand in names:
        if cand in columns:
            return cand
    return None


@source("hf")
def huggingface(spec: DataSpec) -> ArrayData:
    """Hugging Face `datasets`: a hub data set (data.name, data.subset, data.split) or local files
    (data.root: parquet/arrow/csv/json file or folder, or an imagefolder tree). Images become
    uint8 (N, C, H, W); without an image column the numeric columns form an (N, D) float table.
    Decoded arrays are cached under data.cache_dir, keyed by the data set's fingerprint."""
    import datasets

    loaded, label = _hf_load(spec)
    parts = list(loaded.values()) if isinstance(loaded, datasets.DatasetDict) else [loaded]
    ds = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    y_col = _hf_column(ds, spec.label_column, LABEL_COLUMNS, datasets.ClassLabel, "data.label_column")
    if y_col is None:
        raise ValueError(f"hf: cannot guess the label column; set data.label_column to one of: "
                         f"{', '.join(ds.column_names)}")
    x_col = _hf_column(ds, spec.image_column, IMAGE_COLUMNS, datasets.Image, "data.image_column")
    if spec.group_column is not None and spec.group_column not in ds.column_names:
        raise ValueError(f"hf: data.group_column={spec.group_column!r} is not a column; columns: "
                         f"{', '.join(ds.column_names)}")
    feat = ds.features.get(x_col) if x_col else None
    if isinstance(feat, dict) and "bytes" in feat:  # parquet written without the Image feature type
        ds = ds.cast_column(x_col, datasets.Image())
        feat = ds.features[x_col]
    fingerprint = [p._fingerprint for p in parts]

    def build() -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if x_col is not None and isinstance(feat, datasets.Image):
            x = ds.with_format("numpy", columns=[x_col])[:][x_col]
            if x.dtype == object:
                shapes = sorted({tuple(np.shape(v)) for v in x[:1000]})[:4]
                raise ValueError(f"hf: images in column {x_col!r} differ in size or mode ({shapes} ...); they "
                                 f"must share one size")
            out["x"] = x
        else:
            skip = {y_col, spec.group_column}
            numeric = [c for c, f in ds.features.items() if c not in skip and isinstance(f, datasets.Value)
                       and f.dtype.startswith(("int", "uint", "float", "bool"))]
            cols = [x_col] if x_col is not None else numeric
            if not cols:
                raise ValueError(f"hf: no image or numeric input column; set data.image_column to one of: "
                                 f"{', '.join(ds.column_names)}")
            table = ds.with_format("numpy", columns=cols)[:]
            out["x"] = np.stack([np.asarray(table[c], dtype=np.float32) for c in cols], axis=1) \
                if x_col is None else np.asarray(table[x_col])
        out["y"] = np.asarray(ds.with_format("numpy", columns=[y_col])[:][y_col])
        if spec.group_column:
            out["groups"] = np.asarray(ds.with_format("numpy", columns=[spec.group_column])[:][spec.group_column])
        return out

    key = {"kind": "hf", "fingerprints": fingerprint, "x": x_col, "y": y_col, "groups": spec.group_column,
           "files": file_fingerprint(spec.root) if spec.root is not None else None}
    arrays_ = cached_arrays(_data_cache(spec), "hf", key, build)
    y_feat = ds.features[y_col]
    names = list(y_feat.names) if isinstance(y_feat, datasets.ClassLabel) else None
    return make_data(arrays_["x"], arrays_["y"], spec.name if spec.root is None else label, names,
                     arrays_.get("groups"), tuple(ds.column_names))


# ----- entry point ------------------------------------------------------------------------------------
def load_source(spec: DataSpec) -> ArrayData:
    if spec.source not in SOURCES:
        raise ValueError(f"unknown data source {spec.source!r}; choose one of: {', '.join(sorted(SOURCES))}")
    data = SOURCES[spec.source](spec)
    if spec.invert:
        x = 255 - data.x if data.x.dtype == np.uint8 else (1.0 - data.x).astype(data.x.dtype)
        data = ArrayData(x, data.y, data.num_classes, tuple(1.0 - m for m in data.mean), data.std, data.name,
                         data.groups, data.class_names, data.columns)
    if spec.max_samples is not None and spec.max_samples < len(data.y):
        data = data.subset(slice(0, spec.max_samples))
    return data
