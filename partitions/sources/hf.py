"""Hugging Face `datasets` source: a hub data set, or local parquet/arrow/csv/json/imagefolder files.

The hub never hangs a run: HF_HUB_OFFLINE is respected and, when it is unset, an unreachable hub
is detected in seconds (a TCP probe) and treated as offline, instead of `datasets`' ~20 s of
retries. Decoded arrays are cached under data.cache_dir, keyed by the data set's fingerprint.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from partitions.cache import cached_arrays, file_fingerprint
from partitions.federated import ArrayData
from partitions.sources.common import data_cache, make_data
from partitions.sources.registry import source
from partitions.spec import DataSpec

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
    arrays_ = cached_arrays(data_cache(spec), "hf", key, build)
    y_feat = ds.features[y_col]
    names = list(y_feat.names) if isinstance(y_feat, datasets.ClassLabel) else None
    return make_data(arrays_["x"], arrays_["y"], spec.name if spec.root is None else label, names,
                     arrays_.get("groups"), tuple(ds.column_names))

