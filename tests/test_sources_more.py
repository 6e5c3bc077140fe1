"""The LEAF-family and image-folder sources: synthetic (FedProx's generative model), femnist (shared copy and
LEAF json), shakespeare and sent140 (LEAF json), cinic10, tinyimagenet, celeba, medmnist: tiny files written
here, read through the same code as the real ones; a missing file fails in one line naming it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from partitions import DataSpec, PartitionSpec, load_source, partition_data
from partitions.sources.leaf import LEAF_LETTERS, SENT140_VOCAB, synthetic_options
from protocol.rng import rng
from tests.conftest import shared_data, small_config


def load(**kw):
    kw.setdefault("cache_dir", None)
    return load_source(DataSpec(**kw))


# ----- synthetic -------------------------------------------------------------------------------------
def test_synthetic_is_deterministic_and_its_devices_are_the_groups():
    a = load(source="synthetic")
    assert a.name == "synthetic(1,1)" and a.x.shape[1] == 60 and a.num_classes == 10 and a.x.dtype == np.float32
    assert np.array_equal(a.x, load(source="synthetic").x) and np.array_equal(a.y, load(source="synthetic").y)
    # device sizes: the stream's first draw, lognormal(4, 2) cast to int, + 50 (FedProx's generator)
    sizes = rng(0, "synthetic").lognormal(4.0, 2.0, 30).astype(np.int64) + 50
    assert np.array_equal(np.bincount(a.groups), sizes)
    assert np.array_equal(a.groups, np.repeat(np.arange(30), sizes))  # device by device
    other = load(source="synthetic", name="seed=1")
    assert len(other.y) != len(a.y) or not np.array_equal(other.x, a.x)
    assert (a.mean, a.std) == ((0.0,) * 60, (1.0,) * 60)  # raw inputs, as FedProx trains on them


def test_synthetic_follows_the_generative_model():
    """Sigma_jj = j^-1.2 within a device; beta = the variance of B_k, the devices' input offsets."""
    d = load(source="synthetic", name="alpha=0,beta=4,devices=300,seed=3")
    within = np.concatenate([d.x[d.groups == k] - d.x[d.groups == k].mean(0) for k in range(300)])
    j = np.arange(1, 61)
    assert np.allclose(within.var(0), j ** -1.2, rtol=0.1)
    offsets = np.array([d.x[d.groups == k].mean() for k in range(300)])  # ~ B_k + mean of 60 N(0, 1)
    assert abs(offsets.var() - (4 + 1 / 60)) < 0.8
    flat = load(source="synthetic", name="alpha=0,beta=0,devices=300,seed=3")
    assert np.array([flat.x[flat.groups == k].mean() for k in range(300)]).var() < 0.1
    # alpha: devices' models differ, so their label mixes differ; iid: one model for all
    mix = lambda data: np.array([np.bincount(data.y[data.groups == k], minlength=10) / (data.groups == k).sum()  # noqa: E731
                                 for k in range(data.groups.max() + 1)])
    skewed = load(source="synthetic", name="alpha=1,beta=1,devices=100")
    iid = load(source="synthetic", name="iid,devices=100")
    assert iid.name == "synthetic-iid"
    assert mix(skewed).std(0).mean() > 2 * mix(iid).std(0).mean()


def test_synthetic_natural_partition_is_one_client_per_device():
    d = load(source="synthetic")
    fed = partition_data(d, PartitionSpec(scheme="natural", num_clients=30, min_samples=1, cache_dir=None), 0)
    assert np.array_equal(np.asarray(fed.meta["client_groups"])[fed.owner()], d.groups)


@pytest.mark.parametrize("name", ["alpha=x", "gamma=1", "devices=0", "alpha=-1"])
def test_synthetic_bad_options_fail_in_one_line(name):
    with pytest.raises(ValueError) as err:
        synthetic_options(name)
    assert "synthetic" in str(err.value) and "\n" not in str(err.value)


