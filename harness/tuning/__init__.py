"""Tuning: every algorithm searched with the same Ray Tune budget, selected on validation data only.

    spec      TuneSpec / load_tune: a study cell x algorithms, one budget, the search spaces
    trial     run_trial: one harness run per Tune trial, its workers without a test split
    search    search: one algorithm's Tuner (resumable), its MLflow tuning run, selection
    runner    run_tune: every search, then default vs tuned on fresh seeds (a study)
    report    leaderboard / write: the side-by-side table (markdown + csv)
    progress  SearchProgress: trials done / running / pruned, best validation so far
    cli       main(argv): `fedharness tune`
"""
