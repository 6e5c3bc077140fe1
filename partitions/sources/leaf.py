"""LEAF-family sources (Caldas et al. 2018), naturally federated: `synthetic`, `femnist`, `shakespeare`, `sent140`.

Each delivers its natural client id per example as the group ids (device, writer, speaking role,
Twitter user), so `partition.scheme: natural` makes one client per device / writer / user without a
`data.group_column`. Text comes as token ids (int16 / int32, (N, T)) with mean 0 and std 1, so the
trainer's normalization leaves them unchanged; `char_lstm` embeds them.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from partitions.cache import cached_arrays, file_fingerprint
from partitions.federated import ArrayData
from partitions.sources.common import data_cache, make_data, pooled
from partitions.sources.registry import source
from partitions.spec import DataSpec
from protocol.rng import rng

# LEAF's models/utils/language_utils.py: the 80 characters of its Shakespeare data, in LEAF's index order
LEAF_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
SHAKESPEARE_SEQ = 80  # LEAF's seq_len: 80 characters in, the next one out
SENT140_WORDS = 25  # LEAF's line_to_indices(max_words=25)
SENT140_VOCAB = 10_000  # most frequent words kept; id SENT140_VOCAB = unknown / padding (LEAF's unk_id role)
FEMNIST_CLASSES = [*"0123456789", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ", *"abcdefghijklmnopqrstuvwxyz"]
SYNTHETIC_KEYS = {"alpha": 1.0, "beta": 1.0, "devices": 30, "seed": 0, "iid": 0}


# ----- synthetic ---------------------------------------------------------------------------------
def synthetic_options(name: str | None) -> dict[str, float]:
    """data.name of `synthetic`: comma-separated key=value among alpha, beta, devices, seed, iid (defaults:
    alpha=1, beta=1, devices=30, seed=0, iid=0), e.g. "alpha=0.5,beta=0.5"; "iid" alone means iid=1."""
    out = dict(SYNTHETIC_KEYS)
    for part in filter(None, (p.strip() for p in (name or "").split(","))):
        key, _, value = part.partition("=")
        key = key.strip()
        if key == "iid" and not value:
            value = "1"
        if key not in SYNTHETIC_KEYS:
            raise ValueError(f"synthetic: unknown option {key!r} in data.name={name!r}; write key=value pairs "
                             f"among {', '.join(SYNTHETIC_KEYS)}, e.g. data.name='alpha=0.5,beta=0.5'")
        try:
            out[key] = float(value)
        except ValueError:
            raise ValueError(f"synthetic: data.name={name!r}: {key}={value!r} is not a number") from None
    if out["alpha"] < 0 or out["beta"] < 0:
        raise ValueError(f"synthetic: alpha and beta are variances and must be >= 0, got data.name={name!r}")
    if out["devices"] < 1 or out["devices"] != int(out["devices"]) or out["seed"] != int(out["seed"]):
        raise ValueError(f"synthetic: devices must be a positive integer and seed an integer, got data.name={name!r}")
    return out


@source("synthetic", splits=())
def synthetic(spec: DataSpec) -> ArrayData:
    """Synthetic(alpha, beta) of FedProx (Li et al. 2020, Sec. 5.1 and appendix C.1), generated here.

    Per device k: u_k ~ N(0, alpha), B_k ~ N(0, beta); W_k (60x10) and b_k (10) ~ N(u_k, 1); v_k ~ N(B_k, 1)
    (60); x ~ N(v_k, Sigma) with Sigma diagonal, Sigma_jj = j^-1.2; y = argmax softmax(W_k^T x + b_k).
    alpha controls how much the local models differ, beta how much the local inputs differ.
    `iid` is the paper's Synthetic-IID: the same W, b ~ N(0, 1) on every device and v_k = 0.
    Device sizes: lognormal(4, 2) cast to int, plus 50 (FedProx's data/synthetic_*/generate_synthetic.py;
    the paper only says "power law"); 30 devices by default, as there.

    One difference from the authors' generator, on purpose: the paper writes N(0, alpha) with alpha a
    variance, their code passes alpha as the standard deviation (np.random.normal(0, alpha)). Here the
    paper holds: std sqrt(alpha), sqrt(beta). The two agree at alpha, beta in {0, 1}, i.e. Synthetic(0,0)
    and (1,1); (0.5,0.5) differs. Inputs are raw (mean 0, std 1 declared: no normalization), as in FedProx.
    Deterministic from data.name's seed (stream rng(seed, "synthetic")); the run seed does not change the data.
    """
    opt = synthetic_options(spec.name)
    gen = rng(int(opt["seed"]), "synthetic")
    k, dim, classes = int(opt["devices"]), 60, 10
    sizes = gen.lognormal(4.0, 2.0, k).astype(np.int64) + 50
    sd = np.sqrt(np.arange(1, dim + 1, dtype=np.float64) ** -1.2)
    u = gen.normal(0.0, np.sqrt(opt["alpha"]), k)
    b_mean = gen.normal(0.0, np.sqrt(opt["beta"]), k)
    w_iid, b_iid = gen.normal(0.0, 1.0, (dim, classes)), gen.normal(0.0, 1.0, classes)
    xs, ys = [], []
    for dev in range(k):
        v = np.zeros(dim) if opt["iid"] else gen.normal(b_mean[dev], 1.0, dim)
        w = w_iid if opt["iid"] else gen.normal(u[dev], 1.0, (dim, classes))
        b = b_iid if opt["iid"] else gen.normal(u[dev], 1.0, classes)
        x = v + gen.standard_normal((sizes[dev], dim)) * sd
        xs.append(x)
        ys.append(np.argmax(x @ w + b, axis=1))  # softmax is monotone: its argmax is the logits' argmax
    x = np.concatenate(xs).astype(np.float32)
    y = np.concatenate(ys).astype(np.int64)
    groups = np.repeat(np.arange(k, dtype=np.int64), sizes)
    label = "synthetic-iid" if opt["iid"] else f"synthetic({opt['alpha']:g},{opt['beta']:g})"
    return ArrayData(x, y, classes, (0.0,) * dim, (1.0,) * dim, label, groups, [str(i) for i in range(classes)])


# ----- femnist -----------------------------------------------------------------------------------
def _first_existing(spec: DataSpec, defaults: tuple[str, ...]) -> Path:
    if spec.root is not None:
        return Path(spec.root).expanduser()
    for cand in defaults:
        if Path(cand).exists():
            return Path(cand)
    return Path(defaults[0])


@source("femnist", splits=("train", "test"))
def femnist(spec: DataSpec) -> ArrayData:
    """FEMNIST (LEAF, 62 classes, 28x28) with its writer as the group id: the natural by-writer partition.

    data.root: an .npz with x_train/y_train/writer_train (+ _test), like ../shared/data/femnist/
    femnist_300writers.npz, a folder holding one, or LEAF's json output (train/*.json, test/*.json with
    users/user_data, x = 784 floats in [0, 1]). Default root: data/femnist, else ../shared/data/femnist.
    LEAF stores white = 255; the images are inverted here (ink = 255, like MNIST), so this equals
    `arrays` + `invert: true` on the same file (data.invert: true flips them back)."""
    root = _first_existing(spec, ("data/femnist", "../shared/data/femnist"))
    npz = root if root.suffix == ".npz" else next(iter(sorted(root.glob("*.npz"))), None) if root.is_dir() else None
    splits = pooled(spec.split, ("train", "test"))
    if npz is not None and npz.is_file():
        with np.load(npz, allow_pickle=False) as z:
            need = [f"{w}_{s}" for s in splits for w in ("x", "y", "writer")]
            missing = [key for key in need if key not in z.files]
            if missing:
                raise ValueError(f"femnist: {npz} lacks the keys {', '.join(missing)} (has {', '.join(z.files)})")
            x = np.concatenate([z[f"x_{s}"] for s in splits])
            y = np.concatenate([z[f"y_{s}"] for s in splits])
            groups = np.concatenate([z[f"writer_{s}"] for s in splits]).astype(np.int64)
        x = 255 - x if x.dtype == np.uint8 else 1.0 - x
    elif root.is_dir() and any((root / s).is_dir() for s in splits):
        table = _leaf_json(spec, root, splits, "femnist", _femnist_rows)
        x, y, groups = 255 - table["x"], table["y"], table["groups"]
    else:
        raise FileNotFoundError(
            f"femnist: data not found under data.root={str(root)!r}; put femnist_300writers.npz (x_/y_/writer_train "
            f"and _test keys) there, or LEAF's femnist output (data/femnist/data/train/*.json and test/*.json from "
            f"TalwalkarLab/leaf's preprocess.sh) as <root>/train and <root>/test")
    return make_data(x, y, "femnist", FEMNIST_CLASSES, groups, ("x", "y", "writer"))


def _femnist_rows(user_data: dict) -> tuple[np.ndarray, np.ndarray]:
    x = np.rint(np.asarray(user_data["x"], dtype=np.float64).reshape(-1, 28, 28) * 255).astype(np.uint8)
    return x, np.asarray(user_data["y"], dtype=np.int64)


# ----- LEAF json (users / user_data) -------------------------------------------------------------
def _json_files(root: Path, splits: list[str]) -> list[Path]:
    """LEAF's layout: <root>/train/*.json and <root>/test/*.json, or a flat folder (all_data) of *.json."""
    if any((root / s).is_dir() for s in splits):
        return [f for s in splits for f in sorted((root / s).glob("*.json"))]
    flat = root / "all_data" if (root / "all_data").is_dir() else root
    return sorted(flat.glob("*.json")) if flat.is_dir() else ([root] if root.suffix == ".json" else [])


