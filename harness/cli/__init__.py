"""The entry points: `fedharness` (main.py) and its sub-commands run, resume, validate, algorithms (here),
partition (partition.py), study (harness.studies.cli), leaderboard (harness.reports.cli), ui (ui.py)."""

from harness.cli.main import main

__all__ = ["main"]
