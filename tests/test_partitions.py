"""Partitions on real offline data (../shared/data): invariants of every scheme, the sources,
the cache, the statistics and the `fedharness partition` command.

Each test asserts numbers: every example is held at most once, sizes respect min_samples,
label distributions move the way the parameter says, the same seed gives the same partition.
"""

from __future__ import annotations

import gzip
import time

import numpy as np
import pytest

from harness.config import ConfigError, load_config
from partitions import build_federated_dataset, partition_data
from partitions.federated import ArrayData, FederatedDataset
from partitions.schemes import SCHEMES as PARTITIONERS
from partitions.sources import load_source
from partitions.spec import DataSpec, PartitionSpec
from partitions.splits import split_counts
from partitions.stats import imbalance_index, partition_summary, save_partition_artifacts
from tests.conftest import shared_data, small_config

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]  # the official class counts


# ----- fixtures: the real data, loaded once per module -------------------------------------------------
@pytest.fixture(scope="module")
def data_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("data-cache")


@pytest.fixture(scope="module")
def mnist(data_cache) -> ArrayData:
    return load_source(DataSpec(source="mnist", root=str(shared_data("mnist")), split="train",
                                cache_dir=str(data_cache)))


@pytest.fixture(scope="module")
def femnist(data_cache) -> ArrayData:
    path = shared_data("femnist") / "femnist_300writers.npz"
    return load_source(DataSpec(source="arrays", root=str(path), group_column="writer", invert=True,
                                cache_dir=str(data_cache)))


def spec(**fields) -> PartitionSpec:
    return PartitionSpec(**{"cache_dir": None, **fields})


def check_invariants(fed: FederatedDataset, part: PartitionSpec) -> np.ndarray:
    """Every example at most once over all clients and splits; CSR offsets consistent; sizes >= min."""
    everything = np.concatenate([fed.index[s] for s in fed.index])
    assert len(np.unique(everything)) == len(everything)
    assert everything.min() >= 0 and everything.max() < len(fed.y)
    for s in fed.index:
        assert fed.offsets[s][0] == 0 and fed.offsets[s][-1] == len(fed.index[s])
        assert np.all(np.diff(fed.offsets[s]) >= 0)
        assert len(fed.offsets[s]) == part.num_clients + 1
    sizes = sum(fed.sizes(s) for s in fed.index)
    assert sizes.min() >= part.min_samples
    assert fed.num_clients == part.num_clients
    return sizes


def same_partition(a: FederatedDataset, b: FederatedDataset) -> bool:
    return (a.index.keys() == b.index.keys() and all(np.array_equal(a.index[s], b.index[s]) for s in a.index)
            and all(np.array_equal(a.offsets[s], b.offsets[s]) for s in a.offsets)
            and np.array_equal(a.train_clients, b.train_clients))


# ----- sources --------------------------------------------------------------------------------------
def test_mnist_raw_gz_folder_parsed_by_torchvision(mnist, data_cache, monkeypatch):
    assert mnist.x.shape == (60000, 1, 28, 28) and mnist.x.dtype == np.uint8
    assert np.bincount(mnist.y).tolist() == MNIST_TRAIN_COUNTS
    assert mnist.num_classes == 10 and mnist.class_names[0].startswith("0")
    assert mnist.mean[0] == pytest.approx(0.1307, abs=1e-4) and mnist.std[0] == pytest.approx(0.3081, abs=1e-4)
    # torchvision's own MNIST class parsed the files: spy on it, load again (pooled train + test)
    import torchvision.datasets as tvd

    calls = []
    original = tvd.MNIST.__init__
    monkeypatch.setattr(tvd.MNIST, "__init__", lambda self, *a, **k: (calls.append(k["train"]),
                                                                    original(self, *a, **k))[1])
    both = load_source(DataSpec(source="mnist", root=str(shared_data("mnist")), cache_dir=str(data_cache)))
    assert calls == [True, False]
    assert both.x.shape == (70000, 1, 28, 28) and np.array_equal(both.x[:60000], mnist.x)
    # the unpacked layout is torchvision's own: pointing root at it loads the same arrays, no copy made
    layout = next(p.parent.parent for p in data_cache.rglob("MNIST/raw/train-images-idx3-ubyte"))
    again = load_source(DataSpec(source="mnist", root=str(layout.parent), split="train", cache_dir=None))
    assert np.array_equal(again.x, mnist.x) and np.array_equal(again.y, mnist.y)
    assert not [p for p in data_cache.rglob("*") if ".tmp" in p.name or "ubyte." in p.name]  # no partial files