def _leaf_json(spec: DataSpec, root: Path, splits: list[str], what: str, rows) -> dict[str, np.ndarray]:
    """All users of LEAF json files, decoded by rows(user_data) -> (x, y) and cached; groups = the user's
    position among the sorted user names (the same user in train and test is one group)."""
    files = _json_files(root, splits)
    if not files:
        raise FileNotFoundError(f"{what}: no LEAF json under data.root={str(root)!r}; put LEAF's output there "
                                f"(<root>/train/*.json and <root>/test/*.json, or <root>/all_data/*.json)")

    def build() -> dict[str, np.ndarray]:
        xs, ys, users = [], [], []
        for f in files:
            with open(f, encoding="utf-8") as fh:
                blob = json.load(fh)
            if not isinstance(blob, dict) or "user_data" not in blob:
                raise ValueError(f"{what}: {f} is not LEAF json (no 'user_data' key)")
            for user in blob.get("users", sorted(blob["user_data"])):
                x, y = rows(blob["user_data"][user])
                xs.append(x)
                ys.append(y)
                users.extend([str(user)] * len(y))
        names, groups = np.unique(np.asarray(users, dtype=str), return_inverse=True)
        return {"x": np.concatenate(xs), "y": np.concatenate(ys), "groups": groups.astype(np.int64),
                "users": names}

    return cached_arrays(data_cache(spec), what, {"what": what, "files": [file_fingerprint(f) for f in files]}, build)


