"""Run-spec validation: every kind of bad input is one clear line, and the CLI exits non-zero
without a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.config import ConfigError, load_config

QUICKSTART = "runs/quickstart.yaml"


def test_quickstart_loads_and_overrides_apply():
    cfg = load_config(QUICKSTART, ["algorithm.name=local", "rounds=50", "seed=2", "partition.alpha=0.1"])
    assert (cfg.algorithm.name, cfg.rounds, cfg.seed, cfg.partition.alpha) == ("local", 50, 2, 0.1)


def test_algorithm_hyperparameters_are_validated_and_defaulted():
    cfg = load_config(QUICKSTART, ["algorithm.name=fedavg", "algorithm.finetune_epochs=2"])
    assert cfg.algorithm.params == {"finetune_epochs": 2}
    assert load_config(QUICKSTART).algorithm.params == {"finetune_epochs": 0}


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("rounds_typo=3", "unknown key 'rounds_typo'; allowed keys here:"),
        ("partition.alphaa=0.1", "unknown key 'partition.alphaa'"),
        ("rounds=many", "rounds: Input should be a valid integer"),
        ("partition.alpha=-1", "partition.alpha: Input should be greater than 0"),
        ("train.momentum=1.5", "train.momentum: Input should be less than 1"),
        ("partition.scheme=zipf", "partition.scheme: Input should be"),
        ("algorithm.name=fedmagic", "unknown algorithm 'fedmagic'; choose one of:"),
        ("algorithm.finetune_epochs=-1", "fedavg.finetune_epochs: Input should be greater than or equal to 0"),
        ("algorithm.bogus=1", "fedavg has no hyperparameter 'bogus'"),
        ("device=tpu", "device: Input should be 'auto', 'cpu' or 'cuda'"),
        ("budget.mode=deadline", "budget.mode=deadline needs budget.deadline_s"),
    ],
)
def test_bad_values_name_field_value_and_choices(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(QUICKSTART, [override])
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


def test_unknown_key_lists_allowed_keys():
    with pytest.raises(ConfigError) as err:
        load_config(QUICKSTART, ["train.epochs=3"])
    assert "local_epochs" in str(err.value) and "batch_size" in str(err.value)


def test_malformed_override_and_missing_file():
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        load_config(QUICKSTART, ["rounds"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("runs/nope.yaml")


def test_config_hash_ignores_where_it_runs_but_not_what_it_is():
    a = load_config(QUICKSTART)
    assert a.config_hash() == load_config(QUICKSTART, ["workers.num_workers=1", "tracking.uri=sqlite:///x.db"]).config_hash()
    assert a.config_hash() != load_config(QUICKSTART, ["seed=1"]).config_hash()


@pytest.mark.parametrize("override", ["rounds=-3", "algorithm.name=nope", "partition.nope=1"])
def test_cli_exits_nonzero_with_one_line_and_no_traceback(override):
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "validate", QUICKSTART, override],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fedharness: config error:")
    assert "Traceback" not in proc.stderr


def test_per_algorithm_blocks_survive_switching_the_algorithm():
    tree = {"algorithm": {"name": "fedavg", "fedavg": {"finetune_epochs": 3}, "local": {}}}
    cfg = load_config(tree)
    assert cfg.algorithm.params == {"finetune_epochs": 3}
    assert cfg.flat()["algorithm.finetune_epochs"] == 3
    assert load_config(tree, ["algorithm.name=local"]).algorithm.params == {}
    assert load_config(tree, ["algorithm.finetune_epochs=1"]).algorithm.params == {"finetune_epochs": 1}
    with pytest.raises(ConfigError, match="fedavg has no hyperparameter 'nope'"):
        load_config({"algorithm": {"name": "local", "fedavg": {"nope": 1}}})
