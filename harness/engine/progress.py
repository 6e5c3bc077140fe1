"""A progress bar per run (a listener): round, personalized accuracy, loss, ETA. Off with progress=False."""

from __future__ import annotations

import sys

from tqdm import tqdm

from harness.engine.listeners import RoundListener, RoundRecord, RunStart


class ProgressBar(RoundListener):
    def __init__(self) -> None:
        self.bar = None
        self.acc = float("nan")

    def on_start(self, start: RunStart) -> None:
        self.bar = tqdm(total=start.config.rounds, initial=start.start_round, desc=start.config.algorithm.name,
                        unit="round", file=sys.stderr, dynamic_ncols=True, leave=False)

    def on_round(self, record: RoundRecord) -> None:
        self.acc = record.metrics.get("personal_acc", self.acc)
        self.bar.set_postfix(acc=_fmt(self.acc), loss=_fmt(record.metrics.get("train_loss", float("nan"))),
                             refresh=False)
        self.bar.update(record.round - self.bar.n)

    def on_end(self, result, status: str, reason: str | None) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt(value: float) -> str:
    """3 decimals; a dash before the first evaluation (or where no value exists) rather than 'nan'."""
    return "—" if value != value else f"{value:.3f}"
