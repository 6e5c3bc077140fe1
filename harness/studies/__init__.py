"""Studies: a base run spec times a grid of config values, one MLflow run per cell.

    spec      StudySpec, load_study, expand_values, Cell, Study: expansion and validation
    state     cell_states and the MLflow records of cells (resume, retire, mark)
    runner    StudyRunner, run_study: Ray session, actor reuse, parallel cells
    progress  StudyProgress: bar + one line per finished cell
    cli       main(argv): `fedharness study`

The package re-exports the names a caller needs, so `from harness.studies import load_study,
run_study` works without knowing which module holds what.
"""

from harness.studies.runner import StudyOutcome, StudyRunner, run_study
from harness.studies.spec import Cell, Study, StudySpec, expand_values, load_study
from harness.studies.state import CellState, cell_states, study_experiment

__all__ = ["Cell", "CellState", "Study", "StudyOutcome", "StudyRunner", "StudySpec", "cell_states",
           "expand_values", "load_study", "run_study", "study_experiment"]
