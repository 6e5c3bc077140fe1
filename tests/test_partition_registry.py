"""The scheme and source registries: what a spec may name, how scheme keys are validated, and a
user's own scheme and source used end to end through partitions.build_federated_dataset."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
from pydantic import Field, ValidationError

import partitions
from harness.config import ConfigError, load_config
from partitions import build_federated_dataset, scheme_label
from partitions.federated import ArrayData
from partitions.schemes import BUILTIN, SCHEMES, Deal, scheme, unregister
from partitions.sources import SOURCES, make_data, source
from partitions.sources import unregister as unregister_source
from partitions.spec import PRE_REGISTRY_KEYS, DataSpec, PartitionSpec, with_scheme
from protocol.specs import Strict


def one_line_error(tree: dict) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(tree)
    assert "\n" not in str(err.value)
    return str(err.value)


# ----- validation of partition.scheme and of the scheme's keys ---------------------------------------
def test_unknown_scheme_names_the_registered_ones():
    message = one_line_error({"partition": {"scheme": "zipf"}})
    assert message == ("partition.scheme: Input should be a registered partition scheme: 'iid', 'dirichlet', "
                       "'pathological', 'shards', 'quantity', 'natural', 'inner_dirichlet', 'iid_dirichlet_mix', "
                       "'label_quantity' or 'flbench_dirichlet' (got \"zipf\")")


def test_unknown_key_names_the_key_the_scheme_and_its_keys():
    message = one_line_error({"partition": {"scheme": "quantity", "sigma": 2.0}})
    assert "unknown key 'partition.sigma'; allowed keys here: powerlaw_exponent, quantity_distribution, " \
           "quantity_sigma (scheme quantity) and the common keys cache_dir, feature_shift, min_samples" in message


def test_a_key_of_another_scheme_is_an_error_unless_it_is_at_its_default():
    message = one_line_error({"partition": {"scheme": "dirichlet", "classes_per_client": 3}})
    assert "key 'partition.classes_per_client' belongs to scheme pathological, label_quantity, not dirichlet" in message
    assert "allowed keys here: alpha, dirichlet_balance (scheme dirichlet)" in message
    message = one_line_error({"partition": {"scheme": "iid", "alpha": 0.1}})
    assert ("'partition.alpha' belongs to scheme dirichlet, inner_dirichlet, iid_dirichlet_mix, flbench_dirichlet, "
            "not iid") in message
    assert "scheme iid has no keys of its own" in message
    # at its default it carries no meaning: accepted and dropped (a study cell partition.scheme=iid over a
    # Dirichlet base with alpha 0.5, or a config saved before the registry, which lists every key)
    cfg = load_config({"partition": {"scheme": "iid", "alpha": 0.5, "class_assignment": "cyclic"}})
    assert "alpha" not in cfg.partition.model_dump() and cfg.partition.params.model_dump() == {}


def test_switching_the_scheme_of_a_raw_block_drops_only_other_schemes_keys():
    block = {"scheme": "dirichlet", "num_clients": 10, "alpha": 0.1, "dirichlet_balance": True, "alfa": 1}
    assert with_scheme(block, "iid") == {"scheme": "iid", "num_clients": 10, "alfa": 1}  # the typo stays an error
    assert with_scheme({**block, "shards_per_client": 3}, "dirichlet") == {**block}
    assert PartitionSpec(**with_scheme({"alpha": 0.3, "classes_per_client": 3}, "pathological")).classes_per_client == 3
    assert with_scheme(block, "zipf")["scheme"] == "zipf"  # left for validation to report


def test_scheme_keys_are_validated_defaulted_and_read_as_attributes():
    message = one_line_error({"partition": {"scheme": "shards", "shards_per_client": 0}})
    assert message.startswith("partition.shards_per_client: Input should be greater than or equal to 1 (got 0)")
    part = load_config({"partition": {"scheme": "pathological", "class_assignment": "random"}}).partition
    assert (part.classes_per_client, part.class_assignment) == (2, "random")
    assert part.params.model_dump() == {"classes_per_client": 2, "class_assignment": "random"}
    assert part.model_dump()["classes_per_client"] == 2  # flat, as in the YAML (MLflow params, config dumps)
    part.classes_per_client = 4  # assignments are validated like the rest of the config
    assert part.params.classes_per_client == 4
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        part.classes_per_client = 0
    assert part.classes_per_client == 4  # a rejected value is not kept
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        PartitionSpec(scheme="pathological", classes_per_client=0)
    with pytest.raises(AttributeError):
        _ = PartitionSpec(scheme="iid").alpha


PRE_REGISTRY = ("iid", "dirichlet", "pathological", "shards", "quantity", "natural")  # the schemes before the registry


def test_builtin_scheme_keys_are_the_pre_registry_fields():
    """Same names and defaults as the old PartitionSpec fields; the identity dump is the old layout."""
    defaults = {k: v for name in PRE_REGISTRY for k, v in SCHEMES[name].Params().model_dump(mode="json").items()}
    assert defaults == PRE_REGISTRY_KEYS
    old_dump = {"scheme": "quantity", "num_clients": 20, "alpha": 0.5, "min_samples": 10, "dirichlet_balance": False,
                "classes_per_client": 2, "class_assignment": "cyclic", "shards_per_client": 2,
                "quantity_distribution": "powerlaw", "quantity_sigma": 1.0, "powerlaw_exponent": 1.2,
                "feature_shift": {"kind": "none", "max_degrees": 90.0, "max_noise_std": 0.3, "levels": None},
                "unseen_fraction": 0.0, "test_fraction": 0.25, "val_fraction": 0.0, "cache_dir": None}
    part = PartitionSpec(**old_dump)  # a config saved before the registry still loads ...
    assert part.model_dump(exclude={"scheme", "num_clients", "min_samples", "feature_shift", "unseen_fraction",
                                    "test_fraction", "val_fraction", "cache_dir", "virtual_clients"}) == {
        "quantity_distribution": "powerlaw", "quantity_sigma": 1.0, "powerlaw_exponent": 1.2}
    assert part.identity_dump() == old_dump  # ... and keeps its identity (cache key, config hash)


def test_labels_come_from_the_schemes():
    labels = {name: scheme_label(PartitionSpec(scheme=name)) for name in BUILTIN}
    assert labels == {"iid": "iid", "dirichlet": "dirichlet(alpha=0.5)", "pathological": "pathological(k=2)",
                      "shards": "shards(shards=2)", "quantity": "quantity(lognormal)", "natural": "natural",
                      "inner_dirichlet": "inner_dirichlet(alpha=0.5)",
                      "iid_dirichlet_mix": "iid_dirichlet_mix(iid=0.5,alpha=0.5)",
                      "label_quantity": "label_quantity(k=2,lognormal)",
                      "flbench_dirichlet": "flbench_dirichlet(alpha=0.5,seed=42)"}
    assert scheme_label(PartitionSpec(scheme="dirichlet", alpha=0.1)) == "dirichlet(alpha=0.1)"


# ----- a user's own scheme and source, end to end ------------------------------------------------------
class RoundRobinParams(Strict):
    offset: int = Field(0, ge=0, description="round-robin: client of example 0")


def round_robin(y: np.ndarray, spec: PartitionSpec, params: RoundRobinParams, gen: np.random.Generator,
                groups: np.ndarray | None = None) -> Deal:
    owner = (np.arange(len(y)) + params.offset) % spec.num_clients
    return Deal(owner, {"first_client": int(owner[0])})


def blobs(spec: DataSpec) -> ArrayData:
    n = 120 if spec.split == "train" else 150
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    return make_data(x, np.arange(n) % 4, "blobs", class_names=["a", "b", "c", "d"])


@pytest.fixture
def user_modules():
    """Register the user's scheme and source as a user's module would, and forget them afterwards."""
    scheme("round-robin", RoundRobinParams, label=lambda p: f"offset={p.offset}")(round_robin)
    source("blobs", splits=("train", "test"))(blobs)
    yield
    unregister("round-robin")
    unregister_source("blobs")


def test_user_scheme_and_source_end_to_end(user_modules, tmp_path):
    assert "round-robin" in get_args(PartitionSpec.model_fields["scheme"].annotation)
    cfg = load_config({"data": {"source": "blobs", "split": "train"},
                       "partition": {"scheme": "round-robin", "num_clients": 6, "offset": 2, "min_samples": 5,
                                     "cache_dir": str(tmp_path)}})
    first = build_federated_dataset(cfg.data, cfg.partition, seed=0)
    second = partitions.build_federated_dataset(cfg.data, cfg.partition, seed=0)
    assert (first.meta["cache"], second.meta["cache"]) == ("miss", "hit")
    for fed in (first, second):
        assert fed.name == "blobs" and len(fed.y) == 120 and fed.input_shape == (3,)
        assert np.array_equal(fed.owner(), (np.arange(120) + 2) % 6)
        assert fed.meta["first_client"] == 2 and fed.meta["scheme"] == "round-robin"
    assert scheme_label(cfg.partition) == "round-robin(offset=2)"
    assert "offset" in one_line_error({"partition": {"scheme": "round-robin", "offset": -1}})
    assert "'partition.offset' belongs to scheme round-robin, not dirichlet" in one_line_error(
        {"partition": {"offset": 3}})
    assert "data.split='extra' is not a split of blobs" in one_line_error({"data": {"source": "blobs",
                                                                                    "split": "extra"}})


def test_unregistered_entries_are_unknown_again():
    scheme("round-robin", RoundRobinParams)(round_robin)
    source("blobs")(blobs)
    unregister("round-robin")
    unregister_source("blobs")
    assert "round-robin" not in SCHEMES and "blobs" not in SOURCES
    assert "round-robin" not in get_args(PartitionSpec.model_fields["scheme"].annotation)
    assert "unknown data source 'blobs'" in one_line_error({"data": {"source": "blobs"}})


def test_bad_registrations_and_bad_owner_vectors_are_refused(tmp_path):
    class Clash(Strict):
        num_clients: int = 3

    with pytest.raises(ValueError, match="num_clients clash with the common partition keys"):
        scheme("clash", Clash)(round_robin)
    assert "clash" not in SCHEMES and "clash" not in get_args(PartitionSpec.model_fields["scheme"].annotation)
    with pytest.raises(ValueError, match="'iid' is empty or already registered"):
        scheme("iid")(round_robin)
    with pytest.raises(ValueError, match="'digits' is empty or already registered"):
        source("digits")(blobs)

    scheme("broken")(lambda y, spec, params, gen, groups=None: np.full(len(y), spec.num_clients))
    try:
        with pytest.raises(ValueError, match=r"scheme broken: .* values in -1\.\.3"):
            build_federated_dataset(DataSpec(), PartitionSpec(scheme="broken", num_clients=4, cache_dir=None), 0)
    finally:
        unregister("broken")


def test_the_docs_examples_run_end_to_end(tmp_path):
    """The scheme and the source of docs/partitions.md, exactly as printed there (and in the README)."""
    import pandas as pd

    text = (Path(__file__).resolve().parents[1] / "docs" / "partitions.md").read_text()
    section = text.split("## Adding a scheme or a data source")[1].split("\n## ")[0]
    scheme_code, source_code = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    for split, n in (("train", 40), ("test", 20)):
        pixels = np.arange(n * 16).reshape(n, 16) % 256
        table = pd.DataFrame(pixels, columns=[f"p{i}" for i in range(16)])
        table.insert(0, "label", np.arange(n) % 4)
        table.to_csv(tmp_path / f"{split}.csv", index=False)
    try:
        exec(compile(scheme_code, "my_schemes.py", "exec"), {"__name__": "my_schemes"})
        exec(compile(source_code, "my_sources.py", "exec"), {"__name__": "my_sources"})
        cfg = load_config({"data": {"source": "pixels-csv", "root": str(tmp_path), "split": "train"},
                           "partition": {"scheme": "sorted", "num_clients": 4, "descending": True, "min_samples": 5,
                                         "cache_dir": None}})
        fed = build_federated_dataset(cfg.data, cfg.partition, seed=0)
        assert fed.input_shape == (1, 4, 4) and len(fed.y) == 40 and fed.x.dtype == np.uint8
        assert fed.meta["first_label"] == [3, 2, 1, 0]  # descending: client 0 holds the highest class
        assert (fed.label_counts() > 0).sum(1).tolist() == [1, 1, 1, 1]
        assert scheme_label(cfg.partition) == "sorted(desc)"
        pooled = load_config({"data": {"source": "pixels-csv", "root": str(tmp_path)}}).data
        assert len(partitions.load_source(pooled).y) == 60
    finally:
        unregister("sorted")
        unregister_source("pixels-csv")


def test_partitions_imports_nothing_of_harness_or_algorithms():
    """The layering: partitions/ sits on protocol/ only (its CLI, which reads a whole run spec, is harness.cli)."""
    import subprocess
    import sys

    code = ("import sys, pkgutil, importlib, partitions\n"
            "for m in pkgutil.walk_packages(partitions.__path__, 'partitions.'):\n"
            "    importlib.import_module(m.name)\n"
            "print(sorted({n.split('.')[0] for n in sys.modules} & {'harness', 'algorithms'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"
