"""torchvision sources: MNIST, Fashion-MNIST, EMNIST, CIFAR-10/100, SVHN; torchvision does the parsing.

`data.root` may be torchvision's own layout, or a folder that directly holds the raw files
(e.g. the four MNIST IDX .gz files, as ../shared/data/mnist has them): those are unpacked or
linked into a cached layout that torchvision accepts, so a user's copy and the shared copy go
through the same reader. Missing files fail at once, naming them and the download flag.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from partitions.cache import digest, file_fingerprint
from partitions.federated import ArrayData
from partitions.sources.common import make_data, pooled, scratch_dir
from partitions.sources.registry import source
from partitions.spec import EMNIST_SPLITS, DataSpec


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
    splits = pooled(spec.split, ("train", "test"))
    files = [f for s in ("train", "test") for f in file_stem(s)]  # torchvision's MNIST checks all four
    xs, ys, classes = [], [], []
    with scratch_dir(spec, "torchvision") as scratch:
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


@source("mnist", splits=("train", "test"))
def mnist(spec: DataSpec) -> ArrayData:
    """MNIST through torchvision.datasets.MNIST (70,000 28x28 grey digits)."""
    x, y, classes = _mnist_family(spec, "MNIST", "mnist", _idx_files())
    return make_data(x, y, "mnist", classes)


@source("fashionmnist", splits=("train", "test"))
def fashionmnist(spec: DataSpec) -> ArrayData:
    """Fashion-MNIST through torchvision.datasets.FashionMNIST (same IDX file names as MNIST)."""
    x, y, classes = _mnist_family(spec, "FashionMNIST", "fashionmnist", _idx_files())
    return make_data(x, y, "fashionmnist", classes)


@source("emnist", splits=("train", "test"))
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


def _check_archive(what: str, path: Path, md5: str) -> None:
    """An archive from data.root is unpacked only if it is the original (torchvision's known md5): a crafted
    tar could write outside the scratch folder. The pickles inside are then checked by torchvision itself,
    against the md5s it ships, before it unpickles them (CIFAR10._check_integrity, _load_meta)."""
    from torchvision.datasets.utils import check_integrity

    if not check_integrity(str(path), md5):
        raise ValueError(f"{what}: {path} is not the original archive (its md5 is not torchvision's {md5}); "
                         f"refusing to unpack it. Replace it with the original, or unpack it yourself into data.root")


def _cifar(spec: DataSpec, cls_name: str, what: str, folder: str, archive: str) -> ArrayData:
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import extract_archive

    cls = getattr(tvd, cls_name)
    root = _tv_root(spec)
    with scratch_dir(spec, "torchvision") as scratch:
        if (root / folder).is_dir():
            base = root
        elif root.name == folder and root.is_dir():
            base = root.parent
        elif (root / archive).is_file():
            _check_archive(what, root / archive, cls.tgz_md5)
            base = scratch / digest(file_fingerprint(root / archive))[:16]
            if not (base / folder).is_dir():
                extract_archive(str(root / archive), str(base))
        elif spec.download:
            base = root
        else:
            raise _missing(what, root, [f"{folder}/ (or {archive})"])
        parts = [_tv_call(what, lambda s=s: cls(str(base), train=s == "train", download=spec.download), spec)
                 for s in pooled(spec.split, ("train", "test"))]
    x = np.concatenate([np.asarray(p.data) for p in parts])
    y = np.concatenate([np.asarray(p.targets) for p in parts])
    return make_data(x, y, what, list(parts[0].classes))


@source("cifar10", splits=("train", "test"))
def cifar10(spec: DataSpec) -> ArrayData:
    """CIFAR-10 through torchvision.datasets.CIFAR10 (root holds cifar-10-batches-py/ or the .tar.gz)."""
    return _cifar(spec, "CIFAR10", "cifar10", "cifar-10-batches-py", "cifar-10-python.tar.gz")


@source("cifar100", splits=("train", "test"))
def cifar100(spec: DataSpec) -> ArrayData:
    """CIFAR-100 (fine labels) through torchvision.datasets.CIFAR100."""
    return _cifar(spec, "CIFAR100", "cifar100", "cifar-100-python", "cifar-100-python.tar.gz")


@source("svhn", splits=("train", "test", "extra"))
def svhn(spec: DataSpec) -> ArrayData:
    """SVHN through torchvision.datasets.SVHN (root holds train_32x32.mat, test_32x32.mat[, extra])."""
    import torchvision.datasets as tvd

    root = _tv_root(spec)
    splits = pooled(spec.split, ("train", "test"))
    missing = [f"{s}_32x32.mat" for s in splits if not (root / f"{s}_32x32.mat").is_file()]
    if missing and not spec.download:
        raise _missing("svhn", root, missing)
    parts = [_tv_call("svhn", lambda s=s: tvd.SVHN(str(root), split=s, download=spec.download), spec) for s in splits]
    x = np.concatenate([p.data for p in parts])
    y = np.concatenate([p.labels for p in parts])
    return make_data(x, y, "svhn", [str(i) for i in range(10)])

