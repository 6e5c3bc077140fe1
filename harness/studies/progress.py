"""A study's progress: cells done/total as a bar, one line per finished cell.

Why it looks like this:
- The bar is drawn only when the caller says so (`enabled`): the study CLI's --quiet turns it
  off through StudyRunner(progress=False). Nothing here reads the environment, so a library
  caller decides for itself and a test cannot be changed by a variable left set elsewhere.
- The line per finished cell goes to stdout whether the bar is on or not: CI logs and
  `fedharness study ... | tee` keep a record of every cell, the bar only helps a person watching.
- The engine's own per-run bar (round, accuracy) nests below this one (position 0 here).
- Cells finish in threads when they run in parallel, so every update takes a lock.
"""

from __future__ import annotations

import sys
import threading

from harness.studies.spec import Cell, Study


class StudyProgress:
    def __init__(self, study: Study, total: int, done: int, enabled: bool):
        self.enabled = enabled
        self.total = total
        self.done = done
        self.bar = None
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc=f"study {study.name}", unit="cell", file=sys.stderr,
                            dynamic_ncols=True, position=0)
        self.running: dict[int, str] = {}
        self.lock = threading.Lock()

    def start(self, cell: Cell) -> None:
        with self.lock:
            self.running[cell.index] = cell.label
            self._postfix()

    def finish(self, cell: Cell, status: str, seconds: float, acc: float | None, note: str = "") -> None:
        with self.lock:
            self.running.pop(cell.index, None)
            if status != "KILLED":  # an interrupted cell is not done; the next study run picks it up
                self.done += 1
            acc_text = f"  personal_acc={acc:.4f}" if acc is not None else ""
            line = f"[{self.done:>{len(str(self.total))}}/{self.total}] {status:<8} {cell.label}{acc_text}  " \
                   f"({seconds:.1f} s)" + (f" {note}" if note else "")
            if self.bar is not None:
                self.bar.write(line, file=sys.stdout)
                self.bar.update(self.done - self.bar.n)
                self._postfix()
            else:
                print(line, flush=True)

    def _postfix(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str("; ".join(self.running.values())[:80], refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
