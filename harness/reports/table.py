"""Plain-text result tables for the terminal: the rows `fedharness run` / `resume` print at the end.

Kept apart from the leaderboard (harness.reports.render): these are rows of single runs as the
engine returned them, printed at once, with no MLflow and no aggregation over seeds. Accuracies
are shown in %, times in simulated seconds, bytes in MB; pandas' to_markdown needs `tabulate`,
and without it the table falls back to plain text rather than failing at the end of a run.
"""

from __future__ import annotations

import pandas as pd


def format_table(rows: list[dict], title: str = "") -> str:
    if not rows:
        return f"{title}\n(no results)"
    df = pd.DataFrame(rows)
    for col in df.columns:
        if col.endswith(("acc", "acc_mean", "acc_worst10")):
            df[col] = df[col].map(lambda v: "—" if pd.isna(v) else f"{100 * v:.2f}")
        elif col == "sim_time":
            df[col] = df[col].map(lambda v: "" if pd.isna(v) else f"{v:.1f}s")
        elif col.startswith("bytes"):
            df[col] = df[col].map(lambda v: "" if pd.isna(v) else f"{v / 1e6:.1f}MB")
    text = df.to_markdown(index=False) if _has_tabulate() else df.to_string(index=False)
    return f"{title}\n{text}" if title else text


def print_table(rows: list[dict], title: str = "") -> None:
    print(format_table(rows, title))


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True
