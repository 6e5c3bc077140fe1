"""Listeners of a run: what watches the rounds without being the engine.

The engine calls every listener at the start of a run, after each round (before the round's
checkpoint, so that whatever a listener records of the round is redone by a resume that replays it),
after each checkpoint, and at the end. The MLflow tracker (harness.tracking.MlflowListener), the progress bar,
the per-client log and a benchmark's timers are listeners: nothing subclasses or patches the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from harness.config import RunConfig
    from harness.engine.run import RunResult
    from partitions.federated import FederatedDataset

CLIENT_LOG_COLUMNS = ["round", "client", "steps", "samples_processed", "sim_seconds", "bytes_down", "bytes_up",
                      "outcome"]


@dataclass(frozen=True)
class RunStart:
    run_id: str
    config: RunConfig
    data: FederatedDataset
    checkpoint_dir: Path
    start_round: int  # 0 for a new run; the first round to run after a resume
    resumed: bool


@dataclass(frozen=True)
class RoundRecord:
    round: int  # 1-based, as logged
    metrics: dict[str, float]
    client_rows: list[dict]
    #: seconds the engine spent per phase of this round: train (the whole training part), map_train
    #: (waiting for the workers), store_get, aggregate, evaluate, map_evaluate
    timings: dict[str, float] = field(default_factory=dict)


class RoundListener:
    """Override what you need; every hook is optional."""

    def on_start(self, start: RunStart) -> None:
        pass

    def on_round(self, record: RoundRecord) -> None:
        pass

    def on_checkpoint(self, round: int, seconds: dict[str, float]) -> None:
        """After the store commit and checkpoint of `round` (1-based; 0 = the one before round 1); `seconds`
        holds store_commit and checkpoint (0 where the store's policy skipped it this round)."""

    def on_end(self, result: RunResult, status: str, reason: str | None) -> None:
        pass


class ClientLog(RoundListener):
    """Per client and round: steps, samples, simulated seconds, bytes, outcome (kept/late/nonfinite/no_time),
    appended to client_rounds.csv in the checkpoint folder (an MLflow artifact at the end). On resume the
    rows of rounds after the checkpoint are dropped: they will be written again."""

    NAME = "client_rounds.csv"

    def __init__(self) -> None:
        self.path: Path | None = None

    def on_start(self, start: RunStart) -> None:
        self.path = start.checkpoint_dir / self.NAME
        if start.resumed:
            frame = self.read()
            frame[frame["round"] <= start.start_round].to_csv(self.path, index=False)

    def on_round(self, record: RoundRecord) -> None:
        frame = pd.DataFrame(record.client_rows, columns=CLIENT_LOG_COLUMNS)
        frame.to_csv(self.path, mode="a", header=not self.path.exists(), index=False)

    def read(self) -> pd.DataFrame:
        if self.path is None or not self.path.exists():
            return pd.DataFrame(columns=CLIENT_LOG_COLUMNS)
        return pd.read_csv(self.path)