def _text_data(table: dict[str, np.ndarray], num_classes: int, name: str, class_names: list[str]) -> ArrayData:
    return ArrayData(table["x"], table["y"], num_classes, (0.0,), (1.0,), name, table["groups"], class_names,
                     ("x", "y", "user"))


@source("shakespeare", splits=("train", "test"))
def shakespeare(spec: DataSpec) -> ArrayData:
    """LEAF Shakespeare: next-character prediction from 80 characters, one group per speaking role.

    data.root: LEAF's shakespeare output (train/*.json, test/*.json; x = 80-character strings, y = the next
    character). Characters become their index in LEAF's 80-character alphabet (LEAF_LETTERS, LEAF's
    word_to_indices), x int16 (N, 80), 80 classes; model.name: char_lstm. A character outside the
    alphabet is an error (LEAF's find() would give -1)."""
    root = Path(spec.root if spec.root is not None else "data/shakespeare").expanduser()
    lookup = np.full(0x110000, -1, dtype=np.int16)
    lookup[[ord(ch) for ch in LEAF_LETTERS]] = np.arange(len(LEAF_LETTERS), dtype=np.int16)

    def rows(user_data: dict) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = user_data["x"], user_data["y"]
        bad = [s for s in xs if len(s) != SHAKESPEARE_SEQ]
        if bad:
            raise ValueError(f"shakespeare: an input has {len(bad[0])} characters, not {SHAKESPEARE_SEQ}: {bad[0]!r}")
        codes = np.frombuffer("".join(xs).encode("utf-32-le"), dtype=np.uint32).reshape(-1, SHAKESPEARE_SEQ)
        target = np.frombuffer("".join(ys).encode("utf-32-le"), dtype=np.uint32)
        if len(target) != len(xs):
            raise ValueError("shakespeare: every y must be one character, the one after its x")
        x, y = lookup[codes], lookup[target].astype(np.int64)
        if (x < 0).any() or (y < 0).any():
            odd = sorted({chr(c) for c in np.concatenate([codes[x < 0], target[y < 0]])})
            raise ValueError(f"shakespeare: characters outside LEAF's 80-character alphabet: {odd!r}")
        return x, y

    return _text_data(_leaf_json(spec, root, pooled(spec.split, ("train", "test")), "shakespeare", rows),
                      len(LEAF_LETTERS), "shakespeare", list(LEAF_LETTERS))