# ----- femnist -----------------------------------------------------------------------------------------
def test_femnist_on_the_shared_copy_equals_arrays_with_invert():
    root = shared_data("femnist")
    f = load(source="femnist", root=str(root))
    a = load(source="arrays", root=str(root / "femnist_300writers.npz"), group_column="writer", invert=True)
    assert np.array_equal(f.x, a.x) and np.array_equal(f.y, a.y) and np.array_equal(f.groups, a.groups)
    assert f.num_classes == 62 and f.class_names[10] == "A" and np.allclose(f.mean, a.mean)
    fed = partition_data(f, PartitionSpec(scheme="natural", num_clients=300, min_samples=1, cache_dir=None), 0)
    assert np.array_equal(np.asarray(fed.meta["client_groups"])[fed.owner()], f.groups)


def leaf_json(path, users: dict[str, tuple[list, list]]):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"users": list(users), "num_samples": [len(v[1]) for v in users.values()],
                                "user_data": {u: {"x": x, "y": y} for u, (x, y) in users.items()}}))


def test_femnist_reads_leaf_json(tmp_path):
    img = np.ones((28, 28))
    img[5, 7] = 0.0  # one black (ink) pixel on LEAF's white background
    pixels = img.ravel().tolist()
    leaf_json(tmp_path / "train" / "a.json", {"w2": ([pixels] * 2, [3, 61]), "w1": ([pixels], [0])})
    leaf_json(tmp_path / "test" / "a.json", {"w1": ([pixels], [0])})
    d = load(source="femnist", root=str(tmp_path))
    assert d.x.shape == (4, 1, 28, 28) and d.x[0, 0, 5, 7] == 255 and d.x[0, 0, 0, 0] == 0  # ink = 255
    assert d.y.tolist() == [3, 61, 0, 0] and d.groups.tolist() == [1, 1, 0, 0]  # w1 < w2: one group in both splits
    assert load(source="femnist", root=str(tmp_path), split="test").y.tolist() == [0]


def test_femnist_missing_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load(source="femnist", root=str(tmp_path))
    assert "femnist_300writers.npz" in str(err.value) and "train/*.json" in str(err.value)


# ----- shakespeare and sent140 -------------------------------------------------------------------------
def shakespeare_files(root):
    line = "To be, or not to be: that is the question. Whether 'tis nobler in the mind to su"
    assert len(line) == 80
    leaf_json(root / "train" / "s.json", {"HAMLET": ([line, line[1:] + "f"], ["f", "e"]),
                                          "OPHELIA": ([line[::-1]], ["T"])})
    leaf_json(root / "test" / "s.json", {"HAMLET": ([line], ["f"])})
    return line


def test_shakespeare_is_next_character_prediction_on_leaf_indices(tmp_path):
    line = shakespeare_files(tmp_path)
    d = load(source="shakespeare", root=str(tmp_path))
    assert d.x.shape == (4, 80) and d.x.dtype == np.int16 and d.num_classes == 80
    assert d.x[0].tolist() == [LEAF_LETTERS.index(c) for c in line]
    assert d.y.tolist() == [58, 57, 44, 58]  # f e T f: LEAF's order has A-Z at 25-50, a-z at 53-78
    assert d.groups.tolist() == [0, 0, 1, 0]  # HAMLET, HAMLET, OPHELIA, HAMLET (test)
    assert (d.mean, d.std) == ((0.0,), (1.0,))  # token ids reach the model unchanged


