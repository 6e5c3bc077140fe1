"""The round engine: a run's loop (run.py) over one round's training (rounds.py), the all-client
evaluation (evaluate.py), the checkpoint (checkpoint.py), the workers (executor.py, worker.py,
training.py = the trainer API), the client-state store (store.py), the virtual clock (clock.py) and the
listeners that watch a run (listeners.py, progress.py; MLflow: harness.tracking)."""

from harness.engine.checkpoint import read_meta
from harness.engine.rounds import RunFailed
from harness.engine.run import Engine, RunResult, open_run, reopen_run, resume, run

__all__ = ["Engine", "RunFailed", "RunResult", "open_run", "read_meta", "reopen_run", "resume", "run"]