def test_torchvision_missing_files_name_them_and_the_download_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte.*data\.download=true"):
        load_source(DataSpec(source="mnist", root=str(tmp_path), cache_dir=None))
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py.*data\.download"):
        load_source(DataSpec(source="cifar10", root=str(tmp_path), cache_dir=None))
    with pytest.raises(FileNotFoundError, match=r"train_32x32\.mat.*data\.download"):
        load_source(DataSpec(source="svhn", root=str(tmp_path), cache_dir=None))
    with pytest.raises(FileNotFoundError, match=r"emnist-letters-train-images-idx3-ubyte"):
        load_source(DataSpec(source="emnist", name="letters", root=str(tmp_path), cache_dir=None))


def test_fashionmnist_and_emnist_read_their_idx_files(tmp_path):
    """Fashion-MNIST and EMNIST share MNIST's IDX format; write tiny real-format files (MNIST
    pixels) under their torchvision names: EMNIST comes out transposed upright, letters 0-based."""
    src = shared_data("mnist")
    raw = tmp_path / "raw"
    raw.mkdir()

    def idx(name: str, out: str, n: int) -> None:
        with gzip.open(src / name, "rb") as fh:
            data = fh.read()
        header = 16 if "images" in name else 8
        item = 784 if "images" in name else 1
        head = bytearray(data[:header])
        head[4:8] = n.to_bytes(4, "big")
        (raw / out).write_bytes(bytes(head) + data[header : header + n * item])

    for tag, split in (("train", "train"), ("t10k", "test")):
        idx(f"{tag}-images-idx3-ubyte.gz", f"{tag}-images-idx3-ubyte", 50)
        idx(f"{tag}-labels-idx1-ubyte.gz", f"{tag}-labels-idx1-ubyte", 50)
        idx(f"{tag}-images-idx3-ubyte.gz", f"emnist-letters-{split}-images-idx3-ubyte", 50)
        labels = (raw / f"{tag}-labels-idx1-ubyte").read_bytes()
        (raw / f"emnist-letters-{split}-labels-idx1-ubyte").write_bytes(labels[:8] + bytes(b + 1 for b in labels[8:]))
    fashion = load_source(DataSpec(source="fashionmnist", root=str(tmp_path), cache_dir=str(tmp_path / "c")))
    assert fashion.x.shape == (100, 1, 28, 28) and fashion.num_classes == 10
    letters = load_source(DataSpec(source="emnist", name="letters", root=str(tmp_path), cache_dir=None))
    assert np.array_equal(letters.x[:, 0], fashion.x[:, 0].transpose(0, 2, 1))
    assert np.array_equal(letters.y, fashion.y) and letters.num_classes == 26 and letters.class_names[0] == "a"


def test_cifar10_jpeg_blob_through_the_arrays_source_is_decoded_once(data_cache):
    path = shared_data("cifar10") / "cifar10_jpeg_blob.npz"
    data = load_source(DataSpec(source="arrays", root=str(path), cache_dir=str(data_cache)))
    assert data.x.shape == (60000, 3, 32, 32) and data.x.dtype == np.uint8
    assert np.bincount(data.y).tolist() == [6000] * 10 and data.class_names[0] == "airplane"
    assert np.allclose(data.mean, (0.4914, 0.4822, 0.4465), atol=0.01)  # CIFAR-10's published statistics
    assert np.allclose(data.std, (0.2470, 0.2435, 0.2616), atol=0.01)
    assert len(list(data_cache.glob("jpeg-*.npz"))) == 1
    t0 = time.perf_counter()
    train = load_source(DataSpec(source="arrays", root=str(path), split="train", cache_dir=str(data_cache)))
    assert time.perf_counter() - t0 < 30  # sanity only: a reload reads the cache, it does not decode again
    assert np.array_equal(train.x, data.x[:50000]) and len(train.y) == 50000
    with np.load(path, allow_pickle=False) as z:
        assert np.array_equal(train.y, z["y_train"])


def test_femnist_npz_has_300_writers_and_inverted_pixels(femnist):
    assert femnist.x.shape == (41432 + 4755, 1, 28, 28) and femnist.x.dtype == np.uint8
    assert femnist.num_classes == 62 and len(np.unique(femnist.y)) == 62
    assert len(np.unique(femnist.groups)) == 300
    assert femnist.mean[0] < 0.2  # inverted: background is black like MNIST (LEAF stores white = 255)
    assert "writer" in femnist.columns


