"""`fedharness study`: run every cell of a study spec, then print its leaderboard.

    fedharness study runs/studies/demo.yaml [overrides...] [--parallel N] [--dry-run] [--quiet]

Re-running the same command skips FINISHED cells, resumes interrupted ones from their
checkpoints and reruns failed ones (harness.studies.state), so "run it again" is the answer to
every interruption. --quiet is passed down as progress=False (no bars, still one line per
finished cell); it does not go through the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from harness.config import ConfigError
from harness.studies.runner import run_study
from harness.studies.spec import Study, load_study
from harness.studies.state import CellState, cell_states


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedharness study", description="run every cell of a study spec "
                                "(one MLflow run per cell; re-running skips FINISHED cells)")
    p.add_argument("spec", help="study spec YAML (runs/studies/*.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides applied to every cell, e.g. rounds=5")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlruns/mlflow.db)")
    p.add_argument("--parallel", type=int, help="cells at once (overrides parallel_cells; limited by free CPUs)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and what a run would do, run nothing")
    p.add_argument("--no-resume", action="store_true", help="rerun interrupted cells from scratch")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failed cell")
    p.add_argument("--until-round", type=int, metavar="R",
                   help="breadth first: take every cell to round R, then stop it (resumable; run again with a "
                        "larger R, or without the flag, to continue each cell from its checkpoint)")
    p.add_argument("--keep-checkpoint", action="store_true",
                   help="keep the checkpoints of cells that finish (= keep_checkpoint=true; paused cells keep theirs)")
    p.add_argument("--cells", metavar="NAMES",
                   help="run only these cells: comma-separated cell names (a cell's `name` value) or 1-based "
                        "numbers as --dry-run lists them; the others are left as they are")
    p.add_argument("--quiet", action="store_true", help="no progress bars (CI)")
    p.add_argument("--no-table", action="store_true", help="skip the leaderboard printed at the end")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    from harness import interrupts

    interrupts.install()
    if args.parallel is not None and args.parallel < 1:
        raise ConfigError(f"--parallel must be >= 1, got {args.parallel}")
    if args.until_round is not None and args.until_round < 1:
        raise ConfigError(f"--until-round must be >= 1, got {args.until_round}")
    overrides = [*args.overrides, *(["keep_checkpoint=true"] if args.keep_checkpoint else [])]
    study = load_study(args.spec, overrides, tracking_uri=args.tracking_uri, parallel_cells=args.parallel)
    if args.cells is not None:
        study = only_cells(study, args.cells)
    if args.dry_run:
        return _print_plan(study, resume=not args.no_resume)
    n = len(study.cells)
    print(f"study {study.name}: {n} cells -> experiment {study.experiment!r} at {study.tracking_uri}", flush=True)
    outcome = run_study(study, progress=not args.quiet, resume=not args.no_resume, fail_fast=args.fail_fast,
                        until_round=args.until_round)
    print(f"study {study.name}: {len(outcome.skipped)} already finished, {len(outcome.ran)} run, "
          f"{len(outcome.resumed)} resumed, {len(outcome.failed)} failed, "
          f"{n - len(outcome.skipped) - len(outcome.ran) - len(outcome.resumed) - len(outcome.failed)} not run; "
          f"{outcome.wall_s:.1f} s", flush=True)
    label = {cell.index: cell.label for cell in study.cells}  # failures are keyed by the cell's own number
    for i, reason in sorted(outcome.failed.items()):
        print(f"  cell {i + 1} ({label[i]}) failed: {reason}", file=sys.stderr)
    if outcome.interrupted:
        print(f"fedharness: study interrupted; finished runs are kept. Run `fedharness study {args.spec}` again "
              "to complete the missing cells.", file=sys.stderr)
        return 130
    if args.until_round is not None:
        print(f"study {study.name}: cells stop at round {args.until_round}; run again with a larger --until-round "
              "(or without it) to continue them", flush=True)
    if not args.no_table and not outcome.failed and args.until_round is None:
        from harness.reports.export import print_leaderboard

        print_leaderboard(study.tracking_uri, study.experiment, study=study.name)
    return 1 if outcome.failed else 0


def only_cells(study: Study, chosen: str) -> Study:
    """The study restricted to the cells named (by `name` value or 1-based number) in a comma-separated list;
    each cell keeps its number and config hash, so its MLflow run is the one the whole study would make."""
    wanted = [w.strip() for w in chosen.split(",") if w.strip()]
    if not wanted:
        raise ConfigError("--cells is empty; give cell names or numbers, e.g. --cells fedrep,lgfedavg")
    picked = []
    for w in wanted:
        match = [c for c in study.cells if str(c.values.get("name")) == w or str(c.index + 1) == w]
        if not match:
            names = ", ".join(str(c.values.get("name", c.index + 1)) for c in study.cells)
            raise ConfigError(f"--cells: study {study.name} has no cell {w!r}; its cells: {names}")
        picked += [c for c in match if c not in picked]
    return dataclasses.replace(study, cells=sorted(picked, key=lambda c: c.index))


def _print_plan(study: Study, resume: bool) -> int:
    """--dry-run: each cell's hash and what a run would do with it; never creates a store."""
    from harness.studies.claims import Claim, claim_path

    path = study.tracking_uri
    exists = _store_exists(path)
    states = cell_states(study, resume=resume) if exists else {}
    print(f"study {study.name}: {len(study.cells)} cells -> experiment {study.experiment!r} at {path}")
    for cell in study.cells:
        st = states.get(cell.index, CellState("todo"))
        extra = f" ({st.previous} run {st.run_id})" if st.run_id else ""
        if exists and st.action != "done" and Claim(claim_path(study, cell)).held_elsewhere():
            extra += " [running in another process now]"
        print(f"  {cell.index + 1:>3}  {st.action:<6} {cell.hash}  {cell.label}{extra}")
    return 0


def _store_exists(uri: str) -> bool:
    return not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).is_file()


if __name__ == "__main__":
    raise SystemExit(main())
