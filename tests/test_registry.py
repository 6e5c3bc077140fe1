"""The algorithm registry: lookup by name, clear errors, duplicate protection, CLI listing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from algorithms import registry
from algorithms.base import Algorithm


def test_builtin_algorithms_are_registered():
    names = registry.names()
    assert {"fedavg", "local"} <= set(names)
    assert names == sorted(names)
    for name in names:
        cls = registry.get(name)
        assert issubclass(cls, Algorithm) and cls.name == name
        assert cls.__doc__, f"{name} needs a docstring (its first line is shown by `fedharness algorithms`)"


def test_unknown_name_lists_the_choices():
    with pytest.raises(KeyError, match="unknown algorithm 'nope'; choose one of: .*fedavg"):
        registry.get("nope")


def test_duplicate_or_empty_names_are_refused():
    class Again(Algorithm):
        name = "fedavg"

    class Nameless(Algorithm):
        name = ""

    for cls in (Again, Nameless):
        with pytest.raises(ValueError, match="empty or already registered"):
            registry.register(cls)
    assert registry.get("fedavg") is not Again


def test_cli_lists_every_algorithm_with_defaults():
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "algorithms"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0
    for name in registry.names():
        assert f"\n{name}  —" in "\n" + proc.stdout
    assert "finetune_epochs = 0" in proc.stdout


def test_cli_markdown_table_has_one_row_per_algorithm():
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "algorithms", "--markdown"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("| algorithm |") and len(lines) == 2 + len(registry.names())
    rows = {line.split("|")[1].strip(" `"): line for line in lines[2:]}
    assert set(rows) == set(registry.names())
    assert "`finetune_epochs=0`" in rows["fedavg"] and rows["fedavg"].rstrip(" |").endswith("yes")
    assert rows["fedper"].rstrip(" |").endswith("no") and rows["local"].rstrip(" |").endswith("no")
    assert all(line.count(" | ") == 4 for line in lines[2:])  # no cell broke the table
