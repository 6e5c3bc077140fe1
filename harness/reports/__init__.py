"""Reports: leaderboards of studies and result tables, from MLflow to Markdown, CSV, LaTeX, HTML.

    collect   load_runs: FINISHED runs of an experiment -> one pandas row per run + curves
    rank      metric_defs, aggregate, best_mask, second_mask: mean/std/CI over seeds, paired tests, ranks
    render    display_frame, caption, to_markdown, to_latex, to_html: text of a ranked table (Styler, Jinja2)
    stats     mean_ci, paired_comparison, friedman_nemenyi, plot_cd_diagram (scipy)
    export    export, log_export, print_leaderboard: files, the MLflow `leaderboard` run
    plots     plot_study_curves: accuracy vs round / time / bytes and per-client CDF per (data set, partition)
    table     format_table, print_table: plain rows of single runs (`fedharness run`)
    cli       main(argv): `fedharness leaderboard`

The steps are separate modules because they change for separate reasons (what MLflow holds,
how runs are compared, how a table is typeset); the package re-exports the leaderboard's names
so `from harness import reports; reports.export(...)` needs no knowledge of the split.
"""

from harness.reports.collect import NEUTRAL_PARAMS, NEUTRAL_PREFIXES, RunData, load_runs
from harness.reports.export import Export, export, log_export, print_leaderboard
from harness.reports.rank import BLOCK, GROUP, MetricDef, aggregate, best_mask, metric_defs, second_mask
from harness.reports.render import (
    SHARED_COLUMNS,
    Display,
    caption,
    display_frame,
    format_value,
    latex_escape,
    to_html,
    to_latex,
    to_markdown,
)

__all__ = ["BLOCK", "GROUP", "NEUTRAL_PARAMS", "NEUTRAL_PREFIXES", "SHARED_COLUMNS", "Display", "Export", "MetricDef",
           "RunData", "aggregate", "best_mask", "caption", "display_frame", "export", "format_value", "latex_escape",
           "load_runs", "log_export", "metric_defs", "print_leaderboard", "second_mask", "to_html", "to_latex",
           "to_markdown"]