def test_arrays_source_npy_folder_channels_last_and_clear_errors(tmp_path):
    gen = np.random.default_rng(0)
    folder = tmp_path / "arr"
    folder.mkdir()
    np.save(folder / "images_train.npy", gen.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8))
    np.save(folder / "images_test.npy", gen.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8))
    np.save(folder / "labels_train.npy", np.repeat(["cat", "dog", "emu"], 10))
    np.save(folder / "labels_test.npy", np.repeat(["cat", "dog"], 5))
    data = load_source(DataSpec(source="arrays", root=str(folder), cache_dir=None))
    assert data.x.shape == (40, 3, 8, 8) and data.class_names == ["cat", "dog", "emu"]
    assert np.bincount(data.y).tolist() == [15, 15, 10]
    test = load_source(DataSpec(source="arrays", root=str(folder), split="test", cache_dir=None))
    assert len(test.y) == 10
    with pytest.raises(ValueError, match=r"data.group_column='writer'.*keys there: images_test"):
        load_source(DataSpec(source="arrays", root=str(folder), group_column="writer", cache_dir=None))
    np.savez(tmp_path / "tab.npz", features=gen.normal(size=(20, 5)), target=np.arange(20) % 4)
    table = load_source(DataSpec(source="arrays", root=str(tmp_path / "tab.npz"), cache_dir=None))
    assert table.x.shape == (20, 5) and table.x.dtype == np.float32 and len(table.mean) == 5
    np.savez(tmp_path / "odd.npz", a=np.zeros((3, 2)), b=np.zeros(3))
    with pytest.raises(ValueError, match=r"cannot guess data.label_column.*a, b"):
        load_source(DataSpec(source="arrays", root=str(tmp_path / "odd.npz"), cache_dir=None))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_source(DataSpec(source="arrays", root=str(tmp_path / "nope.npz"), cache_dir=None))


def test_digits_is_still_the_offline_default():
    data = load_source(DataSpec())
    assert data.x.shape == (1797, 1, 8, 8) and data.num_classes == 10


def test_bad_data_and_partition_values_fail_with_field_value_and_choices():
    with pytest.raises(ConfigError, match=r"data.source.*unknown data source 'imagenet'; choose one of: arrays, "
                                          r"celeba, cifar10, cifar100, cinic10, digits, emnist, fashionmnist, "
                                          r"femnist, hf, medmnist, mnist, sent140, shakespeare, svhn, synthetic, "
                                          r"tinyimagenet "):
        load_config({"data": {"source": "imagenet"}})
    with pytest.raises(ConfigError, match=r"data.name='bywriter' is not an EMNIST split; choose one of: byclass"):
        load_config({"data": {"source": "emnist", "name": "bywriter"}})
    with pytest.raises(ConfigError, match=r"data.split='valid' is not a split of mnist; choose one of: train, test"):
        load_config({"data": {"source": "mnist", "split": "valid"}})
    with pytest.raises(ConfigError, match=r"partition.scheme.*'iid', 'dirichlet'.*\(got \"label\"\)"):
        load_config({"partition": {"scheme": "label"}})
    with pytest.raises(ConfigError, match=r"partition.alpha.*greater than 0"):
        load_config({"partition": {"alpha": 0}})
    with pytest.raises(ConfigError, match=r"unknown key 'partition.alfa'; allowed keys here: alpha"):
        load_config({"partition": {"alfa": 0.1}})
    with pytest.raises(ConfigError, match=r"unseen_fraction=0.95 of 10 clients leaves no client to train"):
        load_config({"partition": {"num_clients": 10, "unseen_fraction": 0.95}})


