"""A progress bar per run: round, personalized accuracy, ETA. Quiet with FEDHARNESS_QUIET=1."""

from __future__ import annotations

import os
import sys

from tqdm import tqdm


def quiet() -> bool:
    return os.environ.get("FEDHARNESS_QUIET", "") not in ("", "0")


class RoundProgress:
    def __init__(self, rounds: int, start: int, enabled: bool = True, label: str = "run"):
        self.enabled = enabled and not quiet()
        self.bar = tqdm(total=rounds, initial=start, desc=label, unit="round", file=sys.stderr,
                        dynamic_ncols=True, leave=False) if self.enabled else None
        self.acc = float("nan")

    def update(self, done: int, metrics: dict[str, float]) -> None:
        if self.bar is None:
            return
        self.acc = metrics.get("personal_acc", self.acc)
        self.bar.set_postfix(acc=_fmt(self.acc), loss=_fmt(metrics.get("train_loss", float("nan"))), refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt(value: float) -> str:
    """3 decimals; a dash before the first evaluation (or where no value exists) rather than 'nan'."""
    return "—" if value != value else f"{value:.3f}"
