"""Image folders and archives beyond torchvision's built-ins: `cinic10`, `tinyimagenet`, `celeba`, `medmnist`.

Each reads the files as their publishers distribute them (nothing is downloaded but through torchvision's
own CelebA download); a missing file or folder fails at once naming it, where to put it and where it comes
from. Decoded images are cached as uint8 under data.cache_dir (keyed by the files' sizes and mtimes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from partitions.cache import cached_arrays
from partitions.federated import ArrayData
from partitions.sources.common import data_cache, make_data, pooled
from partitions.sources.registry import source
from partitions.spec import DataSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
CELEBA_SIZE = 84  # LEAF's celeba model: images resized to 84x84 (models/celeba/cnn.py IMAGE_SIZE)
CELEBA_FILES = ("img_align_celeba/", "list_attr_celeba.txt", "identity_CelebA.txt", "list_eval_partition.txt",
                "list_bbox_celeba.txt", "list_landmarks_align_celeba.txt")
MEDMNIST_SPLITS = ("train", "val", "test")


def _decode(paths: list[Path], what: str, size: int | None = None) -> np.ndarray:
    """RGB uint8 (N, 3, H, W); every image must have the first one's size unless `size` resizes them all."""
    from PIL import Image

    out = None
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            a = np.asarray(im, dtype=np.uint8)
        if out is None:
            out = np.empty((len(paths), *a.shape), dtype=np.uint8)
        if a.shape != out.shape[1:]:
            raise ValueError(f"{what}: {p} is {a.shape[1]}x{a.shape[0]}, the others {out.shape[2]}x{out.shape[1]}")
        out[i] = a
    if out is None:
        return np.zeros((0, 3, 1, 1), dtype=np.uint8)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _images_cached(spec: DataSpec, what: str, paths: list[Path], labels: np.ndarray, folder: Path,
                   size: int | None = None, extra: dict | None = None) -> dict[str, np.ndarray]:
    key = {"what": what, "size": size, "files": [str(p.relative_to(folder)) for p in paths],
           "stamp": [(p.stat().st_size, p.stat().st_mtime_ns) for p in paths], **(extra or {})}
    return cached_arrays(data_cache(spec), what, key, lambda: {"x": _decode(paths, what, size), "y": labels})


def _root(spec: DataSpec, default: str) -> Path:
    return Path(spec.root if spec.root is not None else default).expanduser()


@source("cinic10", splits=("train", "valid", "test"))
def cinic10(spec: DataSpec) -> ArrayData:
    """CINIC-10 (Darlow et al. 2018): 270,000 32x32 RGB images, CIFAR-10's classes, in torchvision's
    ImageFolder layout <root>/{train,valid,test}/<class>/*.png (the official CINIC-10.tar.gz unpacked).
    Classes: the sorted folder names (ImageFolder's rule). split null pools train + test (valid: split: valid)."""
    from torchvision.datasets.folder import find_classes, make_dataset

    root = _root(spec, "data/cinic10")
    splits = pooled(spec.split, ("train", "test"))
    missing = [f"{s}/" for s in splits if not (root / s).is_dir()]
    if missing:
        raise FileNotFoundError(f"cinic10: data not found under data.root={str(root)!r}; missing: "
                                f"{', '.join(missing)}. Unpack CINIC-10.tar.gz (https://github.com/BayesWatch/"
                                f"cinic-10) into data.root: it must hold train/, valid/, test/ (a folder per class)")
    classes, _ = find_classes(str(root / splits[0]))
    paths, labels = [], []
    for s in splits:
        split_classes, to_idx = find_classes(str(root / s))
        if split_classes != classes:
            raise ValueError(f"cinic10: {root / s} has the classes {split_classes}, {root / splits[0]} {classes}")
        for path, label in make_dataset(str(root / s), to_idx, extensions=IMAGE_SUFFIXES):
            paths.append(Path(path))
            labels.append(label)
    table = _images_cached(spec, "cinic10", paths, np.asarray(labels, dtype=np.int64), root)
    return make_data(table["x"], table["y"], "cinic10", list(classes))