def test_shakespeare_refuses_characters_outside_leafs_alphabet_and_missing_files(tmp_path):
    leaf_json(tmp_path / "train" / "s.json", {"A": (["#" * 80], ["a"])})
    with pytest.raises(ValueError, match=r"outside LEAF's 80-character alphabet: \['#'\]"):
        load(source="shakespeare", root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no LEAF json under"):
        load(source="shakespeare", root=str(tmp_path / "nothing"))


def test_sent140_word_ids_by_frequency_padded_with_the_unknown_id(tmp_path):
    row = lambda text: ["1", "Mon Apr 06", "NO_QUERY", "user", text]  # noqa: E731
    leaf_json(tmp_path / "train" / "t.json", {"bob": ([row("good good day!"), row("bad day")], [1, 0]),
                                              "amy": ([row("good")], [1])})
    leaf_json(tmp_path / "test" / "t.json", {"amy": ([row("day, good")], [1])})
    d = load(source="sent140", root=str(tmp_path))
    # frequencies: good 4, day 3, ! 1, , 1, bad 1 -> ids good 0, day 1, then ties alphabetical: ! 2, , 3, bad 4
    assert d.x.shape == (4, 25) and d.x.dtype == np.int32 and d.num_classes == 2
    assert d.x[0, :4].tolist() == [0, 0, 1, 2] and (d.x[0, 4:] == SENT140_VOCAB).all()
    assert d.x[1, :2].tolist() == [4, 1] and d.x[3, :3].tolist() == [1, 3, 0]
    assert d.y.tolist() == [1, 0, 1, 1] and d.groups.tolist() == [1, 1, 0, 0]  # amy 0, bob 1


# ----- image folders and archives -----------------------------------------------------------------------
def png(path, color, size=(32, 32), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_cinic10_reads_the_imagefolder_layout(tmp_path):
    for split in ("train", "valid", "test"):
        for cls, color in (("airplane", (255, 0, 0)), ("bird", (0, 0, 255))):
            png(tmp_path / split / cls / f"{split}-1.png", color)
    d = load(source="cinic10", root=str(tmp_path))
    assert d.x.shape == (4, 3, 32, 32) and d.x.dtype == np.uint8 and d.class_names == ["airplane", "bird"]
    assert d.y.tolist() == [0, 1, 0, 1] and d.x[1, 2, 0, 0] == 255 and d.x[1, 0, 0, 0] == 0  # bird is blue
    assert len(load(source="cinic10", root=str(tmp_path), split="valid").y) == 2
    with pytest.raises(FileNotFoundError) as err:
        load(source="cinic10", root=str(tmp_path / "none"))
    assert "missing: train/, test/" in str(err.value) and "CINIC-10.tar.gz" in str(err.value)


def test_tinyimagenet_reads_train_and_val_annotations(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    root.mkdir()
    (root / "wnids.txt").write_text("n02\nn01\n")
    (root / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\tshark\n")
    png(root / "train" / "n01" / "images" / "n01_0.JPEG", (10, 20, 30), (64, 64))
    png(root / "train" / "n02" / "images" / "n02_0.JPEG", 128, (64, 64), mode="L")  # grey ones exist: made RGB
    png(root / "val" / "images" / "val_0.JPEG", (0, 0, 0), (64, 64))
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t0\t10\t10\n")
    d = load(source="tinyimagenet", root=str(tmp_path))
    assert d.x.shape == (3, 3, 64, 64) and d.y.tolist() == [0, 1, 1] and d.class_names == ["goldfish", "shark"]
    assert abs(int(d.x[1, 0, 3, 3]) - 128) <= 2 and d.x[1, 0, 3, 3] == d.x[1, 2, 3, 3]
    with pytest.raises(FileNotFoundError, match="missing: wnids.txt, train/, val/images/"):
        load(source="tinyimagenet", root=str(tmp_path / "none"))


def test_celeba_smiling_by_identity_through_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    base = tmp_path / "celeba"
    names = [f"00000{i}.jpg" for i in range(1, 5)]
    for i, n in enumerate(names):
        png(base / "img_align_celeba" / n, (60 * i, 0, 0), (178, 218))
    attrs = ["5_o_Clock_Shadow", "Smiling"]
    (base / "list_attr_celeba.txt").write_text(f"4\n{' '.join(attrs)}\n" + "".join(
        f"{n} -1 {s}\n" for n, s in zip(names, (1, -1, 1, 1), strict=True)))
    rows = lambda values: "".join(f"{n} {v}\n" for n, v in zip(names, values, strict=True))  # noqa: E731
    (base / "identity_CelebA.txt").write_text(rows((7, 7, 9, 3)))
    (base / "list_eval_partition.txt").write_text(rows((0, 0, 1, 2)))
    (base / "list_bbox_celeba.txt").write_text("4\nimage_id x_1 y_1 width height\n" + rows(["1 2 3 4"] * 4))
    (base / "list_landmarks_align_celeba.txt").write_text(
        "4\nlefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y\n"
        + "".join(f"{n} {' '.join(['1'] * 10)}\n" for n in names))
    monkeypatch.setattr(tvd.CelebA, "_check_integrity", lambda self: True)  # these are not the original files
    d = load(source="celeba", root=str(tmp_path))
    assert d.x.shape == (4, 3, 84, 84) and d.y.tolist() == [1, 0, 1, 1] and d.groups.tolist() == [7, 7, 9, 3]
    assert d.class_names == ["not smiling", "smiling"] and d.x[2, 0, 40, 40] == 120
    assert load(source="celeba", root=str(tmp_path), split="train").y.tolist() == [1, 0]
    fed = partition_data(d, PartitionSpec(scheme="natural", num_clients=3, min_samples=1, test_fraction=0.5,
                                          cache_dir=None), 0)
    assert sorted(fed.meta["client_groups"]) == [3, 7, 9]
    with pytest.raises(FileNotFoundError, match="missing in celeba/: img_align_celeba/, list_attr_celeba.txt"):
        load(source="celeba", root=str(tmp_path / "none"))


def test_medmnist_reads_the_official_npz_without_pickle(tmp_path):
    gen = np.random.default_rng(0)
    arrays = {f"{s}_images": gen.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8) for s, n in
              (("train", 6), ("val", 2), ("test", 3))}
    arrays.update({f"{s}_labels": (np.arange(n) % 3).reshape(-1, 1).astype(np.uint8) for s, n in
                   (("train", 6), ("val", 2), ("test", 3))})
    np.savez(tmp_path / "pathmnist.npz", **arrays)
    d = load(source="medmnist", root=str(tmp_path))
    assert d.name == "medmnist-pathmnist" and d.x.shape == (9, 3, 28, 28)
    assert d.y.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2]
    assert np.array_equal(d.x[0], arrays["train_images"][0].transpose(2, 0, 1))
    assert len(load(source="medmnist", root=str(tmp_path / "pathmnist.npz"), split="val").y) == 2
    np.savez(tmp_path / "chestmnist.npz", **{**arrays, "train_labels": np.zeros((6, 14), np.uint8)})
    with pytest.raises(ValueError, match="multi-label"):
        load(source="medmnist", root=str(tmp_path), name="chestmnist")
    np.savez(tmp_path / "evil.npz", **{**arrays, "train_labels": np.array([object()] * 6, dtype=object)})
    with pytest.raises(ValueError, match="allow_pickle"):
        load(source="medmnist", root=str(tmp_path / "evil.npz"))
    with pytest.raises(FileNotFoundError) as err:
        load(source="medmnist", root=str(tmp_path), name="dermamnist")
    assert "dermamnist.npz" in str(err.value) and "zenodo" in str(err.value) and "\n" not in str(err.value)


# ----- end to end --------------------------------------------------------------------------------------
def test_two_rounds_of_logreg_on_synthetic_natural(tmp_path):
    from harness.engine import run

    cfg = small_config(tmp_path, "rounds=2", data={"source": "synthetic", "cache_dir": None},
                       partition={"scheme": "natural", "num_clients": 30, "min_samples": 10, "cache_dir": None},
                       model={"name": "logreg"}, train={"local_epochs": 1, "batch_size": 10, "lr": 0.01})
    result = run(cfg, progress=False)
    assert [h["round"] for h in result.history] == [1, 2] and result.history[-1]["personal_acc"] > 0.2


@pytest.mark.slow  # ~16 s on the shared 2-core machine (an LSTM's first CPU steps)
def test_two_rounds_of_char_lstm_on_tiny_shakespeare(tmp_path):
    from harness.engine import run

    shakespeare_files(tmp_path / "shk")
    cfg = small_config(tmp_path, "rounds=2", "join_ratio=1.0",
                       data={"source": "shakespeare", "root": str(tmp_path / "shk"), "cache_dir": None},
                       partition={"scheme": "natural", "num_clients": 2, "min_samples": 1, "cache_dir": None,
                                  "test_fraction": 0.3},
                       model={"name": "char_lstm", "options": {"hidden": 16}}, train={"local_epochs": 1,
                                                                                     "batch_size": 2, "lr": 0.5})
    result = run(cfg, progress=False)
    assert [h["round"] for h in result.history] == [1, 2] and np.isfinite(result.history[-1]["personal_loss"])