# ----- Hugging Face `datasets` (local files; hub offline) ------------------------------------------------
def test_hf_local_parquet_csv_and_imagefolder(tmp_path):
    import io

    import pandas as pd
    from PIL import Image

    gen = np.random.default_rng(0)
    pixels = gen.integers(0, 256, (12, 6, 6), dtype=np.uint8)

    def png(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return buf.getvalue()

    pd.DataFrame({"image": [{"bytes": png(a), "path": None} for a in pixels], "label": np.arange(12) % 3,
                  "user": np.arange(12) // 4}).to_parquet(tmp_path / "d.parquet")
    par = load_source(DataSpec(source="hf", root=str(tmp_path / "d.parquet"), group_column="user",
                               cache_dir=str(tmp_path / "c")))
    assert par.x.shape == (12, 1, 6, 6) and np.array_equal(par.x[:, 0], pixels)
    assert par.y.tolist() == (np.arange(12) % 3).tolist() and par.groups.tolist() == (np.arange(12) // 4).tolist()
    assert len(list((tmp_path / "c").glob("hf-*.npz"))) == 1

    pd.DataFrame({"f1": np.arange(8.0), "f2": np.arange(8.0) * 2, "kind": list("abcdabcd")}).to_csv(
        tmp_path / "t.csv", index=False)
    tab = load_source(DataSpec(source="hf", root=str(tmp_path / "t.csv"), label_column="kind", cache_dir=None))
    assert tab.x.shape == (8, 2) and tab.x[:, 1].tolist() == (np.arange(8.0) * 2).tolist()
    assert tab.class_names == ["a", "b", "c", "d"] and tab.y.tolist() == [0, 1, 2, 3] * 2

    import pyarrow as pa

    with pa.ipc.new_stream(str(tmp_path / "d.arrow"), pa.schema([("x1", pa.float32()), ("label", pa.int64())])) as w:
        w.write_table(pa.table({"x1": np.arange(6, dtype=np.float32), "label": np.arange(6) % 2}))
    arrow = load_source(DataSpec(source="hf", root=str(tmp_path / "d.arrow"), cache_dir=None))
    assert arrow.x[:, 0].tolist() == list(range(6)) and arrow.y.tolist() == [0, 1] * 3

    for i, a in enumerate(pixels):
        folder = tmp_path / "imgs" / ("cat" if i < 6 else "dog")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.stack([a] * 3, -1)).save(folder / f"{i}.png")
    img = load_source(DataSpec(source="hf", root=str(tmp_path / "imgs"), cache_dir=str(tmp_path / "c")))
    assert img.x.shape == (12, 3, 6, 6) and img.x.dtype == np.uint8
    assert img.class_names == ["cat", "dog"] and np.bincount(img.y).tolist() == [6, 6]
    with pytest.raises(ValueError, match=r"data.label_column='nope' is not a column; columns: f1, f2, kind"):
        load_source(DataSpec(source="hf", root=str(tmp_path / "t.csv"), label_column="nope", cache_dir=None))


def test_hf_hub_name_not_cached_fails_at_once(monkeypatch):
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=r"'nobody/no-such-set' is not in the local Hugging Face cache"):
        load_source(DataSpec(source="hf", name="nobody/no-such-set", split="train"))
    # without HF_HUB_OFFLINE an unreachable hub is detected and treated as offline, instead of retrying
    import partitions.sources.hf as sources

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(sources, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(FileNotFoundError, match="hub is offline"):
        load_source(DataSpec(source="hf", name="nobody/no-such-set"))
    assert time.perf_counter() - t0 < 20  # generous: what matters is no ~23 s retry loop per call


# ----- partitioners: invariants of every scheme on real data ---------------------------------------------
SCHEMES = {
    "iid": {},
    "dirichlet": {"alpha": 0.1},
    "pathological": {"classes_per_client": 2},
    "shards": {"shards_per_client": 2},
    "quantity": {"quantity_sigma": 1.0},
}


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_every_scheme_on_mnist_assigns_each_sample_once_and_is_deterministic(mnist, scheme):
    part = spec(scheme=scheme, num_clients=100, min_samples=20, **SCHEMES[scheme])
    fed = partition_data(mnist, part, seed=3)
    sizes = check_invariants(fed, part)
    assert sizes.sum() == fed.meta["assigned_samples"] == 60000  # these schemes deal every example
    again = partition_data(mnist, part, seed=3)
    assert same_partition(fed, again)
    assert not same_partition(fed, partition_data(mnist, part, seed=4))


def test_natural_femnist_one_client_per_writer(femnist):
    part = spec(scheme="natural", num_clients=300, min_samples=1)
    fed = partition_data(femnist, part, seed=0)
    sizes = check_invariants(fed, part)
    owner = fed.owner()
    assert (owner >= 0).all()
    # every client is exactly one writer, holding all of that writer's examples
    writer = np.asarray(fed.meta["client_groups"])
    assert np.array_equal(femnist.groups, writer[owner])
    assert np.array_equal(np.sort(sizes), np.sort(np.bincount(femnist.groups)))
    classes = (fed.label_counts() > 0).sum(1)
    assert 1 <= classes.min() and classes.max() <= 62 and np.median(classes) > 20  # natural non-IID, not pathological

    sub = spec(scheme="natural", num_clients=100, min_samples=100)
    fed100 = partition_data(femnist, sub, seed=0)
    check_invariants(fed100, sub)
    kept = np.asarray(fed100.meta["client_groups"])
    assert len(set(kept)) == 100 and (np.bincount(femnist.groups)[kept] >= 100).all()
    assert fed100.meta["assigned_samples"] == np.bincount(femnist.groups)[kept].sum()
    assert (fed100.owner() == -1).sum() == len(femnist.y) - fed100.meta["assigned_samples"]
    with pytest.raises(ValueError, match=r"num_clients=301 but the data set has only 300 groups"):
        partition_data(femnist, spec(scheme="natural", num_clients=301, min_samples=1), seed=0)
    with pytest.raises(ValueError, match=r"data.group_column"):
        partition_data(ArrayData(femnist.x, femnist.y, 62, (0.0,), (1.0,), "nogroups"),
                       spec(scheme="natural", num_clients=10), seed=0)


def test_iid_sizes_equal_and_labels_balanced(mnist):
    fed = partition_data(mnist, spec(scheme="iid", num_clients=64), seed=0)
    sizes = fed.label_counts().sum(1)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 60000
    assert imbalance_index(fed.label_counts()) < 0.1
    assert ((fed.label_counts() > 0).sum(1) == 10).all()


def test_dirichlet_fewer_classes_per_client_as_alpha_falls(mnist):
    classes, imbalance = [], []
    for alpha in (100.0, 1.0, 0.5, 0.1, 0.05, 0.01):
        fed = partition_data(mnist, spec(scheme="dirichlet", num_clients=100, alpha=alpha, min_samples=10), 0)
        counts = fed.label_counts()
        classes.append((counts > 0).sum(1).mean())
        imbalance.append(imbalance_index(counts))
    assert all(a > b for a, b in zip(classes, classes[1:], strict=False)), classes
    assert all(a < b for a, b in zip(imbalance, imbalance[1:], strict=False)), imbalance
    assert classes[0] == 10 and imbalance[0] < 0.05 and classes[-1] < 2.5 and imbalance[-1] > 0.7


def test_dirichlet_small_alpha_many_clients_meets_min_samples_without_hanging(mnist):
    """10,000 clients, alpha 0.01, min 6 on 60,000 samples: exactly N = K*min, so every client
    must end with exactly 6; a redraw loop would never get there."""
    part = spec(scheme="dirichlet", num_clients=10000, alpha=0.01, min_samples=6)
    fed = partition_data(mnist, part, seed=0)
    sizes = check_invariants(fed, part)
    assert (sizes == 6).all()
    # the repair keeps the skew: still few labels per client
    assert (fed.label_counts() > 0).sum(1).mean() < 3.5
    # with slack, most clients keep their raw Dirichlet draw and the rest sit at the minimum
    part = spec(scheme="dirichlet", num_clients=1000, alpha=0.1, min_samples=20)
    sizes = check_invariants(partition_data(mnist, part, seed=1), part)
    assert (sizes == 20).sum() > 100 and sizes.max() > 200 and sizes.sum() == 60000


def test_dirichlet_balance_rule_keeps_sizes_nearer_the_mean(mnist):
    """FL-bench/PFLlib's rule (clients above N/K get no later classes): smaller size spread at the
    same alpha, still label-skewed, same invariants."""
    for alpha in (0.1, 0.5):
        plain = spec(scheme="dirichlet", num_clients=100, alpha=alpha)
        balanced = spec(scheme="dirichlet", num_clients=100, alpha=alpha, dirichlet_balance=True)
        a = check_invariants(partition_data(mnist, plain, 0), plain)
        fed = partition_data(mnist, balanced, 0)
        b = check_invariants(fed, balanced)
        assert b.std() < 0.9 * a.std() and b.sum() == 60000
        assert imbalance_index(fed.label_counts()) > 0.4


def test_impossible_requests_fail_fast_with_the_numbers(mnist):
    small = mnist.subset(slice(0, 500))
    cases = [
        (spec(scheme="iid", num_clients=501, min_samples=1), r"num_clients=501 is more than the 500 samples"),
        (spec(scheme="dirichlet", num_clients=100, min_samples=6), r"100 x partition.min_samples=6 needs 600"),
        (spec(scheme="pathological", num_clients=10, classes_per_client=11), r"classes_per_client=11 exceeds the 10"),
        (spec(scheme="pathological", num_clients=250, classes_per_client=1, min_samples=2),
         r"smallest of 250 clients gets 1 samples < partition.min_samples=2"),
        (spec(scheme="shards", num_clients=100, shards_per_client=6, min_samples=1), r"600 shards but only 500"),
        (spec(scheme="quantity", num_clients=60, min_samples=10), r"needs 600 samples, the data set has 500"),
    ]
    for part, message in cases:
        t0 = time.perf_counter()
        with pytest.raises(ValueError, match=message):
            partition_data(small, part, seed=0)
        assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("assignment", ["cyclic", "random"])
def test_pathological_exactly_k_classes_per_client(mnist, assignment):
    for k in (1, 2, 3):
        part = spec(scheme="pathological", num_clients=50, classes_per_client=k, class_assignment=assignment)
        fed = partition_data(mnist, part, seed=0)
        check_invariants(fed, part)
        counts = fed.label_counts()
        assert ((counts > 0).sum(1) == k).all()
        holders = (counts > 0).sum(0)
        if assignment == "cyclic":
            assert (holders == 50 * k // 10).all()  # every class held equally often
        for c in range(10):  # a class is split evenly among its holders (sizes differ by at most one)
            shares = counts[counts[:, c] > 0, c]
            assert shares.max() - shares.min() <= 1 and shares.sum() == MNIST_TRAIN_COUNTS[c]


def test_shards_equal_sizes_and_few_labels(mnist):
    part = spec(scheme="shards", num_clients=100, shards_per_client=2)
    fed = partition_data(mnist, part, seed=0)
    sizes = check_invariants(fed, part)
    assert (sizes == 600).all()  # 200 shards of 300
    classes = (fed.label_counts() > 0).sum(1)
    assert classes.max() <= 4 and classes.mean() < 2.6


def test_quantity_skew_sizes_spread_with_sigma_and_labels_stay_iid(mnist):
    cvs = []
    for sigma in (0.25, 1.0, 2.0):
        part = spec(scheme="quantity", num_clients=100, quantity_sigma=sigma, min_samples=20)
        fed = partition_data(mnist, part, seed=0)
        sizes = check_invariants(fed, part)
        assert sizes.sum() == 60000
        cvs.append(sizes.std() / sizes.mean())
        big = fed.label_counts()[sizes >= 500]
        assert imbalance_index(big) < 0.1  # labels IID where clients are big enough to tell
    assert cvs[0] < cvs[1] < cvs[2]
    power = check_invariants(partition_data(mnist, spec(scheme="quantity", num_clients=100, min_samples=20,
                                                        quantity_distribution="powerlaw",
                                                        powerlaw_exponent=1.0), seed=0), spec(num_clients=100))
    assert power.max() > 10 * np.median(power)


# ----- local splits, unseen clients, feature shift -------------------------------------------------------
def test_local_split_ratios_per_client(mnist):
    part = spec(scheme="dirichlet", num_clients=200, alpha=0.3, min_samples=2, test_fraction=0.2, val_fraction=0.1)
    fed = partition_data(mnist, part, seed=0)
    check_invariants(fed, part)
    tr, va, te = fed.sizes("train"), fed.sizes("val"), fed.sizes("test")
    n = tr + va + te
    want_test, want_val = split_counts(n, 0.2, 0.1)
    assert np.array_equal(te, want_test) and np.array_equal(va, want_val)
    assert np.abs(te - 0.2 * n).max() <= 0.5 and (tr >= 1).all() and (te >= 1).all()
    for cid in (0, 57, 199):
        parts = [fed.split_of(cid, s) for s in ("train", "val", "test")]
        assert all(np.all(np.diff(p) > 0) for p in parts)  # sorted, no repeats
        assert len(np.unique(np.concatenate(parts))) == n[cid]
    assert set(partition_data(mnist, spec(num_clients=10), 0).index) == {"train", "test"}
    assert split_counts(np.array([2, 3, 1]), 0.01, 0.9)[0].tolist() == [1, 1, 0]


def test_unseen_clients_never_train_and_keep_their_data(mnist):
    part = spec(scheme="dirichlet", num_clients=50, alpha=0.5, unseen_fraction=0.2)
    fed = partition_data(mnist, part, seed=0)
    unseen = np.asarray(fed.meta["unseen_clients"])
    assert len(unseen) == 10 and len(fed.train_clients) == 40
    assert not np.isin(fed.train_clients, unseen).any()
    assert np.array_equal(np.union1d(fed.train_clients, unseen), np.arange(50))
    assert (fed.sizes("test")[unseen] > 0).all()  # evaluated on their own data
    assert np.array_equal(partition_data(mnist, part, seed=0).meta["unseen_clients"], unseen)
    assert not np.array_equal(partition_data(mnist, part, seed=1).meta["unseen_clients"], unseen)
    assert len(partition_data(mnist, spec(num_clients=50), 0).train_clients) == 50


def test_feature_shift_rotation_levels_are_exact_rotations(mnist):
    small = mnist.subset(slice(0, 2000))
    part = spec(scheme="iid", num_clients=20, feature_shift={"kind": "rotation", "max_degrees": 90, "levels": 2})
    fed = partition_data(small, part, seed=0)
    degrees = np.asarray(fed.meta["feature_shift"]["degrees"])
    assert sorted(np.unique(degrees)) == [0.0, 90.0] and (degrees == 90).sum() == 10
    assert fed.x.dtype == np.uint8 and fed.x.shape == small.x.shape
    owner = fed.owner()
    turned = degrees[owner] == 90
    assert np.array_equal(fed.x[~turned], small.x[~turned])
    assert np.array_equal(fed.x[turned], np.rot90(small.x[turned], k=1, axes=(2, 3)))  # counter-clockwise
    assert np.array_equal(partition_data(small, part, seed=0).x, fed.x)


def test_feature_shift_noise_has_the_clients_std(mnist):
    small = mnist.subset(slice(0, 3000))
    part = spec(scheme="iid", num_clients=10, feature_shift={"kind": "noise", "max_noise_std": 0.2})
    fed = partition_data(small, part, seed=0)
    noise = np.asarray(fed.meta["feature_shift"]["noise_std"])
    assert (noise > 0).all() and noise.max() <= 0.2
    owner = fed.owner()
    diff = fed.x.astype(np.float64) - small.x
    for cid in range(10):
        sel = owner == cid
        mid = (small.x[sel] > 60) & (small.x[sel] < 195)  # pixels that clipping cannot touch
        assert diff[sel][mid].std() / 255 == pytest.approx(noise[cid], rel=0.1, abs=0.003)
    both = partition_data(small, spec(scheme="iid", num_clients=10, feature_shift={"kind": "rotation+noise"}), 0)
    assert (np.asarray(both.meta["feature_shift"]["degrees"]) > 0).all()
    table = ArrayData(np.zeros((100, 4), np.float32), np.arange(100) % 2, 2, (0.0,) * 4, (1.0,) * 4, "tab")
    with pytest.raises(ValueError, match=r"rotation needs image data"):
        partition_data(table, spec(scheme="iid", num_clients=4, feature_shift={"kind": "rotation"}), 0)
    shifted = partition_data(table, spec(scheme="iid", num_clients=4, feature_shift={"kind": "noise"}), 0)
    assert shifted.x.dtype == np.float32 and shifted.x.std() > 0


# ----- cache ------------------------------------------------------------------------------------------
def test_partition_cache_reloads_identically_and_keys_on_params(mnist, tmp_path):
    mnist = mnist.subset(slice(0, 10000))
    part = spec(scheme="dirichlet", num_clients=300, alpha=0.1, unseen_fraction=0.1, cache_dir=str(tmp_path),
                feature_shift={"kind": "rotation", "max_degrees": 45})
    first = partition_data(mnist, part, seed=7)
    assert first.meta["cache"] == "miss" and len(list(tmp_path.glob("*.npz"))) == 1
    second = partition_data(mnist, part, seed=7)
    assert second.meta["cache"] == "hit"
    assert same_partition(first, second) and np.array_equal(first.x, second.x)
    assert {k: v for k, v in first.meta.items() if k != "cache"} == {k: v for k, v in second.meta.items()
                                                                     if k != "cache"}
    for changed in (part.model_copy(update={"alpha": 0.2}), part.model_copy(update={"num_clients": 299})):
        assert partition_data(mnist, changed, seed=7).meta["cache"] == "miss"
    assert partition_data(mnist, part, seed=8).meta["cache"] == "miss"
    assert partition_data(mnist.subset(slice(0, 9000)), part, seed=7).meta["cache"] == "miss"  # other data
    assert len(list(tmp_path.glob("*.npz"))) == 5 and len(list(tmp_path.glob("*.json"))) == 5
    entry = next(p for p in tmp_path.glob("*.npz") if first.meta["cache_key"] in p.name)
    entry.write_bytes(entry.read_bytes()[:100])  # truncated entry: recomputed, same result
    third = partition_data(mnist, part, seed=7)
    assert third.meta["cache"] == "miss" and same_partition(first, third)
    assert partition_data(mnist, spec(num_clients=10), seed=0).meta["cache"] == "off"


def test_build_federated_dataset_from_a_run_config_uses_the_cache(tmp_path):
    cfg = small_config(tmp_path)
    a = build_federated_dataset(cfg.data, cfg.partition, cfg.seed)
    b = build_federated_dataset(cfg.data, cfg.partition, cfg.seed)
    assert (a.meta["cache"], b.meta["cache"]) == ("miss", "hit") and same_partition(a, b)
    assert a.input_shape == (1, 8, 8) and a.num_clients == 10 and len(a.train_of(0)) > 0


# ----- statistics, pictures, CLI -------------------------------------------------------------------------
def test_summary_numbers_and_artifacts(mnist, tmp_path):
    part = spec(scheme="pathological", num_clients=40, classes_per_client=3, unseen_fraction=0.25)
    fed = partition_data(mnist, part, seed=0)
    s = partition_summary(fed)
    sizes = fed.label_counts().sum(1)
    assert s["clients"] == 40 and s["train_clients"] == 30 and s["samples"] == 60000
    assert (s["samples_min"], s["samples_max"], s["samples_median"]) == (sizes.min(), sizes.max(), np.median(sizes))
    assert s["classes_per_client_mean"] == 3 and s["classes_per_client_min"] == 3
    assert s["train_samples"] + s["test_samples"] == 60000 and s["samples_unassigned"] == 0
    assert 0.6 < s["imbalance_index"] < 0.75  # 3 of 10 roughly balanced labels: TV distance ~0.7
    paths = save_partition_artifacts(fed, tmp_path / "art")
    assert [p.name for p in paths] == ["partition_summary.csv", "partition_clients.csv", "partition_heatmap.png"]
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import pandas as pd

    clients = pd.read_csv(paths[1])
    assert len(clients) == 40 and clients["unseen"].sum() == 10 and (clients["classes"] == 3).all()


def test_partition_cli_prints_the_table_and_writes_the_heatmap(tmp_path, capsys):
    import yaml

    from harness.cli import main as fedharness

    spec_file = tmp_path / "run.yaml"
    spec_file.write_text(yaml.safe_dump({
        "seed": 1,
        "data": {"source": "arrays", "root": str(shared_data("femnist") / "femnist_300writers.npz"),
                 "group_column": "writer", "invert": True, "cache_dir": str(tmp_path / "data")},
        "partition": {"scheme": "natural", "num_clients": 50, "cache_dir": str(tmp_path / "cache")},
    }))
    out = tmp_path / "report"
    assert fedharness(["partition", str(spec_file), "partition.num_clients=40", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "natural, 40 clients, seed 1" in text
    for row in ("clients                  40", "samples_min", "samples_median", "samples_max",
                "classes_per_client_mean", "imbalance_index"):
        assert row in text
    assert (out / "partition_heatmap.png").stat().st_size > 10000
    summary = (out / "partition_summary.csv").read_text().splitlines()
    assert len(summary) == 2 and summary[0].startswith("dataset,scheme,clients")
    assert fedharness(["partition", str(spec_file), "partition.num_clients=400", "--out", str(out)]) == 2
    assert "num_clients=400 but the data set has only" in capsys.readouterr().err
    assert fedharness(["partition", str(spec_file), "partition.scheme=writers"]) == 2
    assert "partition.scheme" in capsys.readouterr().err


def test_registry_lists_every_scheme_of_the_spec():
    from typing import get_args

    assert set(PARTITIONERS) == set(get_args(PartitionSpec.model_fields["scheme"].annotation))


def test_failed_download_says_so_and_suggests_copying(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: Name or service not known")

    monkeypatch.setattr(tvd.MNIST, "download", offline)
    with pytest.raises(FileNotFoundError, match=r"mnist: download into data.root failed .*copy the files"):
        load_source(DataSpec(source="mnist", root=str(tmp_path), download=True, cache_dir=None))


def test_every_example_spec_in_the_docs_validates():
    import re
    from pathlib import Path

    import yaml

    text = (Path(__file__).resolve().parents[1] / "docs" / "partitions.md").read_text()
    snippets = re.findall(r"`((?:data|partition): \{[^`]*\})`", text)
    snippets += re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    assert len(snippets) >= 20
    def subset(given: dict, resolved: dict) -> bool:
        return all(subset(v, resolved[k]) if isinstance(v, dict) else resolved[k] == v for k, v in given.items())

    for snippet in snippets:
        tree = yaml.safe_load(snippet)
        assert subset(tree, load_config(tree).model_dump()), snippet