@source("tinyimagenet", splits=("train", "val"))
def tinyimagenet(spec: DataSpec) -> ArrayData:
    """Tiny ImageNet (CS231n): 200 classes of 64x64 RGB, 500 training and 50 validation images each, in the
    layout of tiny-imagenet-200.zip: wnids.txt, words.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG with
    val/val_annotations.txt (the test images have no labels and are not read). data.root: that
    tiny-imagenet-200 folder or its parent. Classes: the sorted wnids (names from words.txt when present).
    split null pools train + val."""
    root = _root(spec, "data")
    if not (root / "wnids.txt").is_file() and (root / "tiny-imagenet-200" / "wnids.txt").is_file():
        root = root / "tiny-imagenet-200"
    splits = pooled(spec.split, ("train", "val"))
    need = ["wnids.txt", *(["train/"] if "train" in splits else []),
            *(["val/images/", "val/val_annotations.txt"] if "val" in splits else [])]
    missing = [f for f in need if not (root / f).exists()]
    if missing:
        raise FileNotFoundError(f"tinyimagenet: data not found under data.root={str(root)!r}; missing: "
                                f"{', '.join(missing)}. Unzip tiny-imagenet-200.zip "
                                f"(http://cs231n.stanford.edu/tiny-imagenet-200.zip) into data.root")
    wnids = sorted({w.strip() for w in (root / "wnids.txt").read_text().split() if w.strip()})
    index = {w: i for i, w in enumerate(wnids)}
    paths, labels = [], []
    if "train" in splits:
        for w in wnids:
            files = sorted(p for p in (root / "train" / w / "images").glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            paths += files
            labels += [index[w]] * len(files)
    if "val" in splits:
        for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
            parts = line.split("\t")
            if len(parts) < 2:
                continue
            if parts[1] not in index:
                raise ValueError(f"tinyimagenet: val_annotations.txt names {parts[1]!r}, which is not in wnids.txt")
            paths.append(root / "val" / "images" / parts[0])
            labels.append(index[parts[1]])
    names = wnids
    if (root / "words.txt").is_file():
        words = dict(line.split("\t", 1) for line in (root / "words.txt").read_text().splitlines() if "\t" in line)
        names = [words.get(w, w).split(",")[0].strip() for w in wnids]
    table = _images_cached(spec, "tinyimagenet", paths, np.asarray(labels, dtype=np.int64), root)
    return make_data(table["x"], table["y"], "tinyimagenet", names)


@source("celeba", splits=("train", "valid", "test"))
def celeba(spec: DataSpec) -> ArrayData:
    """CelebA through torchvision.datasets.CelebA: the Smiling attribute (2 classes), one group per celebrity
    identity (LEAF's by-celebrity federation; partition.scheme: natural), images resized to 84x84 as LEAF does.
    data.root: the folder that holds celeba/ (torchvision's layout: celeba/img_align_celeba/ and the five
    list files); data.download: true lets torchvision fetch it. split null pools all three official splits
    (a celebrity's images are then all present)."""
    import torchvision.datasets as tvd

    root = _root(spec, "data")
    base = root / "celeba"
    missing = [f for f in CELEBA_FILES if not (base / f).exists()]
    if missing and not spec.download:
        raise FileNotFoundError(f"celeba: data not found under data.root={str(root)!r}; missing in celeba/: "
                                f"{', '.join(missing)}. Put CelebA's img_align_celeba.zip (unzipped) and its list "
                                f"files into {str(base)!r}, or set data.download=true (torchvision, needs internet)")
    try:
        ds = tvd.CelebA(str(root), split=spec.split or "all", target_type=["attr", "identity"],
                        download=spec.download)
    except (RuntimeError, OSError) as err:
        raise FileNotFoundError(f"celeba: torchvision could not read {str(base)!r} ({type(err).__name__}: {err}); "
                                f"its files must be the original ones (torchvision checks their md5)") from None
    smiling = ds.attr_names.index("Smiling")
    y = ds.attr[:, smiling].numpy().astype(np.int64)
    groups = ds.identity.numpy().ravel().astype(np.int64)
    paths = [base / "img_align_celeba" / f for f in ds.filename]
    table = _images_cached(spec, "celeba", paths, y, base, CELEBA_SIZE, {"split": spec.split or "all"})
    return make_data(table["x"], table["y"], "celeba", ["not smiling", "smiling"], groups)


@source("medmnist", splits=MEDMNIST_SPLITS)
def medmnist(spec: DataSpec) -> ArrayData:
    """MedMNIST v2 (Yang et al. 2023) from its official .npz files (train_/val_/test_images and _labels),
    read with allow_pickle=False. data.root: the .npz file, or a folder holding <data.name>.npz (data.name:
    pathmnist, dermamnist, bloodmnist, organamnist, ..., also the _64/_128/_224 files). Single-label sets
    only (chestmnist is multi-label). split null pools train + test (val: split: val)."""
    root = _root(spec, "data/medmnist")
    if root.suffix == ".npz":
        path, flag = root, spec.name or root.stem
    else:
        flag = spec.name or "pathmnist"
        path = root / f"{flag}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"medmnist: {str(path)!r} not found; download {path.name} from "
                                f"https://zenodo.org/records/10519652 (MedMNIST v2) into {str(path.parent)!r}, or "
                                f"point data.root at the .npz file (data.name picks <name>.npz in a folder)")
    splits = pooled(spec.split, ("train", "test"))
    with np.load(path, allow_pickle=False) as z:
        missing = [f"{s}_{k}" for s in splits for k in ("images", "labels") if f"{s}_{k}" not in z.files]
        if missing:
            raise ValueError(f"medmnist: {path} lacks {', '.join(missing)} (has {', '.join(z.files)})")
        x = np.concatenate([z[f"{s}_images"] for s in splits])
        labels = [z[f"{s}_labels"] for s in splits]
    multi = [lab.shape[1] for lab in labels if lab.ndim == 2 and lab.shape[1] > 1]
    if multi:
        raise ValueError(f"medmnist: {path.name} is multi-label ({multi[0]} binary labels per image); fedharness "
                         f"trains single-label classifiers: pick a single-label set (pathmnist, dermamnist, ...)")
    y = np.concatenate([lab.reshape(len(lab)) for lab in labels])
    return make_data(x, y.ravel(), f"medmnist-{flag}", where=f"medmnist: {path}")
