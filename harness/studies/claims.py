"""Claims on cells: two study processes on one store never run the same cell at once.

A claim is an exclusive `fcntl.flock` on a small file per (experiment, config hash), held while the
cell runs. Why this way:
- The kernel drops a flock when its process dies, however it dies (SIGKILL included), so a claim can
  never be left behind by a crash and needs no expiry or clean-up.
- The files live beside the SQLite store (`<db folder>/claims/<experiment>/<hash>.lock`), since cells
  are matched to runs by store and experiment; with another store (a tracking server) they go under
  the cell's checkpoint folder, which is then what two studies must share to see each other's claims.
- A claim is only the right to run; what to do with the cell is decided again once it is held (the
  other study may have finished it meanwhile: harness.studies.runner re-reads its state from MLflow).
The lock files stay (empty, one per cell): deleting one while another process waits on it would let
two processes hold "the same" claim.
"""

from __future__ import annotations

import time
from pathlib import Path

from harness.studies.spec import Cell, Study
from harness.tracking import safe_name

try:
    import fcntl
except ImportError:  # not POSIX: claims always succeed (one study per store)
    fcntl = None


def claim_path(study: Study, cell: Cell) -> Path:
    uri = study.tracking_uri
    if uri.startswith("sqlite:///"):
        root = Path(uri.removeprefix("sqlite:///").split("?", 1)[0]).resolve().parent / "claims"
    else:
        root = Path(cell.config.checkpoint_dir) / "claims"
    return root / safe_name(study.experiment) / f"{cell.hash}.lock"


class Claim:
    """The exclusive right to run one cell; `acquire(wait=False)` says whether it was free."""

    def __init__(self, path: Path):
        self.path = path
        self._fh = None

    def acquire(self, wait: bool, poll_s: float = 0.2) -> bool:
        """Take the claim; without `wait`, False when another process holds it. Waiting polls, so a Ctrl-C
        (or the study's interrupt check) still gets through while another study runs the cell."""
        from harness import interrupts

        if fcntl is None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a")  # noqa: SIM115 - held open while the claim is held
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._fh = fh
                return True
            except BlockingIOError:
                if not wait:
                    fh.close()
                    return False
                interrupts.check()
                time.sleep(poll_s)

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def held_elsewhere(self) -> bool:
        """Whether another process holds the claim right now (for --dry-run; takes nothing)."""
        if self.acquire(wait=False):
            self.release()
            return False
        return True