def split_line(line: str) -> list[str]:
    """LEAF's sent140 tokenizer (language_utils.split_line): words and the punctuation . , ! ? ;"""
    return re.findall(r"[\w']+|[.,!?;]", line)


@source("sent140", splits=("train", "test"))
def sent140(spec: DataSpec) -> ArrayData:
    """LEAF Sent140: tweet sentiment (2 classes), one group per Twitter user.

    data.root: LEAF's sent140 output (train/*.json, test/*.json; x = [id, date, query, user, text], y = 0/1).
    Text -> LEAF's split_line -> the first 25 words as ids, padded with the unknown id (LEAF's
    line_to_indices). LEAF looks words up in GloVe's 400k vocabulary; no embedding file ships here, so the
    vocabulary is the 10,000 most frequent words of the loaded data (ties alphabetical), ids 0..9,999, and
    10,000 = unknown/padding: x int32 (N, 25); model: char_lstm with vocab_size 10001."""
    root = Path(spec.root if spec.root is not None else "data/sent140").expanduser()

    def rows(user_data: dict) -> tuple[np.ndarray, np.ndarray]:
        texts = [row[4] if isinstance(row, list) else str(row) for row in user_data["x"]]
        return np.asarray(texts, dtype=object).astype(str), np.asarray(user_data["y"]).astype(np.int64)

    def build() -> dict[str, np.ndarray]:
        raw = _leaf_json_uncached(root, pooled(spec.split, ("train", "test")), rows)
        words = [split_line(t) for t in raw["x"]]
        freq = Counter(w for ws in words for w in ws)
        vocab = {w: i for i, (w, _) in enumerate(sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))[:SENT140_VOCAB])}
        x = np.full((len(words), SENT140_WORDS), SENT140_VOCAB, dtype=np.int32)
        for i, ws in enumerate(words):
            ids = [vocab.get(w, SENT140_VOCAB) for w in ws[:SENT140_WORDS]]
            x[i, : len(ids)] = ids
        return {"x": x, "y": raw["y"], "groups": raw["groups"]}

    files = _json_files(root, pooled(spec.split, ("train", "test")))
    if not files:
        raise FileNotFoundError(f"sent140: no LEAF json under data.root={str(root)!r}; put LEAF's output there "
                                f"(<root>/train/*.json and <root>/test/*.json, or <root>/all_data/*.json)")
    table = cached_arrays(data_cache(spec), "sent140", {"what": "sent140-v1", "files": [file_fingerprint(f) for f in
                                                                                          files]}, build)
    return _text_data(table, 2, "sent140", ["negative", "positive"])


def _leaf_json_uncached(root: Path, splits: list[str], rows) -> dict[str, np.ndarray]:
    return _leaf_json(DataSpec(source="sent140", cache_dir=None), root, splits, "sent140", rows)
