"""What MLflow (and the checkpoint folder) already holds for each cell of a study, and the tags
that record what a study run did to those runs.

Why the rules are these:
- A cell is matched to runs by config hash anywhere in the experiment, not by run name, so a
  renamed study or a run started by hand with the same config still counts.
- FINISHED wins: re-running a study never touches a completed run.
- A KILLED (Ctrl-C) or stale RUNNING (hard kill) run with a checkpoint is resumed in the same
  MLflow run; without one (or with `resume=False`) the cell reruns as a new run, and the old
  record is ended and says why (`retire`), so the experiment shows no run RUNNING forever.
- FAILED runs are kept as they are (the failure stays inspectable); the cell reruns.
- A FINISHED run's checkpoint folder is removed (unless keep_checkpoint), so "done" is MLflow's word
  alone; a paused (--until-round) or interrupted run keeps its checkpoint, which is what `resume` needs.
- With two study processes on one store, the runner asks again (`cell_state`) once it holds a cell's
  claim (harness.studies.claims): the answer may have changed since the plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.studies.spec import Cell, Study
from harness.tracking import ensure_experiment
from harness.tracking import mlflow_client as tracking_client

STALE_REASON = "stale: left RUNNING by a process that died (hard kill); superseded by a study rerun"
FAILURE_TAG = "fedharness.failure"
RESUMED_TAG = "fedharness.resumed"


@dataclass
class CellState:
    """What MLflow already holds for a cell: `done`, `todo`, `rerun` (FAILED) or `resume`
    (and `paused` once the runner sees the checkpoint is already at --until-round)."""

    action: str
    run_id: str | None = None
    previous: str | None = None  # status of the run that decided the action


def mlflow_client(study: Study):
    """The study's store, opened safely when other processes use it too (harness.tracking.mlflow_client)."""
    return tracking_client(study.tracking_uri)


def study_experiment(study: Study) -> str:
    """Create the study's experiment; with a SQLite store its artifacts live beside the database
    (MLflow's default is ./mlruns under whatever the current directory happens to be)."""
    return ensure_experiment(mlflow_client(study), study.tracking_uri, study.experiment)


def cell_states(study: Study, resume: bool = True) -> dict[int, CellState]:
    """Match cells to existing runs by config hash: FINISHED anywhere in the experiment wins."""
    client = mlflow_client(study)
    exp = client.get_experiment_by_name(study.experiment)
    by_hash: dict[str, list] = {}
    if exp is not None:
        for run in search_all(client, exp.experiment_id, ""):
            h = run.data.tags.get("fedharness.config_hash")
            if h:
                by_hash.setdefault(h, []).append(run)
    return {cell.index: _decide(cell, by_hash.get(cell.hash, []), resume) for cell in study.cells}


def cell_state(study: Study, cell: Cell, resume: bool = True) -> CellState:
    """One cell's state as MLflow has it now (read again once the cell's claim is held: another study
    process may have finished it since the plan)."""
    client = mlflow_client(study)
    exp = client.get_experiment_by_name(study.experiment)
    runs = search_all(client, exp.experiment_id, f"tags.`fedharness.config_hash` = '{cell.hash}'") if exp else []
    return _decide(cell, runs, resume)


def _decide(cell: Cell, runs: list, resume: bool) -> CellState:
    runs = sorted(runs, key=lambda r: r.info.start_time or 0, reverse=True)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    if finished:
        return CellState("done", finished[0].info.run_id, "FINISHED")
    unfinished = [r for r in runs if r.info.status in ("RUNNING", "KILLED", "SCHEDULED")]
    if unfinished:
        r = unfinished[0]
        ckpt = Path(cell.config.checkpoint_dir) / r.info.run_id / "meta.json"
        if resume and ckpt.is_file():
            return CellState("resume", r.info.run_id, r.info.status)
        return CellState("rerun", r.info.run_id, r.info.status)
    if runs:
        return CellState("rerun", runs[0].info.run_id, runs[0].info.status)
    return CellState("todo")


def search_all(client, experiment_id: str, filter_string: str) -> list:
    """Every matching run: MLflow returns at most 1000 per page."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def checkpointed_rounds(cell: Cell, run_id: str | None) -> int:
    """Rounds a run's checkpoint holds (0 when it has none or it cannot be read: such a run is
    not taken as paused, so the runner tries it and reruns it if it cannot be resumed)."""
    from harness.engine import read_meta

    try:
        return int(read_meta(cell.config.checkpoint_dir, str(run_id))["done_round"]) + 1
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def retire(client, run_id: str, status: str) -> None:
    """A run left RUNNING/KILLED that will not be resumed: end it, say why (the rerun is a new run)."""
    if status in ("RUNNING", "SCHEDULED"):
        client.set_tag(run_id, FAILURE_TAG, STALE_REASON)
        client.set_terminated(run_id, status="KILLED")


def mark_resume_failed(client, run_id: str, err: BaseException) -> None:
    """A checkpoint that could not be reopened: end its run as KILLED with the reason; the cell
    then starts over as a new run."""
    client.set_tag(run_id, FAILURE_TAG, f"resume failed: {err}"[:4000])
    client.set_terminated(run_id, status="KILLED")


def mark_resumed(client, run_id: str) -> None:
    """A run a study continued from its checkpoint: say so, and drop a failure note an earlier
    attempt left (the run has now finished, or paused, normally)."""
    client.set_tag(run_id, RESUMED_TAG, "true")
    try:
        client.delete_tag(run_id, FAILURE_TAG)
    except Exception:  # noqa: BLE001 - the tag may not exist
        pass
